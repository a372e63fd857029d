//! `protocol: mcp` services: the HTTP pipeline's identify step has run; this decides
//! JSON-RPC messages (which tools a caller may call and see, argument constraints,
//! per-tool quotas), relays answers (JSON or SSE, event by event), pins sessions to
//! the upstream that created them, and meters and audits every tool invocation.
//!
//! Transports served side by side on one contract:
//! - Streamable HTTP (2025-03-26 … 2025-11-25): POST/GET/DELETE on `path`, sessions
//!   by `Mcp-Session-Id`; batches (2025-03-26 only) are decided as a whole.
//! - 2026-07-28: stateless POSTs whose `MCP-Protocol-Version`, `Mcp-Method` and
//!   `Mcp-Name` headers must agree with the body.
//! - Legacy HTTP+SSE (2024-11-05): a GET stream on `sse_path` announces a messages URL
//!   in its `endpoint` event; answers to POSTs there arrive on the stream, so STOA's own
//!   answers are injected into it.
use std::{
    collections::HashMap,
    net::SocketAddrV4,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use dashmap::DashMap;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::{
    body::{Frame, Incoming},
    header::{self, HeaderMap, HeaderName, HeaderValue},
    Method, Response, StatusCode,
};
use serde_json::{json, Value};
use stoa_usage::{AuditRecord, AuditSink, Ledger, Outcome, UsageRecord};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{
    answer,
    http::{send_upstream, BoxError, HttpContext, ProxyBody, Record, Rejection},
    sse::{self, EventSplitter},
    Connection,
};
use crate::{
    identity::Principal,
    policy::{mcp::McpPolicy, AccessDecision, ContractPolicy, Decision, QuotaMode},
};

/// JSON-RPC error codes STOA answers with (the implementation-defined server range).
pub mod codes {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const INVALID_PARAMS: i64 = -32602;
    /// The caller may not call this tool.
    pub const TOOL_DENIED: i64 = -32010;
    /// An argument breaks the contract's constraint.
    pub const ARGUMENT_REJECTED: i64 = -32011;
    /// The caller's quota for this tool is used up; `data.retryAfterSeconds` says when
    /// to try again.
    pub const RATE_LIMITED: i64 = -32012;
    /// The contract denies this (non-tool) method.
    pub const METHOD_DENIED: i64 = -32013;
    /// The request body is larger than the contract allows.
    pub const BODY_TOO_LARGE: i64 = -32014;
    /// 2026-07-28: a header disagrees with the body (the specification's code).
    pub const HEADER_MISMATCH: i64 = -32020;
}

const MODERN_VERSION: &str = "2026-07-28";
const PROTOCOL_VERSION_META: &str = "io.modelcontextprotocol/protocolVersion";
/// Largest JSON answer read whole to filter or meter; larger ones pass as they are.
const MAX_INSPECTED_ANSWER: usize = 16 * 1024 * 1024;
/// Largest SSE event held to inspect; a larger one is relayed uninspected.
const MAX_INSPECTED_EVENT: usize = 16 * 1024 * 1024;
/// Sessions unused this long are forgotten (the upstream has expired them too).
const SESSION_IDLE: Duration = Duration::from_secs(3600);

static MCP_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
static MCP_PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
static MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");
static MCP_NAME: HeaderName = HeaderName::from_static("mcp-name");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Where metered invocations and audit records go; shared by all connections.
pub struct McpRuntime {
    pub node: String,
    pub ledger: Option<Ledger>,
    pub audit: Option<AuditSink>,
    sessions: DashMap<String, Arc<Session>>,
    /// 2026-07-28 `Mcp-Param-*` headers by (service, tool), learned from the
    /// `x-mcp-header` annotations of the input schemas the server lists.
    param_headers: DashMap<(u32, String), Arc<[ParamHeader]>>,
}

/// An argument a tools/call mirrors into a `Mcp-Param-<token>` header.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ParamHeader {
    /// Property names from the arguments object down to the argument.
    path: Vec<String>,
    token: String,
    integer: bool,
}

impl McpRuntime {
    pub fn new(node: String, ledger: Option<Ledger>, audit: Option<AuditSink>) -> Self {
        Self {
            node,
            ledger,
            audit,
            sessions: DashMap::new(),
            param_headers: DashMap::new(),
        }
    }

    fn session(&self, id: &str) -> Option<Arc<Session>> {
        let session = self.sessions.get(id)?.clone();
        if session.idle_for() > SESSION_IDLE {
            self.sessions.remove(id);
            return None;
        }
        session.touch();
        Some(session)
    }

    /// Forgets sessions idle past their expiry; called from the agent's sweeper.
    pub fn sweep(&self) {
        self.sessions.retain(|_, s| s.idle_for() <= SESSION_IDLE);
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }
}

/// One MCP session the proxy has seen created: where it lives and what is in flight.
struct Session {
    upstream: SocketAddrV4,
    last_used: Mutex<Instant>,
    watches: Watches,
    /// Legacy HTTP+SSE: STOA's own answers go into the session's stream.
    inject: Option<mpsc::Sender<Bytes>>,
}

impl Session {
    fn new(upstream: SocketAddrV4, inject: Option<mpsc::Sender<Bytes>>) -> Self {
        Self {
            upstream,
            last_used: Mutex::new(Instant::now()),
            watches: Watches::default(),
            inject,
        }
    }

    fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn idle_for(&self) -> Duration {
        self.last_used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }
}

/// Requests whose answers the relay must act on, by JSON-RPC id (its JSON text).
#[derive(Default, Clone)]
struct Watches(Arc<Mutex<HashMap<String, Watch>>>);

impl Watches {
    fn insert(&self, id: &Value, watch: Watch) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), watch);
    }

    /// The watch for an answer's id, removed: an answer replayed on a resumed stream
    /// finds none and is not metered again.
    fn take(&self, id: &Value) -> Option<Watch> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id.to_string())
    }

    fn is_empty(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    /// The tool calls still waiting for an answer, removed.
    fn take_unfinished_calls(&self) -> Vec<Invocation> {
        let mut watches = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut calls = Vec::new();
        for (_, watch) in watches.drain() {
            if let Watch::ToolCall(invocation) = watch {
                calls.push(*invocation);
            }
        }
        calls
    }
}

enum Watch {
    /// Filter the listed tools to those this caller may call.
    ToolsList(Box<Principal>),
    /// Meter and audit the invocation when its final answer passes.
    ToolCall(Box<Invocation>),
}

/// One tools/call in flight.
struct Invocation {
    tool: String,
    started: Instant,
    principal: Principal,
    arguments: Value,
    trace_id: Option<String>,
    jsonrpc_id: Value,
}

/// How records name a caller.
struct CallerNames {
    /// The consumer, else the workload, else the JWT subject.
    caller: String,
    consumer: Option<String>,
    workload: Option<String>,
}

fn caller_names(principal: &Principal) -> CallerNames {
    let consumer = principal.consumer.as_ref().map(|c| c.qualified.clone());
    let workload = principal
        .workload
        .as_ref()
        .map(|w| format!("{}/{}", w.namespace, w.name));
    let caller = consumer
        .clone()
        .or_else(|| workload.clone())
        .or_else(|| {
            principal
                .jwt
                .as_ref()
                .and_then(|j| j.subject.as_ref())
                .map(|s| format!("jwt:{s}"))
        })
        .unwrap_or_else(|| format!("identity:{}", principal.identity));
    CallerNames {
        caller,
        consumer,
        workload,
    }
}

