//! `stoa-controller`: serves the policy of a folder to agents.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use metrics_exporter_prometheus::PrometheusBuilder;
use stoa_controller::server::{self, PolicyService};
use stoa_controller::telemetry;
use stoa_controller::watch::PolicySource;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

/// How long open connections get to finish once shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Parser)]
#[command(
    name = "stoa-controller",
    version,
    about = "Compiles STOA policy and streams it to agents"
)]
struct Cli {
    /// Folder of policy YAML files (*.yaml, *.yml), watched for changes.
    #[arg(long, env = "STOA_POLICY_DIR")]
    policy_dir: PathBuf,
    /// gRPC listen address for agents.
    #[arg(long, env = "STOA_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Serve Prometheus metrics on this address (at /metrics).
    #[arg(long, env = "STOA_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    if let Some(addr) = cli.metrics_addr {
        PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        telemetry::describe();
        info!(%addr, "serving metrics");
    }

    let (source, snapshots) = match PolicySource::load(&cli.policy_dir) {
        Ok(loaded) => loaded,
        Err(err) => {
            // One error per line, file:line:column first, without anyhow's decoration.
            eprintln!(
                "error: invalid policy in {}:\n{err}",
                cli.policy_dir.display()
            );
            std::process::exit(1);
        }
    };

    let listener = TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    info!(addr = %listener.local_addr()?, "serving policy to agents");

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutting down");
        let _ = stop_tx.send(true);
    });

    let service = PolicyService::new(snapshots);
    let mut server = tokio::spawn(server::serve(listener, service, stopped(stop_rx.clone())));
    tokio::select! {
        watched = source.run(stopped(stop_rx.clone())) => {
            watched.context("cannot watch the policy directory")?;
        }
        served = &mut server => {
            served.context("gRPC server task failed")?.context("gRPC server failed")?;
            anyhow::bail!("gRPC server stopped unexpectedly");
        }
    }
    // The source is dropped: agent streams end, so the server can drain.
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(served) => served
            .context("gRPC server task failed")?
            .context("gRPC server failed")?,
        Err(_) => warn!("connections still open after {SHUTDOWN_GRACE:?}; exiting anyway"),
    }
    Ok(())
}

/// Completes once a stop was requested.
async fn stopped(mut stop: watch::Receiver<bool>) {
    // An error means the sender is gone, which also means stop.
    let _ = stop.wait_for(|stop| *stop).await;
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => {
            warn!(%err, "cannot listen for SIGTERM; only SIGINT stops the controller");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
