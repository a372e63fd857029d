//! The L7 tables of a snapshot: contracts (credentials, operations, MCP settings and
//! tools), consumers, access policies and quotas, with references resolved to service
//! ids.
//!
//! Lists are sorted by (namespace, name) so that the same policy compiles to the same
//! snapshot whatever its file layout; entries inside an object keep their written order
//! (operations, tools, backends, keys, subjects, grants).

use std::collections::HashMap;

use stoa_proto::v1;

use super::{service_key, CompileError, IdentityAllocator};
use crate::load::PolicySet;
use crate::policy::{
    ApiContract, CredentialKind, Grant, Labels, Namespace, ObjectMeta, OtherMethods, Protocol,
    QuotaMode, Subject, Tool, UnlistedTools, UnmatchedRoutes,
};
use crate::refs::{Catalog, RefError};

/// The governance part of a snapshot.
#[derive(Debug, Default)]
pub(super) struct Tables {
    pub contracts: Vec<v1::Contract>,
    pub consumers: Vec<v1::Consumer>,
    pub access_policies: Vec<v1::AccessPolicy>,
    pub quotas: Vec<v1::Quota>,
}

/// `services` must already hold an id for every contract of `set`.
pub(super) fn compile(
    set: &PolicySet,
    services: &IdentityAllocator,
) -> Result<Tables, CompileError> {
    let catalog = Catalog::new(&set.documents);
    let service_id = |contract: &ApiContract| {
        let meta = &contract.metadata;
        services
            .get(&service_key(&meta.namespace, &meta.name))
            .ok_or_else(|| RefError::UnknownContract {
                namespace: meta.namespace.to_string(),
                name: meta.name.to_string(),
            })
    };
    let grant = |namespace: &Namespace, grant: &Grant| -> Result<v1::Grant, CompileError> {
        let contract = catalog.governed_contract(namespace, &grant.contract)?;
        if grant.operations.is_some() {
            Catalog::expect_protocol(contract, Protocol::Http, "operations")?;
        }
        for operation in grant.operations() {
            Catalog::operation(contract, operation)?;
        }
        if grant.tools.is_some() {
            Catalog::expect_protocol(contract, Protocol::Mcp, "tools")?;
        }
        for tool in grant.tools().iter().filter(|t| !t.is_glob()) {
            Catalog::tool(contract, tool)?;
        }
        Ok(v1::Grant {
            service_id: service_id(contract)?,
            operations: grant.operations().iter().map(|o| o.to_string()).collect(),
            tools: grant.tools().iter().map(|t| t.to_string()).collect(),
        })
    };

    let mut tables = Tables::default();
    for c in set.contracts().filter(|c| c.spec.protocol.is_governed()) {
        tables.contracts.push(contract(c, service_id(c)?));
    }
    for c in set.consumers() {
        tables.consumers.push(v1::Consumer {
            name: c.metadata.name.to_string(),
            namespace: c.metadata.namespace.to_string(),
            labels: labels(&c.metadata.labels),
            plan: c
                .spec
                .plan
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            api_keys: c
                .spec
                .api_keys
                .iter()
                .map(|k| v1::ApiKey {
                    id: k.id.to_string(),
                    hash: k.hash.to_string(),
                })
                .collect(),
        });
    }
    for p in set.access_policies() {
        let namespace = &p.metadata.namespace;
        tables.access_policies.push(v1::AccessPolicy {
            name: p.metadata.name.to_string(),
            namespace: namespace.to_string(),
            subjects: subjects(&catalog, &p.metadata, &p.spec.subjects)?,
            allow: p
                .spec
                .allow
                .iter()
                .map(|g| grant(namespace, g))
                .collect::<Result<_, _>>()?,
            deny: p
                .spec
                .deny
                .iter()
                .map(|g| grant(namespace, g))
                .collect::<Result<_, _>>()?,
        });
    }
    for q in set.quotas() {
        let scope = &q.spec.scope;
        let contract = catalog.governed_contract(&q.metadata.namespace, &scope.contract)?;
        if let Some(operation) = &scope.operation {
            Catalog::expect_protocol(contract, Protocol::Http, "operations")?;
            Catalog::operation(contract, operation)?;
        }
        if let Some(tool) = &scope.tool {
            Catalog::expect_protocol(contract, Protocol::Mcp, "tools")?;
            Catalog::tool(contract, tool)?;
        }
        let limit = q.spec.limit;
        tables.quotas.push(v1::Quota {
            name: q.metadata.name.to_string(),
            namespace: q.metadata.namespace.to_string(),
            subjects: subjects(&catalog, &q.metadata, &q.spec.subjects)?,
            service_id: service_id(contract)?,
            operation: q
                .spec
                .scope
                .operation
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            requests: limit.requests.get(),
            period_seconds: limit.per.seconds(),
            // Written out rather than left 0 ("same as requests"): explicit for agents.
            burst: limit.burst.unwrap_or(limit.requests).get(),
            mode: match q.spec.mode {
                QuotaMode::Enforce => v1::QuotaMode::Enforce,
                QuotaMode::ReportOnly => v1::QuotaMode::ReportOnly,
            } as i32,
            tool: scope
                .tool
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        });
    }

    let by_key = |ns: &String, name: &String| (ns.clone(), name.clone());
    tables
        .contracts
        .sort_by_key(|c| by_key(&c.namespace, &c.name));
    tables
        .consumers
        .sort_by_key(|c| by_key(&c.namespace, &c.name));
    tables
        .access_policies
        .sort_by_key(|p| by_key(&p.namespace, &p.name));
    tables.quotas.sort_by_key(|q| by_key(&q.namespace, &q.name));
    Ok(tables)
}

