//! JWT bearer tokens: signature checked against the issuer's JWKS (fetched over HTTP
//! or HTTPS, cached, refetched when a token names an unknown `kid`), then issuer,
//! audience, expiry and not-before with a small clock skew. Only asymmetric
//! algorithms from the contract's allow-list are accepted, so `alg: none` and HS/RS
//! confusion are rejected before any key is touched.
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use jsonwebtoken::{
    jwk::{Jwk, JwkSet},
    Algorithm, DecodingKey, Validation,
};
use serde_json::{Map, Value};
use tokio::sync::Mutex;
use tracing::{debug, warn};

use super::JwtPrincipal;

/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECONDS: u64 = 30;
/// A refetch for an unknown kid waits at least this long after the previous fetch,
/// so a stream of forged kids cannot turn the proxy into a JWKS flooder.
const MIN_REFETCH_INTERVAL: Duration = Duration::from_millis(500);
const FETCH_ATTEMPTS: u32 = 3;
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("the token is malformed")]
    Malformed,
    #[error("algorithm {0} is not accepted")]
    Algorithm(String),
    #[error("the token names no key id")]
    NoKeyId,
    #[error("the issuer's key set has no key {0:?}")]
    UnknownKey(String),
    #[error("the issuer's key set is unavailable")]
    JwksUnavailable,
    #[error("the signature is invalid")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is for another audience")]
    Audience,
    #[error("the token is from another issuer")]
    Issuer,
    #[error("the token is invalid: {0}")]
    Invalid(String),
}

/// How one contract verifies tokens.
#[derive(Debug)]
pub struct JwtVerifier {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub groups_claim: String,
    pub jwks: Arc<JwksCache>,
}

impl JwtVerifier {
    pub async fn verify(&self, token: &str) -> Result<JwtPrincipal, JwtError> {
        let header = jsonwebtoken::decode_header(token).map_err(|err| {
            // An unknown algorithm (e.g. "none") fails to parse as a header.
            let text = err.to_string();
            if text.contains("unknown variant") {
                JwtError::Algorithm(unknown_variant(&text))
            } else {
                JwtError::Malformed
            }
        })?;
        if !self.algorithms.contains(&header.alg) {
            return Err(JwtError::Algorithm(format!("{:?}", header.alg)));
        }
        let kid = header.kid.ok_or(JwtError::NoKeyId)?;
        let key = self.jwks.key(&kid).await?;
        if key.algorithm.is_some_and(|alg| alg != header.alg) {
            return Err(JwtError::Algorithm(format!("{:?}", header.alg)));
        }

        let mut validation = Validation::new(header.alg);
        // jsonwebtoken wants every listed algorithm to fit the key's family; the
        // header's algorithm was checked against the allow-list above.
        validation.algorithms = vec![header.alg];
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&self.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &validation)
            .map_err(|err| {
                use jsonwebtoken::errors::ErrorKind::*;
                match err.kind() {
                    InvalidSignature => JwtError::Signature,
                    ExpiredSignature => JwtError::Expired,
                    ImmatureSignature => JwtError::NotYetValid,
                    InvalidAudience => JwtError::Audience,
                    InvalidIssuer => JwtError::Issuer,
                    InvalidAlgorithm => JwtError::Algorithm(format!("{:?}", header.alg)),
                    other => JwtError::Invalid(format!("{other:?}")),
                }
            })?;
        let claims = data.claims;
        let groups = match claims.get(&self.groups_claim) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_owned))
                .collect(),
            Some(Value::String(one)) => one.split_whitespace().map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        Ok(JwtPrincipal {
            subject: claims.get("sub").and_then(Value::as_str).map(str::to_owned),
            claims,
            groups,
        })
    }
}

fn unknown_variant(text: &str) -> String {
    text.split('`').nth(1).unwrap_or("unknown").to_string()
}

struct CachedKey {
    decoding: DecodingKey,
    algorithm: Option<Algorithm>,
}

#[derive(Default)]
struct KeySet {
    keys: HashMap<String, Arc<CachedKey>>,
    fetched_at: Option<Instant>,
}

/// The keys of one JWKS URI, shared by every contract that names it.
pub struct JwksCache {
    uri: String,
    http: reqwest::Client,
    /// Read by every request without a lock; replaced whole after a fetch.
    keys: ArcSwap<KeySet>,
    /// Single flight: one fetch at a time per URI.
    fetching: Mutex<()>,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksCache").field("uri", &self.uri).finish()
    }
}

