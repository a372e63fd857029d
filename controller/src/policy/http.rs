//! Validated HTTP-level fields of `ApiContract`: operations (method, path template),
//! where an API key is carried, and the JWT issuer's settings.

use std::fmt;

use serde::{Deserialize, Deserializer};

use super::fields::{check_identifier, deserialize_validated, validated_string, Validated};

validated_string!(
    /// An operation id (`listOrders`), unique within its contract.
    OperationId,
    "an operation id",
    check_identifier
);

validated_string!(
    /// A request method, upper-cased (`GET`), or `*` for any method.
    HttpMethod,
    "an HTTP method",
    check_method,
    to_upper
);

validated_string!(
    /// A request path template: `/orders/{id}`, with `{name}` for one segment and a
    /// final `{name*}` for the rest of the path.
    PathTemplate,
    "a path template",
    check_path_template
);

validated_string!(
    /// The header carrying an API key, lower-cased (header names are case-insensitive).
    HeaderName,
    "an HTTP header name",
    check_header_name,
    to_lower
);

validated_string!(
    /// The query parameter carrying an API key.
    QueryParamName,
    "a query parameter name",
    check_query_param
);

validated_string!(
    /// An `http://` or `https://` URL (a JWKS endpoint).
    HttpUrl,
    "an http or https URL",
    check_http_url
);

fn to_upper(value: String) -> String {
    value.to_ascii_uppercase()
}

fn to_lower(value: String) -> String {
    value.to_ascii_lowercase()
}

impl HttpMethod {
    pub fn is_any(&self) -> bool {
        self.as_str() == "*"
    }
}

/// One segment of a [`PathTemplate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateSegment<'a> {
    /// Matches itself (after the agent decodes and normalizes the request path).
    Literal(&'a str),
    /// `{name}`: any one non-empty segment.
    Param(&'a str),
    /// `{name*}`: the rest of the path (last segment only).
    Rest(&'a str),
}

impl PathTemplate {
    /// The segments after the leading `/` (none for `/` itself).
    pub fn segments(&self) -> impl Iterator<Item = TemplateSegment<'_>> {
        let rest = &self.as_str()[1..];
        let parts = if rest.is_empty() {
            None
        } else {
            Some(rest.split('/'))
        };
        parts.into_iter().flatten().map(parse_segment)
    }

    /// The template without parameter names: templates of the same shape match the
    /// same requests (`/orders/{id}` and `/orders/{orderId}`).
    pub fn shape(&self) -> String {
        let mut shape = String::new();
        for segment in self.segments() {
            shape.push('/');
            match segment {
                TemplateSegment::Literal(literal) => shape.push_str(literal),
                TemplateSegment::Param(_) => shape.push_str("{}"),
                TemplateSegment::Rest(_) => shape.push_str("{*}"),
            }
        }
        if shape.is_empty() {
            shape.push('/');
        }
        shape
    }
}

fn parse_segment(segment: &str) -> TemplateSegment<'_> {
    match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
        Some(name) => match name.strip_suffix('*') {
            Some(name) => TemplateSegment::Rest(name),
            None => TemplateSegment::Param(name),
        },
        None => TemplateSegment::Literal(segment),
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

fn check_method(value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > 32 || !value.chars().all(is_tchar) {
        return Err(format!(
            "invalid HTTP method {value:?} (a token such as GET, or \"*\" for any method)"
        ));
    }
    Ok(())
}

/// RFC 3986 `pchar` without `%`: literals are matched against the decoded path, so a
/// percent-encoded literal could never match as written.
fn is_literal_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@".contains(c)
}

fn is_param_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_path_template(value: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("invalid path template {value:?}: {why}"));
    if !value.starts_with('/') {
        return bad("must start with '/'");
    }
    if value.len() > 2048 {
        return bad("longer than 2048 bytes");
    }
    if value.contains(['?', '#']) {
        return bad("a template is a path only, without '?' query or '#' fragment");
    }
    if value == "/" {
        return Ok(());
    }
    let segments: Vec<&str> = value[1..].split('/').collect();
    let mut params: Vec<&str> = Vec::new();
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *segment {
            // A trailing slash is a distinct path; an empty segment inside is a typo.
            "" if last => {}
            "" => return bad("empty segment ('//')"),
            "." | ".." => return bad("'.' and '..' segments are not allowed"),
            _ => {}
        }
        match parse_segment(segment) {
            TemplateSegment::Literal(literal) => {
                if literal.contains(['{', '}']) {
                    return bad("a parameter must be a whole segment, such as {id}");
                }
                if literal.contains('%') {
                    return bad("write literal characters decoded, not percent-encoded");
                }
                if let Some(c) = literal.chars().find(|&c| !is_literal_char(c)) {
                    return bad(&format!("character {c:?} is not allowed in a path"));
                }
            }
            TemplateSegment::Param(name) | TemplateSegment::Rest(name) => {
                if !is_param_name(name) {
                    return bad(&format!(
                        "parameter name {name:?} must be letters, digits and '_', not \
                         starting with a digit"
                    ));
                }
                if matches!(parse_segment(segment), TemplateSegment::Rest(_)) && !last {
                    return bad(&format!("{{{name}*}} must be the last segment"));
                }
                if params.contains(&name) {
                    return bad(&format!("parameter {{{name}}} appears twice"));
                }
                params.push(name);
            }
        }
    }
    Ok(())
}