fn contract(c: &ApiContract, service_id: u32) -> v1::Contract {
    let spec = &c.spec;
    // Omitted credentials stay absent: the agent treats such a contract as identified
    // by workload alone (and, without operations, as observe-only).
    let credentials = spec.credentials.as_ref().map(|_| v1::Credentials {
        workload: spec.accepts(CredentialKind::Workload),
        api_key: spec.accepts(CredentialKind::ApiKey).then(|| {
            let settings = spec.api_key.clone().unwrap_or_default();
            v1::ApiKeyCredential {
                header: settings.header.to_string(),
                query_param: settings.query_param.map(String::from).unwrap_or_default(),
            }
        }),
        jwt: spec
            .jwt
            .as_ref()
            .filter(|_| spec.accepts(CredentialKind::Jwt))
            .map(|jwt| v1::JwtCredential {
                issuer: jwt.issuer.to_string(),
                audiences: jwt.audiences.iter().map(ToString::to_string).collect(),
                jwks_uri: jwt.jwks_uri.to_string(),
                algorithms: jwt.algorithms.iter().map(ToString::to_string).collect(),
                groups_claim: jwt.groups_claim.to_string(),
            }),
    });
    v1::Contract {
        service_id,
        name: c.metadata.name.to_string(),
        namespace: c.metadata.namespace.to_string(),
        operations: spec
            .operations()
            .iter()
            .map(|o| v1::Operation {
                id: o.id.to_string(),
                method: o.method.to_string(),
                path: o.path.to_string(),
            })
            .collect(),
        credentials,
        pass_unmatched_routes: spec.unmatched_routes() == UnmatchedRoutes::Pass,
        max_request_body_bytes: spec.max_request_body_bytes.map_or(0, |n| n.get()),
        backends: spec.backends().iter().map(ToString::to_string).collect(),
        mcp: (spec.protocol == Protocol::Mcp).then(|| mcp(c)),
    }
}

/// An mcp contract's settings, defaults written out.
fn mcp(c: &ApiContract) -> v1::McpSettings {
    let settings = c.spec.mcp();
    v1::McpSettings {
        path: settings.path.to_string(),
        sse_path: settings.sse_path.to_string(),
        allow_unlisted_tools: settings.unlisted_tools == UnlistedTools::Allow,
        deny_other_methods: settings.other_methods == OtherMethods::Deny,
        tools: c.spec.tools().iter().map(tool).collect(),
        oauth: settings.oauth.map(|oauth| v1::OAuthResource {
            resource: oauth.resource.to_string(),
            authorization_servers: oauth
                .authorization_servers
                .iter()
                .map(ToString::to_string)
                .collect(),
            scopes_supported: oauth
                .scopes_supported()
                .iter()
                .map(ToString::to_string)
                .collect(),
        }),
    }
}

