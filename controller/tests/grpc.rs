//! A real gRPC round trip on 127.0.0.1: policy folder → watcher → server → tonic client.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use stoa_controller::server::{self, AgentRegistry, PolicyService};
use stoa_controller::watch::PolicySource;
use stoa_proto::v1::agent_message::Kind;
use stoa_proto::v1::policy_distribution_client::PolicyDistributionClient;
use stoa_proto::v1::{Ack, AgentMessage, Hello, Nack, Snapshot};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

const WAIT: Duration = Duration::from_secs(10);

const WORKLOAD: &str = "\
apiVersion: gostoa.dev/v1alpha1
kind: Workload
metadata: {name: billing-agent, namespace: finance}
spec:
  cgroup: stoa.slice/billing-agent
  serviceAccount: billing-agent
  labels: {app: billing-agent}
";

const CONTRACT: &str = "\
apiVersion: gostoa.dev/v1alpha1
kind: ApiContract
metadata: {name: orders-api, namespace: shop}
spec: {protocol: http, address: 10.96.0.10:80}
";

struct Agent {
    tx: mpsc::Sender<AgentMessage>,
    snapshots: Streaming<Snapshot>,
}

impl Agent {
    async fn connect(addr: std::net::SocketAddr, node: &str) -> Agent {
        let mut client = PolicyDistributionClient::connect(format!("http://{addr}"))
            .await
            .expect("connect");
        let (tx, rx) = mpsc::channel(8);
        tx.send(hello(node)).await.unwrap();
        let snapshots = timeout(WAIT, client.subscribe(ReceiverStream::new(rx)))
            .await
            .expect("subscribe timed out")
            .expect("subscribe")
            .into_inner();
        Agent { tx, snapshots }
    }

    async fn next(&mut self) -> Snapshot {
        timeout(WAIT, self.snapshots.message())
            .await
            .expect("no snapshot in time")
            .expect("stream error")
            .expect("stream ended")
    }

    async fn send(&self, kind: Kind) {
        self.tx
            .send(AgentMessage { kind: Some(kind) })
            .await
            .unwrap();
    }
}

fn hello(node: &str) -> AgentMessage {
    AgentMessage {
        kind: Some(Kind::Hello(Hello {
            node_name: node.to_owned(),
            applied_version: 0,
        })),
    }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes a file the way editors and `kubectl cp` do not always, but tests should:
/// complete content in one step (temp file + rename), so no half-written file is read.
fn write_atomically(dir: &Path, name: &str, content: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_stream_to_agents_and_follow_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    write_atomically(dir.path(), "billing-agent.yaml", WORKLOAD);

    let (source, snapshots) = PolicySource::load(dir.path()).expect("initial load");
    let (stop_watch, watch_stopped) = oneshot::channel::<()>();
    let watcher = tokio::spawn(source.run(async {
        let _ = watch_stopped.await;
    }));

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = PolicyService::new(snapshots);
    let agents: AgentRegistry = service.agents();
    let (stop_server, server_stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(server::serve(listener, service, async {
        let _ = server_stopped.await;
    }));

    // Hello → the current snapshot.
    let mut agent = Agent::connect(addr, "node-a").await;
    let first = agent.next().await;
    assert!(first.version > 0);
    assert_eq!(first.workloads.len(), 1);
    assert_eq!(first.workloads[0].cgroup, "stoa.slice/billing-agent");
    assert!(first.workloads[0].identity >= 256);
    assert!(first.services.is_empty());
    assert_eq!(first.proxy.unwrap().upstream_connect_timeout_ms, 2000);

    agent
        .send(Kind::Ack(Ack {
            version: first.version,
        }))
        .await;
    eventually("ack recorded", || {
        agents.last_acked_version("node-a") == Some(first.version)
    })
    .await;
    assert_eq!(agents.status("node-a").unwrap().streams, 1);

    // A new file → a new version, same workload identity.
    write_atomically(dir.path(), "orders-api.yaml", CONTRACT);
    let second = agent.next().await;
    assert!(second.version > first.version);
    assert_eq!(second.services.len(), 1);
    assert_eq!(second.services[0].ip, "10.96.0.10");
    assert_eq!(second.workloads[0].identity, first.workloads[0].identity);

    agent
        .send(Kind::Nack(Nack {
            version: second.version,
            reason: "map full".to_owned(),
        }))
        .await;
    eventually("nack recorded", || {
        agents.status("node-a").unwrap().last_nack == Some((second.version, "map full".to_owned()))
    })
    .await;
    assert_eq!(agents.last_acked_version("node-a"), Some(first.version));

    // An invalid file → no new version…
    write_atomically(dir.path(), "broken.yaml", "apiVersion: gostoa.dev/v1alpha1\nkind: Workload\nmetadata: {name: x}\nspec: {cgroup: /abs}\n");
    let quiet = timeout(Duration::from_millis(600), agent.snapshots.message()).await;
    assert!(
        quiet.is_err(),
        "unexpected message after an invalid change: {quiet:?}"
    );

    // …and a new subscriber still gets the last good snapshot.
    let mut late = Agent::connect(addr, "node-b").await;
    let current = late.next().await;
    assert_eq!(current.version, second.version);
    assert_eq!(current, second);

    // Fixing the folder publishes again, to both agents.
    std::fs::remove_file(dir.path().join("broken.yaml")).unwrap();
    write_atomically(
        dir.path(),
        "orders-api.yaml",
        &CONTRACT.replace("10.96.0.10:80", "10.96.0.11:80"),
    );
    let third = agent.next().await;
    assert!(third.version > second.version);
    assert_eq!(third.services[0].ip, "10.96.0.11");
    assert_eq!(late.next().await.version, third.version);

    // An agent that leaves is no longer counted.
    drop(late);
    eventually("stream closed", || {
        agents.status("node-b").unwrap().streams == 0
    })
    .await;

    // Shutdown: stopping the source ends the streams, and the server drains.
    stop_watch.send(()).unwrap();
    timeout(WAIT, watcher).await.unwrap().unwrap().unwrap();
    let end = timeout(WAIT, agent.snapshots.message())
        .await
        .expect("stream not closed");
    assert!(matches!(end, Ok(None)), "{end:?}");
    stop_server.send(()).unwrap();
    timeout(WAIT, server)
        .await
        .expect("server did not stop")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn first_message_must_be_hello() {
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(Snapshot::default()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = PolicyService::new(rx).with_hello_timeout(Duration::from_millis(200));
    tokio::spawn(server::serve(listener, service, std::future::pending()));

    let mut client = PolicyDistributionClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (tx, out) = mpsc::channel(1);
    tx.send(AgentMessage {
        kind: Some(Kind::Ack(Ack { version: 1 })),
    })
    .await
    .unwrap();
    let mut stream = client
        .subscribe(ReceiverStream::new(out))
        .await
        .unwrap()
        .into_inner();
    let status = timeout(WAIT, stream.message()).await.unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);

    // Silence is not accepted forever either.
    let (_tx2, out) = mpsc::channel::<AgentMessage>(1);
    let mut stream = client
        .subscribe(ReceiverStream::new(out))
        .await
        .unwrap()
        .into_inner();
    let status = timeout(WAIT, stream.message()).await.unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
}
