//! `ApiContract`: a governed upstream and, for HTTP and MCP, the credentials it
//! accepts, its operations (HTTP) or tools (MCP).

use std::fmt;

use serde::Deserialize;

use super::fields::{Address, PositiveU64, Text};
use super::http::{
    HeaderName, HttpMethod, HttpUrl, JwtAlgorithm, OperationId, PathTemplate, QueryParamName,
};
use super::mcp::{McpSettings, Tool, ToolName, UnlistedTools};
use super::path::{FieldPath, Issues};
use super::{Kind, Object, Spec};

/// `kind: ApiContract`.
pub type ApiContract = Object<ApiContractSpec>;

/// The header an API key is read from unless `apiKey.header` says otherwise.
pub const DEFAULT_API_KEY_HEADER: &str = "x-api-key";
/// The claim holding a caller's groups unless `jwt.groupsClaim` says otherwise.
pub const DEFAULT_GROUPS_CLAIM: &str = "groups";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApiContractSpec {
    pub protocol: Protocol,
    /// The address clients connect to, `IPv4:port`.
    pub address: Address,
    // The fields below are for some protocols only (see `check`). They are `Option` so
    // that a contract of another protocol that writes one can be told so, rather than
    // the value being silently ignored.
    /// Accepted ways to identify a caller; omitted means the workload identity alone.
    #[serde(default)]
    pub credentials: Option<Vec<CredentialKind>>,
    #[serde(default)]
    pub api_key: Option<ApiKeySettings>,
    #[serde(default)]
    pub jwt: Option<JwtSettings>,
    /// Omitted: no routes are declared and the contract is not route-aware.
    #[serde(default)]
    pub operations: Option<Vec<Operation>>,
    #[serde(default)]
    pub unmatched_routes: Option<UnmatchedRoutes>,
    #[serde(default)]
    pub max_request_body_bytes: Option<PositiveU64>,
    /// Upstream endpoints behind the address; omitted means the address itself.
    #[serde(default)]
    pub backends: Option<Vec<Address>>,
    /// MCP settings; omitted means the defaults. Boxed: most contracts have none.
    #[serde(default)]
    pub mcp: Option<Box<McpSettings>>,
    /// Omitted: no tools are listed (so none is callable unless unlisted tools are
    /// allowed).
    #[serde(default)]
    pub tools: Option<Vec<Tool>>,
}

/// Which protocols may write a field.
const HTTP: &[Protocol] = &[Protocol::Http];
const MCP: &[Protocol] = &[Protocol::Mcp];
const GOVERNED: &[Protocol] = &[Protocol::Http, Protocol::Mcp];

impl Spec for ApiContractSpec {
    const KIND: Kind = Kind::ApiContract;

    fn check(&self, issues: &mut Issues) {
        let spec = FieldPath::new("spec");
        let fields = [
            ("credentials", self.credentials.is_some(), GOVERNED),
            ("apiKey", self.api_key.is_some(), GOVERNED),
            ("jwt", self.jwt.is_some(), GOVERNED),
            ("operations", self.operations.is_some(), HTTP),
            ("unmatchedRoutes", self.unmatched_routes.is_some(), HTTP),
            (
                "maxRequestBodyBytes",
                self.max_request_body_bytes.is_some(),
                GOVERNED,
            ),
            ("backends", self.backends.is_some(), GOVERNED),
            ("mcp", self.mcp.is_some(), MCP),
            ("tools", self.tools.is_some(), MCP),
        ];
        for (field, written, protocols) in fields {
            if written && !protocols.contains(&self.protocol) {
                let names: Vec<String> = protocols.iter().map(ToString::to_string).collect();
                issues.push(
                    spec.key(field),
                    format!(
                        "only allowed with protocol {}, not {}",
                        names.join(" or "),
                        self.protocol
                    ),
                );
            }
        }
        // Below, only the fields the protocol allows are checked further.
        if !self.protocol.is_governed() {
            return;
        }
        self.check_credentials(&spec, issues);
        if let Some(backends) = &self.backends {
            let path = spec.key("backends");
            if backends.is_empty() {
                issues.push(
                    path.clone(),
                    "must list at least one backend (omit the field to forward to the \
                     address itself)",
                );
            }
            issues.duplicates(backends, "backend", |i| path.index(i));
        }
        match self.protocol {
            Protocol::Http => self.check_operations(&spec, issues),
            Protocol::Mcp => self.check_mcp(&spec, issues),
            Protocol::Tcp => {}
        }
    }
}

impl ApiContractSpec {
    fn check_operations(&self, spec: &FieldPath, issues: &mut Issues) {
        if let Some(operations) = &self.operations {
            let path = spec.key("operations");
            if operations.is_empty() {
                issues.push(
                    path.clone(),
                    "must list at least one operation (omit the field to declare none)",
                );
            }
            let ids: Vec<&OperationId> = operations.iter().map(|o| &o.id).collect();
            issues.duplicates(&ids, "operation id", |i| path.index(i).key("id"));
            let routes: Vec<Route> = operations.iter().map(Route::of).collect();
            issues.duplicates(&routes, "route", |i| path.index(i).key("path"));
        }
    }

