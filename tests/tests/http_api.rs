//! REST API governance through the eBPF redirect on a simulated node: who is calling
//! (workload identity, API key, JWT), which route, how much — with real curl clients
//! in pods, a real backend, and a JWKS issuer that signs RS256 and ES256 tokens.
use std::time::Duration;

use serde_json::json;
use stoa_keys::KeyDigest;
use stoa_tests::{
    http::HttpReply,
    issuer::{alg_none_token, JwksServer, TestKey},
    OutputExt, Pod, ProcHandle, SimNode,
};

const ORDERS: &str = "http://10.96.0.10";
const AUDIENCE: &str = "orders-api";
const PARTNER_KEY: &str = "stoa_partner_portal_test_key_0001";
const SECRET: &str = "node-secret-for-tests";

struct Api {
    node: SimNode,
    /// Workload finance/billing-agent: may list and get orders, never delete.
    billing: Pod,
    /// Workload other/intruder: allowed nothing.
    intruder: Pod,
    /// Workload partners/portal: allowed nothing itself; its API key is a Consumer.
    portal: Pod,
    backend: ProcHandle,
    agent: ProcHandle,
    jwks: JwksServer,
    rs_a: TestKey,
    es: TestKey,
}

fn workload(name: &str, namespace: &str, pod: &Pod) -> String {
    format!(
        "---\napiVersion: gostoa.dev/v1alpha1\nkind: Workload\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {{cgroup: {}, serviceAccount: {name}}}\n",
        pod.cgroup_rel()
    )
}

fn contract(jwks_uri: &str, extra_operation: &str) -> String {
    format!(
        r#"apiVersion: gostoa.dev/v1alpha1
kind: ApiContract
metadata: {{name: orders-api, namespace: shop}}
spec:
  protocol: http
  address: "10.96.0.10:80"
  credentials: [apiKey, jwt, workload]
  apiKey: {{header: x-api-key}}
  jwt:
    issuer: "{issuer}"
    audiences: [{AUDIENCE}]
    jwksUri: "{jwks_uri}"
    algorithms: [RS256, ES256]
  maxRequestBodyBytes: 4096
  operations:
    - {{id: listOrders, method: GET, path: /orders}}
    - {{id: getOrder, method: GET, path: "/orders/{{id}}"}}
    - {{id: createOrder, method: POST, path: /orders}}
    - {{id: deleteOrder, method: DELETE, path: "/orders/{{id}}"}}
    - {{id: admin, method: GET, path: /admin}}
{extra_operation}"#,
        issuer = stoa_tests::issuer::ISSUER,
    )
}

const ACCESS: &str = r#"apiVersion: gostoa.dev/v1alpha1
kind: AccessPolicy
metadata: {name: billing-reads, namespace: shop}
spec:
  subjects:
    - workload: {namespace: finance, serviceAccount: billing-agent}
  allow:
    - {contract: orders-api, operations: [listOrders, getOrder, createOrder, deleteOrder]}
  deny:
    - {contract: orders-api, operations: [deleteOrder]}
---
apiVersion: gostoa.dev/v1alpha1
kind: AccessPolicy
metadata: {name: partners, namespace: shop}
spec:
  subjects:
    - consumer: partner-portal
  allow:
    - {contract: orders-api, operations: [listOrders, createOrder]}
---
apiVersion: gostoa.dev/v1alpha1
kind: AccessPolicy
metadata: {name: operators, namespace: shop}
spec:
  subjects:
    - jwt: {groups: [ops]}
  allow:
    - {contract: orders-api, operations: [getOrder]}
---
apiVersion: gostoa.dev/v1alpha1
kind: Quota
metadata: {name: partner-list, namespace: shop}
spec:
  subjects: [{consumer: partner-portal}]
  scope: {contract: orders-api, operation: listOrders}
  limit: {requests: 3, per: second}
  mode: enforce
---
apiVersion: gostoa.dev/v1alpha1
kind: Quota
metadata: {name: partner-create, namespace: shop}
spec:
  subjects: [{consumer: partner-portal}]
  scope: {contract: orders-api, operation: createOrder}
  limit: {requests: 2, per: minute}
  mode: enforce
---
apiVersion: gostoa.dev/v1alpha1
kind: Quota
metadata: {name: billing-get-observed, namespace: shop}
spec:
  subjects: [{workload: {namespace: finance}}]
  scope: {contract: orders-api, operation: getOrder}
  limit: {requests: 2, per: minute}
  mode: reportOnly