/// Counts one finished invocation: Prometheus, the usage ledger (before the answer is
/// released to the client, so a crash after the client has it loses nothing) and the
/// audit record.
fn meter(
    ctx: &HttpContext,
    contract: &ContractPolicy,
    invocation: &Invocation,
    outcome: Outcome,
    reason: Option<String>,
) {
    let names = caller_names(&invocation.principal);
    let latency = invocation.started.elapsed();
    metrics::counter!(
        "stoa_mcp_tool_calls_total",
        "contract" => contract.name.clone(),
        "tool" => invocation.tool.clone(),
        "caller" => names.caller.clone(),
        "outcome" => outcome.as_str()
    )
    .increment(1);
    metrics::histogram!(
        "stoa_mcp_tool_call_duration_seconds",
        "contract" => contract.name.clone(),
        "tool" => invocation.tool.clone()
    )
    .record(latency.as_secs_f64());
    let runtime = &ctx.mcp;
    if let Some(ledger) = &runtime.ledger {
        let record = UsageRecord {
            ts_ms: stoa_usage::unix_millis_now(),
            node: runtime.node.clone(),
            caller: names.caller.clone(),
            consumer: names.consumer.clone(),
            workload: names.workload.clone(),
            contract: contract.name.clone(),
            tool: invocation.tool.clone(),
            outcome,
            latency_us: latency.as_micros() as u64,
        };
        if let Err(err) = ledger.append(&record) {
            warn!("usage ledger: cannot record a tool call: {err}");
        }
    }
    audit(ctx, contract, invocation, names, Some(outcome), reason);
}

/// Writes the audit record of one tools/call decision; `outcome` is None for an allowed
/// call that never finished (its client went away and the call was cancelled).
fn audit(
    ctx: &HttpContext,
    contract: &ContractPolicy,
    invocation: &Invocation,
    names: CallerNames,
    outcome: Option<Outcome>,
    reason: Option<String>,
) {
    let runtime = &ctx.mcp;
    let latency = invocation.started.elapsed();
    if let Some(audit) = &runtime.audit {
        let secrets = contract
            .mcp
            .as_ref()
            .and_then(|m| m.tool(&invocation.tool))
            .map(|t| t.secret_arguments.as_slice())
            .unwrap_or_default();
        let decision = match outcome {
            Some(Outcome::Denied | Outcome::RateLimited) => AuditRecord::DENY,
            _ => AuditRecord::ALLOW,
        };
        let record = AuditRecord {
            ts_ms: stoa_usage::unix_millis_now(),
            node: runtime.node.clone(),
            trace_id: invocation.trace_id.clone(),
            caller: names.caller,
            consumer: names.consumer,
            workload: names.workload,
            key_id: invocation.principal.key_id.as_deref().map(str::to_owned),
            contract: contract.name.clone(),
            tool: invocation.tool.clone(),
            arguments: stoa_usage::redact_arguments(&invocation.arguments, secrets),
            decision,
            reason,
            outcome,
            latency_us: latency.as_micros() as u64,
            jsonrpc_id: invocation.jsonrpc_id.clone(),
        };
        if let Err(err) = audit.write(&record) {
            warn!("audit: cannot write a record: {err}");
        }
    }
}

fn jsonrpc_error(id: &Value, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut error = json!({"code": code, "message": message});
    if let Some(data) = data {
        error["data"] = data;
    }
    json!({"jsonrpc": "2.0", "id": id, "error": error})
}