    fn check_mcp(&self, spec: &FieldPath, issues: &mut Issues) {
        if let Some(mcp) = &self.mcp {
            mcp.check(&spec.key("mcp"), issues);
        }
        if let Some(oauth) = self.mcp.as_ref().and_then(|m| m.oauth.as_ref()) {
            let path = spec.key("mcp.oauth");
            if !self.accepts(CredentialKind::Jwt) {
                issues.push(
                    path,
                    "is set but spec.credentials does not list jwt (OAuth access tokens are \
                     checked as JWTs)",
                );
            } else if let Some(jwt) = &self.jwt {
                let resource = oauth.resource.as_str();
                if !jwt.audiences.iter().any(|a| a.as_str() == resource) {
                    issues.push(
                        path.key("resource"),
                        format!(
                            "{resource:?} must be one of spec.jwt.audiences (tokens are checked \
                             against the audiences)"
                        ),
                    );
                }
            }
        }
        if let Some(tools) = &self.tools {
            let path = spec.key("tools");
            if tools.is_empty() {
                issues.push(
                    path.clone(),
                    "must list at least one tool (omit the field to list none)",
                );
            }
            let names: Vec<&ToolName> = tools.iter().map(|t| &t.name).collect();
            issues.duplicates(&names, "tool name", |i| path.index(i).key("name"));
            for (i, tool) in tools.iter().enumerate() {
                tool.check(&path.index(i), issues);
            }
        }
    }

    fn check_credentials(&self, spec: &FieldPath, issues: &mut Issues) {
        let path = spec.key("credentials");
        let kinds = self.credentials();
        if self.credentials.as_ref().is_some_and(Vec::is_empty) {
            issues.push(
                path.clone(),
                "must list at least one credential (omit the field for workload identity alone)",
            );
        }
        issues.duplicates(kinds, "credential", |i| path.index(i));

        let position = |kind| kinds.iter().position(|k| *k == kind);
        if self.api_key.is_some() && position(CredentialKind::ApiKey).is_none() {
            issues.push(
                spec.key("apiKey"),
                "is set but spec.credentials does not list apiKey",
            );
        }
        match (&self.jwt, position(CredentialKind::Jwt)) {
            (Some(_), None) => {
                issues.push(
                    spec.key("jwt"),
                    "is set but spec.credentials does not list jwt",
                );
            }
            (None, Some(i)) => issues.push_at(
                spec.key("jwt"),
                path.index(i),
                "missing: spec.credentials lists jwt, so the issuer, audiences and jwksUri \
                 are required",
            ),
            _ => {}
        }
        if let Some(jwt) = &self.jwt {
            jwt.check(&spec.key("jwt"), issues);
        }
    }

    /// The credential kinds listed (none: the workload identity alone).
    pub fn credentials(&self) -> &[CredentialKind] {
        self.credentials.as_deref().unwrap_or_default()
    }

    pub fn accepts(&self, kind: CredentialKind) -> bool {
        self.credentials().contains(&kind)
    }

    pub fn operations(&self) -> &[Operation] {
        self.operations.as_deref().unwrap_or_default()
    }

    pub fn operation(&self, id: &str) -> Option<&Operation> {
        self.operations().iter().find(|o| o.id.as_str() == id)
    }

    pub fn unmatched_routes(&self) -> UnmatchedRoutes {
        self.unmatched_routes.unwrap_or_default()
    }

    /// Upstream endpoints (none: the address itself).
    pub fn backends(&self) -> &[Address] {
        self.backends.as_deref().unwrap_or_default()
    }

    /// The MCP settings, defaults filled in.
    pub fn mcp(&self) -> McpSettings {
        self.mcp.as_deref().cloned().unwrap_or_default()
    }

    pub fn unlisted_tools(&self) -> UnlistedTools {
        self.mcp
            .as_ref()
            .map(|m| m.unlisted_tools)
            .unwrap_or_default()
    }

    /// The tools listed, in written order.
    pub fn tools(&self) -> &[Tool] {
        self.tools.as_deref().unwrap_or_default()
    }

    pub fn tool(&self, name: &str) -> Option<&Tool> {
        self.tools().iter().find(|t| t.name.as_str() == name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Tcp,
    /// Model Context Protocol (JSON-RPC over Streamable HTTP or HTTP+SSE).
    Mcp,
}

impl Protocol {
    /// Whether requests are seen one by one (http, mcp), so that contracts of this
    /// protocol have credentials, access rules and quotas; tcp is spliced.
    pub fn is_governed(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Mcp)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Protocol::Http => "http",
            Protocol::Tcp => "tcp",
            Protocol::Mcp => "mcp",
        })
    }
}

