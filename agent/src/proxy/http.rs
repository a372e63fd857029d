//! `protocol: http` services. One request pipeline, in this order:
//! identify → authorize → quota → forward → record.
//! HTTP/1.1 (keep-alive) and HTTP/2 (h2c prior knowledge) on both sides; upstream
//! connections pooled per destination.
use std::{
    convert::Infallible,
    net::SocketAddrV4,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Limited};
use hyper::{
    body::{Body, Incoming},
    header::{self, HeaderMap, HeaderName, HeaderValue},
    service::service_fn,
    Request, Response, StatusCode, Uri, Version,
};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use stoa_keys::KeyDigest;
use tokio::net::TcpStream;
use tracing::debug;

use super::{
    answer::{self, QuotaState},
    framing::{FramingVerdict, GuardedStream},
    mcp::{self, McpRuntime},
    Connection,
};
use crate::{
    identity::Principal,
    policy::{route::NormalizedPath, AccessDecision, ContractPolicy, Decision, QuotaMode},
    quota::QuotaStore,
    tables::{ProxyTables, Tables},
};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// Limits of the inbound side.
const MAX_HEADER_BYTES: usize = 64 * 1024;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const UPSTREAM_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// A rejected request's body is read and dropped up to this size, so the connection
/// stays usable; a larger one closes the connection instead.
const DRAIN_LIMIT: u64 = 64 * 1024;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_IDLE_UPSTREAM: usize = 128;

/// Headers STOA sets for the upstream; a client's own copies are removed first.
const STOA_HEADER_PREFIX: &str = "x-stoa-";
static X_STOA_IDENTITY: HeaderName = HeaderName::from_static("x-stoa-identity");
static X_STOA_WORKLOAD: HeaderName = HeaderName::from_static("x-stoa-workload");
static X_STOA_CONSUMER: HeaderName = HeaderName::from_static("x-stoa-consumer");
static X_STOA_SUBJECT: HeaderName = HeaderName::from_static("x-stoa-subject");
static X_STOA_OPERATION: HeaderName = HeaderName::from_static("x-stoa-operation");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Everything the pipeline shares across connections.
#[derive(Clone)]
pub struct HttpContext {
    pub tables: Arc<ProxyTables>,
    pub quotas: Arc<QuotaStore>,
    /// The node secret API key hashes are keyed with; None disables API keys.
    pub api_key_secret: Option<Arc<[u8]>>,
    /// MCP sessions, usage ledger and audit sink.
    pub mcp: Arc<McpRuntime>,
    http1: Client<HttpConnector, ProxyBody>,
    http2: Client<HttpConnector, ProxyBody>,
}

impl HttpContext {
    pub fn new(
        tables: Arc<ProxyTables>,
        quotas: Arc<QuotaStore>,
        api_key_secret: Option<Arc<[u8]>>,
        mcp: Arc<McpRuntime>,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        // Idle upstream connections are capped per destination: a burst of client
        // connections must not leave as many idle upstream sockets and buffers behind.
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(idle_timeout)
            .pool_max_idle_per_host(MAX_IDLE_UPSTREAM)
            .pool_timer(TokioTimer::new())
            .build(connector.clone());
        let http2 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(idle_timeout)
            .pool_timer(TokioTimer::new())
            .http2_only(true)
            .build(connector);
        Self {
            tables,
            quotas,
            api_key_secret,
            mcp,
            http1,
            http2,
        }
    }
}

pub async fn serve_connection(stream: TcpStream, conn: Connection, ctx: HttpContext) {
    let _ = stream.set_nodelay(true);
    let (stream, framing) = GuardedStream::new(stream);
    let state = Arc::new(ConnectionState {
        framing,
        key_cache: KeyCache::default(),
    });
    let service = service_fn(move |request| {
        let ctx = ctx.clone();
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(request, conn, &state, &ctx).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32);
    if let Err(err) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        debug!(peer = %conn.peer, "http connection ended: {err}");
    }
}

/// What one client connection remembers between its requests.
struct ConnectionState {
    framing: Arc<FramingVerdict>,
    key_cache: KeyCache,
}

/// The digest of the API key last presented on this connection. A client sends the
/// same key on every request of a keep-alive connection; recomputing its HMAC each
/// time was the largest single cost of a request. The key is compared in constant
/// time, and the digest is looked up in the current policy on every request, so a
/// revoked key stops working at once.
#[derive(Default)]
struct KeyCache(std::sync::Mutex<Option<(Box<[u8]>, KeyDigest)>>);

