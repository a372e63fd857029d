//! `stoa-agent`: one per node. Loads the kernel programs, writes the controller's
//! snapshots into the pinned maps and runs the node-local L7 proxy.
use std::{net::SocketAddrV4, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use clap::Parser;
use stoa_agent::{
    control, datapath::Datapath, metrics, policy::JwksRegistry, preflight, proxy,
    quota::QuotaStore, tables::ProxyTables,
};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

#[derive(Parser, Debug)]
#[command(name = "stoa-agent", version, about = "STOA node agent")]
struct Args {
    /// The controller's gRPC address, e.g. http://127.0.0.1:7070.
    #[arg(long, env = "STOA_CONTROLLER")]
    controller: String,
    /// Where the node proxy listens; redirected connections are rewritten to it.
    #[arg(long, default_value = "169.254.42.1:15001")]
    proxy_addr: SocketAddrV4,
    /// bpffs folder for this agent's pinned maps (one folder per agent instance).
    #[arg(long, default_value = "/sys/fs/bpf/stoa")]
    pin_path: PathBuf,
    /// cgroup v2 root; detected from /proc/mounts when not given.
    #[arg(long)]
    cgroup_root: Option<PathBuf>,
    /// Name this node reports to the controller.
    #[arg(long, env = "STOA_NODE_NAME", default_value = "standalone")]
    node_name: String,
    /// Serve Prometheus metrics on this address.
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// File holding the node secret that API key hashes are keyed with
    /// (`stoa keys hash --secret-file`); without it API keys are not accepted.
    #[arg(long)]
    api_key_secret_file: Option<PathBuf>,
    /// On SIGTERM leave the programs attached (pinned), so that governance continues
    /// through an upgrade; by default SIGTERM detaches from every workload cgroup.
    #[arg(long)]
    keep_attached_on_exit: bool,
    /// Keep the last applied snapshot here and start from it when the controller is
    /// unreachable.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Durable ledger of metered MCP tool invocations (read with `stoa usage`).
    #[arg(long, env = "STOA_USAGE_DIR", default_value = "/var/lib/stoa/usage")]
    usage_dir: PathBuf,
    /// Audit records of MCP tool decisions, one JSON line each: a file, or `-` for
    /// stdout; omitted means none.
    #[arg(long)]
    audit_log: Option<String>,
}

fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let cgroup_root = match preflight::check(args.cgroup_root.as_deref()) {
        Ok(root) => root,
        Err(reason) => {
            eprintln!("stoa-agent: {reason}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(err) = runtime.block_on(run(args, cgroup_root)) {
        error!("{err:#}");
        eprintln!("stoa-agent: {err:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args, cgroup_root: PathBuf) -> anyhow::Result<()> {
    if let Some(addr) = args.metrics_addr {
        metrics::install(addr)?;
    }
    let mut datapath = Datapath::load(&args.pin_path, cgroup_root, args.proxy_addr)
        .context("loading the eBPF programs")?;
    datapath.spawn_log_pump()?;
    let peers = datapath.peer_lookup();
    datapath.spawn_counter_export(Duration::from_secs(1));

    let api_key_secret = match &args.api_key_secret_file {
        Some(path) => {
            let content = std::fs::read(path)
                .with_context(|| format!("reading the API key secret {}", path.display()))?;
            let secret = stoa_keys::secret_from_file_content(&content)
                .with_context(|| format!("API key secret {}", path.display()))?;
            Some(Arc::<[u8]>::from(secret))
        }
        None => None,
    };
    let tables = Arc::new(ProxyTables::default());
    let quotas = QuotaStore::new();
    let sweeper = quotas.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tick.tick().await;
            sweeper.sweep();
        }
    });
    let ledger = stoa_usage::Ledger::open(stoa_usage::LedgerConfig::new(args.usage_dir.clone()))
        .with_context(|| format!("opening the usage ledger in {}", args.usage_dir.display()))?;
    let audit = match &args.audit_log {
        Some(spec) => Some(
            stoa_usage::AuditSink::open(spec)
                .with_context(|| format!("opening the audit log {spec}"))?,
        ),
        None => None,
    };
    let mcp = Arc::new(proxy::McpRuntime::new(
        args.node_name.clone(),
        Some(ledger),
        audit,
    ));
    // The ledger is flushed to disk from a blocking thread every half second, so the
    // request path (which would otherwise sync once a second) never waits for the disk.
    let ledger_syncer = mcp.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let runtime = ledger_syncer.clone();
            let synced = tokio::task::spawn_blocking(move || {
                runtime
                    .ledger
                    .as_ref()
                    .map_or(Ok(()), |ledger| ledger.sync())
            })
            .await;
            if let Ok(Err(err)) = synced {
                warn!("usage ledger: fdatasync failed: {err}");
            }
        }
    });
    let session_sweeper = mcp.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            session_sweeper.sweep();
        }
    });
    let http = proxy::HttpContext::new(
        tables.clone(),
        quotas,
        api_key_secret,
        mcp,
        Duration::from_secs(2),
        Duration::from_secs(90),
    );
    let listener = proxy::bind(args.proxy_addr).await?;
    info!(addr = %args.proxy_addr, pin_path = %args.pin_path.display(), "node proxy listening");
    let proxy_task = tokio::spawn(proxy::serve(listener, peers, tables.clone(), http));
    let jwks = Arc::new(JwksRegistry::new(
        stoa_agent::identity::jwt::jwks_http_client().context("building the JWKS client")?,
    ));

    let control = control::ControlLoop::new(
        args.controller.clone(),
        args.node_name.clone(),
        args.state_dir.clone(),
        datapath,
        tables,
        jwks,
    );
    let (datapath_slot, control_task) = control.spawn();

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
        res = proxy_task => error!("node proxy stopped: {res:?}"),
    }
    control_task.abort();
    if args.keep_attached_on_exit {
        info!("leaving the programs attached for the next agent; bye");
    } else {
        // Pinned maps stay so that a restarted agent finds its state.
        datapath_slot.lock().await.detach_all();
        info!("detached; bye");
    }
    Ok(())
}
