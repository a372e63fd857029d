//! The `stoa-controller` binary: exit code on bad policy, serving, graceful SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use stoa_proto::v1::agent_message::Kind;
use stoa_proto::v1::policy_distribution_client::PolicyDistributionClient;
use stoa_proto::v1::{AgentMessage, Hello};
use tokio::time::timeout;
use tokio_stream::wrappers::ReceiverStream;

const BIN: &str = env!("CARGO_BIN_EXE_stoa-controller");
const WAIT: Duration = Duration::from_secs(10);

#[test]
fn invalid_initial_policy_exits_1_with_located_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "apiVersion: gostoa.dev/v1alpha1\nkind: ApiContract\nmetadata: {name: orders-api}\n\
         spec:\n  protocol: http\n  address: 10.96.0.10\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["--policy-dir".as_ref(), dir.path().as_os_str()])
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "bad.yaml:6:12: document 1 (ApiContract orders-api): spec.address: invalid IPv4 \
             socket address \"10.96.0.10\""
        ),
        "{stderr}"
    );
}

#[tokio::test]
async fn serves_the_example_policy_and_stops_on_sigterm() {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/policy");
    let mut child = Command::new(BIN)
        .args(["--policy-dir", examples, "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The bound address is logged ("serving policy to agents addr=127.0.0.1:PORT").
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("log ended before listening").unwrap();
        if line.contains("serving policy to agents") {
            break line.rsplit("addr=").next().unwrap().trim().to_owned();
        }
    };
    // Keep draining the log so the child never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));

    let mut client = PolicyDistributionClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(AgentMessage {
        kind: Some(Kind::Hello(Hello {
            node_name: "node-a".to_owned(),
            applied_version: 0,
        })),
    })
    .await
    .unwrap();
    let mut stream = client
        .subscribe(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let snapshot = timeout(WAIT, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(snapshot.workloads[0].name, "billing-agent");
    let services: Vec<&str> = snapshot.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(services, ["crm-tools", "orders-api"]);

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The open stream is closed cleanly and the process exits 0.
    let end = timeout(WAIT, stream.message())
        .await
        .expect("stream stayed open");
    assert!(matches!(end, Ok(None)), "{end:?}");
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}