impl KeyCache {
    fn digest(&self, secret: &[u8], key: &str) -> KeyDigest {
        use subtle::ConstantTimeEq;
        let mut cached = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((known, digest)) = cached.as_ref() {
            if known.len() == key.len() && bool::from(known.ct_eq(key.as_bytes())) {
                return *digest;
            }
        }
        let digest = KeyDigest::compute(secret, key);
        *cached = Some((key.as_bytes().into(), digest));
        digest
    }
}

/// The access record of one request; emitted once, whatever the outcome.
pub(super) struct Record<'a> {
    conn: &'a Connection,
    pub(super) started: Instant,
    method: hyper::Method,
    path: String,
    contract: Option<Arc<ContractPolicy>>,
    operation: Option<usize>,
    pub(super) principal: Principal,
    pub(super) decision: Decision,
    pub(super) reason: String,
    /// MCP: the JSON-RPC method and tool of a single-message POST.
    pub(super) mcp_method: Option<String>,
    pub(super) mcp_tool: Option<String>,
}

impl Record<'_> {
    fn emit(&self, status: StatusCode) {
        let duration = self.started.elapsed();
        let contract = self.contract.as_deref();
        if let Some(contract) = contract {
            contract.metrics.count(self.decision);
            contract.metrics.duration.record(duration.as_secs_f64());
        }
        let workload = self
            .principal
            .workload
            .as_ref()
            .map(|w| format!("{}/{}", w.namespace, w.name));
        tracing::event!(
            target: "access",
            tracing::Level::INFO,
            src.identity = self.conn.identity,
            src.ip = %self.conn.peer.ip(),
            src.workload = workload.as_deref().unwrap_or(""),
            consumer = self.principal.consumer.as_ref().map(|c| c.qualified.as_str()).unwrap_or(""),
            key_id = self.principal.key_id.as_deref().unwrap_or(""),
            jwt.sub = self.principal.jwt.as_ref().and_then(|j| j.subject.as_deref()).unwrap_or(""),
            contract = contract.map(|c| c.name.as_str()).unwrap_or(""),
            operation = contract.zip(self.operation).map(|(c, op)| c.operations[op].as_str()).unwrap_or(""),
            method = %self.method,
            path = %self.path,
            status = status.as_u16(),
            decision = self.decision.as_str(),
            reason = %self.reason,
            mcp.method = self.mcp_method.as_deref().unwrap_or(""),
            mcp.tool = self.mcp_tool.as_deref().unwrap_or(""),
            duration = duration.as_micros() as u64,
            "request"
        );
    }
}

