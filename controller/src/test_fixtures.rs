//! Policy text and helpers shared by unit tests.

use std::path::PathBuf;

use crate::load::{load_sources, PolicySet};

/// A complete, valid policy using every kind and most fields.
pub const FULL: &str = r#"
apiVersion: gostoa.dev/v1alpha1
kind: Workload
metadata: {name: billing-agent, namespace: finance}
spec:
  cgroup: stoa.slice/billing-agent
  serviceAccount: billing-agent
  labels: {app: billing-agent}
---
apiVersion: gostoa.dev/v1alpha1
kind: ApiContract
metadata: {name: orders-api, namespace: shop}
spec:
  protocol: http
  address: 10.96.0.10:80
  credentials: [apiKey, jwt, workload]
  apiKey: {header: X-Api-Key, queryParam: api_key}
  jwt:
    issuer: https://sso.example/realms/shop
    audiences: [orders-api]
    jwksUri: https://sso.example/realms/shop/certs
  operations:
    - {id: listOrders, method: GET, path: /orders}
    - {id: getOrder, method: get, path: "/orders/{id}"}
    - {id: createOrder, method: POST, path: /orders}
    - {id: deleteOrder, method: DELETE, path: "/orders/{id}"}
  unmatchedRoutes: pass
  maxRequestBodyBytes: 1048576
---
apiVersion: gostoa.dev/v1alpha1
kind: ApiContract
metadata: {name: ledger-db, namespace: finance}
spec: {protocol: tcp, address: 10.96.0.30:5432}
---
apiVersion: gostoa.dev/v1alpha1
kind: ApiContract
metadata: {name: health, namespace: shop}
spec: {protocol: http, address: 10.96.0.40:80}
---
apiVersion: gostoa.dev/v1alpha1
kind: ApiContract
metadata: {name: crm-tools, namespace: shop}
spec:
  protocol: mcp
  address: "10.96.0.20:8080"
  backends: ["10.200.1.2:8080", "10.200.2.2:8080"]
  credentials: [workload, jwt]
  jwt:
    issuer: https://issuer.stoa.test
    audiences: ["http://10.96.0.20:8080/mcp"]
    jwksUri: https://issuer.stoa.test/jwks
  maxRequestBodyBytes: 65536
  mcp:
    ssePath: /events
    otherMethods: deny
    oauth:
      resource: "http://10.96.0.20:8080/mcp"
      authorizationServers: ["https://issuer.stoa.test"]
      scopesSupported: [tools.read, tools.call]
  tools:
    - name: search_customers
      arguments:
        query: {maxLength: 64, pattern: "^[a-z ]+$"}
        region: {allowedValues: [eu, us]}
        limit: {allowedValues: [10, 50, 2.5, true]}
      secretArguments: [api_token]
    - name: get_customer
---
apiVersion: gostoa.dev/v1alpha1
kind: ApiContract
metadata: {name: docs-search, namespace: shop}
spec: {protocol: mcp, address: 10.96.0.50:8080}
---
apiVersion: gostoa.dev/v1alpha1
kind: Consumer
metadata:
  name: partner-portal
  namespace: shop
  labels: {tier: gold}
spec:
  plan: gold
  apiKeys:
    - {id: pp-2026-11, hash: "hmac-sha256:1111111111111111111111111111111111111111111111111111111111111111"}
    - {id: pp-2026-12, hash: "hmac-sha256:2222222222222222222222222222222222222222222222222222222222222222"}
---
apiVersion: gostoa.dev/v1alpha1
kind: AccessPolicy
metadata: {name: orders-readers, namespace: shop}
spec:
  subjects:
    - workload: {namespace: finance, serviceAccount: billing-agent}
    - consumer: partner-portal
    - consumer: {labels: {tier: gold}}
    - jwt: {claims: {azp: back-office}, groups: [ops, finance]}
  allow:
    - {contract: orders-api, operations: [listOrders, getOrder]}
    - {contract: shop/health}
  deny:
    - {contract: orders-api, operations: [deleteOrder]}
---
apiVersion: gostoa.dev/v1alpha1
kind: AccessPolicy
metadata: {name: crm-agents, namespace: shop}
spec:
  subjects:
    - workload: {namespace: finance, serviceAccount: billing-agent}
  allow:
    - {contract: crm-tools, tools: ["search_*", get_customer]}
    - {contract: docs-search}
  deny:
    - {contract: crm-tools, tools: ["*_admin"]}
---
apiVersion: gostoa.dev/v1alpha1
kind: Quota
metadata: {name: crm-search, namespace: shop}
spec:
  subjects: [{workload: {namespace: finance}}]
  scope: {contract: crm-tools, tool: search_customers}
  limit: {requests: 10, per: second}
---
apiVersion: gostoa.dev/v1alpha1
kind: Quota
metadata: {name: partner-monthly, namespace: shop}
spec:
  subjects: [{consumer: shop/partner-portal}]
  scope: {contract: orders-api}
  limit: {requests: 100000, per: month}
  mode: reportOnly
---
apiVersion: gostoa.dev/v1alpha1
kind: Quota
metadata: {name: agent-list-orders, namespace: finance}
spec:
  subjects: [{workload: {namespace: finance, labels: {app: billing-agent}}}]
  scope: {contract: shop/orders-api, operation: listOrders}
  limit: {requests: 5, per: minute, burst: 2}
"#;

/// Loads one file named `t.yaml`.
pub fn load(text: &str) -> PolicySet {
    load_sources([(PathBuf::from("t.yaml"), text.to_owned())]).unwrap_or_else(|e| panic!("{e}"))
}

/// The error lines of loading one file named `t.yaml` (none if it is valid).
pub fn errors(text: &str) -> Vec<String> {
    match load_sources([(PathBuf::from("t.yaml"), text.to_owned())]) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.to_string().lines().map(str::to_owned).collect(),
    }
}

/// A document of `kind` named `name` in namespace `shop` with `spec` (block YAML,
/// indented by two spaces).
pub fn doc(kind: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: gostoa.dev/v1alpha1\nkind: {kind}\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n{spec}---\n"
    )
}

/// Asserts that `errors` are exactly `expected`, each given as a suffix after
/// `t.yaml:LINE:COL: document N (Kind name): ` (the position is checked separately
/// where it matters).
#[track_caller]
pub fn assert_messages(errors: &[String], expected: &[&str]) {
    let messages: Vec<&str> = errors
        .iter()
        .map(|e| e.split_once("): ").map_or(e.as_str(), |(_, m)| m))
        .collect();
    assert_eq!(messages, expected, "{errors:#?}");
}