/// A way for a caller to prove who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CredentialKind {
    /// An API key of a `Consumer`.
    ApiKey,
    /// A JWT Bearer token from the contract's issuer.
    Jwt,
    /// The calling workload's identity, known from the kernel.
    Workload,
}

impl fmt::Display for CredentialKind {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            CredentialKind::ApiKey => "apiKey",
            CredentialKind::Jwt => "jwt",
            CredentialKind::Workload => "workload",
        })
    }
}

/// Where a request carries its API key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApiKeySettings {
    #[serde(default = "default_api_key_header")]
    pub header: HeaderName,
    /// Also accepted in this query parameter (which is then removed before forwarding).
    #[serde(default)]
    pub query_param: Option<QueryParamName>,
}

impl Default for ApiKeySettings {
    fn default() -> Self {
        Self {
            header: default_api_key_header(),
            query_param: None,
        }
    }
}

fn default_api_key_header() -> HeaderName {
    HeaderName::new(DEFAULT_API_KEY_HEADER).expect("valid default")
}

/// The JWT issuer a contract trusts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtSettings {
    /// Must equal the token's `iss`.
    pub issuer: Text,
    /// The token's `aud` must hold one of these.
    pub audiences: Vec<Text>,
    /// Where the issuer publishes its signing keys.
    pub jwks_uri: HttpUrl,
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<JwtAlgorithm>,
    #[serde(default = "default_groups_claim")]
    pub groups_claim: Text,
}

impl JwtSettings {
    fn check(&self, path: &FieldPath, issues: &mut Issues) {
        if self.audiences.is_empty() {
            issues.push(path.key("audiences"), "must list at least one audience");
        }
        issues.duplicates(&self.audiences, "audience", |i| {
            path.key("audiences").index(i)
        });
        if self.algorithms.is_empty() {
            issues.push(
                path.key("algorithms"),
                "must list at least one algorithm (omit the field for RS256 and ES256)",
            );
        }
        issues.duplicates(&self.algorithms, "algorithm", |i| {
            path.key("algorithms").index(i)
        });
    }
}

fn default_algorithms() -> Vec<JwtAlgorithm> {
    JwtAlgorithm::DEFAULT.to_vec()
}

fn default_groups_claim() -> Text {
    Text::new(DEFAULT_GROUPS_CLAIM).expect("valid default")
}

/// A REST operation: a method and a path template, named by an id that policies use.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Operation {
    pub id: OperationId,
    pub method: HttpMethod,
    pub path: PathTemplate,
}

/// What an operation matches: two operations with the same route are ambiguous,
/// whatever their parameters are named.
#[derive(Debug)]
struct Route {
    method: String,
    shape: String,
    path: String,
}

impl Route {
    fn of(operation: &Operation) -> Self {
        Self {
            method: operation.method.to_string(),
            shape: operation.path.shape(),
            path: operation.path.to_string(),
        }
    }
}