async fn handle(
    request: Request<Incoming>,
    conn: Connection,
    state: &ConnectionState,
    ctx: &HttpContext,
) -> Response<ProxyBody> {
    let tables = ctx.tables.load();
    let mut record = Record {
        conn: &conn,
        started: Instant::now(),
        method: request.method().clone(),
        path: request.uri().path().to_string(),
        contract: tables.policy.contracts.get(&conn.service_id).cloned(),
        operation: None,
        principal: Principal {
            identity: conn.identity,
            workload: tables.policy.workloads.get(&conn.identity).cloned(),
            ..Default::default()
        },
        decision: Decision::Forwarded,
        reason: String::new(),
        mcp_method: None,
        mcp_tool: None,
    };
    let version = request.version();
    let response = match pipeline(
        request,
        &conn,
        &state.framing,
        &state.key_cache,
        ctx,
        &tables,
        &mut record,
    )
    .await
    {
        Ok(response) => response,
        Err(Rejection {
            mut response,
            decision,
            reason,
            body,
        }) => {
            record.decision = decision;
            record.reason = reason;
            if let Some(body) = body {
                if version < Version::HTTP_2 && !drain(body).await {
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
            }
            response
        }
    };
    record.emit(response.status());
    response
}

/// A request answered by the proxy itself.
pub(super) struct Rejection {
    response: Response<ProxyBody>,
    decision: Decision,
    pub(super) reason: String,
    /// The unread request body, drained (or the connection closed) before answering.
    body: Option<Incoming>,
}

fn reject(
    status: StatusCode,
    decision: Decision,
    slug: &str,
    reason: impl Into<String>,
    body: Option<Incoming>,
) -> Rejection {
    let reason = reason.into();
    Rejection {
        response: answer::problem(status, slug, &reason),
        decision,
        reason,
        body,
    }
}

async fn pipeline(
    request: Request<Incoming>,
    conn: &Connection,
    framing: &FramingVerdict,
    key_cache: &KeyCache,
    ctx: &HttpContext,
    tables: &Tables,
    record: &mut Record<'_>,
) -> Result<Response<ProxyBody>, Rejection> {
    let (mut parts, body) = request.into_parts();

    // Framing and header hygiene first: nothing ambiguous is interpreted further.
    // hyper drops a Content-Length that comes with Transfer-Encoding, so the guard in
    // front of its parser is what saw both.
    if framing.is_ambiguous() {
        // Read what hyper took for the body, so closing does not reset the connection
        // before the client has read the answer; then close: the extent was ambiguous.
        let _ = drain(body).await;
        let mut rejection = reject(
            StatusCode::BAD_REQUEST,
            Decision::Invalid,
            "ambiguous-framing",
            "Content-Length and Transfer-Encoding together",
            None,
        );
        rejection
            .response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Err(rejection);
    }
    if parts.headers.values().any(|value| {
        value
            .as_bytes()
            .iter()
            .any(|b| matches!(b, b'\0' | b'\r' | b'\n'))
    }) {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            Decision::Invalid,
            "invalid-header",
            "a header value holds NUL, CR or LF",
            Some(body),
        ));
    }
    strip_hop_by_hop(&mut parts.headers);
    strip_stoa_headers(&mut parts.headers);

    let path = match NormalizedPath::parse(parts.uri.path()) {
        Ok(path) => path,
        Err(err) => {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                Decision::Invalid,
                "invalid-path",
                err.to_string(),
                Some(body),
            ))
        }
    };
    let forward_path = path.to_forward_path();
    record.path.clone_from(&forward_path);

    let Some(contract) = record.contract.clone() else {
        // A service without L7 governance (e.g. just removed): carry the request.
        return forward(parts, body, conn, ctx, &forward_path, None, &[], record).await;
    };

    let max_body = contract.max_request_body;
    if body.size_hint().lower() > max_body {
        return Err(reject(
            StatusCode::PAYLOAD_TOO_LARGE,
            Decision::TooLarge,
            "body-too-large",
            format!("the request body exceeds {max_body} bytes"),
            None,
        ));
    }

    // The OAuth resource metadata of an MCP server is public.
    if let Some(metadata) = mcp::well_known(&parts.method, &forward_path, &contract) {
        return Ok(metadata);
    }

    // Identify.
    if let Err(rejection) = identify(&mut parts, key_cache, &contract, ctx, tables, record).await {
        return Err(Rejection {
            body: Some(body),
            ..rejection
        });
    }

    if contract.mcp.is_some() {
        let stoa_headers = upstream_identity_headers(&contract, record);
        return mcp::handle(mcp::Exchange {
            parts,
            body,
            conn,
            ctx,
            contract,
            record,
            forward_path,
            stoa_headers,
        })
        .await;
    }

    // Authorize.
    if !contract.is_observe_only() {
        match contract.routes.match_request(&parts.method, &path) {
            Some(operation) => {
                record.operation = Some(operation);
                if let AccessDecision::Denied(reason) =
                    contract.authorize(operation, &record.principal)
                {
                    return Err(reject(
                        StatusCode::FORBIDDEN,
                        Decision::Denied,
                        "access-denied",
                        format!("{}: {reason}", contract.operations[operation]),
                        Some(body),
                    ));
                }
            }
            None if contract.pass_unmatched_routes => {}
            None => {
                return Err(reject(
                    StatusCode::NOT_FOUND,
                    Decision::NotFound,
                    "no-such-operation",
                    format!(
                        "{} {} matches no operation of {}",
                        parts.method, forward_path, contract.name
                    ),
                    Some(body),
                ))
            }
        }
    }

    // Quota.
    let principal_key = record.principal.quota_key();
    let mut applied: Vec<QuotaState<'_>> = Vec::new();
    for quota in &contract.quotas {
        if !quota.applies(record.operation, &record.principal) {
            continue;
        }
        let outcome = ctx
            .quotas
            .check((quota.cell_id, principal_key), &quota.limit);
        let state = QuotaState {
            name: &quota.name,
            requests: quota.limit.requests,
            window_seconds: quota.limit.period.as_secs(),
            outcome,
        };
        if !outcome.allowed {
            match quota.mode {
                QuotaMode::Enforce => {
                    let mut rejection = reject(
                        StatusCode::TOO_MANY_REQUESTS,
                        Decision::RateLimited,
                        "quota-exceeded",
                        format!("quota {} exceeded", quota.name),
                        Some(body),
                    );
                    let headers = rejection.response.headers_mut();
                    headers.insert(
                        header::RETRY_AFTER,
                        HeaderValue::from(answer::retry_after_seconds(&outcome)),
                    );
                    answer::add_ratelimit_fields(headers, &[state]);
                    return Err(rejection);
                }
                QuotaMode::ReportOnly => {
                    contract.metrics.quota_would_limit.increment(1);
                    record.reason = format!("quota {} exceeded (report only)", quota.name);
                }
            }
        }
        if quota.mode == QuotaMode::Enforce {
            applied.push(state);
        }
    }

    // Forward (and record, in `handle`).
    let stoa_headers = upstream_identity_headers(&contract, record);
    let result = forward(
        parts,
        body,
        conn,
        ctx,
        &forward_path,
        Some(max_body),
        &stoa_headers,
        record,
    )
    .await;
    result.map(|mut response| {
        answer::add_ratelimit_fields(response.headers_mut(), &applied);
        response
    })
}