impl JwksCache {
    pub fn new(uri: String, http: reqwest::Client) -> Self {
        Self {
            uri,
            http,
            keys: ArcSwap::from_pointee(KeySet::default()),
            fetching: Mutex::new(()),
        }
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    async fn key(&self, kid: &str) -> Result<Arc<CachedKey>, JwtError> {
        if let Some(key) = self.keys.load().keys.get(kid) {
            return Ok(key.clone());
        }
        let _flight = self.fetching.lock().await;
        // Another request may have fetched while this one waited.
        let current = self.keys.load_full();
        if let Some(key) = current.keys.get(kid) {
            return Ok(key.clone());
        }
        if current
            .fetched_at
            .is_some_and(|at| at.elapsed() < MIN_REFETCH_INTERVAL)
        {
            return Err(JwtError::UnknownKey(kid.to_string()));
        }
        let keys = match self.fetch().await {
            Ok(keys) => keys,
            // Keep the keys we had: an issuer outage must not log everyone out.
            Err(()) if current.keys.is_empty() => {
                self.keys.store(Arc::new(KeySet {
                    keys: HashMap::new(),
                    fetched_at: Some(Instant::now()),
                }));
                return Err(JwtError::JwksUnavailable);
            }
            Err(()) => current.keys.clone(),
        };
        let found = keys.get(kid).cloned();
        self.keys.store(Arc::new(KeySet {
            keys,
            fetched_at: Some(Instant::now()),
        }));
        found.ok_or_else(|| JwtError::UnknownKey(kid.to_string()))
    }

    async fn fetch(&self) -> Result<HashMap<String, Arc<CachedKey>>, ()> {
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=FETCH_ATTEMPTS {
            match self.fetch_once().await {
                Ok(keys) => {
                    metrics::counter!("stoa_jwks_fetches_total", "outcome" => "ok").increment(1);
                    debug!(uri = %self.uri, keys = keys.len(), "fetched JWKS");
                    return Ok(keys);
                }
                Err(err) => {
                    metrics::counter!("stoa_jwks_fetches_total", "outcome" => "error").increment(1);
                    warn!(uri = %self.uri, attempt, "fetching JWKS failed: {err}");
                }
            }
            if attempt < FETCH_ATTEMPTS {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
        Err(())
    }

    async fn fetch_once(&self) -> Result<HashMap<String, Arc<CachedKey>>, String> {
        let response = self
            .http
            .get(&self.uri)
            .timeout(FETCH_TIMEOUT)
            .send()
            .await
            .map_err(|err| err.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let set: JwkSet = response.json().await.map_err(|err| err.to_string())?;
        Ok(set
            .keys
            .iter()
            .filter_map(|jwk| Some((jwk.common.key_id.clone()?, Arc::new(cached_key(jwk)?))))
            .collect())
    }
}

fn cached_key(jwk: &Jwk) -> Option<CachedKey> {
    let decoding = DecodingKey::from_jwk(jwk).ok()?;
    let algorithm = jwk
        .common
        .key_algorithm
        .and_then(|alg| alg.to_string().parse::<Algorithm>().ok());
    Some(CachedKey {
        decoding,
        algorithm,
    })
}

/// The HTTP(S) client JWKS are fetched with: rustls on ring, hickory for names.
pub fn jwks_http_client() -> Result<reqwest::Client, reqwest::Error> {
    // One process-wide TLS provider; a second install is a harmless no-op.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .user_agent(concat!("stoa-agent/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Parses a contract's algorithm names, refusing symmetric ones and `none`.
pub fn parse_algorithms(names: &[String]) -> Result<Vec<Algorithm>, String> {
    let names: Vec<&str> = if names.is_empty() {
        vec!["RS256", "ES256"]
    } else {
        names.iter().map(String::as_str).collect()
    };
    names
        .into_iter()
        .map(|name| match name.parse::<Algorithm>() {
            Ok(Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) | Err(_) => {
                Err(format!("JWT algorithm {name:?} is not allowed"))
            }
            Ok(alg) => Ok(alg),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_and_none_algorithms_are_refused() {
        assert!(parse_algorithms(&["HS256".into()]).is_err());
        assert!(parse_algorithms(&["none".into()]).is_err());
        assert_eq!(
            parse_algorithms(&[]).unwrap(),
            vec![Algorithm::RS256, Algorithm::ES256]
        );
    }

    #[tokio::test]
    async fn alg_none_and_garbage_are_rejected_before_any_fetch() {
        let verifier = JwtVerifier {
            issuer: "https://issuer".into(),
            audiences: vec!["api".into()],
            algorithms: vec![Algorithm::RS256],
            groups_claim: "groups".into(),
            // Port 9 (discard) on loopback: a fetch would fail, but none must happen.
            jwks: Arc::new(JwksCache::new(
                "http://127.0.0.1:9/jwks".into(),
                jwks_http_client().unwrap(),
            )),
        };
        // {"alg":"none","typ":"JWT"} . {"sub":"x"} . (no signature)
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4In0.";
        assert!(matches!(
            verifier.verify(none).await,
            Err(JwtError::Algorithm(_))
        ));
        // {"alg":"HS256","kid":"k"} — symmetric, not in the allow-list.
        let hs = "eyJhbGciOiJIUzI1NiIsImtpZCI6ImsifQ.eyJzdWIiOiJ4In0.c2ln";
        assert!(matches!(
            verifier.verify(hs).await,
            Err(JwtError::Algorithm(_))
        ));
        assert!(matches!(
            verifier.verify("not-a-jwt").await,
            Err(JwtError::Malformed)
        ));
    }
}