impl PartialEq for Route {
    fn eq(&self, other: &Route) -> bool {
        (&self.method, &self.shape) == (&other.method, &other.shape)
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// What happens to a request that matches no operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnmatchedRoutes {
    /// Answered 404 without reaching the upstream.
    #[default]
    Reject,
    /// Forwarded to the upstream.
    Pass,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::OtherMethods;
    use crate::test_fixtures::{assert_messages, doc, errors, load, FULL};

    fn http(spec: &str) -> String {
        doc(
            "ApiContract",
            "c",
            &format!("  protocol: http\n  address: 10.0.0.1:80\n{spec}"),
        )
    }

    #[test]
    fn parses_http_fields_with_defaults() {
        let set = load(FULL);
        let orders = set
            .contracts()
            .find(|c| c.metadata.name.as_str() == "orders-api")
            .unwrap();
        let spec = &orders.spec;
        assert_eq!(
            spec.credentials(),
            [
                CredentialKind::ApiKey,
                CredentialKind::Jwt,
                CredentialKind::Workload
            ]
        );
        let api_key = spec.api_key.as_ref().unwrap();
        assert_eq!(api_key.header.as_str(), "x-api-key");
        assert_eq!(api_key.query_param.as_ref().unwrap().as_str(), "api_key");
        let jwt = spec.jwt.as_ref().unwrap();
        assert_eq!(jwt.algorithms, [JwtAlgorithm::Rs256, JwtAlgorithm::Es256]);
        assert_eq!(jwt.groups_claim.as_str(), "groups");
        assert_eq!(spec.operations().len(), 4);
        assert_eq!(spec.operation("getOrder").unwrap().method.as_str(), "GET");
        assert_eq!(spec.unmatched_routes(), UnmatchedRoutes::Pass);
        assert_eq!(spec.max_request_body_bytes.unwrap().get(), 1 << 20);

        let plain = load(&http("  credentials: [apiKey]\n"));
        let spec = &plain.contracts().next().unwrap().spec;
        assert!(spec.api_key.is_none());
        assert!(spec.operations().is_empty());
        assert_eq!(spec.unmatched_routes(), UnmatchedRoutes::Reject);
        assert_eq!(
            ApiKeySettings::default().header.as_str(),
            DEFAULT_API_KEY_HEADER
        );
    }

    #[test]
    fn tcp_contract_rejects_each_l7_field() {
        let spec = "  protocol: tcp\n  address: 10.0.0.1:80\n  credentials: [workload]\n  \
                    apiKey: {}\n  jwt: {issuer: i, audiences: [a], jwksUri: \"http://j/k\"}\n  \
                    operations: []\n  unmatchedRoutes: pass\n  maxRequestBodyBytes: 10\n  \
                    backends: []\n  mcp: {}\n  tools: []\n";
        let errs = errors(&doc("ApiContract", "c", spec));
        assert_messages(
            &errs,
            &[
                "spec.credentials: only allowed with protocol http or mcp, not tcp",
                "spec.apiKey: only allowed with protocol http or mcp, not tcp",
                "spec.jwt: only allowed with protocol http or mcp, not tcp",
                "spec.operations: only allowed with protocol http, not tcp",
                "spec.unmatchedRoutes: only allowed with protocol http, not tcp",
                "spec.maxRequestBodyBytes: only allowed with protocol http or mcp, not tcp",
                "spec.backends: only allowed with protocol http or mcp, not tcp",
                "spec.mcp: only allowed with protocol mcp, not tcp",
                "spec.tools: only allowed with protocol mcp, not tcp",
            ],
        );
        // Each error points at its field.
        assert!(
            errs[0].starts_with("t.yaml:7:16: document 1 (ApiContract c): "),
            "{errs:#?}"
        );
        assert!(errs[5].starts_with("t.yaml:12:24: "), "{errs:#?}");
    }

    #[test]
    fn credential_consistency() {
        assert_messages(
            &errors(&http("  credentials: []\n")),
            &[
                "spec.credentials: must list at least one credential (omit the field for workload \
               identity alone)",
            ],
        );
        let errs = errors(&http(
            "  credentials:\n    - workload\n    - jwt\n    - workload\n  apiKey: {header: X-Key}\n",
        ));
        assert_messages(
            &errs,
            &[
                "spec.jwt: missing: spec.credentials lists jwt, so the issuer, audiences and \
                 jwksUri are required",
                "spec.credentials[2]: duplicate credential workload, first listed at \
                 spec.credentials[0]",
                "spec.apiKey: is set but spec.credentials does not list apiKey",
            ],
        );
        // The missing block is reported at the credential that needs it.
        assert!(errs[0].starts_with("t.yaml:9:7: "), "{errs:#?}");
        assert_messages(
            &errors(&http(
                "  jwt: {issuer: i, audiences: [a], jwksUri: \"http://j/k\"}\n",
            )),
            &["spec.jwt: is set but spec.credentials does not list jwt"],
        );
        assert_messages(
            &errors(&http("  credentials: [apiKey, certificate]\n")),
            &[
                "spec.credentials[1]: unknown variant `certificate`, expected one of `apiKey`, \
               `jwt`, `workload`",
            ],
        );
    }

    #[test]
    fn jwt_settings() {
        let jwt = |body: &str| http(&format!("  credentials: [jwt]\n  jwt:\n{body}"));
        let base = "    issuer: https://sso.example\n    jwksUri: https://sso.example/jwks\n";
        assert_messages(
            &errors(&jwt(&format!(
                "{base}    audiences: []\n    algorithms: []\n    groupsClaim: roles\n"
            ))),
            &[
                "spec.jwt.audiences: must list at least one audience",
                "spec.jwt.algorithms: must list at least one algorithm (omit the field for \
                 RS256 and ES256)",
            ],
        );
        assert_messages(
            &errors(&jwt(&format!(
                "{base}    audiences: [a, b, a]\n    algorithms: [ES384, ES384]\n"
            ))),
            &[
                "spec.jwt.audiences[2]: duplicate audience a, first listed at \
                 spec.jwt.audiences[0]",
                "spec.jwt.algorithms[1]: duplicate algorithm ES384, first listed at \
                 spec.jwt.algorithms[0]",
            ],
        );
        for (alg, why) in [
            ("none", "unsigned tokens"),
            ("HS256", "asymmetric"),
            ("HS512", "asymmetric"),
        ] {
            let errs = errors(&jwt(&format!(
                "{base}    audiences: [a]\n    algorithms: [RS256, {alg}]\n"
            )));
            assert_eq!(errs.len(), 1, "{errs:#?}");
            assert!(
                errs[0].contains(&format!(
                    "spec.jwt.algorithms[1]: JWT algorithm \"{alg}\" is not allowed"
                )),
                "{errs:#?}"
            );
            assert!(errs[0].contains(why), "{errs:#?}");
        }
        let errs = errors(&jwt(
            "    issuer: i\n    audiences: [a]\n    jwksUri: file:///etc/jwks.json\n",
        ));
        assert_messages(
            &errs,
            &["spec.jwt.jwksUri: \"file:///etc/jwks.json\" must be an http:// or https:// URL"],
        );
        let errs = errors(&jwt("    issuer: i\n    audiences: [a]\n"));
        assert_messages(&errs, &["spec.jwt: missing field `jwksUri`"]);
    }

    #[test]
    fn operations() {
        let errs = errors(&http(
            "  operations:\n    - {id: a, method: get, path: \"/x/{id}\"}\n    \
             - {id: b, method: GET, path: \"/x/{other}\"}\n    - {id: a, method: POST, path: /x}\n    \
             - {id: c, method: \"*\", path: \"/x/{id}\"}\n",
        ));
        assert_messages(
            &errs,
            &[
                "spec.operations[1].path: duplicate route GET /x/{other}, first listed at \
                 spec.operations[0].path",
                "spec.operations[2].id: duplicate operation id a, first listed at \
                 spec.operations[0].id",
            ],
        );
        assert!(errs[0].starts_with("t.yaml:9:34: "), "{errs:#?}");
        assert_messages(
            &errors(&http("  operations: []\n")),
            &["spec.operations: must list at least one operation (omit the field to declare none)"],
        );
        assert_messages(
            &errors(&http("  operations:\n    - {id: a, method: GET, path: /orders/../admin}\n")),
            &["spec.operations[0].path: invalid path template \"/orders/../admin\": '.' and '..' \
               segments are not allowed"],
        );
        assert_messages(
            &errors(&http("  operations:\n    - {id: 1st, method: GET, path: /}\n")),
            &["spec.operations[0].id: \"1st\" is not a valid identifier (1 to 63 letters, digits, \
               '-', '_', '.', starting with a letter and ending with a letter or digit)"],
        );
        assert_messages(
            &errors(&http(
                "  operations:\n    - {id: a, method: GET, path: /, name: x}\n",
            )),
            &["spec.operations[0]: unknown field `name`, expected one of `id`, `method`, `path`"],
        );
        assert_messages(
            &errors(&http("  unmatchedRoutes: allow\n")),
            &["spec.unmatchedRoutes: unknown variant `allow`, expected `reject` or `pass`"],
        );
        assert_messages(
            &errors(&http("  maxRequestBodyBytes: 0\n")),
            &["spec.maxRequestBodyBytes: must be an integer greater than 0, not 0"],
        );
    }

    fn mcp(spec: &str) -> String {
        doc(
            "ApiContract",
            "c",
            &format!("  protocol: mcp\n  address: 10.0.0.1:80\n{spec}"),
        )
    }

    const JWT: &str = "  credentials: [jwt]\n  jwt:\n    issuer: https://issuer.stoa.test\n    \
                       audiences: [\"http://10.0.0.1/mcp\"]\n    \
                       jwksUri: https://issuer.stoa.test/jwks\n";

    #[test]
    fn parses_mcp_fields_with_defaults() {
        let set = load(FULL);
        let contract = |name: &str| {
            &set.contracts()
                .find(|c| c.metadata.name.as_str() == name)
                .unwrap()
                .spec
        };
        let crm = contract("crm-tools");
        assert_eq!(crm.protocol, Protocol::Mcp);
        let backends: Vec<String> = crm.backends().iter().map(ToString::to_string).collect();
        assert_eq!(backends, ["10.200.1.2:8080", "10.200.2.2:8080"]);
        let settings = crm.mcp();
        assert_eq!(settings.path.as_str(), "/mcp");
        assert_eq!(settings.sse_path.as_str(), "/events");
        assert_eq!(settings.unlisted_tools, UnlistedTools::Deny);
        assert_eq!(settings.other_methods, OtherMethods::Deny);
        let oauth = settings.oauth.unwrap();
        assert_eq!(oauth.resource.as_str(), "http://10.96.0.20:8080/mcp");
        assert_eq!(oauth.authorization_servers.len(), 1);
        assert_eq!(oauth.scopes_supported().len(), 2);
        let names: Vec<&str> = crm.tools().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["search_customers", "get_customer"]);
        let search = crm.tool("search_customers").unwrap();
        let arguments: Vec<&str> = search.arguments().map(|(name, _)| name.as_str()).collect();
        assert_eq!(arguments, ["limit", "query", "region"]);
        let (_, query) = search.arguments().nth(1).unwrap();
        assert_eq!(query.pattern.as_ref().unwrap().as_str(), "^[a-z ]+$");
        assert_eq!(query.max_length.unwrap().get(), 64);
        assert!(query.allowed_values().is_empty());
        let (_, limit) = search.arguments().next().unwrap();
        let values: Vec<&str> = limit.allowed_values().iter().map(|v| v.as_str()).collect();
        assert_eq!(values, ["10", "50", "2.5", "true"]);
        assert_eq!(search.secret_arguments()[0].as_str(), "api_token");
        let get = crm.tool("get_customer").unwrap();
        assert_eq!(get.arguments().count(), 0);
        assert!(get.secret_arguments().is_empty());
        assert!(crm.tool("search").is_none());

        // Nothing written: the defaults.
        let docs = contract("docs-search");
        assert!(docs.backends().is_empty());
        assert!(docs.tools().is_empty());
        assert_eq!(docs.unlisted_tools(), UnlistedTools::Deny);
        let settings = docs.mcp();
        assert_eq!(settings, McpSettings::default());
        assert_eq!(settings.path.as_str(), "/mcp");
        assert_eq!(settings.sse_path.as_str(), "/sse");
        assert_eq!(settings.other_methods, OtherMethods::Allow);
        assert_eq!(settings.oauth, None);
        let open = load(&mcp("  mcp: {unlistedTools: allow}\n"));
        let open = &open.contracts().next().unwrap().spec;
        assert_eq!(open.unlisted_tools(), UnlistedTools::Allow);
        assert_eq!(open.mcp().path.as_str(), "/mcp");
    }

