//! Validated MCP fields of `ApiContract`: the endpoint paths, how unlisted tools and
//! other methods are treated, the OAuth resource metadata, and the tools with the
//! constraints on their arguments.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::fields::{deserialize_unique_map, validated_string, PositiveU64};
use super::http::HttpUrl;
use super::path::{FieldPath, Issues};

/// The Streamable HTTP endpoint unless `mcp.path` says otherwise.
pub const DEFAULT_MCP_PATH: &str = "/mcp";
/// The legacy HTTP+SSE stream endpoint unless `mcp.ssePath` says otherwise.
pub const DEFAULT_SSE_PATH: &str = "/sse";

validated_string!(
    /// An endpoint path (`/mcp`): starts with `/`, no query or fragment, no whitespace.
    EndpointPath,
    "an endpoint path",
    check_endpoint_path
);

validated_string!(
    /// An MCP tool name (`search_customers`): 1 to 128 letters, digits, `_`, `-`, `.`, `/`.
    ToolName,
    "an MCP tool name",
    check_tool_name
);

validated_string!(
    /// A tool name, or a glob over tool names where `*` matches any run of characters
    /// and `?` one character (`search_*`).
    ToolPattern,
    "an MCP tool name or glob",
    check_tool_pattern
);

validated_string!(
    /// The name of a top-level tool argument (a JSON object key).
    ArgumentName,
    "an argument name",
    check_argument_name
);

validated_string!(
    /// A regular expression in Rust `regex` syntax, checked to compile.
    ArgumentPattern,
    "a regular expression",
    check_argument_pattern
);

validated_string!(
    /// An OAuth scope token (RFC 6749 section 3.3), e.g. `tools.read`.
    OAuthScope,
    "an OAuth scope",
    check_scope
);

impl ToolPattern {
    /// Whether the pattern holds `*` or `?` (otherwise it names one tool).
    pub fn is_glob(&self) -> bool {
        self.contains(['*', '?'])
    }
}

/// `spec.mcp`: how the proxy reads the MCP traffic of a contract.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct McpSettings {
    /// Streamable HTTP endpoint.
    #[serde(default = "default_mcp_path")]
    pub path: EndpointPath,
    /// Legacy HTTP+SSE stream endpoint.
    #[serde(default = "default_sse_path")]
    pub sse_path: EndpointPath,
    #[serde(default)]
    pub unlisted_tools: UnlistedTools,
    #[serde(default)]
    pub other_methods: OtherMethods,
    /// Set when the server requires OAuth; the gateway is then its resource server.
    #[serde(default)]
    pub oauth: Option<OAuthSettings>,
}

impl Default for McpSettings {
    fn default() -> Self {
        Self {
            path: default_mcp_path(),
            sse_path: default_sse_path(),
            unlisted_tools: UnlistedTools::default(),
            other_methods: OtherMethods::default(),
            oauth: None,
        }
    }
}

impl McpSettings {
    /// Checks what parsing cannot see; `path` is `spec.mcp`. The OAuth settings' ties
    /// to the JWT credential are checked by the contract.
    pub(super) fn check(&self, path: &FieldPath, issues: &mut Issues) {
        if self.sse_path == self.path {
            issues.push(
                path.key("ssePath"),
                format!(
                    "must differ from spec.mcp.path: both are {:?} (path defaults to {}, \
                     ssePath to {})",
                    self.path.as_str(),
                    DEFAULT_MCP_PATH,
                    DEFAULT_SSE_PATH
                ),
            );
        }
        if let Some(oauth) = &self.oauth {
            oauth.check(&path.key("oauth"), issues);
        }
    }
}

fn default_mcp_path() -> EndpointPath {
    EndpointPath::new(DEFAULT_MCP_PATH).expect("valid default")
}

fn default_sse_path() -> EndpointPath {
    EndpointPath::new(DEFAULT_SSE_PATH).expect("valid default")
}

/// What happens to a `tools/call` of a tool the contract does not list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnlistedTools {
    /// Answered with an error without reaching the server.
    #[default]
    Deny,
    /// Forwarded (access rules and quotas still apply).
    Allow,
}

impl fmt::Display for UnlistedTools {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            UnlistedTools::Deny => "deny",
            UnlistedTools::Allow => "allow",
        })
    }
}

/// What happens to methods other than `tools/*` (`initialize`, `ping`, `resources/*`,
/// `prompts/*`, notifications, ...).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OtherMethods {
    #[default]
    Allow,
    Deny,
}

/// The OAuth protected resource metadata (RFC 9728) the gateway serves for the server.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OAuthSettings {
    /// The resource identifier, which tokens must carry as their audience.
    pub resource: HttpUrl,
    pub authorization_servers: Vec<HttpUrl>,
    #[serde(default)]
    pub scopes_supported: Option<Vec<OAuthScope>>,
}