fn json_response(status: StatusCode, body: &Value) -> Response<ProxyBody> {
    let mut response = Response::new(full(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn incoming(body: Incoming) -> ProxyBody {
    body.map_err(|err| Box::new(err) as BoxError).boxed()
}

#[derive(Debug)]
enum ReadError {
    TooLarge,
    Body(BoxError),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::TooLarge => f.write_str("the body is too large"),
            ReadError::Body(err) => write!(f, "{err}"),
        }
    }
}

/// Reads a whole body of at most `limit` bytes. (`Limited` + `collect` held across an
/// await made the connection future fail rustc's higher-ranked Send check.)
async fn read_limited(mut body: ProxyBody, limit: usize) -> Result<Bytes, ReadError> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(ReadError::Body)?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(ReadError::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

fn status_only(status: StatusCode) -> Response<ProxyBody> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// RFC 9728 protected resource metadata, served by the gateway for the MCP server.
/// Answered before identification: a client without a token must be able to read it.
pub fn well_known(
    method: &Method,
    path: &str,
    contract: &ContractPolicy,
) -> Option<Response<ProxyBody>> {
    let oauth = contract.mcp.as_ref()?.oauth.as_ref()?;
    if *method != Method::GET || !path.starts_with("/.well-known/oauth-protected-resource") {
        return None;
    }
    let mut metadata = json!({
        "resource": oauth.resource,
        "authorization_servers": oauth.authorization_servers,
        "bearer_methods_supported": ["header"],
    });
    if !oauth.scopes_supported.is_empty() {
        metadata["scopes_supported"] = json!(oauth.scopes_supported);
    }
    Some(json_response(StatusCode::OK, &metadata))
}

/// Where the metadata of `contract` is published, for the 401 challenge.
/// Where the metadata of `contract`'s OAuth resource is published, if it has one.
pub fn resource_metadata_url(contract: &ContractPolicy) -> Option<String> {
    metadata_url_of(&contract.mcp.as_ref()?.oauth.as_ref()?.resource)
}

/// RFC 9728 §3.1: the well-known segment goes between the resource's origin and path.
fn metadata_url_of(resource: &str) -> Option<String> {
    let (scheme, rest) = resource.split_once("://")?;
    let (origin, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, ""),
    };
    Some(format!(
        "{scheme}://{origin}/.well-known/oauth-protected-resource{}",
        path.trim_end_matches('/')
    ))
}

/// Everything `handle` needs about the request in hand.
pub struct Exchange<'a, 'r> {
    pub parts: hyper::http::request::Parts,
    pub body: Incoming,
    pub conn: &'a Connection,
    pub ctx: &'a HttpContext,
    pub contract: Arc<ContractPolicy>,
    pub record: &'a mut Record<'r>,
    pub forward_path: String,
    pub stoa_headers: Vec<(HeaderName, HeaderValue)>,
}

pub async fn handle(exchange: Exchange<'_, '_>) -> Result<Response<ProxyBody>, Rejection> {
    let mcp = exchange
        .contract
        .mcp
        .clone()
        .expect("handle is called for mcp contracts");
    let path = exchange.forward_path.as_str();
    let method = exchange.parts.method.clone();
    if method == Method::POST {
        // Every POST is read as JSON-RPC, whatever its path: a tool call sent to
        // `/mcp/` or another route the server happens to accept is decided all the
        // same. A legacy session's messages URL is recognised by the session it names.
        let query = exchange.parts.uri.query();
        let session_id =
            query_param(query, "session_id").or_else(|| query_param(query, "sessionId"));
        let legacy = session_id.and_then(|id| exchange.ctx.mcp.session(&legacy_key(&id)));
        return post(exchange, &mcp, legacy).await;
    }
    if path == mcp.path && matches!(method, Method::GET | Method::DELETE) {
        return session_request(exchange).await;
    }
    if path == mcp.sse_path && method == Method::GET {
        return legacy_stream(exchange).await;
    }
    pass(exchange, None).await
}

fn legacy_key(session_id: &str) -> String {
    format!("sse:{session_id}")
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| {
            percent_encoding::percent_decode_str(value)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// Forwards a request the proxy does not need to read.
async fn pass(
    exchange: Exchange<'_, '_>,
    session: Option<Arc<Session>>,
) -> Result<Response<ProxyBody>, Rejection> {
    let upstream = session
        .as_ref()
        .map(|s| s.upstream)
        .unwrap_or_else(|| exchange.contract.pick_upstream(exchange.conn.original_dst));
    send_unread(exchange, upstream).await
}

/// Sends the request, its body streamed (within the contract's limit), to `upstream`.
async fn send_unread(
    exchange: Exchange<'_, '_>,
    upstream: SocketAddrV4,
) -> Result<Response<ProxyBody>, Rejection> {
    let body: ProxyBody =
        Limited::new(exchange.body, exchange.contract.max_request_body as usize).boxed();
    let response = send_upstream(
        exchange.parts,
        body,
        exchange.conn,
        upstream,
        &exchange.forward_path,
        exchange.ctx,
        &exchange.stoa_headers,
        exchange.record,
    )
    .await?;
    Ok(response.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed()))
}

/// GET (a session's standalone stream, or a resumption with Last-Event-ID) and DELETE
/// on the Streamable HTTP endpoint: to the upstream that owns the session.
async fn session_request(exchange: Exchange<'_, '_>) -> Result<Response<ProxyBody>, Rejection> {
    let ctx = exchange.ctx;
    let session_id = header_str(&exchange.parts.headers, &MCP_SESSION_ID).map(str::to_owned);
    let session = session_id.as_deref().and_then(|id| ctx.mcp.session(id));
    let is_delete = exchange.parts.method == Method::DELETE;
    let contract = exchange.contract.clone();
    let service_id = contract.service_id;
    let response = pass(exchange, session.clone()).await?;
    if let Some(id) = &session_id {
        if is_delete && response.status().is_success() || response.status() == StatusCode::NOT_FOUND
        {
            // Ended by the client, or expired upstream.
            if ctx.mcp.sessions.remove(id).is_some() {
                debug!(session = %id, "mcp session ended");
            }
        }
    }
    if is_sse(response.headers()) {
        let watches = session.map(|s| s.watches.clone()).unwrap_or_default();
        // The session's calls in flight stay watched: another stream may resume them.
        return Ok(relay_sse(
            response,
            ctx,
            service_id,
            watches,
            ClientGone::Cancel,
            None,
        ));
    }
    Ok(response)
}

fn header_str<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn is_sse(headers: &HeaderMap) -> bool {
    header_str(headers, &header::CONTENT_TYPE)
        .is_some_and(|ct| ct.to_ascii_lowercase().starts_with("text/event-stream"))
}

fn is_json(headers: &HeaderMap) -> bool {
    header_str(headers, &header::CONTENT_TYPE)
        .is_some_and(|ct| ct.to_ascii_lowercase().starts_with("application/json"))
}

/// Who is asking, for the decisions of one POST.
struct Caller<'a> {
    ctx: &'a HttpContext,
    contract: &'a ContractPolicy,
    principal: &'a Principal,
    started: Instant,
}

/// What STOA decided about one JSON-RPC message of a POST.
enum Verdict {
    Forward(Option<Watch>),
    /// Answered by STOA; the message never reaches the server.
    Answer {
        error: Value,
        retry_after: Option<u64>,
    },
}

/// The decision for one message, with its metering when STOA answers a tools/call.
fn decide(
    message: &Value,
    mcp: &McpPolicy,
    caller: &Caller<'_>,
    trace_id: Option<&str>,
) -> Verdict {
    let Some(method) = message.get("method").and_then(Value::as_str) else {
        // A response or error to a server's request (sampling, elicitation): relay.
        return Verdict::Forward(None);
    };
    let id = message.get("id").cloned();
    let contract = caller.contract;
    let principal = caller.principal;
    if method == "tools/list" {
        return Verdict::Forward(id.map(|_| Watch::ToolsList(Box::new(principal.clone()))));
    }
    if method != "tools/call" {
        if mcp.allows_method(method) {
            return Verdict::Forward(None);
        }
        let Some(id) = id else {
            // A notification gets no answer; it is dropped.
            return Verdict::Answer {
                error: Value::Null,
                retry_after: None,
            };
        };
        return Verdict::Answer {
            error: jsonrpc_error(
                &id,
                codes::METHOD_DENIED,
                &format!(
                    "STOA: method {method} is not allowed by contract {}",
                    contract.name
                ),
                Some(json!({"method": method, "contract": contract.name})),
            ),
            retry_after: None,
        };
    }
    let id = id.unwrap_or(Value::Null);
    let params = message.get("params");
    let Some(tool) = params.and_then(|p| p.get("name")).and_then(Value::as_str) else {
        return Verdict::Answer {
            error: jsonrpc_error(
                &id,
                codes::INVALID_PARAMS,
                "tools/call needs params.name",
                None,
            ),
            retry_after: None,
        };
    };
    let arguments = params
        .and_then(|p| p.get("arguments"))
        .cloned()
        .unwrap_or(Value::Null);
    let invocation = Invocation {
        tool: tool.to_string(),
        started: caller.started,
        principal: principal.clone(),
        arguments,
        trace_id: trace_id
            .map(str::to_owned)
            .or_else(|| meta_trace_id(params)),
        jsonrpc_id: id.clone(),
    };
    let refuse = |code: i64, outcome: Outcome, reason: String, data: Value| {
        meter(
            caller.ctx,
            contract,
            &invocation,
            outcome,
            Some(reason.clone()),
        );
        jsonrpc_error(&id, code, &format!("STOA: {reason}"), Some(data))
    };
    if let AccessDecision::Denied(reason) = contract.authorize_tool(tool, principal) {
        return Verdict::Answer {
            error: refuse(
                codes::TOOL_DENIED,
                Outcome::Denied,
                reason.clone(),
                json!({"tool": tool, "contract": contract.name, "reason": reason}),
            ),
            retry_after: None,
        };
    }
    if let Some(reason) = mcp
        .tool(tool)
        .and_then(|rule| rule.violation(params.and_then(|p| p.get("arguments"))))
    {
        return Verdict::Answer {
            error: refuse(
                codes::ARGUMENT_REJECTED,
                Outcome::Denied,
                format!("tool {tool} refused: {reason}"),
                json!({"tool": tool, "contract": contract.name, "reason": reason}),
            ),
            retry_after: None,
        };
    }
    // A retry after an input-required result continues the same invocation: it is
    // not charged again.
    let is_continuation = params
        .is_some_and(|p| p.get("requestState").is_some() || p.get("inputResponses").is_some());
    if !is_continuation {
        let principal_key = principal.quota_key();
        for quota in contract
            .quotas
            .iter()
            .filter(|q| q.applies_to_tool(tool, principal))
        {
            let outcome = caller
                .ctx
                .quotas
                .check((quota.cell_id, principal_key), &quota.limit);
            if outcome.allowed {
                continue;
            }
            if quota.mode == QuotaMode::ReportOnly {
                contract.metrics.quota_would_limit.increment(1);
                continue;
            }
            let retry_after = answer::retry_after_seconds(&outcome);
            return Verdict::Answer {
                error: refuse(
                    codes::RATE_LIMITED,
                    Outcome::RateLimited,
                    format!(
                        "tool {tool} rate-limited by quota {}: {} calls per {} s; retry after {retry_after} s",
                        quota.name,
                        quota.limit.requests,
                        quota.limit.period.as_secs()
                    ),
                    json!({
                        "tool": tool,
                        "quota": quota.name,
                        "limit": quota.limit.requests,
                        "windowSeconds": quota.limit.period.as_secs(),
                        "retryAfterSeconds": retry_after,
                    }),
                ),
                retry_after: Some(retry_after),
            };
        }
    }
    Verdict::Forward(Some(Watch::ToolCall(Box::new(invocation))))
}

/// W3C trace id from `params._meta.traceparent`.
fn meta_trace_id(params: Option<&Value>) -> Option<String> {
    let traceparent = params?.get("_meta")?.get("traceparent")?.as_str()?;
    trace_id_of(traceparent)
}

fn trace_id_of(traceparent: &str) -> Option<String> {
    let trace_id = traceparent.split('-').nth(1)?;
    (trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| trace_id.to_string())
}

/// 2026-07-28: the routing headers must say what the body says.
fn check_modern_headers(
    headers: &HeaderMap,
    message: &Value,
    param_headers: &[ParamHeader],
) -> Result<(), String> {
    let body_version = message
        .get("params")
        .and_then(|p| p.get("_meta"))
        .and_then(|m| m.get(PROTOCOL_VERSION_META))
        .and_then(Value::as_str);
    let header_version = header_str(headers, &MCP_PROTOCOL_VERSION);
    let modern = body_version.is_some() || header_version.is_some_and(|v| v >= MODERN_VERSION);
    if !modern {
        return Ok(());
    }
    if header_version != body_version {
        return Err(format!(
            "the MCP-Protocol-Version header ({}) does not match the body's protocol version ({})",
            header_version.unwrap_or("absent"),
            body_version.unwrap_or("absent")
        ));
    }
    let method = message.get("method").and_then(Value::as_str);
    if method.is_some() && header_str(headers, &MCP_METHOD) != method {
        return Err(format!(
            "the Mcp-Method header ({}) does not match the body's method ({})",
            header_str(headers, &MCP_METHOD).unwrap_or("absent"),
            method.unwrap_or("absent")
        ));
    }
    let name_key = match method {
        Some("tools/call" | "prompts/get") => "name",
        Some("resources/read") => "uri",
        _ => return Ok(()),
    };
    if let Some(body_name) = message
        .get("params")
        .and_then(|p| p.get(name_key))
        .and_then(Value::as_str)
    {
        let header_name = header_str(headers, &MCP_NAME).map(decode_header_value);
        if header_name.as_deref() != Some(body_name) {
            return Err(format!(
                "the Mcp-Name header ({}) does not match the body's {name_key} ({body_name})",
                header_name.as_deref().unwrap_or("absent")
            ));
        }
    }
    if method == Some("tools/call") {
        let arguments = message.pointer("/params/arguments");
        for param in param_headers {
            check_param_header(headers, arguments, param)?;
        }
    }
    Ok(())
}

/// One `Mcp-Param-*` header against the argument it mirrors: both absent, or equal.
fn check_param_header(
    headers: &HeaderMap,
    arguments: Option<&Value>,
    param: &ParamHeader,
) -> Result<(), String> {
    let name = format!("mcp-param-{}", param.token.to_ascii_lowercase());
    let values: Vec<&HeaderValue> = headers.get_all(name.as_str()).iter().collect();
    if values.len() > 1 {
        return Err(format!("the {name} header is repeated"));
    }
    let header = values
        .first()
        .map(|v| decode_header_value(v.to_str().unwrap_or("\u{fffd}")));
    let mut argument = arguments;
    for key in &param.path {
        argument = argument.and_then(|a| a.get(key));
    }
    let rendered = match argument {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text.clone()),
        Some(Value::Bool(flag)) => Some(flag.to_string()),
        Some(Value::Number(number)) => Some(number.to_string()),
        // Objects and arrays have no header form.
        Some(_) => None,
    };
    let agrees = match (&header, &rendered) {
        (None, None) => true,
        (Some(header), Some(rendered)) => {
            header == rendered
                || (param.integer
                    && header.parse::<f64>().ok().is_some()
                    && header.parse::<f64>().ok() == rendered.parse::<f64>().ok())
        }
        _ => false,
    };
    if agrees {
        return Ok(());
    }
    Err(format!(
        "the {name} header ({}) does not match the argument {} ({})",
        header.as_deref().unwrap_or("absent"),
        param.path.join("."),
        rendered.as_deref().unwrap_or("absent")
    ))
}