    #[test]
    fn http_and_mcp_fields_stay_apart() {
        assert_messages(
            &errors(&http("  mcp: {}\n  tools: [{name: a}]\n")),
            &[
                "spec.mcp: only allowed with protocol mcp, not http",
                "spec.tools: only allowed with protocol mcp, not http",
            ],
        );
        assert_messages(
            &errors(&mcp(
                "  operations: [{id: a, method: GET, path: /}]\n  unmatchedRoutes: pass\n",
            )),
            &[
                "spec.operations: only allowed with protocol http, not mcp",
                "spec.unmatchedRoutes: only allowed with protocol http, not mcp",
            ],
        );
        // Credentials, body size and backends are for both.
        let shared = "  credentials: [apiKey, workload]\n  apiKey: {header: X-Key}\n  \
                      maxRequestBodyBytes: 100\n  backends: [10.0.1.1:80]\n";
        assert!(errors(&mcp(shared)).is_empty());
        assert!(errors(&http(shared)).is_empty());
        // And checked the same way for mcp.
        assert_messages(
            &errors(&mcp("  credentials: [jwt, jwt]\n  apiKey: {}\n")),
            &[
                "spec.jwt: missing: spec.credentials lists jwt, so the issuer, audiences and \
                 jwksUri are required",
                "spec.credentials[1]: duplicate credential jwt, first listed at \
                 spec.credentials[0]",
                "spec.apiKey: is set but spec.credentials does not list apiKey",
            ],
        );
        assert_messages(
            &errors(&mcp("  protocol: http\n")),
            &["spec: duplicate field `protocol`"],
        );
        assert_messages(
            &errors(&doc(
                "ApiContract",
                "c",
                "  protocol: grpc\n  address: 10.0.0.1:80\n",
            )),
            &["spec.protocol: unknown variant `grpc`, expected one of `http`, `tcp`, `mcp`"],
        );
    }

