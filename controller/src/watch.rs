//! The policy folder as a live source: loads, compiles and publishes snapshots, and
//! reloads on change.
//!
//! An invalid change is logged and counted, and the last good snapshot stays served;
//! only a valid change that alters the snapshot's content publishes a new version.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, gauge};
use notify::event::{AccessKind, AccessMode, EventKind, MetadataKind, ModifyKind};
use notify::{RecursiveMode, Watcher};
use stoa_proto::v1::Snapshot;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::compile::{same_content, CompileError, Compiler, VersionClock};
use crate::load::{load_dir, PolicyErrors};
use crate::telemetry;

/// Quiet time after the last change before reloading (editors write in several steps).
pub const DEBOUNCE: Duration = Duration::from_millis(50);
/// Upper bound on the wait while changes keep coming.
pub const MAX_DEBOUNCE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Policy(#[from] PolicyErrors),
    #[error(transparent)]
    Compile(#[from] CompileError),
}

/// The policy folder, its compiler state and the snapshot channel it feeds.
#[derive(Debug)]
pub struct PolicySource {
    dir: PathBuf,
    compiler: Compiler,
    clock: VersionClock,
    tx: watch::Sender<Arc<Snapshot>>,
}

impl PolicySource {
    /// Loads and compiles `dir` once; fails if the policy is invalid. The receiver
    /// yields the current snapshot, then every new one.
    pub fn load(
        dir: impl Into<PathBuf>,
    ) -> Result<(Self, watch::Receiver<Arc<Snapshot>>), ReloadError> {
        Self::with_clock(dir, VersionClock::new())
    }

    pub fn with_clock(
        dir: impl Into<PathBuf>,
        mut clock: VersionClock,
    ) -> Result<(Self, watch::Receiver<Arc<Snapshot>>), ReloadError> {
        let dir = dir.into();
        let mut compiler = Compiler::new();
        let mut snapshot = load_dir(&dir)
            .map_err(ReloadError::from)
            .and_then(|set| Ok(compiler.compile(&set)?))
            .inspect_err(|_| counter!(telemetry::POLICY_RELOAD_ERRORS_TOTAL).increment(1))?;
        snapshot.version = clock.next_version();
        publish_metrics(&snapshot);
        log_snapshot(&dir, &snapshot, "policy loaded");
        let (tx, rx) = watch::channel(Arc::new(snapshot));
        Ok((
            Self {
                dir,
                compiler,
                clock,
                tx,
            },
            rx,
        ))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    /// Reloads the folder. Returns the new version if one was published, `None` if the
    /// content did not change. On error the current snapshot stays.
    pub fn reload(&mut self) -> Result<Option<u64>, ReloadError> {
        let set = load_dir(&self.dir)?;
        let mut snapshot = self.compiler.compile(&set)?;
        if same_content(&snapshot, &self.tx.borrow()) {
            return Ok(None);
        }
        snapshot.version = self.clock.next_version();
        let version = snapshot.version;
        publish_metrics(&snapshot);
        log_snapshot(&self.dir, &snapshot, "policy changed; new snapshot");
        self.tx.send_replace(Arc::new(snapshot));
        Ok(Some(version))
    }

    /// `reload`, logging and counting a failure.
    pub fn reload_logged(&mut self) -> Option<u64> {
        match self.reload() {
            Ok(version) => version,
            Err(err) => {
                counter!(telemetry::POLICY_RELOAD_ERRORS_TOTAL).increment(1);
                error!(
                    dir = %self.dir.display(),
                    serving_version = self.tx.borrow().version,
                    "policy reload failed, keeping the last good snapshot:\n{err}"
                );
                None
            }
        }
    }

    /// Watches the folder and reloads on change until `shutdown` completes. Dropping
    /// the source at the end closes the snapshot channel, which ends agent streams.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), notify::Error> {
        let (events_tx, mut events) = mpsc::channel::<()>(1);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                match event {
                    Ok(event) if is_relevant(&event.kind) => {
                        // A full channel already holds a pending reload.
                        let _ = events_tx.try_send(());
                    }
                    Ok(_) => {}
                    Err(err) => warn!(%err, "policy directory watch error"),
                }
            })?;
        watcher.watch(&self.dir, RecursiveMode::NonRecursive)?;
        info!(dir = %self.dir.display(), "watching policy directory");
        // Catch changes made between the initial load and the start of the watch.
        self.reload_logged();

        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                event = events.recv() => {
                    if event.is_none() {
                        break;
                    }
                    debounce(&mut events).await;
                    debug!("policy directory changed");
                    self.reload_logged();
                }
            }
        }
        drop(watcher);
        Ok(())
    }
}