/// The `x-mcp-header` annotations of an input schema, following `properties` only.
fn param_headers_of(schema: Option<&Value>) -> Vec<ParamHeader> {
    fn walk(schema: &Value, path: &mut Vec<String>, found: &mut Vec<ParamHeader>) {
        let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
            return;
        };
        for (name, property) in properties {
            path.push(name.clone());
            if let Some(token) = property.get("x-mcp-header").and_then(Value::as_str) {
                found.push(ParamHeader {
                    path: path.clone(),
                    token: token.to_string(),
                    integer: property.get("type").and_then(Value::as_str) == Some("integer"),
                });
            }
            // Bounded by the schema the server sent, which was read whole.
            if path.len() < 32 {
                walk(property, path, found);
            }
            path.pop();
        }
    }
    let mut found = Vec::new();
    if let Some(schema) = schema {
        walk(schema, &mut Vec::new(), &mut found);
    }
    found
}

/// Header values that are not plain tokens travel as `=?base64?…?=`.
fn decode_header_value(value: &str) -> String {
    use base64::Engine;
    if let Some(payload) = value
        .strip_prefix("=?base64?")
        .and_then(|v| v.strip_suffix("?="))
    {
        if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(payload) {
            if let Ok(text) = String::from_utf8(bytes) {
                return text;
            }
        }
    }
    value.to_string()
}