/// Headers that frame or route the request itself cannot carry a key.
const RESERVED_HEADERS: &[&str] = &[
    "connection",
    "content-length",
    "host",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn check_header_name(value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > 128 || !value.chars().all(is_tchar) {
        return Err(format!("invalid header name {value:?}"));
    }
    if RESERVED_HEADERS.contains(&value) {
        return Err(format!(
            "header {value:?} frames or routes the request and cannot carry an API key"
        ));
    }
    Ok(())
}

fn check_query_param(value: &str) -> Result<(), String> {
    let unreserved = |c: char| c.is_ascii_alphanumeric() || "-._~".contains(c);
    if value.is_empty() || value.len() > 128 || !value.chars().all(unreserved) {
        return Err(format!(
            "invalid query parameter name {value:?} (letters, digits, '-', '.', '_', '~')"
        ));
    }
    Ok(())
}

fn check_http_url(value: &str) -> Result<(), String> {
    let lower = value.to_ascii_lowercase();
    if !lower.starts_with("http://") && !lower.starts_with("https://") {
        return Err(format!("{value:?} must be an http:// or https:// URL"));
    }
    let uri: http::Uri = value
        .parse()
        .map_err(|e| format!("invalid URL {value:?}: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!("{value:?} must be an http:// or https:// URL"));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("URL {value:?} has no host"));
    }
    // Credentials in a URL end up in logs.
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(format!("URL {value:?} must not hold credentials"));
    }
    if value.contains('#') {
        return Err(format!("URL {value:?} must not have a fragment"));
    }
    Ok(())
}

/// A JWT signature algorithm the agent accepts. Asymmetric only: `none` would accept
/// unsigned tokens, and an HMAC secret would have to be shared with every node (and
/// invites RS/HS key confusion).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JwtAlgorithm {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    EdDsa,
}

impl JwtAlgorithm {
    pub const ALL: &'static [JwtAlgorithm] = &[
        JwtAlgorithm::Rs256,
        JwtAlgorithm::Rs384,
        JwtAlgorithm::Rs512,
        JwtAlgorithm::Ps256,
        JwtAlgorithm::Ps384,
        JwtAlgorithm::Ps512,
        JwtAlgorithm::Es256,
        JwtAlgorithm::Es384,
        JwtAlgorithm::EdDsa,
    ];

    /// Used when a contract's `jwt` block lists no algorithms.
    pub const DEFAULT: &'static [JwtAlgorithm] = &[JwtAlgorithm::Rs256, JwtAlgorithm::Es256];

    /// The JOSE name (`RS256`), as in a token's `alg` header.
    pub fn as_str(self) -> &'static str {
        match self {
            JwtAlgorithm::Rs256 => "RS256",
            JwtAlgorithm::Rs384 => "RS384",
            JwtAlgorithm::Rs512 => "RS512",
            JwtAlgorithm::Ps256 => "PS256",
            JwtAlgorithm::Ps384 => "PS384",
            JwtAlgorithm::Ps512 => "PS512",
            JwtAlgorithm::Es256 => "ES256",
            JwtAlgorithm::Es384 => "ES384",
            JwtAlgorithm::EdDsa => "EdDSA",
        }
    }

    pub fn new(value: &str) -> Result<Self, String> {
        if let Some(alg) = Self::ALL.iter().copied().find(|a| a.as_str() == value) {
            return Ok(alg);
        }
        if value.eq_ignore_ascii_case("none") {
            return Err(format!(
                "JWT algorithm {value:?} is not allowed: unsigned tokens are never accepted"
            ));
        }
        if value.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("HS")) {
            return Err(format!(
                "JWT algorithm {value:?} is not allowed: only asymmetric algorithms are \
                 accepted (an HMAC secret would be shared with every node)"
            ));
        }
        if let Some(alg) = Self::ALL
            .iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(value))
        {
            return Err(format!(
                "unknown JWT algorithm {value:?}: names are case-sensitive, write {}",
                alg.as_str()
            ));
        }
        let names: Vec<&str> = Self::ALL.iter().map(|a| a.as_str()).collect();
        Err(format!(
            "unknown JWT algorithm {value:?} (expected one of {})",
            names.join(", ")
        ))
    }
}