"#;

fn consumer_yaml() -> String {
    let hash = KeyDigest::compute(SECRET.as_bytes(), PARTNER_KEY);
    format!(
        "apiVersion: gostoa.dev/v1alpha1\nkind: Consumer\nmetadata: {{name: partner-portal, namespace: shop}}\nspec:\n  plan: gold\n  apiKeys: [{{id: pp-1, hash: \"{hash}\"}}]\n"
    )
}

fn api() -> Api {
    let node = SimNode::new();
    let billing = node.add_pod("billing");
    let intruder = node.add_pod("intruder");
    let portal = node.add_pod("portal");
    let server = node.add_pod("server");
    server.add_service_ip("10.96.0.10");
    let backend = server.spawn_backend_with("orders", "0.0.0.0:80", &["--http2"]);
    let rs_a = TestKey::load("rs256-a.pem", "key-a");
    let es = TestKey::load("es256.pem", "key-es");
    let jwks = JwksServer::start(&node, "127.0.0.1:8089", &[&rs_a, &es]);

    let workloads = [
        workload("billing-agent", "finance", &billing),
        workload("intruder", "other", &intruder),
        workload("portal", "partners", &portal),
    ]
    .concat();
    node.write_policy("workloads.yaml", &workloads);
    node.write_policy("orders.yaml", &contract(&jwks.uri(), ""));
    node.write_policy("consumers.yaml", &consumer_yaml());
    node.write_policy("access.yaml", ACCESS);
    let secret = node.temp_dir().join("api-key-secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();

    node.start_controller(&node.policy_dir());
    let agent = node.start_agent(&["--api-key-secret-file", secret.to_str().unwrap()]);
    node.wait_for_snapshot_above(0, Duration::from_secs(20));
    Api {
        node,
        billing,
        intruder,
        portal,
        backend,
        agent,
        jwks,
        rs_a,
        es,
    }
}

impl Api {
    fn backend_saw(&self, needle: &str) -> bool {
        self.backend.stdout().contains(needle)
    }
}

fn assert_problem(reply: &HttpReply, status: u16) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json"),
        "{reply:?}"
    );
    assert_eq!(reply.json()["status"], status);
}

#[test]
fn workload_identity_allows_and_denies() {
    if !stoa_tests::require_root() {
        return;
    }
    let api = api();
    let reply = api.billing.http(&[&format!("{ORDERS}/orders?open=1")]);
    assert_eq!(reply.status, 200, "{reply:?}\n{}", api.agent.describe(20));
    let seen = reply.json();
    assert_eq!(seen["headers"]["x-stoa-workload"], "finance/billing-agent");
    assert_eq!(seen["headers"]["x-stoa-operation"], "listOrders");
    assert_eq!(
        seen["headers"]["x-forwarded-for"],
        api.billing.ip().to_string()
    );

    let denied = api
        .billing
        .http(&["-X", "DELETE", &format!("{ORDERS}/orders/7")]);
    assert_problem(&denied, 403);
    assert!(denied.json()["detail"]
        .as_str()
        .unwrap()
        .contains("deleteOrder"));
    let stranger = api.intruder.http(&[&format!("{ORDERS}/orders")]);
    assert_problem(&stranger, 403);
    assert!(
        !api.backend_saw("DELETE"),
        "a denied request reached the backend"
    );
}

#[test]
fn api_keys_valid_invalid_and_unknown() {
    if !stoa_tests::require_root() {
        return;
    }
    let api = api();
    let url = format!("{ORDERS}/orders");
    // The portal workload itself is allowed nothing.
    assert_problem(&api.portal.http(&[&url]), 403);

    let ok = api
        .portal
        .http(&["-H", &format!("x-api-key: {PARTNER_KEY}"), &url]);
    assert_eq!(ok.status, 200, "{ok:?}");
    let seen = ok.json();
    assert_eq!(seen["headers"]["x-stoa-consumer"], "shop/partner-portal");
    assert!(
        seen["headers"].get("x-api-key").is_none(),
        "the key leaked upstream"
    );

    for bad in ["not-a-key", "stoa_never_issued_key_0000000000"] {
        let reply = api.portal.http(&["-H", &format!("x-api-key: {bad}"), &url]);
        assert_problem(&reply, 401);
        let challenge = reply.header("www-authenticate").unwrap_or("");
        assert!(challenge.starts_with("ApiKey"), "{reply:?}");
    }
    // Spoofed identity headers are removed before forwarding.
    let spoof = api
        .billing
        .http(&["-H", "x-stoa-consumer: shop/partner-portal", &url]);
    assert_eq!(spoof.json()["headers"].get("x-stoa-consumer"), None);
}