/// A JSON-RPC POST: to the Streamable HTTP endpoint, or (with `legacy`) to a legacy
/// session's messages URL.
async fn post(
    exchange: Exchange<'_, '_>,
    mcp: &McpPolicy,
    legacy: Option<Arc<Session>>,
) -> Result<Response<ProxyBody>, Rejection> {
    let Exchange {
        parts,
        body,
        conn,
        ctx,
        contract,
        record,
        forward_path,
        stoa_headers,
    } = exchange;
    let max_body = contract.max_request_body;
    let bytes = match read_limited(incoming(body), max_body as usize).await {
        Ok(bytes) => bytes,
        Err(err) => {
            let too_large = matches!(err, ReadError::TooLarge);
            let (status, code, message) = if too_large {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    codes::BODY_TOO_LARGE,
                    format!("STOA: the request body exceeds {max_body} bytes"),
                )
            } else {
                (
                    StatusCode::BAD_REQUEST,
                    codes::PARSE_ERROR,
                    format!("STOA: the request body could not be read: {err}"),
                )
            };
            record.decision = if too_large {
                Decision::TooLarge
            } else {
                Decision::Invalid
            };
            record.reason = message.clone();
            let mut response =
                json_response(status, &jsonrpc_error(&Value::Null, code, &message, None));
            // The rest of the body was not read: this connection cannot carry more.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Ok(response);
        }
    };
    let parsed: Value = match serde_json::from_slice(&bytes) {
        Ok(value) => value,
        Err(err) => {
            let message = format!("STOA: the body is not valid JSON: {err}");
            record.decision = Decision::Invalid;
            record.reason.clone_from(&message);
            let error = jsonrpc_error(&Value::Null, codes::PARSE_ERROR, &message, None);
            return Ok(json_response(StatusCode::BAD_REQUEST, &error));
        }
    };
    let (messages, batch) = match parsed {
        Value::Array(items) if !items.is_empty() => (items, true),
        Value::Object(_) => (vec![parsed], false),
        _ => {
            let message = "STOA: a JSON-RPC message must be an object (or a non-empty batch)";
            record.decision = Decision::Invalid;
            record.reason = message.into();
            let error = jsonrpc_error(&Value::Null, codes::INVALID_REQUEST, message, None);
            return Ok(json_response(StatusCode::BAD_REQUEST, &error));
        }
    };
    for message in &messages {
        let valid = message.get("jsonrpc") == Some(&json!("2.0"))
            && (message.get("method").is_some_and(Value::is_string)
                || message.get("result").is_some()
                || message.get("error").is_some());
        if !valid {
            let id = message.get("id").cloned().unwrap_or(Value::Null);
            let text = "STOA: not a JSON-RPC 2.0 request, notification or response";
            record.decision = Decision::Invalid;
            record.reason = text.into();
            let error = jsonrpc_error(&id, codes::INVALID_REQUEST, text, None);
            return Ok(json_response(StatusCode::BAD_REQUEST, &error));
        }
    }
    if !batch {
        let message = &messages[0];
        record.mcp_method = message
            .get("method")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if record.mcp_method.as_deref() == Some("tools/call") {
            record.mcp_tool = message
                .pointer("/params/name")
                .and_then(Value::as_str)
                .map(str::to_owned);
        }
        let param_headers = record
            .mcp_tool
            .as_ref()
            .and_then(|tool| {
                ctx.mcp
                    .param_headers
                    .get(&(contract.service_id, tool.clone()))
                    .map(|entry| entry.value().clone())
            })
            .unwrap_or_else(|| Arc::from(Vec::new()));
        if let Err(reason) = check_modern_headers(&parts.headers, &messages[0], &param_headers) {
            let id = messages[0].get("id").cloned().unwrap_or(Value::Null);
            record.decision = Decision::Invalid;
            record.reason.clone_from(&reason);
            let error = jsonrpc_error(
                &id,
                codes::HEADER_MISMATCH,
                &format!("STOA: {reason}"),
                None,
            );
            return Ok(json_response(StatusCode::BAD_REQUEST, &error));
        }
    }
    let header_trace = header_str(&parts.headers, &TRACEPARENT).and_then(trace_id_of);
    // Scoped so no borrow of the record is held across the awaits below.
    let verdicts: Vec<Verdict> = {
        let caller = Caller {
            ctx,
            contract: &contract,
            principal: &record.principal,
            started: record.started,
        };
        messages
            .iter()
            .map(|m| decide(m, mcp, &caller, header_trace.as_deref()))
            .collect()
    };

    let refused = verdicts.iter().any(|v| matches!(v, Verdict::Answer { .. }));
    if refused {
        return Ok(
            answer_refusal(ctx, &contract, record, &messages, verdicts, batch, legacy).await,
        );
    }

    // Forward. A session created by this exchange is pinned to the upstream chosen
    // here; an existing one goes where it lives.
    let session_id = header_str(&parts.headers, &MCP_SESSION_ID).map(str::to_owned);
    let session = legacy
        .clone()
        .or_else(|| session_id.as_deref().and_then(|id| ctx.mcp.session(id)));
    let upstream = session
        .as_ref()
        .map(|s| s.upstream)
        .unwrap_or_else(|| contract.pick_upstream(conn.original_dst));
    let watches = session
        .as_ref()
        .map(|s| s.watches.clone())
        .unwrap_or_default();
    for (message, verdict) in messages.iter().zip(verdicts) {
        if let (Verdict::Forward(Some(watch)), Some(id)) = (verdict, message.get("id")) {
            watches.insert(id, watch);
        }
    }
    let is_initialize = !batch && messages[0].get("method") == Some(&json!("initialize"));
    let modern =
        header_str(&parts.headers, &MCP_PROTOCOL_VERSION).is_some_and(|v| v >= MODERN_VERSION);
    let sent = send_upstream(
        parts,
        full(bytes),
        conn,
        upstream,
        &forward_path,
        ctx,
        &stoa_headers,
        record,
    )
    .await;
    let response = match sent {
        Ok(response) => response,
        Err(rejection) => {
            if session.is_none() {
                // Allowed calls the server never answered: not metered, but on record.
                for invocation in watches.take_unfinished_calls() {
                    let names = caller_names(&invocation.principal);
                    let reason = format!("not answered: {}", rejection.reason);
                    audit(ctx, &contract, &invocation, names, None, Some(reason));
                }
            }
            return Err(rejection);
        }
    };
    if is_initialize {
        if let Some(id) = header_str(response.headers(), &MCP_SESSION_ID) {
            ctx.mcp
                .sessions
                .insert(id.to_string(), Arc::new(Session::new(upstream, None)));
            debug!(session = %id, %upstream, "mcp session pinned");
        }
    }
    if response.status() == StatusCode::NOT_FOUND {
        if let Some(id) = &session_id {
            ctx.mcp.sessions.remove(id);
        }
    }
    let response = response.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed());
    if legacy.is_some() || watches.is_empty() {
        // Legacy answers arrive on the session's stream, where its relay watches.
        return Ok(response);
    }
    if is_sse(response.headers()) {
        // A session's stream can be resumed elsewhere: keep the upstream going when
        // the client goes. A stateless 2026-07-28 request is cancelled with its client.
        let on_client_gone = if session.is_some() && !modern {
            ClientGone::KeepGoing
        } else {
            ClientGone::CancelAndAudit
        };
        return Ok(relay_sse(
            response,
            ctx,
            contract.service_id,
            watches,
            on_client_gone,
            None,
        ));
    }
    if is_json(response.headers()) {
        return Ok(rewrite_json(response, ctx, contract.service_id, &watches).await);
    }
    Ok(response)
}