fn tool(tool: &Tool) -> v1::Tool {
    v1::Tool {
        name: tool.name.to_string(),
        arguments: tool
            .arguments()
            .map(|(name, constraint)| {
                let constraint = v1::ArgumentConstraint {
                    allowed_values: constraint
                        .allowed_values()
                        .iter()
                        .map(ToString::to_string)
                        .collect(),
                    pattern: constraint
                        .pattern
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                    max_length: constraint.max_length.map_or(0, |n| n.get()),
                };
                (name.to_string(), constraint)
            })
            .collect(),
        secret_arguments: tool
            .secret_arguments()
            .iter()
            .map(ToString::to_string)
            .collect(),
    }
}

fn subjects(
    catalog: &Catalog,
    meta: &ObjectMeta,
    subjects: &[Subject],
) -> Result<Vec<v1::Subject>, CompileError> {
    subjects
        .iter()
        .map(|subject| {
            let kind = match subject {
                Subject::Workload(w) => v1::subject::Kind::Workload(v1::WorkloadSelector {
                    namespace: w
                        .namespace
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                    service_account: w
                        .service_account
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                    labels: labels(&w.labels),
                }),
                Subject::Consumer(c) => v1::subject::Kind::Consumer(v1::ConsumerSelector {
                    // Consumer names are unique across namespaces (the loader checks),
                    // so the bare name selects exactly the consumer referred to.
                    name: match &c.name {
                        Some(name) => catalog
                            .consumer(&meta.namespace, name)?
                            .metadata
                            .name
                            .to_string(),
                        None => String::new(),
                    },
                    labels: labels(&c.labels),
                }),
                Subject::Jwt(j) => v1::subject::Kind::Jwt(v1::JwtSelector {
                    claims: j
                        .claims
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    groups: j.groups.iter().flatten().map(ToString::to_string).collect(),
                }),
            };
            Ok(v1::Subject { kind: Some(kind) })
        })
        .collect()
}