async fn identify(
    parts: &mut hyper::http::request::Parts,
    key_cache: &KeyCache,
    contract: &ContractPolicy,
    ctx: &HttpContext,
    tables: &Tables,
    record: &mut Record<'_>,
) -> Result<(), Rejection> {
    let unauthenticated = |reason: String, challenge: Vec<String>| {
        let mut rejection = reject(
            StatusCode::UNAUTHORIZED,
            Decision::Unauthenticated,
            "unauthenticated",
            reason,
            None,
        );
        for value in challenge {
            if let Ok(value) = HeaderValue::from_str(&value) {
                rejection
                    .response
                    .headers_mut()
                    .append(header::WWW_AUTHENTICATE, value);
            }
        }
        rejection
    };
    let api_key_challenge = |source: &crate::policy::ApiKeySource| {
        let header = source.header.as_ref().map(|h| h.as_str()).unwrap_or("");
        format!("ApiKey realm=\"{}\", header=\"{header}\"", contract.name)
    };

    if let Some(source) = &contract.api_key {
        if let Some(key) = take_api_key(parts, source) {
            let Some(secret) = &ctx.api_key_secret else {
                return Err(unauthenticated(
                    "API keys are not configured on this node".into(),
                    vec![api_key_challenge(source)],
                ));
            };
            let digest = key_cache.digest(secret, &key);
            return match tables.policy.api_keys.get(&digest) {
                Some((consumer, key_id)) => {
                    record.principal.consumer = Some(consumer.clone());
                    record.principal.key_id = Some(key_id.clone());
                    Ok(())
                }
                None => Err(unauthenticated(
                    "the API key is not valid".into(),
                    vec![api_key_challenge(source)],
                )),
            };
        }
    }
    if let Some(verifier) = &contract.jwt {
        if let Some(token) = take_bearer(parts) {
            return match verifier.verify(&token).await {
                Ok(jwt) => {
                    record.principal.jwt = Some(Arc::new(jwt));
                    Ok(())
                }
                Err(err) => Err(unauthenticated(
                    format!("the bearer token is not valid: {err}"),
                    vec![format!(
                        "Bearer realm=\"{}\", error=\"invalid_token\", error_description=\"{err}\"",
                        contract.name
                    )],
                )),
            };
        }
    }
    if contract.requires_credential() {
        let mut challenges = Vec::new();
        if contract.jwt.is_some() {
            // An MCP client finds its authorization server through this (RFC 9728).
            challenges.push(match mcp::resource_metadata_url(contract) {
                Some(url) => format!(
                    "Bearer realm=\"{}\", resource_metadata=\"{url}\"",
                    contract.name
                ),
                None => format!("Bearer realm=\"{}\"", contract.name),
            });
        }
        if let Some(source) = &contract.api_key {
            challenges.push(api_key_challenge(source));
        }
        return Err(unauthenticated(
            "credentials are required".into(),
            challenges,
        ));
    }
    Ok(())
}

/// Takes the API key out of the request so it never reaches the upstream.
fn take_api_key(
    parts: &mut hyper::http::request::Parts,
    source: &crate::policy::ApiKeySource,
) -> Option<String> {
    if let Some(header) = &source.header {
        if let Some(value) = parts.headers.remove(header) {
            return value.to_str().ok().map(str::to_owned);
        }
    }
    let param = source.query_param.as_deref()?;
    let query = parts.uri.query()?;
    let mut key = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let name = pair.split('=').next().unwrap_or("");
            if name == param && key.is_none() {
                key = pair.split_once('=').map(|(_, v)| {
                    percent_encoding::percent_decode_str(v)
                        .decode_utf8_lossy()
                        .into_owned()
                });
                return false;
            }
            true
        })
        .collect();
    let key = key?;
    let path = parts.uri.path();
    let rebuilt = if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    if let Ok(uri) = rebuilt.parse::<Uri>() {
        parts.uri = uri;
    }
    Some(key)
}