impl OAuthSettings {
    fn check(&self, path: &FieldPath, issues: &mut Issues) {
        let servers = path.key("authorizationServers");
        if self.authorization_servers.is_empty() {
            issues.push(
                servers.clone(),
                "must list at least one authorization server",
            );
        }
        issues.duplicates(&self.authorization_servers, "authorization server", |i| {
            servers.index(i)
        });
        if let Some(scopes) = &self.scopes_supported {
            let path = path.key("scopesSupported");
            if scopes.is_empty() {
                issues.push(
                    path.clone(),
                    "must list at least one scope (omit the field to advertise none)",
                );
            }
            issues.duplicates(scopes, "scope", |i| path.index(i));
        }
    }

    pub fn scopes_supported(&self) -> &[OAuthScope] {
        self.scopes_supported.as_deref().unwrap_or_default()
    }
}

/// A tool of an MCP contract, with constraints on its arguments.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Tool {
    pub name: ToolName,
    #[serde(default)]
    pub arguments: Option<Arguments>,
    /// Arguments whose values are never written to audit records.
    #[serde(default)]
    pub secret_arguments: Option<Vec<ArgumentName>>,
}

impl Tool {
    /// Checks what parsing cannot see; `path` is the tool's (`spec.tools[0]`).
    pub(super) fn check(&self, path: &FieldPath, issues: &mut Issues) {
        if let Some(arguments) = &self.arguments {
            let path = path.key("arguments");
            if arguments.0.is_empty() {
                issues.push(
                    path.clone(),
                    "must constrain at least one argument (omit the field for none)",
                );
            }
            for (name, constraint) in &arguments.0 {
                constraint.check(&path.member(name), issues);
            }
        }
        if let Some(secrets) = &self.secret_arguments {
            let path = path.key("secretArguments");
            if secrets.is_empty() {
                issues.push(
                    path.clone(),
                    "must list at least one argument (omit the field for none)",
                );
            }
            issues.duplicates(secrets, "argument", |i| path.index(i));
        }
    }

    /// The constrained arguments, sorted by name.
    pub fn arguments(&self) -> impl Iterator<Item = (&ArgumentName, &ArgumentConstraint)> {
        self.arguments.iter().flat_map(|a| a.0.iter())
    }

    pub fn secret_arguments(&self) -> &[ArgumentName] {
        self.secret_arguments.as_deref().unwrap_or_default()
    }
}

/// Constraints by argument name. An argument written twice is an error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Arguments(pub BTreeMap<ArgumentName, ArgumentConstraint>);

impl<'de> Deserialize<'de> for Arguments {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_unique_map(d, "a mapping of argument names to constraints", "argument")
            .map(Arguments)
    }
}

/// What a top-level argument's value must be; every field set must hold.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ArgumentConstraint {
    #[serde(default)]
    pub allowed_values: Option<Vec<AllowedValue>>,
    /// The whole value must match.
    #[serde(default)]
    pub pattern: Option<ArgumentPattern>,
    /// Longest value, in characters.
    #[serde(default)]
    pub max_length: Option<PositiveU64>,
}

impl ArgumentConstraint {
    fn check(&self, path: &FieldPath, issues: &mut Issues) {
        if self.allowed_values.is_none() && self.pattern.is_none() && self.max_length.is_none() {
            issues.push(
                path.clone(),
                "must set at least one of allowedValues, pattern and maxLength",
            );
        }
        if let Some(values) = &self.allowed_values {
            let path = path.key("allowedValues");
            if values.is_empty() {
                issues.push(path.clone(), "must list at least one value");
            }
            issues.duplicates(values, "value", |i| path.index(i));
        }
    }

    pub fn allowed_values(&self) -> &[AllowedValue] {
        self.allowed_values.as_deref().unwrap_or_default()
    }
}

/// A scalar an argument may equal. Strings are kept as written; numbers and booleans
/// as their JSON text (`8080`, `1.5`, `true`), which is how the agent compares values
/// that are not strings.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AllowedValue(String);