    #[test]
    fn backends() {
        let errs = errors(&http(
            "  backends:\n    - 10.0.1.1:80\n    - 10.0.1.2:80\n    - 10.0.1.1:80\n",
        ));
        assert_messages(
            &errs,
            &["spec.backends[2]: duplicate backend 10.0.1.1:80, first listed at spec.backends[0]"],
        );
        assert!(errs[0].starts_with("t.yaml:10:7: "), "{errs:#?}");
        assert_messages(
            &errors(&mcp("  backends: []\n")),
            &[
                "spec.backends: must list at least one backend (omit the field to forward to the \
               address itself)",
            ],
        );
        let errs = errors(&mcp("  backends: [10.0.1.1:80, \"10.0.1.2\"]\n"));
        assert_messages(
            &errs,
            &[
                "spec.backends[1]: invalid IPv4 socket address \"10.0.1.2\" (expected IP:port, \
               e.g. 10.96.0.10:80)",
            ],
        );
        assert!(errs[0].starts_with("t.yaml:7:27: "), "{errs:#?}");
    }

    #[test]
    fn mcp_settings() {
        assert_messages(
            &errors(&mcp("  mcp: {path: /sse}\n")),
            &[
                "spec.mcp.ssePath: must differ from spec.mcp.path: both are \"/sse\" (path \
               defaults to /mcp, ssePath to /sse)",
            ],
        );
        let errs = errors(&mcp("  mcp:\n    path: /rpc\n    ssePath: /rpc\n"));
        assert_messages(
            &errs,
            &[
                "spec.mcp.ssePath: must differ from spec.mcp.path: both are \"/rpc\" (path \
               defaults to /mcp, ssePath to /sse)",
            ],
        );
        assert!(errs[0].starts_with("t.yaml:9:14: "), "{errs:#?}");
        for (field, value, why) in [
            ("path", "mcp", "must start with '/'"),
            (
                "ssePath",
                "/sse?x=1",
                "a path only, without '?' query or '#' fragment",
            ),
            (
                "path",
                "\"/m cp\"",
                "whitespace and control characters are not allowed",
            ),
        ] {
            let shown = value.trim_matches('"');
            assert_messages(
                &errors(&mcp(&format!("  mcp: {{{field}: {value}}}\n"))),
                &[&format!(
                    "spec.mcp.{field}: invalid endpoint path \"{shown}\": {why}"
                )],
            );
        }
        assert_messages(
            &errors(&mcp("  mcp: {unlistedTools: block}\n")),
            &["spec.mcp.unlistedTools: unknown variant `block`, expected `deny` or `allow`"],
        );
        assert_messages(
            &errors(&mcp("  mcp: {otherMethods: reject}\n")),
            &["spec.mcp.otherMethods: unknown variant `reject`, expected `allow` or `deny`"],
        );
        // Tools belong to the spec, not to the mcp settings.
        assert_messages(
            &errors(&mcp("  mcp: {tools: []}\n")),
            &[
                "spec.mcp: unknown field `tools`, expected one of `path`, `ssePath`, \
               `unlistedTools`, `otherMethods`, `oauth`",
            ],
        );
    }

