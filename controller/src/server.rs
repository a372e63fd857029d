//! gRPC `PolicyDistribution`: streams snapshots to agents and records their Ack/Nack.
//!
//! A stream starts with the agent's `Hello`; the agent then gets the current snapshot
//! and every later one. Only the newest snapshot matters, so a slow agent skips
//! intermediate versions (the watch channel keeps just the latest).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::Stream;
use metrics::{counter, gauge};
use stoa_proto::v1::agent_message::Kind;
use stoa_proto::v1::policy_distribution_server::{PolicyDistribution, PolicyDistributionServer};
use stoa_proto::v1::{AgentMessage, Snapshot};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::telemetry;

/// How long a new stream may stay silent before its `Hello`.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// What the controller knows about one node's agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentStatus {
    /// Streams open now (more than one while a reconnect overlaps the old stream).
    pub streams: usize,
    /// The version the agent reported in its last `Hello`.
    pub hello_version: u64,
    pub last_sent_version: Option<u64>,
    pub last_acked_version: Option<u64>,
    /// The last rejected version and the agent's reason.
    pub last_nack: Option<(u64, String)>,
}

/// Per-node agent state, shared between streams and readable from outside.
#[derive(Debug, Clone, Default)]
pub struct AgentRegistry(Arc<Mutex<BTreeMap<String, AgentStatus>>>);

impl AgentRegistry {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, AgentStatus>> {
        // A panic while holding the lock cannot leave the map inconsistent.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, node: &str, f: impl FnOnce(&mut AgentStatus)) {
        f(self.lock().entry(node.to_owned()).or_default());
    }

    pub fn status(&self, node: &str) -> Option<AgentStatus> {
        self.lock().get(node).cloned()
    }

    pub fn last_acked_version(&self, node: &str) -> Option<u64> {
        self.status(node).and_then(|s| s.last_acked_version)
    }

    pub fn nodes(&self) -> Vec<(String, AgentStatus)> {
        self.lock()
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect()
    }

    fn connect(&self, node: &str, hello_version: u64) -> Connection {
        self.update(node, |s| {
            s.streams += 1;
            s.hello_version = hello_version;
        });
        gauge!(telemetry::AGENTS_CONNECTED).increment(1.0);
        Connection {
            registry: self.clone(),
            node: node.to_owned(),
        }
    }
}

/// Counts an open stream until dropped.
struct Connection {
    registry: AgentRegistry,
    node: String,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.registry
            .update(&self.node, |s| s.streams = s.streams.saturating_sub(1));
        gauge!(telemetry::AGENTS_CONNECTED).decrement(1.0);
    }
}

/// The `PolicyDistribution` service. Streams end when the snapshot sender is dropped.
#[derive(Debug, Clone)]
pub struct PolicyService {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    agents: AgentRegistry,
    hello_timeout: Duration,
}

