//! The example policy folder, which the demo runs: valid, complete, and matching the
//! demo API key under the demo secret.

use std::path::{Path, PathBuf};

use stoa_controller::compile::Compiler;
use stoa_controller::load::load_dir;
use stoa_keys::{secret_from_file_content, KeyDigest};
use stoa_proto::v1::{self, subject::Kind};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn snapshot() -> v1::Snapshot {
    let set = load_dir(&examples().join("policy")).unwrap_or_else(|e| panic!("{e}"));
    Compiler::new().compile(&set).unwrap()
}

fn billing_agent() -> Vec<v1::Subject> {
    vec![v1::Subject {
        kind: Some(Kind::Workload(v1::WorkloadSelector {
            namespace: "finance".into(),
            service_account: "billing-agent".into(),
            labels: Default::default(),
        })),
    }]
}

#[test]
fn demo_key_matches_the_consumer_hash() {
    let secret = std::fs::read(examples().join("secrets/api-key-secret")).unwrap();
    let secret = secret_from_file_content(&secret).unwrap();
    let key = std::fs::read_to_string(examples().join("secrets/partner-portal.key")).unwrap();
    assert_eq!(
        key,
        key.trim(),
        "the key file has no surrounding whitespace"
    );
    assert!(key.starts_with("stoa_"));

    let snap = snapshot();
    let consumer = snap
        .consumers
        .iter()
        .find(|c| (c.namespace.as_str(), c.name.as_str()) == ("shop", "partner-portal"))
        .expect("Consumer shop/partner-portal");
    assert_eq!(consumer.api_keys.len(), 1);
    let stored = KeyDigest::parse(&consumer.api_keys[0].hash).unwrap();
    assert!(stored.matches(&KeyDigest::compute(&secret, &key)));
    assert!(!stored.matches(&KeyDigest::compute(b"another secret", &key)));
}

#[test]
fn example_policy_compiles_to_the_demo_tables() {
    let snap = snapshot();
    assert_eq!(snap.workloads.len(), 1);
    assert_eq!(snap.workloads[0].cgroup, "stoa.slice/billing-agent");
    let service = snap
        .services
        .iter()
        .find(|s| s.name == "orders-api")
        .expect("service orders-api");
    assert_eq!(
        (service.name.as_str(), service.ip.as_str(), service.port),
        ("orders-api", "10.96.0.10", 80)
    );
    assert_eq!(service.protocol, v1::Protocol::Http as i32);

    let contract = snap
        .contracts
        .iter()
        .find(|c| c.name == "orders-api")
        .expect("contract orders-api");
    assert_eq!(contract.service_id, service.service_id);
    let ops: Vec<_> = contract
        .operations
        .iter()
        .map(|o| format!("{} {} {}", o.id, o.method, o.path))
        .collect();
    assert_eq!(
        ops,
        [
            "listOrders GET /orders",
            "getOrder GET /orders/{id}",
            "createOrder POST /orders",
            "deleteOrder DELETE /orders/{id}",
        ]
    );
    let credentials = contract.credentials.clone().unwrap();
    assert!(credentials.workload);
    assert_eq!(credentials.api_key.unwrap().header, "x-api-key");
    assert_eq!(credentials.jwt, None);
    assert!(!contract.pass_unmatched_routes);

    let grant = |ops: &[&str]| v1::Grant {
        service_id: service.service_id,
        operations: ops.iter().map(|o| o.to_string()).collect(),
        tools: vec![],
    };
    let policies: Vec<_> = snap
        .access_policies
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(
        policies,
        [
            "billing-agent-orders",
            "billing-agent-tools",
            "partner-portal-orders"
        ]
    );
    let agent = &snap.access_policies[0];
    assert_eq!(agent.subjects, billing_agent());
    assert_eq!(agent.allow, [grant(&["listOrders", "getOrder"])]);
    assert_eq!(agent.deny, [grant(&["deleteOrder"])]);
    let partner = &snap.access_policies[2];
    assert_eq!(
        partner.subjects,
        [v1::Subject {
            kind: Some(Kind::Consumer(v1::ConsumerSelector {
                name: "partner-portal".into(),
                labels: Default::default(),
            })),
        }]
    );
    assert_eq!(partner.allow, [grant(&["listOrders", "createOrder"])]);
    assert!(partner.deny.is_empty());

    assert_eq!(
        snap.quotas[..1],
        [v1::Quota {
            name: "billing-agent-list-orders".into(),
            namespace: "shop".into(),
            subjects: billing_agent(),
            service_id: service.service_id,
            operation: "listOrders".into(),
            requests: 5,
            period_seconds: 60,
            burst: 5,
            mode: v1::QuotaMode::Enforce as i32,
            tool: String::new(),
        }]
    );
}

#[test]
fn example_mcp_contract_compiles() {
    let snap = snapshot();
    let service = snap
        .services
        .iter()
        .find(|s| s.name == "crm-tools")
        .expect("service crm-tools");
    assert_eq!(service.protocol, v1::Protocol::Mcp as i32);
    assert_eq!((service.ip.as_str(), service.port), ("10.96.0.20", 8080));
    let contract = snap
        .contracts
        .iter()
        .find(|c| c.name == "crm-tools")
        .expect("contract crm-tools");
    let mcp = contract.mcp.as_ref().expect("mcp settings");
    assert_eq!((mcp.path.as_str(), mcp.sse_path.as_str()), ("/mcp", "/sse"));
    assert!(!mcp.allow_unlisted_tools);
    let tools: Vec<_> = mcp.tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        tools,
        [
            "search_customers",
            "delete_customer",
            "send_invoice",
            "echo"
        ]
    );
    assert_eq!(mcp.tools[2].secret_arguments, ["api_token"]);
    let tools_policy = snap
        .access_policies
        .iter()
        .find(|p| p.name == "billing-agent-tools")
        .unwrap();
    assert_eq!(tools_policy.deny[0].tools, ["delete_*"]);
    let quota = snap
        .quotas
        .iter()
        .find(|q| q.name == "billing-agent-search")
        .unwrap();
    assert_eq!(
        (quota.tool.as_str(), quota.requests),
        ("search_customers", 3)
    );
}