fn publish_metrics(snapshot: &Snapshot) {
    // Versions are Unix milliseconds: exact in an f64 (below 2^53).
    gauge!(telemetry::SNAPSHOT_VERSION).set(snapshot.version as f64);
}

/// Waits until no event came for `DEBOUNCE`, or `MAX_DEBOUNCE` passed.
async fn debounce(events: &mut mpsc::Receiver<()>) {
    let deadline = Instant::now() + MAX_DEBOUNCE;
    loop {
        let quiet_until = (Instant::now() + DEBOUNCE).min(deadline);
        match tokio::time::timeout_at(quiet_until, events.recv()).await {
            Ok(Some(())) if Instant::now() < deadline => continue,
            _ => return,
        }
    }
}

/// Our own reads open the files, so opens and reads must not trigger reloads.
fn is_relevant(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)) => false,
        _ => true,
    }
}

/// One line per published snapshot, with what it holds.
fn log_snapshot(dir: &Path, snapshot: &Snapshot, what: &str) {
    info!(
        dir = %dir.display(),
        version = snapshot.version,
        workloads = snapshot.workloads.len(),
        services = snapshot.services.len(),
        contracts = snapshot.contracts.len(),
        consumers = snapshot.consumers.len(),
        access_policies = snapshot.access_policies.len(),
        quotas = snapshot.quotas.len(),
        "{what}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORKLOAD: &str = "apiVersion: gostoa.dev/v1alpha1\nkind: Workload\n\
                            metadata: {name: w}\nspec: {cgroup: a/w}\n";
    const CONTRACT: &str = "apiVersion: gostoa.dev/v1alpha1\nkind: ApiContract\n\
                            metadata: {name: c}\nspec: {protocol: tcp, address: 10.0.0.1:80}\n";

    #[test]
    fn reload_publishes_only_valid_changes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("w.yaml"), WORKLOAD).unwrap();
        let (mut source, rx) = PolicySource::load(dir.path()).unwrap();
        let v1 = rx.borrow().version;
        assert!(v1 > 0);

        // Nothing changed: no new version.
        assert_eq!(source.reload().unwrap(), None);
        // A comment or reordering does not change the content either.
        std::fs::write(dir.path().join("w.yaml"), format!("# hi\n{WORKLOAD}")).unwrap();
        assert_eq!(source.reload().unwrap(), None);

        std::fs::write(dir.path().join("c.yaml"), CONTRACT).unwrap();
        let v2 = source.reload().unwrap().expect("new version");
        assert!(v2 > v1);
        assert_eq!(rx.borrow().version, v2);
        assert_eq!(rx.borrow().services.len(), 1);

        std::fs::write(
            dir.path().join("bad.yaml"),
            "kind: Workload\nspec: {bogus: 1}\n",
        )
        .unwrap();
        assert!(matches!(source.reload(), Err(ReloadError::Policy(_))));
        assert_eq!(source.reload_logged(), None);
        assert_eq!(rx.borrow().version, v2);
        assert_eq!(source.current().version, v2);
    }

    #[test]
    fn initial_load_must_succeed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.yaml"), "apiVersion: x\n").unwrap();
        let err = PolicySource::load(dir.path()).unwrap_err();
        assert!(
            err.to_string()
                .contains("bad.yaml:1:13: document 1: apiVersion:"),
            "{err}"
        );
    }
}