/// Takes a bearer token; the client's token is never forwarded upstream.
fn take_bearer(parts: &mut hyper::http::request::Parts) -> Option<String> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim().to_string();
    parts.headers.remove(header::AUTHORIZATION);
    Some(token)
}

fn upstream_identity_headers(
    contract: &ContractPolicy,
    record: &Record<'_>,
) -> Vec<(HeaderName, HeaderValue)> {
    let principal = &record.principal;
    let mut headers = vec![(
        X_STOA_IDENTITY.clone(),
        HeaderValue::from(principal.identity),
    )];
    let mut push = |name: &HeaderName, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.push((name.clone(), value));
        }
    };
    if let Some(workload) = &principal.workload {
        push(
            &X_STOA_WORKLOAD,
            &format!("{}/{}", workload.namespace, workload.name),
        );
    }
    if let Some(consumer) = &principal.consumer {
        push(&X_STOA_CONSUMER, &consumer.qualified);
    }
    if let Some(subject) = principal.jwt.as_ref().and_then(|j| j.subject.as_deref()) {
        push(&X_STOA_SUBJECT, subject);
    }
    if let Some(operation) = record.operation {
        push(&X_STOA_OPERATION, &contract.operations[operation]);
    }
    headers
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    parts: hyper::http::request::Parts,
    body: Incoming,
    conn: &Connection,
    ctx: &HttpContext,
    forward_path: &str,
    max_body: Option<u64>,
    stoa_headers: &[(HeaderName, HeaderValue)],
    record: &mut Record<'_>,
) -> Result<Response<ProxyBody>, Rejection> {
    let body: ProxyBody = match max_body {
        Some(limit) => Limited::new(body, limit as usize).boxed(),
        None => body.map_err(|err| Box::new(err) as BoxError).boxed(),
    };
    let upstream = match &record.contract {
        Some(contract) => contract.pick_upstream(conn.original_dst),
        None => conn.original_dst,
    };
    let response = send_upstream(
        parts,
        body,
        conn,
        upstream,
        forward_path,
        ctx,
        stoa_headers,
        record,
    )
    .await?;
    Ok(response.map(|body| body.map_err(|err| Box::new(err) as BoxError).boxed()))
}

/// Sends the request to `upstream` (the original destination or a contract backend)
/// and returns its answer, hop-by-hop headers removed.
#[allow(clippy::too_many_arguments)]
pub(super) async fn send_upstream(
    mut parts: hyper::http::request::Parts,
    body: ProxyBody,
    conn: &Connection,
    upstream: SocketAddrV4,
    forward_path: &str,
    ctx: &HttpContext,
    stoa_headers: &[(HeaderName, HeaderValue)],
    record: &mut Record<'_>,
) -> Result<Response<Incoming>, Rejection> {
    let target = match parts.uri.query() {
        Some(query) => format!("http://{upstream}{forward_path}?{query}"),
        None => format!("http://{upstream}{forward_path}"),
    };
    parts.uri = target.parse().map_err(|_| {
        reject(
            StatusCode::BAD_REQUEST,
            Decision::Invalid,
            "invalid-target",
            "the request target cannot be forwarded",
            None,
        )
    })?;
    append_forwarded(&mut parts.headers, conn.peer, conn.original_dst);
    for (name, value) in stoa_headers {
        parts.headers.insert(name.clone(), value.clone());
    }
    let use_http2 = parts.version == Version::HTTP_2;
    if !use_http2 {
        parts.version = Version::HTTP_11;
    }
    let request = Request::from_parts(parts, body);
    let client = if use_http2 { &ctx.http2 } else { &ctx.http1 };
    let response = tokio::time::timeout(UPSTREAM_RESPONSE_TIMEOUT, client.request(request)).await;
    match response {
        Ok(Ok(response)) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            record.decision = Decision::Forwarded;
            Ok(Response::from_parts(parts, body))
        }
        Ok(Err(err)) => {
            if is_body_too_large(&err) {
                return Err(reject(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    Decision::TooLarge,
                    "body-too-large",
                    "the request body exceeds the contract's limit",
                    None,
                ));
            }
            Err(reject(
                StatusCode::BAD_GATEWAY,
                Decision::UpstreamError,
                "upstream-unavailable",
                format!("upstream {upstream} failed: {err}"),
                None,
            ))
        }
        Err(_) => Err(reject(
            StatusCode::GATEWAY_TIMEOUT,
            Decision::UpstreamError,
            "upstream-timeout",
            format!("upstream {upstream} did not answer in time"),
            None,
        )),
    }
}