#[test]
fn jwt_rs256_and_es256_are_accepted_and_not_forwarded() {
    if !stoa_tests::require_root() {
        return;
    }
    let api = api();
    let url = format!("{ORDERS}/orders/42");
    for key in [&api.rs_a, &api.es] {
        let token = key.token("alice", AUDIENCE, 300, json!({"groups": ["ops"]}));
        let reply = api
            .intruder
            .http(&["-H", &format!("authorization: Bearer {token}"), &url]);
        assert_eq!(reply.status, 200, "{:?}: {reply:?}", key.alg);
        let seen = reply.json();
        assert_eq!(seen["headers"]["x-stoa-subject"], "alice");
        assert!(
            seen["headers"].get("authorization").is_none(),
            "token leaked upstream"
        );
    }
    // A valid token without the ops group is authenticated but not allowed.
    let token = api.rs_a.token("bob", AUDIENCE, 300, json!({}));
    let reply = api
        .intruder
        .http(&["-H", &format!("authorization: Bearer {token}"), &url]);
    assert_problem(&reply, 403);
}

#[test]
fn jwt_expired_wrong_audience_and_alg_none_are_rejected() {
    if !stoa_tests::require_root() {
        return;
    }
    let api = api();
    let url = format!("{ORDERS}/orders/1");
    let groups = json!({"groups": ["ops"]});
    let cases = [
        (
            "expired",
            api.rs_a.token("alice", AUDIENCE, -3600, groups.clone()),
        ),
        (
            "audience",
            api.rs_a.token("alice", "another-api", 300, groups.clone()),
        ),
        ("algorithm", alg_none_token("alice", AUDIENCE)),
    ];
    for (expect, token) in cases {
        let reply = api
            .intruder
            .http(&["-H", &format!("authorization: Bearer {token}"), &url]);
        assert_problem(&reply, 401);
        let challenge = reply.header("www-authenticate").unwrap_or("");
        assert!(
            challenge.starts_with("Bearer") && challenge.contains("invalid_token"),
            "{reply:?}"
        );
        assert!(
            reply.json()["detail"].as_str().unwrap().contains(expect),
            "{expect}: {reply:?}"
        );
    }
    assert!(!api.backend_saw("/orders/1"));
}

#[test]
fn unknown_kid_makes_the_agent_refetch_the_jwks() {
    if !stoa_tests::require_root() {
        return;
    }
    let api = api();
    let url = format!("{ORDERS}/orders/5");
    let groups = json!({"groups": ["ops"]});
    let first = api.rs_a.token("alice", AUDIENCE, 300, groups.clone());
    let reply = api
        .intruder
        .http(&["-H", &format!("authorization: Bearer {first}"), &url]);
    assert_eq!(reply.status, 200, "{reply:?}");
    let fetches = api.jwks.fetches();
    assert!(fetches >= 1);

    // The issuer rotates in a new key; a token signed with it names an unknown kid.
    let rotated = TestKey::load("rs256-b.pem", "key-b");
    api.jwks.add_key(&rotated);
    std::thread::sleep(Duration::from_millis(600));
    let token = rotated.token("alice", AUDIENCE, 300, groups);
    let reply = api
        .intruder
        .http(&["-H", &format!("authorization: Bearer {token}"), &url]);
    assert_eq!(reply.status, 200, "{reply:?}\n{}", api.agent.describe(20));
    assert_eq!(api.jwks.fetches(), fetches + 1);

    // A kid the issuer never published is refused without hammering the issuer.
    let forged = TestKey::load("rs256-b.pem", "key-forged");
    let token = forged.token("alice", AUDIENCE, 300, json!({"groups": ["ops"]}));
    for _ in 0..3 {
        let reply = api
            .intruder
            .http(&["-H", &format!("authorization: Bearer {token}"), &url]);
        assert_problem(&reply, 401);
    }
    assert!(
        api.jwks.fetches() <= fetches + 2,
        "{} fetches",
        api.jwks.fetches()
    );
}