/// STOA answers the POST itself: one error per refused message. A batch with a refused
/// message is refused whole, so that no part of it half-happens.
async fn answer_refusal(
    ctx: &HttpContext,
    contract: &ContractPolicy,
    record: &mut Record<'_>,
    messages: &[Value],
    verdicts: Vec<Verdict>,
    batch: bool,
    legacy: Option<Arc<Session>>,
) -> Response<ProxyBody> {
    let mut answers = Vec::new();
    let mut retry_after = None;
    let mut reasons = Vec::new();
    for (message, verdict) in messages.iter().zip(verdicts) {
        match verdict {
            Verdict::Answer {
                error,
                retry_after: after,
            } => {
                if after.is_some() {
                    retry_after = after;
                }
                if let Some(text) = error.pointer("/error/message").and_then(Value::as_str) {
                    reasons.push(text.to_string());
                }
                if !error.is_null() {
                    answers.push(error);
                }
            }
            Verdict::Forward(watch) => {
                let Some(id) = message.get("id") else {
                    continue;
                };
                if let Some(Watch::ToolCall(invocation)) = watch {
                    meter(
                        ctx,
                        contract,
                        &invocation,
                        Outcome::Denied,
                        Some("batch refused".into()),
                    );
                }
                answers.push(jsonrpc_error(
                    id,
                    codes::TOOL_DENIED,
                    "STOA: the batch was refused because another of its messages was",
                    None,
                ));
            }
        }
    }
    record.decision = if retry_after.is_some() {
        Decision::RateLimited
    } else {
        Decision::Denied
    };
    record.reason = reasons.join("; ");
    if let Some(session) = legacy {
        // Legacy HTTP+SSE: answers travel on the session's stream; the POST is accepted.
        if let Some(inject) = &session.inject {
            for answer in &answers {
                let _ = inject.send(sse::message_event(&answer.to_string())).await;
            }
        }
        return status_only(StatusCode::ACCEPTED);
    }
    if answers.is_empty() {
        return status_only(StatusCode::ACCEPTED);
    }
    let body = if batch {
        Value::Array(answers)
    } else {
        answers.pop().unwrap_or(Value::Null)
    };
    match retry_after {
        Some(seconds) => {
            let mut response = json_response(StatusCode::TOO_MANY_REQUESTS, &body);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            response
        }
        None => json_response(StatusCode::OK, &body),
    }
}

/// Acts on one answer message: filters a tools/list result, meters a tools/call.
/// Returns the message rewritten, or None to relay it untouched.
fn on_answer(message: &mut Value, watches: &Watches, ctx: &HttpContext, service_id: u32) -> bool {
    let Some(id) = message.get("id") else {
        return false;
    };
    if message.get("method").is_some() {
        // A request from the server (sampling, elicitation), not an answer.
        return false;
    }
    let Some(watch) = watches.take(id) else {
        return false;
    };
    let tables = ctx.tables.load();
    let Some(contract) = tables.policy.contracts.get(&service_id).cloned() else {
        return false;
    };
    match watch {
        Watch::ToolsList(principal) => {
            let Some(tools) = message
                .pointer_mut("/result/tools")
                .and_then(Value::as_array_mut)
            else {
                return false;
            };
            for tool in tools.iter() {
                if let Some(name) = tool.get("name").and_then(Value::as_str) {
                    let annotated = param_headers_of(tool.get("inputSchema"));
                    let key = (service_id, name.to_string());
                    if annotated.is_empty() {
                        ctx.mcp.param_headers.remove(&key);
                    } else {
                        ctx.mcp.param_headers.insert(key, annotated.into());
                    }
                }
            }
            let before = tools.len();
            tools.retain(|tool| {
                tool.get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|name| {
                        matches!(
                            contract.authorize_tool(name, &principal),
                            AccessDecision::Allowed
                        )
                    })
            });
            debug!(kept = tools.len(), of = before, "tools/list filtered");
            true
        }
        Watch::ToolCall(invocation) => {
            let result = message.get("result");
            if result
                .and_then(|r| r.get("resultType"))
                .and_then(Value::as_str)
                == Some("input_required")
            {
                // Not finished: the client retries with a new id, and that one counts.
                return false;
            }
            let outcome = if message.get("error").is_some() {
                Outcome::ProtocolError
            } else if result.and_then(|r| r.get("isError")) == Some(&Value::Bool(true)) {
                Outcome::ToolError
            } else {
                Outcome::Ok
            };
            meter(ctx, &contract, &invocation, outcome, None);
            false
        }
    }
}

/// A JSON answer read whole (it is one message or a batch), acted on, re-sent.
async fn rewrite_json(
    response: Response<ProxyBody>,
    ctx: &HttpContext,
    service_id: u32,
    watches: &Watches,
) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    let bytes = match read_limited(body, MAX_INSPECTED_ANSWER).await {
        Ok(bytes) => bytes,
        Err(err) => {
            warn!("mcp answer unreadable: {err}");
            return json_response(
                StatusCode::BAD_GATEWAY,
                &jsonrpc_error(
                    &Value::Null,
                    -32603,
                    "STOA: the server's answer could not be read",
                    None,
                ),
            );
        }
    };
    let Ok(mut value) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, full(bytes));
    };
    let mut changed = false;
    match &mut value {
        Value::Array(items) => {
            for item in items {
                changed |= on_answer(item, watches, ctx, service_id);
            }
        }
        message => changed |= on_answer(message, watches, ctx, service_id),
    }
    if !changed {
        return Response::from_parts(parts, full(bytes));
    }
    let bytes = Bytes::from(value.to_string());
    parts.headers.remove(header::CONTENT_LENGTH);
    make_private(&mut parts.headers);
    Response::from_parts(parts, full(bytes))
}

/// A filtered list differs per caller: no shared cache may keep it.
fn make_private(headers: &mut HeaderMap) {
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    headers.remove(header::ETAG);
}

/// Relays an SSE answer event by event, acting on the answers it watches for.
/// What a relay does when its client goes away.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ClientGone {
    /// Keep reading the upstream to its end, so invocations finish and are metered.
    KeepGoing,
    /// Stop: dropping the upstream body cancels the request upstream.
    Cancel,
    /// Stop, and put the unanswered calls (this stream's own) on the audit record.
    CancelAndAudit,
}