fn is_body_too_large(err: &hyper_util::client::legacy::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(cause) = source {
        if cause.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// Reads and drops a small rejected body so the connection can carry the next
/// request; false when the connection should be closed instead.
async fn drain(body: Incoming) -> bool {
    if body.is_end_stream() {
        return true;
    }
    let limited = Limited::new(body, DRAIN_LIMIT as usize);
    matches!(
        tokio::time::timeout(DRAIN_TIMEOUT, limited.collect()).await,
        Ok(Ok(_))
    )
}

fn append_forwarded(headers: &mut HeaderMap, peer: SocketAddrV4, original_dst: SocketAddrV4) {
    let client_ip = peer.ip().to_string();
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(existing) => format!("{existing}, {client_ip}"),
        None => client_ip.clone(),
    };
    if let Ok(value) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    let element = format!("for={client_ip};host=\"{original_dst}\";proto=http");
    if let Ok(value) = HeaderValue::from_str(&element) {
        headers.append(FORWARDED.clone(), value);
    }
}

fn strip_stoa_headers(headers: &mut HeaderMap) {
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with(STOA_HEADER_PREFIX))
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(name);
    }
}

/// Headers that describe one hop and must not be forwarded (RFC 9110 §7.6.1),
/// including any the Connection header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    const HOP_BY_HOP: [&str; 9] = [
        "connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "keep-alive",
        "proxy-connection",
    ];
    // Most messages carry none: one pass over the names instead of nine removals.
    if !headers
        .keys()
        .any(|name| HOP_BY_HOP.contains(&name.as_str()))
    {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_named_by_connection_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            "keep-alive, x-secret-hop".parse().unwrap(),
        );
        headers.insert("x-secret-hop", "1".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        headers.insert(header::HOST, "orders".parse().unwrap());
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key(header::HOST));
    }

    #[test]
    fn spoofed_stoa_headers_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert("x-stoa-consumer", "shop/admin".parse().unwrap());
        headers.insert("X-Stoa-Identity", "1".parse().unwrap());
        headers.insert("x-other", "kept".parse().unwrap());
        strip_stoa_headers(&mut headers);
        assert_eq!(headers.len(), 1);
    }

    #[test]
    fn forwarded_headers_append_the_client() {
        let mut headers = HeaderMap::new();
        headers.insert(&X_FORWARDED_FOR, "192.0.2.1".parse().unwrap());
        append_forwarded(
            &mut headers,
            "10.1.1.2:40000".parse().unwrap(),
            "10.96.0.10:80".parse().unwrap(),
        );
        assert_eq!(headers[&X_FORWARDED_FOR], "192.0.2.1, 10.1.1.2");
        assert_eq!(
            headers[&FORWARDED],
            "for=10.1.1.2;host=\"10.96.0.10:80\";proto=http"
        );
    }

    #[test]
    fn api_keys_are_taken_from_the_query_and_removed() {
        let request = Request::get("/orders?a=1&api_key=k%2D1&b=2")
            .body(())
            .unwrap();
        let (mut parts, ()) = request.into_parts();
        let source = crate::policy::ApiKeySource {
            header: Some(HeaderName::from_static("x-api-key")),
            query_param: Some("api_key".into()),
        };
        assert_eq!(take_api_key(&mut parts, &source).as_deref(), Some("k-1"));
        assert_eq!(parts.uri, "/orders?a=1&b=2");
    }
}

#[cfg(test)]
mod key_cache_tests {
    use super::*;

    #[test]
    fn cached_digest_matches_a_fresh_one_and_a_new_key_is_recomputed() {
        let cache = KeyCache::default();
        let first = cache.digest(b"secret", "key-1");
        assert_eq!(first, KeyDigest::compute(b"secret", "key-1"));
        assert_eq!(cache.digest(b"secret", "key-1"), first);
        let other = cache.digest(b"secret", "key-2");
        assert_eq!(other, KeyDigest::compute(b"secret", "key-2"));
        assert_ne!(other, first);
    }
}