#[test]
fn quota_exhaustion_answers_429_with_headers_and_recovers() {
    if !stoa_tests::require_root() {
        return;
    }
    let api = api();
    let url = format!("{ORDERS}/orders");
    let key = format!("x-api-key: {PARTNER_KEY}");
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let reply = api.portal.http(&["-H", &key, &url]);
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(
            reply.header("ratelimit-policy"),
            Some("\"shop/partner-list\";q=3;w=1")
        );
        remaining.push(reply.header("ratelimit").unwrap_or("").to_string());
    }
    assert!(
        remaining[0].starts_with("\"shop/partner-list\";r=2;t="),
        "{remaining:?}"
    );
    assert!(
        remaining[2].starts_with("\"shop/partner-list\";r=0;t="),
        "{remaining:?}"
    );

    let limited = api.portal.http(&["-H", &key, &url]);
    assert_problem(&limited, 429);
    let retry_after: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=1).contains(&retry_after), "{limited:?}");
    assert!(limited.header("ratelimit").unwrap().contains("r=0"));
    assert_eq!(
        api.node.agent_metric(
            "stoa_http_requests_total{contract=\"shop/orders-api\",decision=\"rate_limited\"}"
        ),
        1.0
    );

    std::thread::sleep(Duration::from_secs(retry_after));
    let again = api.portal.http(&["-H", &key, &url]);
    assert_eq!(again.status, 200, "{again:?}");
}

#[test]
fn report_only_quota_never_blocks_but_counts() {
    if !stoa_tests::require_root() {
        return;
    }
    let api = api();
    for id in 0..4 {
        let reply = api.billing.http(&[&format!("{ORDERS}/orders/{id}")]);
        assert_eq!(reply.status, 200, "{reply:?}");
        assert!(
            reply.header("ratelimit").is_none(),
            "report-only adds no fields"
        );
    }
    assert_eq!(
        api.node
            .agent_metric("stoa_quota_report_only_exceeded_total"),
        2.0
    );
    assert!(api
        .agent
        .stderr()
        .contains("billing-get-observed exceeded (report only)"));
}

#[test]
fn http2_prior_knowledge_is_served_end_to_end() {
    if !stoa_tests::require_root() {
        return;
    }
    let api = api();
    let reply = api
        .billing
        .http(&["--http2-prior-knowledge", &format!("{ORDERS}/orders")]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.version, "HTTP/2");
    assert_eq!(reply.json()["version"], "HTTP/2.0");
    assert_eq!(reply.json()["headers"]["x-stoa-operation"], "listOrders");
    let denied = api.billing.http(&[
        "--http2-prior-knowledge",
        "-X",
        "DELETE",
        &format!("{ORDERS}/orders/1"),
    ]);
    assert_problem(&denied, 403);
}

#[test]
fn content_length_with_transfer_encoding_is_rejected_without_desync() {
    if !stoa_tests::require_root() {
        return;
    }
    let api = api();
    // A smuggling attempt: the chunked body ends at once, the second request hides in
    // what Content-Length would count.
    let script = r#"exec 3<>/dev/tcp/10.96.0.10/80
printf 'POST /orders HTTP/1.1\r\nHost: orders\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: orders\r\n\r\n' >&3
timeout 5 cat <&3"#;
    let out = api.billing.run(&["bash", "-c", script]);
    let text = out.stdout_str();
    assert!(
        text.starts_with("HTTP/1.1 400"),
        "{text}\n{}\n{}",
        out.stderr_str(),
        api.agent.describe(10)
    );
    assert_eq!(
        text.matches("HTTP/1.1").count(),
        1,
        "one answer, then close: {text}"
    );
    assert!(
        !api.backend_saw("/admin"),
        "the smuggled request reached the backend"
    );
    // The proxy keeps serving.
    assert_eq!(api.billing.http(&[&format!("{ORDERS}/orders")]).status, 200);
}