fn labels(labels: &Labels) -> HashMap<String, String> {
    labels
        .iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::PathBuf;

    use stoa_proto::v1;

    use crate::compile::{same_content, Compiler};
    use crate::load::load_sources;
    use crate::test_fixtures::{load, FULL};

    fn snapshot() -> v1::Snapshot {
        Compiler::new().compile(&load(FULL)).unwrap()
    }

    fn service_id(snap: &v1::Snapshot, name: &str) -> u32 {
        snap.services
            .iter()
            .find(|s| s.name == name)
            .unwrap()
            .service_id
    }

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn contracts_for_http_and_mcp_services_only() {
        let snap = snapshot();
        let names: Vec<_> = snap.contracts.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["crm-tools", "docs-search", "health", "orders-api"]);

        let orders = &snap.contracts[3];
        assert_eq!(orders.service_id, service_id(&snap, "orders-api"));
        assert_eq!(orders.namespace, "shop");
        let ops: Vec<_> = orders
            .operations
            .iter()
            .map(|o| (o.id.as_str(), o.method.as_str(), o.path.as_str()))
            .collect();
        assert_eq!(
            ops,
            [
                ("listOrders", "GET", "/orders"),
                ("getOrder", "GET", "/orders/{id}"),
                ("createOrder", "POST", "/orders"),
                ("deleteOrder", "DELETE", "/orders/{id}"),
            ]
        );
        assert_eq!(
            orders.credentials,
            Some(v1::Credentials {
                workload: true,
                api_key: Some(v1::ApiKeyCredential {
                    header: "x-api-key".into(),
                    query_param: "api_key".into(),
                }),
                jwt: Some(v1::JwtCredential {
                    issuer: "https://sso.example/realms/shop".into(),
                    audiences: vec!["orders-api".into()],
                    jwks_uri: "https://sso.example/realms/shop/certs".into(),
                    algorithms: vec!["RS256".into(), "ES256".into()],
                    groups_claim: "groups".into(),
                }),
            })
        );
        assert!(orders.pass_unmatched_routes);
        assert_eq!(orders.max_request_body_bytes, 1 << 20);
        assert!(orders.backends.is_empty());
        assert_eq!(orders.mcp, None);

        // Nothing declared: no credentials, no operations, the defaults.
        let health = &snap.contracts[2];
        assert_eq!(health.service_id, service_id(&snap, "health"));
        assert_eq!(health.credentials, None);
        assert!(health.operations.is_empty());
        assert!(!health.pass_unmatched_routes);
        assert_eq!(health.max_request_body_bytes, 0);
        assert_eq!(health.mcp, None);
    }

    #[test]
    fn mcp_contracts() {
        let snap = snapshot();
        let service = snap
            .services
            .iter()
            .find(|s| s.name == "crm-tools")
            .unwrap();
        assert_eq!(service.protocol, v1::Protocol::Mcp as i32);
        assert_eq!((service.ip.as_str(), service.port), ("10.96.0.20", 8080));

        let crm = &snap.contracts[0];
        assert_eq!(crm.service_id, service.service_id);
        assert_eq!(crm.backends, ["10.200.1.2:8080", "10.200.2.2:8080"]);
        assert!(crm.operations.is_empty());
        assert!(!crm.pass_unmatched_routes);
        assert_eq!(crm.max_request_body_bytes, 65_536);
        let credentials = crm.credentials.as_ref().unwrap();
        assert!(credentials.workload);
        assert_eq!(credentials.api_key, None);
        assert_eq!(
            credentials.jwt.as_ref().unwrap().audiences,
            ["http://10.96.0.20:8080/mcp"]
        );
        let constraint = |allowed: &[&str], pattern: &str, max_length| v1::ArgumentConstraint {
            allowed_values: allowed.iter().map(|v| v.to_string()).collect(),
            pattern: pattern.into(),
            max_length,
        };
        assert_eq!(
            crm.mcp,
            Some(v1::McpSettings {
                path: "/mcp".into(),
                sse_path: "/events".into(),
                allow_unlisted_tools: false,
                deny_other_methods: true,
                tools: vec![
                    v1::Tool {
                        name: "search_customers".into(),
                        arguments: HashMap::from([
                            ("query".to_owned(), constraint(&[], "^[a-z ]+$", 64)),
                            ("region".to_owned(), constraint(&["eu", "us"], "", 0)),
                            (
                                "limit".to_owned(),
                                constraint(&["10", "50", "2.5", "true"], "", 0)
                            ),
                        ]),
                        secret_arguments: vec!["api_token".into()],
                    },
                    v1::Tool {
                        name: "get_customer".into(),
                        arguments: HashMap::new(),
                        secret_arguments: vec![],
                    },
                ],
                oauth: Some(v1::OAuthResource {
                    resource: "http://10.96.0.20:8080/mcp".into(),
                    authorization_servers: vec!["https://issuer.stoa.test".into()],
                    scopes_supported: vec!["tools.read".into(), "tools.call".into()],
                }),
            })
        );

        // Nothing declared: the defaults written out.
        let docs = &snap.contracts[1];
        assert_eq!(docs.name, "docs-search");
        assert_eq!(docs.credentials, None);
        assert!(docs.backends.is_empty());
        assert_eq!(
            docs.mcp,
            Some(v1::McpSettings {
                path: "/mcp".into(),
                sse_path: "/sse".into(),
                allow_unlisted_tools: false,
                deny_other_methods: false,
                tools: vec![],
                oauth: None,
            })
        );
    }

    #[test]
    fn unlisted_tools_allowed() {
        let yaml = "apiVersion: gostoa.dev/v1alpha1\nkind: ApiContract\nmetadata: {name: c}\n\
                    spec: {protocol: mcp, address: 10.0.0.1:80, mcp: {unlistedTools: allow}}\n\
                    ---\napiVersion: gostoa.dev/v1alpha1\nkind: Quota\nmetadata: {name: q}\n\
                    spec: {subjects: [{workload: {}}], scope: {contract: c, tool: anything}, \
                    limit: {requests: 1, per: second}}\n";
        let snap = Compiler::new().compile(&load(yaml)).unwrap();
        assert!(snap.contracts[0].mcp.as_ref().unwrap().allow_unlisted_tools);
        assert_eq!(snap.quotas[0].tool, "anything");
    }

    #[test]
    fn api_key_defaults_when_only_listed() {
        let yaml = "apiVersion: gostoa.dev/v1alpha1\nkind: ApiContract\nmetadata: {name: c}\n\
                    spec: {protocol: http, address: 10.0.0.1:80, credentials: [apiKey]}\n";
        let snap = Compiler::new().compile(&load(yaml)).unwrap();
        let credentials = snap.contracts[0].credentials.clone().unwrap();
        assert!(!credentials.workload);
        assert_eq!(credentials.jwt, None);
        assert_eq!(
            credentials.api_key,
            Some(v1::ApiKeyCredential {
                header: "x-api-key".into(),
                query_param: String::new(),
            })
        );
    }

    #[test]
    fn consumers() {
        let snap = snapshot();
        assert_eq!(
            snap.consumers,
            [v1::Consumer {
                name: "partner-portal".into(),
                namespace: "shop".into(),
                labels: map(&[("tier", "gold")]),
                plan: "gold".into(),
                api_keys: vec![
                    v1::ApiKey {
                        id: "pp-2026-11".into(),
                        hash: format!("hmac-sha256:{}", "1".repeat(64)),
                    },
                    v1::ApiKey {
                        id: "pp-2026-12".into(),
                        hash: format!("hmac-sha256:{}", "2".repeat(64)),
                    },
                ],
            }]
        );
    }

    #[test]
    fn access_policies_resolve_grants_and_subjects() {
        let snap = snapshot();
        let orders = service_id(&snap, "orders-api");
        let health = service_id(&snap, "health");
        let crm = service_id(&snap, "crm-tools");
        let docs = service_id(&snap, "docs-search");
        let subject = |kind| v1::Subject { kind: Some(kind) };
        let billing_agent = subject(v1::subject::Kind::Workload(v1::WorkloadSelector {
            namespace: "finance".into(),
            service_account: "billing-agent".into(),
            labels: HashMap::new(),
        }));
        assert_eq!(
            snap.access_policies[0],
            v1::AccessPolicy {
                name: "crm-agents".into(),
                namespace: "shop".into(),
                subjects: vec![billing_agent.clone()],
                allow: vec![
                    v1::Grant {
                        service_id: crm,
                        operations: vec![],
                        tools: vec!["search_*".into(), "get_customer".into()],
                    },
                    v1::Grant {
                        service_id: docs,
                        operations: vec![],
                        tools: vec![],
                    },
                ],
                deny: vec![v1::Grant {
                    service_id: crm,
                    operations: vec![],
                    tools: vec!["*_admin".into()],
                }],
            }
        );
        assert_eq!(
            snap.access_policies[1..],
            [v1::AccessPolicy {
                name: "orders-readers".into(),
                namespace: "shop".into(),
                subjects: vec![
                    billing_agent,
                    subject(v1::subject::Kind::Consumer(v1::ConsumerSelector {
                        name: "partner-portal".into(),
                        labels: HashMap::new(),
                    })),
                    subject(v1::subject::Kind::Consumer(v1::ConsumerSelector {
                        name: String::new(),
                        labels: map(&[("tier", "gold")]),
                    })),
                    subject(v1::subject::Kind::Jwt(v1::JwtSelector {
                        claims: map(&[("azp", "back-office")]),
                        groups: vec!["ops".into(), "finance".into()],
                    })),
                ],
                allow: vec![
                    v1::Grant {
                        service_id: orders,
                        operations: vec!["listOrders".into(), "getOrder".into()],
                        tools: vec![],
                    },
                    v1::Grant {
                        service_id: health,
                        operations: vec![],
                        tools: vec![],
                    },
                ],
                deny: vec![v1::Grant {
                    service_id: orders,
                    operations: vec!["deleteOrder".into()],
                    tools: vec![],
                }],
            }]
        );
    }

    #[test]
    fn quotas() {
        let snap = snapshot();
        let orders = service_id(&snap, "orders-api");
        let names: Vec<_> = snap.quotas.iter().map(|q| q.name.as_str()).collect();
        // Sorted by namespace, then name.
        assert_eq!(
            names,
            ["agent-list-orders", "crm-search", "partner-monthly"]
        );
        let agent = &snap.quotas[0];
        assert_eq!(agent.namespace, "finance");
        assert_eq!(agent.service_id, orders);
        assert_eq!(agent.operation, "listOrders");
        assert_eq!(agent.tool, "");
        assert_eq!(
            (agent.requests, agent.period_seconds, agent.burst),
            (5, 60, 2)
        );
        assert_eq!(agent.mode, v1::QuotaMode::Enforce as i32);
        assert_eq!(
            agent.subjects,
            [v1::Subject {
                kind: Some(v1::subject::Kind::Workload(v1::WorkloadSelector {
                    namespace: "finance".into(),
                    service_account: String::new(),
                    labels: map(&[("app", "billing-agent")]),
                })),
            }]
        );
        let crm = &snap.quotas[1];
        assert_eq!(crm.service_id, service_id(&snap, "crm-tools"));
        assert_eq!(
            (crm.operation.as_str(), crm.tool.as_str()),
            ("", "search_customers")
        );
        assert_eq!((crm.requests, crm.period_seconds, crm.burst), (10, 1, 10));
        let monthly = &snap.quotas[2];
        assert_eq!(monthly.service_id, orders);
        assert_eq!(monthly.operation, "");
        // A month is 30 days; burst defaults to the request count.
        assert_eq!(
            (monthly.requests, monthly.period_seconds, monthly.burst),
            (100_000, 2_592_000, 100_000)
        );
        assert_eq!(monthly.mode, v1::QuotaMode::ReportOnly as i32);
    }

    #[test]
    fn output_does_not_depend_on_file_layout() {
        // The same documents, reversed and spread over two files.
        let docs: Vec<&str> = FULL.split("\n---\n").collect();
        let (first, second) = docs.split_at(docs.len() / 2);
        let rev = |d: &[&str]| d.iter().rev().copied().collect::<Vec<_>>().join("\n---\n");
        let set = load_sources([
            (PathBuf::from("a.yaml"), rev(second)),
            (PathBuf::from("b.yaml"), rev(first)),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let other = Compiler::new().compile(&set).unwrap();
        assert_eq!(other, snapshot());
    }

    #[test]
    fn governance_changes_are_content_changes() {
        let base = snapshot();
        let changed = |from: &str, to: &str| {
            assert!(FULL.contains(from), "{from}");
            Compiler::new()
                .compile(&load(&FULL.replace(from, to)))
                .unwrap()
        };
        for (from, to) in [
            ("path: /orders}", "path: /orders/}"),
            ("header: X-Api-Key", "header: X-Key"),
            ("plan: gold", "plan: silver"),
            ("groups: [ops, finance]", "groups: [ops]"),
            ("requests: 5,", "requests: 6,"),
            ("mode: reportOnly", "mode: enforce"),
            ("ssePath: /events", "ssePath: /stream"),
            ("otherMethods: deny", "otherMethods: allow"),
            ("[eu, us]", "[eu]"),
            ("get_customer]", "get_customer, list_*]"),
            ("tool: search_customers", "tool: get_customer"),
            ("\"10.200.2.2:8080\"]", "\"10.200.2.3:8080\"]"),
        ] {
            assert!(!same_content(&base, &changed(from, to)), "{from} -> {to}");
        }
        // Layout and spelling that do not change meaning do not make a new version.
        assert!(same_content(
            &base,
            &changed("method: get,", "method: GET,")
        ));
    }
}