impl Validated for JwtAlgorithm {
    const EXPECTING: &'static str = "a JWT algorithm name";
    fn validate(value: &str) -> Result<Self, String> {
        Self::new(value)
    }
}

impl<'de> Deserialize<'de> for JwtAlgorithm {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_validated(d)
    }
}

impl fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_tokens_upper_cased() {
        assert_eq!(HttpMethod::new("get").unwrap().as_str(), "GET");
        assert_eq!(HttpMethod::new("PURGE").unwrap().as_str(), "PURGE");
        assert!(HttpMethod::new("*").unwrap().is_any());
        for bad in ["", "GET POST", "GE(T", "G\u{e9}T"] {
            assert!(HttpMethod::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn path_templates() {
        for ok in [
            "/",
            "/orders",
            "/orders/",
            "/orders/{id}",
            "/orders/{id}/items/{item_id}",
            "/files/{path*}",
            "/v1/a:b@c,d;e=f",
        ] {
            assert!(PathTemplate::new(ok).is_ok(), "{ok} rejected");
        }
        for (bad, why) in [
            ("orders", "must start with '/'"),
            ("/orders//x", "empty segment"),
            ("/orders/../admin", "'..' segments"),
            ("/orders/./x", "'.' and '..'"),
            ("/orders/{id}.json", "whole segment"),
            ("/orders/{id", "whole segment"),
            ("/files/{path*}/x", "must be the last segment"),
            ("/a/{id}/b/{id}", "appears twice"),
            ("/a/{1d}", "parameter name"),
            ("/a/{}", "parameter name"),
            ("/a%2Fb", "percent-encoded"),
            ("/a b", "not allowed"),
            ("/orders?x=1", "query"),
        ] {
            let err = PathTemplate::new(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn template_segments_and_shape() {
        let t = PathTemplate::new("/orders/{id}/files/{rest*}").unwrap();
        assert_eq!(
            t.segments().collect::<Vec<_>>(),
            [
                TemplateSegment::Literal("orders"),
                TemplateSegment::Param("id"),
                TemplateSegment::Literal("files"),
                TemplateSegment::Rest("rest"),
            ]
        );
        assert_eq!(t.shape(), "/orders/{}/files/{*}");
        assert_eq!(
            PathTemplate::new("/orders/{orderId}").unwrap().shape(),
            PathTemplate::new("/orders/{id}").unwrap().shape()
        );
        assert_eq!(PathTemplate::new("/").unwrap().segments().count(), 0);
        assert_eq!(PathTemplate::new("/").unwrap().shape(), "/");
        assert_eq!(PathTemplate::new("/a/").unwrap().shape(), "/a/");
    }

    #[test]
    fn headers_and_query_params() {
        assert_eq!(HeaderName::new("X-API-Key").unwrap().as_str(), "x-api-key");
        assert!(HeaderName::new("x api key").is_err());
        assert!(HeaderName::new("Host")
            .unwrap_err()
            .contains("cannot carry"));
        assert!(QueryParamName::new("api_key").is_ok());
        assert!(QueryParamName::new("api key").is_err());
        assert!(QueryParamName::new("").is_err());
    }

    #[test]
    fn urls() {
        for ok in [
            "https://sso.example/realms/shop/protocol/openid-connect/certs",
            "http://127.0.0.1:8080/jwks.json",
        ] {
            assert!(HttpUrl::new(ok).is_ok(), "{ok} rejected");
        }
        for bad in [
            "ftp://x/jwks",
            "/jwks.json",
            "https://",
            "https://user:pw@sso.example/jwks",
            "https://sso.example/jwks#frag",
            "https://sso example/jwks",
        ] {
            assert!(HttpUrl::new(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn algorithms() {
        assert_eq!(JwtAlgorithm::new("EdDSA").unwrap(), JwtAlgorithm::EdDsa);
        for alg in JwtAlgorithm::ALL {
            assert_eq!(JwtAlgorithm::new(alg.as_str()).unwrap(), *alg);
        }
        assert!(JwtAlgorithm::new("none").unwrap_err().contains("unsigned"));
        assert!(JwtAlgorithm::new("HS256")
            .unwrap_err()
            .contains("asymmetric"));
        assert!(JwtAlgorithm::new("rs256")
            .unwrap_err()
            .contains("write RS256"));
        assert!(JwtAlgorithm::new("ES512")
            .unwrap_err()
            .contains("expected one of"));
    }
}
