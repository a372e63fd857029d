//! Answers the proxy gives itself: RFC 9457 problem details, authentication
//! challenges and the IETF RateLimit fields (draft-ietf-httpapi-ratelimit-headers).
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    header::{self, HeaderMap, HeaderName, HeaderValue},
    Response, StatusCode,
};

use super::http::ProxyBody;
use crate::quota::Outcome;

pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// An `application/problem+json` answer. `slug` names the problem type.
pub fn problem(status: StatusCode, slug: &str, detail: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({
        "type": format!("https://gostoa.dev/problems/{slug}"),
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    let body = Full::new(Bytes::from(body.to_string()))
        .map_err(|never| match never {})
        .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

/// One applied quota, for the RateLimit fields.
#[derive(Debug, Clone)]
pub struct QuotaState<'a> {
    pub name: &'a str,
    pub requests: u64,
    pub window_seconds: u64,
    pub outcome: Outcome,
}

/// `RateLimit-Policy` lists every quota that applied; `RateLimit` reports the one
/// with the least room (structured fields, as in the draft: `"name";q=..;w=..`).
pub fn add_ratelimit_fields(headers: &mut HeaderMap, quotas: &[QuotaState<'_>]) {
    let Some(tightest) = quotas.iter().min_by_key(|q| q.outcome.remaining) else {
        return;
    };
    let policies: Vec<String> = quotas
        .iter()
        .map(|q| format!("\"{}\";q={};w={}", q.name, q.requests, q.window_seconds))
        .collect();
    if let Ok(value) = HeaderValue::from_str(&policies.join(", ")) {
        headers.insert(RATELIMIT_POLICY.clone(), value);
    }
    let reset = tightest.outcome.reset.as_secs_f64().ceil() as u64;
    let value = format!(
        "\"{}\";r={};t={}",
        tightest.name, tightest.outcome.remaining, reset
    );
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(RATELIMIT.clone(), value);
    }
}

/// Seconds to wait, rounded up so a client that obeys never arrives early.
pub fn retry_after_seconds(outcome: &Outcome) -> u64 {
    (outcome.reset.as_secs_f64().ceil() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn ratelimit_fields_report_the_tightest_quota() {
        let mut headers = HeaderMap::new();
        let outcome = |remaining, millis| Outcome {
            allowed: true,
            remaining,
            reset: Duration::from_millis(millis),
        };
        add_ratelimit_fields(
            &mut headers,
            &[
                QuotaState {
                    name: "shop/per-minute",
                    requests: 100,
                    window_seconds: 60,
                    outcome: outcome(40, 1500),
                },
                QuotaState {
                    name: "shop/per-day",
                    requests: 1000,
                    window_seconds: 86400,
                    outcome: outcome(3, 200),
                },
            ],
        );
        assert_eq!(
            headers[&RATELIMIT_POLICY],
            "\"shop/per-minute\";q=100;w=60, \"shop/per-day\";q=1000;w=86400"
        );
        assert_eq!(headers[&RATELIMIT], "\"shop/per-day\";r=3;t=1");
    }

    #[test]
    fn problems_are_problem_json() {
        let response = problem(StatusCode::FORBIDDEN, "access-denied", "no");
        assert_eq!(response.status(), 403);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }
}