    #[test]
    fn oauth_settings() {
        let oauth = |body: &str| format!("  mcp:\n    oauth:\n{body}");
        let good = "      resource: \"http://10.0.0.1/mcp\"\n      \
                    authorizationServers: [\"https://issuer.stoa.test\"]\n";
        assert!(errors(&mcp(&format!("{JWT}{}", oauth(good)))).is_empty());

        let errs = errors(&mcp(&oauth(good)));
        assert_messages(
            &errs,
            &[
                "spec.mcp.oauth: is set but spec.credentials does not list jwt (OAuth access \
               tokens are checked as JWTs)",
            ],
        );
        let errs = errors(&mcp(&format!(
            "{JWT}{}",
            oauth(&good.replace("10.0.0.1/mcp", "10.0.0.1:80/mcp"))
        )));
        assert_messages(
            &errs,
            &[
                "spec.mcp.oauth.resource: \"http://10.0.0.1:80/mcp\" must be one of \
               spec.jwt.audiences (tokens are checked against the audiences)",
            ],
        );
        assert!(errs[0].starts_with("t.yaml:14:17: "), "{errs:#?}");

        let errs = errors(&mcp(&format!(
            "{JWT}{}",
            oauth(
                "      resource: \"http://10.0.0.1/mcp\"\n      authorizationServers: []\n      \
                 scopesSupported: []\n"
            )
        )));
        assert_messages(
            &errs,
            &[
                "spec.mcp.oauth.authorizationServers: must list at least one authorization \
                 server",
                "spec.mcp.oauth.scopesSupported: must list at least one scope (omit the field \
                 to advertise none)",
            ],
        );
        let errs = errors(&mcp(&format!(
            "{JWT}{}",
            oauth(
                "      resource: \"http://10.0.0.1/mcp\"\n      \
                 authorizationServers: [\"https://a.test\", \"https://a.test\"]\n      \
                 scopesSupported: [read, write, read]\n"
            )
        )));
        assert_messages(
            &errs,
            &[
                "spec.mcp.oauth.authorizationServers[1]: duplicate authorization server \
                 https://a.test, first listed at spec.mcp.oauth.authorizationServers[0]",
                "spec.mcp.oauth.scopesSupported[2]: duplicate scope read, first listed at \
                 spec.mcp.oauth.scopesSupported[0]",
            ],
        );
        assert_messages(
            &errors(&mcp(&format!(
                "{JWT}{}",
                oauth(&format!("{good}      scopesSupported: [\"a b\"]\n"))
            ))),
            &[
                "spec.mcp.oauth.scopesSupported[0]: invalid OAuth scope \"a b\" (1 to 256 \
               printable ASCII characters other than space, '\"' and '\\')",
            ],
        );
        assert_messages(
            &errors(&mcp(&oauth(
                "      resource: urn:stoa:crm\n      authorizationServers: []\n",
            ))),
            &["spec.mcp.oauth.resource: \"urn:stoa:crm\" must be an http:// or https:// URL"],
        );
        assert_messages(
            &errors(&mcp(&oauth("      resource: \"http://10.0.0.1/mcp\"\n"))),
            &["spec.mcp.oauth: missing field `authorizationServers`"],
        );
    }

