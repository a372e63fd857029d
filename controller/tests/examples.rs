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
    let service = &snap.services[0];
    assert_eq!(
        (service.name.as_str(), service.ip.as_str(), service.port),
        ("orders-api", "10.96.0.10", 80)
    );
    assert_eq!(service.protocol, v1::Protocol::Http as i32);

    let contract = &snap.contracts[0];
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
    };
    let policies: Vec<_> = snap
        .access_policies
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(policies, ["billing-agent-orders", "partner-portal-orders"]);
    let agent = &snap.access_policies[0];
    assert_eq!(agent.subjects, billing_agent());
    assert_eq!(agent.allow, [grant(&["listOrders", "getOrder"])]);
    assert_eq!(agent.deny, [grant(&["deleteOrder"])]);
    let partner = &snap.access_policies[1];
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
        snap.quotas,
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
        }]
    );
}