/// `legacy`: the stream of a legacy HTTP+SSE session, with its injection channel and
/// session key (removed when the stream ends).
fn relay_sse(
    response: Response<ProxyBody>,
    ctx: &HttpContext,
    service_id: u32,
    watches: Watches,
    on_client_gone: ClientGone,
    legacy: Option<(mpsc::Receiver<Bytes>, Arc<Session>, SocketAddrV4)>,
) -> Response<ProxyBody> {
    let (mut parts, mut body) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    // Tell any buffering proxy in front not to hold events back.
    parts
        .headers
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    make_private(&mut parts.headers);
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(16);
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let mut splitter = EventSplitter::default();
        let mut client_open = true;
        let (mut inject, legacy_session, legacy_upstream) = match legacy {
            Some((rx, session, upstream)) => (Some(rx), Some(session), Some(upstream)),
            None => (None, None, None),
        };
        let mut legacy_key_registered: Option<String> = None;
        loop {
            let frame = tokio::select! {
                frame = body.frame() => frame,
                Some(injected) = async {
                    match inject.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if client_open && tx.send(Ok(Frame::data(injected))).await.is_err() {
                        client_open = false;
                    }
                    continue;
                }
            };
            let Some(frame) = frame else { break };
            let data = match frame {
                Ok(frame) => match frame.into_data() {
                    Ok(data) => data,
                    Err(_) => continue,
                },
                Err(err) => {
                    debug!("mcp upstream stream failed: {err}");
                    if client_open {
                        let _ = tx.send(Err(err)).await;
                    }
                    break;
                }
            };
            let mut out = Vec::new();
            for raw in splitter.push(&data) {
                let event = sse::Event::parse(&raw);
                // The legacy `endpoint` event names the session's messages URL.
                if let (Some(session), Some(upstream)) = (&legacy_session, legacy_upstream) {
                    if event.event.as_deref() == Some("endpoint") && legacy_key_registered.is_none()
                    {
                        if let Some(id) = event.data.as_deref().and_then(|url| {
                            let query = url.split_once('?').map(|(_, q)| q);
                            query_param(query, "session_id")
                                .or_else(|| query_param(query, "sessionId"))
                        }) {
                            let key = legacy_key(&id);
                            ctx.mcp.sessions.insert(key.clone(), session.clone());
                            debug!(session = %id, %upstream, "legacy mcp session pinned");
                            legacy_key_registered = Some(key);
                        }
                    }
                }
                out.push(rewrite_event(raw, event, &watches, &ctx, service_id));
            }
            if splitter.buffered() > MAX_INSPECTED_EVENT {
                out.push(splitter.take_rest());
            }
            if client_open {
                for chunk in out {
                    if tx.send(Ok(Frame::data(chunk))).await.is_err() {
                        client_open = false;
                        break;
                    }
                }
            }
            if !client_open && on_client_gone != ClientGone::KeepGoing {
                // Dropping the upstream body cancels the request upstream.
                break;
            }
        }
        let rest = splitter.take_rest();
        if client_open && !rest.is_empty() {
            let _ = tx.send(Ok(Frame::data(rest))).await;
        }
        if let Some(key) = legacy_key_registered {
            ctx.mcp.sessions.remove(&key);
            debug!(session = %key, "legacy mcp session ended");
        }
        if !client_open && on_client_gone == ClientGone::CancelAndAudit {
            // A stateless call cancelled with its client: no usage (it did not finish),
            // but its allow decision is still on record.
            let contract = ctx.tables.load().policy.contracts.get(&service_id).cloned();
            if let Some(contract) = contract {
                for invocation in watches.take_unfinished_calls() {
                    audit(
                        &ctx,
                        &contract,
                        &invocation,
                        caller_names(&invocation.principal),
                        None,
                        Some("cancelled: the client closed the stream before the answer".into()),
                    );
                }
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Response::from_parts(parts, StreamBody::new(stream).boxed())
}

fn rewrite_event(
    raw: Bytes,
    event: sse::Event,
    watches: &Watches,
    ctx: &HttpContext,
    service_id: u32,
) -> Bytes {
    let Some(data) = &event.data else {
        return raw;
    };
    if watches.is_empty() || !data.starts_with('{') {
        return raw;
    }
    let Ok(mut message) = serde_json::from_str::<Value>(data) else {
        return raw;
    };
    if on_answer(&mut message, watches, ctx, service_id) {
        event.encode_with_data(&message.to_string())
    } else {
        raw
    }
}

/// GET on the legacy SSE path: the session's stream, relayed with injection.
async fn legacy_stream(exchange: Exchange<'_, '_>) -> Result<Response<ProxyBody>, Rejection> {
    let ctx = exchange.ctx;
    let service_id = exchange.contract.service_id;
    let upstream = exchange.contract.pick_upstream(exchange.conn.original_dst);
    let (inject_tx, inject_rx) = mpsc::channel(16);
    let session = Arc::new(Session::new(upstream, Some(inject_tx)));
    let response = send_unread(exchange, upstream).await?;
    if !response.status().is_success() || !is_sse(response.headers()) {
        return Ok(response);
    }
    let watches = session.watches.clone();
    // A legacy client's closed stream does not cancel its session's work upstream.
    Ok(relay_sse(
        response,
        ctx,
        service_id,
        watches,
        ClientGone::KeepGoing,
        Some((inject_rx, session, upstream)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        identity::WorkloadInfo,
        policy::{CompiledPolicy, JwksRegistry},
        quota::QuotaStore,
        snapshot::DesiredState,
        tables::ProxyTables,
    };
    use stoa_proto::v1 as pb;

    /// A context whose policy has one mcp contract (service 7, tools echo and secret)
    /// that lets namespace `ai` call echo, metering into a ledger in `dir`.
    fn context(dir: &std::path::Path) -> HttpContext {
        let subject = pb::Subject {
            kind: Some(pb::subject::Kind::Workload(pb::WorkloadSelector {
                namespace: "ai".into(),
                ..Default::default()
            })),
        };
        let snapshot = pb::Snapshot {
            contracts: vec![pb::Contract {
                service_id: 7,
                name: "crm".into(),
                namespace: "shop".into(),
                mcp: Some(pb::McpSettings {
                    tools: ["echo", "secret"]
                        .map(|name| pb::Tool {
                            name: name.into(),
                            ..Default::default()
                        })
                        .to_vec(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            access_policies: vec![pb::AccessPolicy {
                name: "ai".into(),
                namespace: "shop".into(),
                subjects: vec![subject],
                allow: vec![pb::Grant {
                    service_id: 7,
                    tools: vec!["echo".into()],
                    ..Default::default()
                }],
                deny: vec![],
            }],
            ..Default::default()
        };
        let jwks = JwksRegistry::new(crate::identity::jwt::jwks_http_client().unwrap());
        let policy = CompiledPolicy::compile(&snapshot, &jwks).unwrap();
        let tables = Arc::new(ProxyTables::default());
        let state = DesiredState {
            version: 1,
            workloads: Default::default(),
            services: Default::default(),
            service_table: Default::default(),
        };
        tables.replace(&state, policy);
        let ledger = Ledger::open(stoa_usage::LedgerConfig::new(dir)).unwrap();
        HttpContext::new(
            tables,
            QuotaStore::new(),
            None,
            Arc::new(McpRuntime::new("node".into(), Some(ledger), None)),
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
    }

    fn caller() -> Principal {
        Principal {
            identity: 300,
            workload: Some(Arc::new(WorkloadInfo {
                name: "assistant".into(),
                namespace: "ai".into(),
                service_account: "assistant".into(),
                labels: Default::default(),
            })),
            ..Default::default()
        }
    }

    fn call(id: u64) -> Watch {
        Watch::ToolCall(Box::new(Invocation {
            tool: "echo".into(),
            started: Instant::now(),
            principal: caller(),
            arguments: json!({"text": "hi"}),
            trace_id: None,
            jsonrpc_id: json!(id),
        }))
    }

    fn metered(dir: &std::path::Path) -> Vec<(String, Outcome, u64)> {
        stoa_usage::read_usage(dir, &Default::default())
            .unwrap()
            .rows
            .into_iter()
            .map(|r| (r.tool, r.outcome, r.calls))
            .collect()
    }

    #[tokio::test]
    async fn an_invocation_is_metered_once_when_final() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        let watches = Watches::default();

        // Input required: not finished; the client retries with a new id.
        watches.insert(&json!(1), call(1));
        let mut pending = json!({"jsonrpc": "2.0", "id": 1,
            "result": {"resultType": "input_required", "requestState": "opaque"}});
        assert!(!on_answer(&mut pending, &watches, &ctx, 7));
        assert!(metered(dir.path()).is_empty());

        watches.insert(&json!(2), call(2));
        let mut done = json!({"jsonrpc": "2.0", "id": 2,
            "result": {"content": [], "isError": true}});
        assert!(!on_answer(&mut done.clone(), &watches, &ctx, 7));
        assert_eq!(
            metered(dir.path()),
            [("echo".into(), Outcome::ToolError, 1)]
        );

        // The same answer replayed on a resumed stream is not a new invocation.
        assert!(!on_answer(&mut done, &watches, &ctx, 7));
        assert_eq!(
            metered(dir.path()),
            [("echo".into(), Outcome::ToolError, 1)]
        );

        watches.insert(&json!(3), call(3));
        let mut failed = json!({"jsonrpc": "2.0", "id": 3,
            "error": {"code": -32603, "message": "boom"}});
        on_answer(&mut failed, &watches, &ctx, 7);
        assert_eq!(
            metered(dir.path()),
            [
                ("echo".into(), Outcome::ToolError, 1),
                ("echo".into(), Outcome::ProtocolError, 1)
            ]
        );
    }

    #[tokio::test]
    async fn tool_lists_keep_only_callable_tools() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        let watches = Watches::default();
        watches.insert(&json!("l"), Watch::ToolsList(Box::new(caller())));
        let mut list = json!({"jsonrpc": "2.0", "id": "l", "result": {"tools": [
            {"name": "echo"}, {"name": "secret"}, {"name": "unlisted"}], "nextCursor": "c"}});
        assert!(on_answer(&mut list, &watches, &ctx, 7));
        assert_eq!(list["result"]["tools"], json!([{"name": "echo"}]));
        assert_eq!(list["result"]["nextCursor"], "c");
        // An answer nobody waits for passes untouched.
        let mut other =
            json!({"jsonrpc": "2.0", "id": 9, "result": {"tools": [{"name": "secret"}]}});
        assert!(!on_answer(&mut other, &watches, &ctx, 7));
    }

    #[test]
    fn modern_headers_must_match_the_body() {
        let body = json!({
            "jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "echo", "_meta": {PROTOCOL_VERSION_META: MODERN_VERSION}}
        });
        let mut headers = HeaderMap::new();
        headers.insert(
            &MCP_PROTOCOL_VERSION,
            HeaderValue::from_static(MODERN_VERSION),
        );
        headers.insert(&MCP_METHOD, HeaderValue::from_static("tools/call"));
        headers.insert(&MCP_NAME, HeaderValue::from_static("echo"));
        assert_eq!(check_modern_headers(&headers, &body, &[]), Ok(()));

        headers.insert(&MCP_NAME, HeaderValue::from_static("delete_customer"));
        let err = check_modern_headers(&headers, &body, &[]).unwrap_err();
        assert!(err.contains("Mcp-Name"), "{err}");

        headers.insert(&MCP_NAME, HeaderValue::from_static("=?base64?ZWNobw==?="));
        assert_eq!(check_modern_headers(&headers, &body, &[]), Ok(()));

        headers.insert(&MCP_METHOD, HeaderValue::from_static("tools/list"));
        assert!(check_modern_headers(&headers, &body, &[])
            .unwrap_err()
            .contains("Mcp-Method"));

        headers.remove(&MCP_PROTOCOL_VERSION);
        assert!(check_modern_headers(&headers, &body, &[])
            .unwrap_err()
            .contains("MCP-Protocol-Version"));

        // Legacy requests carry no envelope and are not checked.
        let legacy =
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "x"}});
        assert_eq!(
            check_modern_headers(&HeaderMap::new(), &legacy, &[]),
            Ok(())
        );
    }

    #[test]
    fn param_headers_follow_the_schema_annotations() {
        let schema = json!({"type": "object", "properties": {
            "region": {"type": "string", "x-mcp-header": "Region"},
            "limit": {"type": "integer", "x-mcp-header": "Limit"},
            "query": {"type": "string"},
            "filter": {"type": "object", "properties": {
                "tenant": {"type": "string", "x-mcp-header": "Tenant"}}}}});
        let mut params = param_headers_of(Some(&schema));
        params.sort_by(|a, b| a.token.cmp(&b.token));
        let tokens: Vec<_> = params
            .iter()
            .map(|p| (p.path.join("."), p.token.as_str()))
            .collect();
        assert_eq!(
            tokens,
            [
                ("limit".to_string(), "Limit"),
                ("region".to_string(), "Region"),
                ("filter.tenant".to_string(), "Tenant")
            ]
        );
        let body = |arguments: Value| {
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
                "name": "search", "arguments": arguments,
                "_meta": {PROTOCOL_VERSION_META: MODERN_VERSION}}})
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            &MCP_PROTOCOL_VERSION,
            HeaderValue::from_static(MODERN_VERSION),
        );
        headers.insert(&MCP_METHOD, HeaderValue::from_static("tools/call"));
        headers.insert(&MCP_NAME, HeaderValue::from_static("search"));
        headers.insert("mcp-param-region", HeaderValue::from_static("eu"));
        headers.insert("mcp-param-limit", HeaderValue::from_static("10.0"));
        headers.insert(
            "mcp-param-tenant",
            HeaderValue::from_static("=?base64?YWNtZQ==?="),
        );
        let ok = body(json!({"region": "eu", "limit": 10, "filter": {"tenant": "acme"}}));
        assert_eq!(check_modern_headers(&headers, &ok, &params), Ok(()));
        let other_region = body(json!({"region": "us", "limit": 10, "filter": {"tenant": "acme"}}));
        let err = check_modern_headers(&headers, &other_region, &params).unwrap_err();
        assert!(
            err.contains("mcp-param-region") && err.contains("(us)"),
            "{err}"
        );
        let missing = body(json!({"limit": 10, "filter": {"tenant": "acme"}}));
        assert!(check_modern_headers(&headers, &missing, &params).is_err());
        headers.append("mcp-param-region", HeaderValue::from_static("eu"));
        assert!(check_modern_headers(&headers, &ok, &params)
            .unwrap_err()
            .contains("repeated"));
    }

    #[test]
    fn resource_metadata_lives_under_the_resource_origin() {
        assert_eq!(
            metadata_url_of("http://10.96.0.20:8080/mcp").as_deref(),
            Some("http://10.96.0.20:8080/.well-known/oauth-protected-resource/mcp")
        );
        assert_eq!(
            metadata_url_of("https://tools.example/").as_deref(),
            Some("https://tools.example/.well-known/oauth-protected-resource")
        );
        assert_eq!(
            metadata_url_of("https://tools.example").as_deref(),
            Some("https://tools.example/.well-known/oauth-protected-resource")
        );
        assert_eq!(metadata_url_of("not a url"), None);
    }

    #[test]
    fn trace_ids_and_query_params() {
        assert_eq!(
            trace_id_of("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id_of("garbage"), None);
        assert_eq!(
            query_param(Some("a=1&session_id=ab%2Dc"), "session_id").as_deref(),
            Some("ab-c")
        );
        assert_eq!(query_param(None, "session_id"), None);
    }
}
