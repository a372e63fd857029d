//! The agent's side of policy distribution: subscribe to the controller, apply each
//! snapshot whole or not at all, answer with Ack or Nack, and keep the last good one
//! on disk for a start without the controller.
use std::{path::PathBuf, sync::Arc, time::Duration};

use prost::Message;
use stoa_proto::v1::{
    agent_message::Kind, policy_distribution_client::PolicyDistributionClient, Ack, AgentMessage,
    Hello, Nack, Snapshot,
};
use tokio::sync::{mpsc, Mutex};
use tokio_stream::{wrappers::ReceiverStream, StreamExt};
use tracing::{error, info, warn};

use crate::{
    datapath::Datapath,
    policy::{CompiledPolicy, JwksRegistry},
    snapshot::DesiredState,
    tables::ProxyTables,
};

const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const SAVED_SNAPSHOT: &str = "last-good-snapshot.pb";

pub struct ControlLoop {
    controller: String,
    node_name: String,
    state_dir: Option<PathBuf>,
    datapath: Arc<Mutex<Datapath>>,
    tables: Arc<ProxyTables>,
    jwks: Arc<JwksRegistry>,
}

impl ControlLoop {
    pub fn new(
        controller: String,
        node_name: String,
        state_dir: Option<PathBuf>,
        datapath: Datapath,
        tables: Arc<ProxyTables>,
        jwks: Arc<JwksRegistry>,
    ) -> Self {
        Self {
            controller,
            node_name,
            state_dir,
            datapath: Arc::new(Mutex::new(datapath)),
            tables,
            jwks,
        }
    }

    /// Runs the loop in the background; the datapath handle lets the caller detach on
    /// shutdown.
    pub fn spawn(self) -> (Arc<Mutex<Datapath>>, tokio::task::JoinHandle<()>) {
        let datapath = self.datapath.clone();
        (datapath, tokio::spawn(self.run()))
    }

    async fn run(self) {
        self.apply_saved_snapshot().await;
        let mut backoff = MIN_BACKOFF;
        loop {
            match self.subscribe_once(&mut backoff).await {
                Ok(()) => warn!(controller = %self.controller, "controller closed the stream"),
                Err(err) => warn!(
                    controller = %self.controller,
                    "controller unreachable: {err}; retrying in {backoff:?}, enforcing the last applied policy meanwhile"
                ),
            }
            metrics::gauge!("stoa_agent_controller_connected").set(0.0);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn subscribe_once(&self, backoff: &mut Duration) -> Result<(), tonic::Status> {
        let endpoint = tonic::transport::Endpoint::from_shared(self.controller.clone())
            .map_err(|err| tonic::Status::invalid_argument(err.to_string()))?
            .connect_timeout(Duration::from_secs(2));
        let channel = endpoint
            .connect()
            .await
            .map_err(|err| tonic::Status::unavailable(format!("{err}: {err:?}")))?;
        let mut client = PolicyDistributionClient::new(channel);
        let (tx, rx) = mpsc::channel(8);
        let applied_version = self.datapath.lock().await.applied_version();
        let _ = tx
            .send(message(Kind::Hello(Hello {
                node_name: self.node_name.clone(),
                applied_version,
            })))
            .await;
        let mut snapshots = client
            .subscribe(ReceiverStream::new(rx))
            .await?
            .into_inner();
        info!(controller = %self.controller, "connected to controller");
        metrics::gauge!("stoa_agent_controller_connected").set(1.0);
        *backoff = MIN_BACKOFF;
        while let Some(snapshot) = snapshots.next().await {
            let snapshot = snapshot?;
            let version = snapshot.version;
            let reply = match self.apply(&snapshot).await {
                Ok(()) => {
                    self.save(&snapshot).await;
                    Kind::Ack(Ack { version })
                }
                Err(reason) => {
                    error!(
                        version,
                        "cannot apply snapshot, keeping the previous state: {reason}"
                    );
                    metrics::counter!("stoa_agent_snapshot_rejections_total").increment(1);
                    Kind::Nack(Nack { version, reason })
                }
            };
            if tx.send(message(reply)).await.is_err() {
                break;
            }
        }
        Ok(())
    }

    async fn apply(&self, snapshot: &Snapshot) -> Result<(), String> {
        let mut datapath = self.datapath.lock().await;
        if snapshot.version == datapath.applied_version() && snapshot.version != 0 {
            return Ok(());
        }
        let desired = DesiredState::from_snapshot(snapshot, datapath.cgroup_root())
            .map_err(|err| err.to_string())?;
        // Compile L7 policy before touching the kernel: a snapshot is applied whole or
        // not at all.
        let policy =
            CompiledPolicy::compile(snapshot, &self.jwks).map_err(|err| err.to_string())?;
        datapath.apply(&desired).map_err(|err| err.to_string())?;
        self.tables.replace(&desired, policy);
        metrics::gauge!("stoa_agent_snapshot_version").set(desired.version as f64);
        info!(
            version = desired.version,
            workloads = desired.workloads.len(),
            services = desired.services.len(),
            "applied snapshot"
        );
        Ok(())
    }

    async fn save(&self, snapshot: &Snapshot) {
        let Some(dir) = &self.state_dir else { return };
        let bytes = snapshot.encode_to_vec();
        let tmp = dir.join(format!("{SAVED_SNAPSHOT}.tmp"));
        let result = async {
            tokio::fs::create_dir_all(dir).await?;
            tokio::fs::write(&tmp, &bytes).await?;
            tokio::fs::rename(&tmp, dir.join(SAVED_SNAPSHOT)).await
        }
        .await;
        if let Err(err) = result {
            warn!(dir = %dir.display(), "cannot save the last good snapshot: {err}");
        }
    }

    async fn apply_saved_snapshot(&self) {
        let Some(dir) = &self.state_dir else { return };
        let path = dir.join(SAVED_SNAPSHOT);
        let Ok(bytes) = tokio::fs::read(&path).await else {
            return;
        };
        match Snapshot::decode(bytes.as_slice()) {
            Ok(snapshot) => match self.apply(&snapshot).await {
                Ok(()) => info!(
                    version = snapshot.version,
                    "enforcing the last good snapshot from {} until the controller answers",
                    path.display()
                ),
                Err(reason) => warn!("saved snapshot {} not applied: {reason}", path.display()),
            },
            Err(err) => warn!("saved snapshot {} is unreadable: {err}", path.display()),
        }
    }
}

fn message(kind: Kind) -> AgentMessage {
    AgentMessage { kind: Some(kind) }
}