    #[test]
    fn tools() {
        assert_messages(
            &errors(&mcp("  tools: []\n")),
            &["spec.tools: must list at least one tool (omit the field to list none)"],
        );
        let errs = errors(&mcp(
            "  tools:\n    - name: search\n    - name: get\n    - name: search\n",
        ));
        assert_messages(
            &errs,
            &[
                "spec.tools[2].name: duplicate tool name search, first listed at \
               spec.tools[0].name",
            ],
        );
        assert!(errs[0].starts_with("t.yaml:10:13: "), "{errs:#?}");
        assert_messages(
            &errors(&mcp("  tools: [{name: \"search customers\"}]\n")),
            &[
                "spec.tools[0].name: \"search customers\" is not a valid tool name (1 to 128 \
               letters, digits, '_', '-', '.', '/')",
            ],
        );
        assert_messages(
            &errors(&mcp("  tools: [{name: \"search_*\"}]\n")),
            &[
                "spec.tools[0].name: \"search_*\" is not a valid tool name (1 to 128 letters, \
               digits, '_', '-', '.', '/')",
            ],
        );
        assert_messages(
            &errors(&mcp("  tools: [{name: a, description: x}]\n")),
            &[
                "spec.tools[0]: unknown field `description`, expected one of `name`, \
               `arguments`, `secretArguments`",
            ],
        );
        assert_messages(
            &errors(&mcp("  tools: [{arguments: {}}]\n")),
            &["spec.tools[0]: missing field `name`"],
        );
    }

    #[test]
    fn tool_arguments() {
        let tool = |body: &str| mcp(&format!("  tools:\n    - name: search\n{body}"));
        let errs = errors(&tool(
            "      arguments:\n        query: {}\n        region: {allowedValues: []}\n        \
             \"a.b\": {allowedValues: [eu, \"1\", 1, eu]}\n      secretArguments: [k, k]\n",
        ));
        assert_messages(
            &errs,
            &[
                "spec.tools[0].arguments.query: must set at least one of allowedValues, \
                 pattern and maxLength",
                "spec.tools[0].arguments.region.allowedValues: must list at least one value",
                "spec.tools[0].arguments.a.b.allowedValues[2]: duplicate value 1, first listed \
                 at spec.tools[0].arguments.a.b.allowedValues[1]",
                "spec.tools[0].arguments.a.b.allowedValues[3]: duplicate value eu, first \
                 listed at spec.tools[0].arguments.a.b.allowedValues[0]",
                "spec.tools[0].secretArguments[1]: duplicate argument k, first listed at \
                 spec.tools[0].secretArguments[0]",
            ],
        );
        // Each at its field, whatever the argument's name.
        let at: Vec<&str> = errs.iter().map(|e| e.split(": ").next().unwrap()).collect();
        assert_eq!(
            at,
            [
                "t.yaml:10:16",
                "t.yaml:11:33",
                "t.yaml:12:42",
                "t.yaml:12:45",
                "t.yaml:13:28",
            ]
        );
        assert_messages(
            &errors(&tool("      arguments: {}\n      secretArguments: []\n")),
            &[
                "spec.tools[0].arguments: must constrain at least one argument (omit the field \
                 for none)",
                "spec.tools[0].secretArguments: must list at least one argument (omit the \
                 field for none)",
            ],
        );
        let errs = errors(&tool(
            "      arguments:\n        query: {pattern: \"^[a-z\"}\n",
        ));
        assert_messages(
            &errs,
            &[
                "spec.tools[0].arguments.query.pattern: invalid regular expression \"^[a-z\": \
               unclosed character class",
            ],
        );
        assert!(errs[0].starts_with("t.yaml:10:26: "), "{errs:#?}");
        assert_messages(
            &errors(&tool("      arguments:\n        query: {maxLength: 0}\n")),
            &["spec.tools[0].arguments.query.maxLength: must be an integer greater than 0, not 0"],
        );
        assert_messages(
            &errors(&tool(
                "      arguments:\n        query: {maxLength: 5}\n        query: {maxLength: 6}\n",
            )),
            &["spec.tools[0].arguments: duplicate argument \"query\""],
        );
        assert_messages(
            &errors(&tool(
                "      arguments:\n        query: {allowedValues: [~]}\n",
            )),
            &[
                "spec.tools[0].arguments.query.allowedValues[0]: invalid type: unit value, \
               expected a string, number or boolean",
            ],
        );
        assert_messages(
            &errors(&tool("      arguments:\n        query: {oneOf: [a]}\n")),
            &[
                "spec.tools[0].arguments.query: unknown field `oneOf`, expected one of \
               `allowedValues`, `pattern`, `maxLength`",
            ],
        );
        assert_messages(
            &errors(&tool("      secretArguments: [\"api token\"]\n")),
            &[
                "spec.tools[0].secretArguments[0]: \"api token\" is not a valid argument name (1 \
               to 128 bytes, no whitespace or control characters)",
            ],
        );
    }
}