#[test]
fn path_normalization_bypass_is_denied() {
    if !stoa_tests::require_root() {
        return;
    }
    let api = api();
    for path in [
        "/orders/../admin",
        "/orders/%2e%2e/admin",
        "//admin",
        "/orders/1/%2E%2E/../admin",
    ] {
        let reply = api
            .billing
            .http(&["--path-as-is", &format!("{ORDERS}{path}")]);
        assert_problem(&reply, 403);
        assert!(
            reply.json()["detail"]
                .as_str()
                .unwrap()
                .starts_with("admin"),
            "{path}: {reply:?}"
        );
    }
    let encoded_slash = api.billing.http(&[
        "--path-as-is",
        &format!("{ORDERS}/orders/x%2F..%2F..%2Fadmin"),
    ]);
    assert_problem(&encoded_slash, 400);
    assert!(!api.backend_saw("admin"), "a bypass reached the backend");
    // Normalized paths are what the backend receives.
    let reply = api
        .billing
        .http(&["--path-as-is", &format!("{ORDERS}/orders/9/../7")]);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["path"], "/orders/7");
}

#[test]
fn unmatched_routes_oversized_bodies_and_headers_are_refused() {
    if !stoa_tests::require_root() {
        return;
    }
    let api = api();
    assert_problem(&api.billing.http(&[&format!("{ORDERS}/nowhere")]), 404);

    let big = "x".repeat(8 * 1024);
    let reply = api.billing.http(&[
        "-X",
        "POST",
        "--data-binary",
        &big,
        &format!("{ORDERS}/orders"),
    ]);
    assert_problem(&reply, 413);
    // Chunked (no Content-Length) is cut at the limit too.
    let path = api.node.temp_dir().join("big-body");
    std::fs::write(&path, &big).unwrap();
    let reply = api.billing.http(&[
        "-X",
        "POST",
        "-H",
        "transfer-encoding: chunked",
        "--data-binary",
        &format!("@{}", path.display()),
        &format!("{ORDERS}/orders"),
    ]);
    assert_eq!(reply.status, 413, "{reply:?}");

    let huge_header = format!("x-filler: {}", "y".repeat(80 * 1024));
    let out = api.billing.curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        &huge_header,
        &format!("{ORDERS}/orders"),
    ]);
    assert_eq!(out.stdout_str(), "431");
    // A small allowed body passes.
    let ok = api.billing.http(&[
        "-X",
        "POST",
        "--data-binary",
        "qty=1",
        &format!("{ORDERS}/orders"),
    ]);
    assert_eq!(ok.status, 200, "{ok:?}");
}

#[test]
fn policy_updates_under_load_lose_no_request_and_keep_quota_state() {
    if !stoa_tests::require_root() {
        return;
    }
    let api = api();
    // Two create orders use up the partner's per-minute budget.
    let key = format!("x-api-key: {PARTNER_KEY}");
    let create = format!("{ORDERS}/orders");
    for _ in 0..2 {
        let reply = api
            .portal
            .http(&["-H", &key, "-X", "POST", "-d", "n=1", &create]);
        assert_eq!(reply.status, 200, "{reply:?}");
    }

    // Load: 3 clients × 150 keep-alive requests while the policy changes 5 times.
    // curl pairs each `-o` with one URL: every answer body is discarded.
    let mut args: Vec<String> = vec!["-s".into(), "-w".into(), "%{http_code}\\n".into()];
    for i in 0..150 {
        args.extend([
            "-o".into(),
            "/dev/null".into(),
            format!("{ORDERS}/orders/{i}"),
        ]);
    }
    let loaders: Vec<_> = (0..3)
        .map(|i| {
            let mut cmd = api.billing.command("curl");
            cmd.args(&args);
            api.billing.spawn(&format!("load-{i}"), &mut cmd)
        })
        .collect();
    let mut version = api.node.agent_snapshot_version();
    for round in 0..5 {
        let extra = format!("    - {{id: extra{round}, method: GET, path: /extra/{round}}}\n");
        api.node
            .write_policy("orders.yaml", &contract(&api.jwks.uri(), &extra));
        version = api
            .node
            .wait_for_snapshot_above(version, Duration::from_secs(10));
    }
    for loader in &loaders {
        assert!(
            loader.wait_timeout(Duration::from_secs(60)).is_some(),
            "load did not finish"
        );
        let codes = loader.stdout();
        assert_eq!(codes.lines().count(), 150, "{}", loader.describe(5));
        assert!(codes.lines().all(|code| code == "200"), "{codes}");
    }
    // The quota was kept by every update, and so was its state.
    let reply = api
        .portal
        .http(&["-H", &key, "-X", "POST", "-d", "n=1", &create]);
    assert_problem(&reply, 429);
}