impl AllowedValue {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AllowedValue {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for AllowedValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = AllowedValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<AllowedValue, E> {
                Ok(AllowedValue(v.to_owned()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<AllowedValue, E> {
                Ok(AllowedValue(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<AllowedValue, E> {
                Ok(AllowedValue(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<AllowedValue, E> {
                Ok(AllowedValue(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<AllowedValue, E> {
                // serde_json's own formatting, so that the text is what the agent gets
                // from serializing the same number.
                serde_json::Number::from_f64(v)
                    .map(|n| AllowedValue(n.to_string()))
                    .ok_or_else(|| E::custom(format!("{v} is not a finite number")))
            }
        }
        d.deserialize_any(ScalarVisitor)
    }
}

// --- checks -------------------------------------------------------------------------

fn check_endpoint_path(value: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("invalid endpoint path {value:?}: {why}"));
    if !value.starts_with('/') {
        return bad("must start with '/'");
    }
    if value.len() > 2048 {
        return bad("longer than 2048 bytes");
    }
    if value.contains(['?', '#']) {
        return bad("a path only, without '?' query or '#' fragment");
    }
    if value.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return bad("whitespace and control characters are not allowed");
    }
    Ok(())
}

fn is_tool_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/')
}

fn check_tool_name(value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > 128 || !value.chars().all(is_tool_char) {
        return Err(format!(
            "{value:?} is not a valid tool name (1 to 128 letters, digits, '_', '-', '.', '/')"
        ));
    }
    Ok(())
}

fn check_tool_pattern(value: &str) -> Result<(), String> {
    let ok = |c: char| is_tool_char(c) || matches!(c, '*' | '?');
    if value.is_empty() || value.len() > 128 || !value.chars().all(ok) {
        return Err(format!(
            "{value:?} is not a valid tool name or glob (1 to 128 letters, digits, '_', '-', \
             '.', '/', with '*' for any characters and '?' for one)"
        ));
    }
    Ok(())
}

fn check_argument_name(value: &str) -> Result<(), String> {
    let bad = |c: char| c.is_whitespace() || c.is_control();
    if value.is_empty() || value.len() > 128 || value.contains(bad) {
        return Err(format!(
            "{value:?} is not a valid argument name (1 to 128 bytes, no whitespace or \
             control characters)"
        ));
    }
    Ok(())
}

fn check_argument_pattern(value: &str) -> Result<(), String> {
    regex::Regex::new(value)
        .map(drop)
        .map_err(|e| format!("invalid regular expression {value:?}: {}", regex_reason(&e)))
}

/// The reason of a regex error on one line. Syntax errors print the pattern, a caret
/// line and `error: REASON`; every policy error is one line, so only the reason is kept.
fn regex_reason(err: &regex::Error) -> String {
    let text = err.to_string();
    match text.lines().rev().find_map(|l| l.strip_prefix("error: ")) {
        Some(reason) => reason.to_owned(),
        None => text.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

/// RFC 6749 `scope-token`: printable ASCII but space, `"` and `\`.
fn check_scope(value: &str) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_graphic() && c != '"' && c != '\\';
    if value.is_empty() || value.len() > 256 || !value.chars().all(ok) {
        return Err(format!(
            "invalid OAuth scope {value:?} (1 to 256 printable ASCII characters other than \
             space, '\"' and '\\')"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_paths() {
        for ok in ["/", "/mcp", "/v1/mcp/", "/a:b@c"] {
            assert!(EndpointPath::new(ok).is_ok(), "{ok} rejected");
        }
        for (bad, why) in [
            ("mcp", "must start with '/'"),
            ("/mcp?x=1", "query"),
            ("/mcp#x", "fragment"),
            ("/m cp", "whitespace"),
            ("/m\tcp", "whitespace"),
            ("", "must start with '/'"),
        ] {
            let err = EndpointPath::new(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn tool_names_and_patterns() {
        for ok in [
            "search_customers",
            "crm/get-customer.v2",
            "A",
            &"a".repeat(128),
        ] {
            assert!(ToolName::new(ok).is_ok(), "{ok} rejected");
            assert!(ToolPattern::new(ok).is_ok(), "{ok} rejected");
            assert!(!ToolPattern::new(ok).unwrap().is_glob());
        }
        for bad in ["", "a b", "é", "a:b", &"a".repeat(129)] {
            assert!(ToolName::new(bad).is_err(), "{bad} accepted");
            assert!(ToolPattern::new(bad).is_err(), "{bad} accepted");
        }
        assert!(ToolName::new("search_*").is_err());
        assert!(ToolPattern::new("search_*").unwrap().is_glob());
        assert!(ToolPattern::new("get_?").unwrap().is_glob());
        assert!(ToolPattern::new("*").unwrap().is_glob());
    }

    #[test]
    fn argument_names_patterns_and_scopes() {
        assert!(ArgumentName::new("query").is_ok());
        assert!(ArgumentName::new("a.b-c").is_ok());
        assert!(ArgumentName::new("").is_err());
        assert!(ArgumentName::new("a b").is_err());
        assert!(ArgumentPattern::new("^[a-z ]+$").is_ok());
        assert_eq!(
            ArgumentPattern::new("^[a-z").unwrap_err(),
            "invalid regular expression \"^[a-z\": unclosed character class"
        );
        let err = ArgumentPattern::new("(?P<a>x)(?P<a>y)").unwrap_err();
        assert_eq!(
            err,
            "invalid regular expression \"(?P<a>x)(?P<a>y)\": duplicate capture group name"
        );
        let err = ArgumentPattern::new("(a{1000}){1000}").unwrap_err();
        assert!(!err.contains('\n'), "{err}");
        assert!(err.contains("size limit"), "{err}");
        assert!(OAuthScope::new("tools.read").is_ok());
        assert!(OAuthScope::new("https://api.example/read").is_ok());
        assert!(OAuthScope::new("a b").is_err());
        assert!(OAuthScope::new("a\"b").is_err());
    }

    #[test]
    fn allowed_values_keep_json_text() {
        let parse = |yaml: &str| serde_yaml::from_str::<Vec<AllowedValue>>(yaml);
        let values: Vec<String> = parse("[eu, \"1\", 8080, -3, 1.5, 1.0, true, \"\", yes]")
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            values,
            ["eu", "1", "8080", "-3", "1.5", "1.0", "true", "", "yes"]
        );
        for bad in ["[~]", "[[a]]", "[{a: 1}]", "[.nan]"] {
            assert!(parse(bad).is_err(), "{bad} accepted");
        }
    }
}
