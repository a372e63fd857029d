//! `stoa-bench`: STOA's node proxy side by side with direct, nginx and HAProxy on a
//! simulated node, measured in one run. `make bench` builds and runs it; see
//! bench/README.md for what each phase measures and the output format.
//!
//! `stoa-bench run` is the benchmark. The other subcommands are helpers it starts
//! inside pods (they must run in the pod's cgroup and netns).

mod loadgen;
mod mcp;
mod peers;
mod probe;
mod procfs;
mod report;
mod run;
mod stats;
mod topology;

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "stoa-bench", about = "STOA benchmark harness", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the benchmark and write results (needs root).
    Run(Box<run::RunArgs>),
    /// (helper) Time fresh TCP connections to ADDR; prints JSON.
    ConnectProbe {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 500)]
        count: usize,
        /// Also send GET PATH on each and time the whole first exchange.
        #[arg(long)]
        request: Option<String>,
        #[arg(long)]
        header: Vec<String>,
    },
    /// (helper) Open COUNT connections, one request on each, and hold them.
    HoldConns {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        #[arg(long, default_value = "/")]
        path: String,
        #[arg(long)]
        header: Vec<String>,
        #[arg(long, default_value_t = 600)]
        hold_secs: u64,
    },
    /// (helper) Poll ADDR until conditions read from stdin hold.
    PolicyProbe {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value = "/")]
        path: String,
        #[arg(long)]
        header: Vec<String>,
        #[arg(long, default_value_t = 2)]
        interval_ms: u64,
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Run(args) => run::run(*args),
        Cmd::ConnectProbe {
            addr,
            count,
            request,
            header,
        } => probe::connect_probe(addr, count, request.as_deref(), &header),
        Cmd::HoldConns {
            addr,
            count,
            path,
            header,
            hold_secs,
        } => probe::hold_conns(addr, count, &path, &header, Duration::from_secs(hold_secs)),
        Cmd::PolicyProbe {
            addr,
            path,
            header,
            interval_ms,
            timeout_ms,
        } => probe::policy_probe(
            addr,
            &path,
            &header,
            Duration::from_millis(interval_ms),
            Duration::from_millis(timeout_ms),
        ),
    };
    if let Err(err) = result {
        eprintln!("stoa-bench: {err:#}");
        std::process::exit(1);
    }
}