impl PolicyService {
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>) -> Self {
        Self {
            snapshots,
            agents: AgentRegistry::default(),
            hello_timeout: HELLO_TIMEOUT,
        }
    }

    pub fn with_hello_timeout(mut self, timeout: Duration) -> Self {
        self.hello_timeout = timeout;
        self
    }

    /// A handle on the agents' state that stays valid after the service is moved.
    pub fn agents(&self) -> AgentRegistry {
        self.agents.clone()
    }

    pub fn last_acked_version(&self, node: &str) -> Option<u64> {
        self.agents.last_acked_version(node)
    }

    pub fn into_server(self) -> PolicyDistributionServer<Self> {
        PolicyDistributionServer::new(self)
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<Snapshot, Status>> + Send>>;

#[tonic::async_trait]
impl PolicyDistribution for PolicyService {
    type SubscribeStream = SnapshotStream;

    async fn subscribe(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let peer = request.remote_addr();
        let (tx, rx) = mpsc::channel(2);
        let session = Session {
            inbound: request.into_inner(),
            snapshots: self.snapshots.clone(),
            tx,
            agents: self.agents.clone(),
        };
        let hello_timeout = self.hello_timeout;
        // Answer at once and wait for Hello in the session, so that a client that opens
        // the call before sending anything is not blocked.
        tokio::spawn(async move {
            if let Err(status) = session.run(hello_timeout).await {
                debug!(?peer, %status, "agent stream ended with an error");
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct Session {
    inbound: Streaming<AgentMessage>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    tx: mpsc::Sender<Result<Snapshot, Status>>,
    agents: AgentRegistry,
}

/// The response stream was dropped: the agent is gone.
struct Closed;

impl Session {
    async fn run(mut self, hello_timeout: Duration) -> Result<(), Status> {
        let hello = match tokio::time::timeout(hello_timeout, self.inbound.message()).await {
            Ok(Ok(Some(AgentMessage {
                kind: Some(Kind::Hello(hello)),
            }))) => hello,
            Ok(Ok(Some(_))) => {
                return self
                    .fail(Status::failed_precondition(
                        "the first message must be Hello",
                    ))
                    .await
            }
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(status)) => return Err(status),
            Err(_) => {
                return self
                    .fail(Status::deadline_exceeded(format!(
                        "no Hello within {} s",
                        hello_timeout.as_secs_f32()
                    )))
                    .await
            }
        };
        if hello.node_name.is_empty() {
            return self
                .fail(Status::invalid_argument("Hello.node_name is empty"))
                .await;
        }
        let node = hello.node_name;
        let _connection = self.agents.connect(&node, hello.applied_version);
        info!(%node, applied_version = hello.applied_version, "agent subscribed");

        // Always send the current snapshot, even if the agent says it runs that version:
        // applying it again is harmless and the agent may have lost state since.
        let current = self.snapshots.borrow_and_update().clone();
        if self.send(&node, &current).await.is_err() {
            return Ok(());
        }
        loop {
            tokio::select! {
                changed = self.snapshots.changed() => {
                    if changed.is_err() {
                        info!(%node, "policy source stopped; closing agent stream");
                        return Ok(());
                    }
                    let snapshot = self.snapshots.borrow_and_update().clone();
                    if self.send(&node, &snapshot).await.is_err() {
                        return Ok(());
                    }
                }
                message = self.inbound.message() => match message {
                    Ok(Some(message)) => self.handle(&node, message),
                    Ok(None) => {
                        info!(%node, "agent closed its stream");
                        return Ok(());
                    }
                    Err(status) => {
                        info!(%node, %status, "agent stream broken");
                        return Ok(());
                    }
                },
                _ = self.tx.closed() => {
                    info!(%node, "agent disconnected");
                    return Ok(());
                }
            }
        }
    }

    async fn fail(&self, status: Status) -> Result<(), Status> {
        let _ = self.tx.send(Err(status.clone())).await;
        Err(status)
    }

    async fn send(&self, node: &str, snapshot: &Snapshot) -> Result<(), Closed> {
        self.tx
            .send(Ok(snapshot.clone()))
            .await
            .map_err(|_| Closed)?;
        debug!(node, version = snapshot.version, "snapshot sent");
        self.agents
            .update(node, |s| s.last_sent_version = Some(snapshot.version));
        Ok(())
    }

    fn handle(&self, node: &str, message: AgentMessage) {
        match message.kind {
            Some(Kind::Ack(ack)) => {
                info!(node, version = ack.version, "agent applied snapshot");
                self.agents
                    .update(node, |s| s.last_acked_version = Some(ack.version));
            }
            Some(Kind::Nack(nack)) => {
                warn!(node, version = nack.version, reason = %nack.reason, "agent rejected snapshot");
                counter!(telemetry::NACKS_TOTAL).increment(1);
                self.agents
                    .update(node, |s| s.last_nack = Some((nack.version, nack.reason)));
            }
            Some(Kind::Hello(_)) => warn!(node, "ignoring a second Hello on the same stream"),
            None => warn!(node, "ignoring an empty agent message"),
        }
    }
}

/// Serves `service` on `listener` until `shutdown` completes. Open agent streams end
/// when the snapshot sender is dropped, which lets the graceful shutdown finish.
pub async fn serve(
    listener: TcpListener,
    service: PolicyService,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        // Detects agents that vanished without closing their connection.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
}
