//! `ApiContract`: a governed upstream and, for HTTP, its operations and the
//! credentials it accepts.

use std::fmt;

use serde::Deserialize;

use super::fields::{Address, PositiveU64, Text};
use super::http::{
    HeaderName, HttpMethod, HttpUrl, JwtAlgorithm, OperationId, PathTemplate, QueryParamName,
};
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
    // The fields below are HTTP only. They are `Option` so that a tcp contract that
    // writes one can be told so, rather than the value being silently ignored.
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
}

impl Spec for ApiContractSpec {
    const KIND: Kind = Kind::ApiContract;

    fn check(&self, issues: &mut Issues) {
        let spec = FieldPath::new("spec");
        if self.protocol != Protocol::Http {
            let written = [
                ("credentials", self.credentials.is_some()),
                ("apiKey", self.api_key.is_some()),
                ("jwt", self.jwt.is_some()),
                ("operations", self.operations.is_some()),
                ("unmatchedRoutes", self.unmatched_routes.is_some()),
                ("maxRequestBodyBytes", self.max_request_body_bytes.is_some()),
            ];
            for (field, _) in written.iter().filter(|(_, written)| *written) {
                issues.push(
                    spec.key(field),
                    format!("only allowed with protocol http, not {}", self.protocol),
                );
            }
            // Nothing below applies to a non-http contract.
            return;
        }
        self.check_credentials(&spec, issues);
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
}

impl ApiContractSpec {
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Tcp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Protocol::Http => "http",
            Protocol::Tcp => "tcp",
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
    fn tcp_contract_rejects_each_http_field() {
        let spec = "  protocol: tcp\n  address: 10.0.0.1:80\n  credentials: [workload]\n  \
                    apiKey: {}\n  jwt: {issuer: i, audiences: [a], jwksUri: \"http://j/k\"}\n  \
                    operations: []\n  unmatchedRoutes: pass\n  maxRequestBodyBytes: 10\n";
        let errs = errors(&doc("ApiContract", "c", spec));
        assert_messages(
            &errs,
            &[
                "spec.credentials: only allowed with protocol http, not tcp",
                "spec.apiKey: only allowed with protocol http, not tcp",
                "spec.jwt: only allowed with protocol http, not tcp",
                "spec.operations: only allowed with protocol http, not tcp",
                "spec.unmatchedRoutes: only allowed with protocol http, not tcp",
                "spec.maxRequestBodyBytes: only allowed with protocol http, not tcp",
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
}
