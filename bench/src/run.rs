//! `stoa-bench run`: builds the node, runs every phase and writes the results.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::Value;
use stoa_tests::{run_with_timeout, OutputExt, Pod};

use crate::loadgen::{self, LoadSpec};
use crate::procfs::{self, kib_to_mb, Memory};
use crate::report::{self, Results};
use crate::stats::{round1, round3, Percentiles, Spread};
use crate::topology::{
    self, Layout, PolicyMode, System, Topology, BENCH_IP, HOOK_IP, PROBE_IP, REQUEST_PATH,
};

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Smoke run: one rate (1000 rps), 2 s points, 1 repetition, fewer samples.
    #[arg(long)]
    pub quick: bool,
    /// Where latest.json, latest.md and latency.png go.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
    /// Open-loop rates in requests per second [default: 1000,5000,10000; quick: 1000].
    #[arg(long, value_delimiter = ',')]
    pub rates: Option<Vec<u32>>,
    /// Measured seconds per point, after the warm-up [default: 10; quick: 2].
    #[arg(long)]
    pub duration_secs: Option<f64>,
    /// Warm-up seconds per point, on the same connections [default: 1].
    #[arg(long)]
    pub warmup_secs: Option<f64>,
    /// Repetitions of the interleaved sequence [default: 3; quick: 1].
    #[arg(long)]
    pub reps: Option<usize>,
    /// Keep-alive connections for HTTP/1.1.
    #[arg(long, default_value_t = 50)]
    pub connections: usize,
    /// HTTP/2 connections ...
    #[arg(long, default_value_t = 10)]
    pub h2_connections: usize,
    /// ... and concurrent streams on each.
    #[arg(long, default_value_t = 5)]
    pub h2_streams: usize,
    /// CPU of the load generator (and of this runner and the controller).
    #[arg(long, default_value_t = 0)]
    pub cpu_loadgen: usize,
    /// CPU of the proxy under test (agent, nginx, HAProxy).
    #[arg(long, default_value_t = 1)]
    pub cpu_proxy: usize,
    /// CPU of the backend.
    #[arg(long, default_value_t = 1)]
    pub cpu_backend: usize,
    /// The oha binary [default: .tools/bin/oha, else oha on PATH].
    #[arg(long)]
    pub oha: Option<PathBuf>,
    /// Systems to compare.
    #[arg(long, value_delimiter = ',', value_enum)]
    pub systems: Option<Vec<System>>,
    /// Skip the HTTP/2 phase.
    #[arg(long)]
    pub skip_h2: bool,
    /// Policy changes to time [default: 20; quick: 6].
    #[arg(long)]
    pub policy_samples: Option<usize>,
    /// Fresh connections per path for the connect() cost [default: 2000; quick: 400].
    #[arg(long)]
    pub connect_samples: Option<usize>,
    /// Keep the agent's per-request access log on (default off, like the peers').
    #[arg(long)]
    pub agent_access_log: bool,
    /// Idle connections held open for the memory figure.
    #[arg(long, default_value_t = 10_000)]
    pub hold_conns: usize,
    /// Run only these parts (e.g. `--only mcp`) [default: all].
    #[arg(long, value_delimiter = ',', value_enum)]
    pub only: Option<Vec<Scenario>>,
    /// MCP tools/call rates in calls per second [default: 100,300; quick: 200].
    #[arg(long, value_delimiter = ',')]
    pub mcp_rates: Option<Vec<u32>>,
    /// Keep-alive connections of the MCP load.
    #[arg(long, default_value_t = 10)]
    pub mcp_connections: usize,
    /// Measured seconds per MCP point, after the warm-up [default: 8; quick: 2].
    #[arg(long)]
    pub mcp_duration_secs: Option<f64>,
}

/// The parts of a run, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// HTTP/1.1 load, every system.
    Http1,
    /// HTTP/2 (h2c) load, direct and stoa.
    Http2,
    /// MCP tools/call load to the Python SDK server, direct and stoa.
    Mcp,
    /// connect() cost of the redirect.
    Connect,
    /// Memory with 10k connections held.
    Memory,
    /// Policy change to enforcement.
    Policy,
}

impl Scenario {
    pub const ALL: [Scenario; 6] = [
        Scenario::Http1,
        Scenario::Http2,
        Scenario::Mcp,
        Scenario::Connect,
        Scenario::Memory,
        Scenario::Policy,
    ];
}

/// The run's settings after defaults.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub quick: bool,
    pub rates: Vec<u32>,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub reps: usize,
    pub connections: usize,
    pub h2_connections: usize,
    pub h2_streams: usize,
    pub systems: Vec<System>,
    pub h2: bool,
    pub policy_samples: usize,
    pub connect_samples: usize,
    pub hold_conns: usize,
    pub agent_access_log: bool,
    pub scenarios: Vec<Scenario>,
    pub mcp_rates: Vec<u32>,
    pub mcp_connections: usize,
    pub mcp_duration_s: f64,
    /// Warm-up + measured seconds of each MCP closed-loop (max) run.
    pub mcp_max_s: f64,
}

impl Plan {
    fn from(args: &RunArgs) -> Plan {
        let q = args.quick;
        let mut scenarios = args.only.clone().unwrap_or(Scenario::ALL.to_vec());
        if args.skip_h2 {
            scenarios.retain(|s| *s != Scenario::Http2);
        }
        scenarios.sort();
        scenarios.dedup();
        let mut systems = args.systems.clone().unwrap_or(System::ALL.to_vec());
        // nginx and HAProxy only take part in the HTTP/1.1 load and the memory phase.
        if !scenarios.contains(&Scenario::Http1) && !scenarios.contains(&Scenario::Memory) {
            systems.retain(|s| matches!(s, System::Direct | System::Stoa));
        }
        systems.sort();
        systems.dedup();
        Plan {
            quick: q,
            rates: args.rates.clone().unwrap_or(if q {
                vec![1000]
            } else {
                vec![1000, 5000, 10000]
            }),
            duration_s: args.duration_secs.unwrap_or(if q { 2.0 } else { 10.0 }),
            warmup_s: args.warmup_secs.unwrap_or(1.0),
            reps: args.reps.unwrap_or(if q { 1 } else { 3 }).max(1),
            connections: args.connections,
            h2_connections: args.h2_connections,
            h2_streams: args.h2_streams,
            systems,
            h2: scenarios.contains(&Scenario::Http2),
            policy_samples: args.policy_samples.unwrap_or(if q { 6 } else { 20 }),
            connect_samples: args.connect_samples.unwrap_or(if q { 400 } else { 2000 }),
            hold_conns: args.hold_conns,
            agent_access_log: args.agent_access_log,
            scenarios,
            mcp_rates: args
                .mcp_rates
                .clone()
                .unwrap_or(if q { vec![200] } else { vec![100, 300] }),
            mcp_connections: args.mcp_connections,
            mcp_duration_s: args.mcp_duration_secs.unwrap_or(if q { 2.0 } else { 8.0 }),
            mcp_max_s: if q { 3.0 } else { 5.0 },
        }
    }

    pub fn has(&self, scenario: Scenario) -> bool {
        self.scenarios.contains(&scenario)
    }

    /// Direct and stoa, as far as `--systems` keeps them.
    pub fn mcp_systems(&self) -> Vec<System> {
        if !self.has(Scenario::Mcp) {
            return Vec::new();
        }
        self.systems
            .iter()
            .copied()
            .filter(|s| matches!(s, System::Direct | System::Stoa))
            .collect()
    }

    /// MCP points: every rate per repetition, and one closed-loop run per system.
    fn mcp_points(&self) -> usize {
        let n = self.mcp_systems().len();
        self.reps * self.mcp_rates.len() * n + n
    }

    pub fn h2_systems(&self) -> Vec<System> {
        self.systems
            .iter()
            .copied()
            .filter(|s| matches!(s, System::Direct | System::Stoa))
            .collect()
    }

    /// Load points in the whole run.
    fn points(&self) -> usize {
        self.http_points() + self.mcp_points()
    }

    fn http_points(&self) -> usize {
        let per_rep = self.rates.len() + 1;
        let h1 = if self.has(Scenario::Http1) {
            self.systems.len()
        } else {
            0
        };
        let h2 = if self.h2 { self.h2_systems().len() } else { 0 };
        self.reps * per_rep * (h1 + h2)
    }

    /// Rough wall time of the load phases, for the progress line.
    fn load_estimate(&self) -> Duration {
        let n = self.mcp_systems().len();
        let mcp = (self.reps * self.mcp_rates.len() * n) as f64
            * (self.mcp_duration_s + self.warmup_s + 1.1)
            + n as f64 * (self.mcp_max_s + 1.1);
        Duration::from_secs_f64(
            self.http_points() as f64 * (self.duration_s + self.warmup_s + 0.9) + mcp,
        )
    }
}

/// One load point (one system, protocol, rate and repetition).
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub protocol: &'static str,
    pub system: System,
    /// `None`: the max-throughput (closed-loop) run.
    pub rate: Option<u32>,
    pub rep: usize,
    pub p50_us: Option<f64>,
    pub p90_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub p999_us: Option<f64>,
    pub samples: usize,
    pub achieved_rps: f64,
    pub errors: u64,
    pub error_kinds: BTreeMap<String, u64>,
    /// oha's "aborted due to deadline" at the end of the run (not counted as errors).
    pub aborted_at_deadline: u64,
    pub total_requests: u64,
    /// 2xx answers over the whole run, warm-up included.
    pub ok_total: u64,
    /// MCP through stoa: calls of the tool the agent metered as `ok` during the run
    /// (`stoa_mcp_tool_calls_total`); equals `ok_total` when every answer was governed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metered_ok: Option<u64>,
    pub cpu_s_per_10k: Option<f64>,
    pub backend_cpu_s_per_10k: Option<f64>,
    pub rss_mb: Option<f64>,
    pub failure: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryRow {
    pub system: System,
    pub processes: usize,
    pub idle_rss_mb: f64,
    pub idle_hwm_mb: f64,
    pub conns_requested: usize,
    pub conns_held: Option<u64>,
    pub conns_rss_mb: Option<f64>,
    /// VmHWM at that moment: the peak since start, load phases included.
    pub conns_hwm_mb: Option<f64>,
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectVariant {
    pub name: &'static str,
    pub description: &'static str,
    pub connect: Option<Percentiles>,
    pub first_request: Option<Percentiles>,
    pub errors: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectResult {
    pub variants: Vec<ConnectVariant>,
    pub extra_connect_p50_us: Option<f64>,
    pub extra_connect_p99_us: Option<f64>,
    pub extra_first_request_p50_us: Option<f64>,
    pub hook_only_extra_p50_us: Option<f64>,
}

/// The MCP row's extras (its load points are in `points`, protocol "mcp").
#[derive(Debug, Clone, Serialize)]
pub struct McpResult {
    /// Why the row was not measured.
    pub skipped: Option<String>,
    /// What the checks before the load saw (direct and stoa results, the denial).
    pub probe: Value,
    /// Sum over the stoa points of `metered_ok`.
    pub metered_ok_total: Option<u64>,
    /// `stoa usage` over the agent's ledger at the end: ok calls of the tool (the
    /// probe's and the closed-loop run's included).
    pub ledger_ok_total: Option<u64>,
    /// 2xx answers over the stoa points (warm-up included).
    pub ok_total_stoa: u64,
    /// 2xx answers over every MCP point, direct and stoa, plus the two probe calls and
    /// the unrecorded warm-up run.
    pub ok_total_all: u64,
    /// Tool calls the server executed (lines of its calls log) at the end.
    pub server_calls: Option<u64>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyResult {
    pub change: String,
    pub samples_ms: Vec<Option<f64>>,
    pub median_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub min_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub timeouts: usize,
    /// HTTP status the probe saw when each change became visible (0: no answer).
    pub observed_statuses: Vec<u16>,
    pub note: Option<String>,
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let started_at = report::utc_now();
    let plan = Plan::from(&args);
    if !stoa_tests::require_root() {
        bail!("stoa-bench needs root (network namespaces, cgroups, eBPF)");
    }
    let layout = Layout {
        loadgen: vec![args.cpu_loadgen],
        proxy: vec![args.cpu_proxy],
        backend: vec![args.cpu_backend],
    };
    let ncpu = procfs::online_cpus();
    for cpu in [args.cpu_loadgen, args.cpu_proxy, args.cpu_backend] {
        if cpu >= ncpu {
            bail!("CPU {cpu} does not exist here ({ncpu} CPUs)");
        }
    }
    let oha = find_oha(args.oha.as_deref())?;
    // The runner itself (and whatever it starts unpinned) stays on the load CPU.
    procfs::set_affinity(&layout.loadgen).context("pinning the runner")?;
    let nofile = procfs::raise_nofile(65_536).context("raising the open-file limit")?;
    println!(
        "stoa-bench: {} run: {} load points, about {} min of load; bins from {}",
        if plan.quick { "quick" } else { "full" },
        plan.points(),
        plan.load_estimate().as_secs().div_ceil(60),
        stoa_tests::bin_dir().display()
    );

    if nofile < plan.hold_conns as u64 + 1024 {
        eprintln!(
            "stoa-bench: the open-file limit is {nofile}: holding {} connections may fail",
            plan.hold_conns
        );
    }
    let topo = Topology::build(&layout, &plan.systems, nofile, args.agent_access_log)?;
    // The handler below keeps a reference to the node, so dropping ours would never
    // clean up: this guard does, on return, error and panic alike.
    let _cleanup = CleanupGuard(topo.node.clone());
    // Ctrl-C / SIGTERM: remove the namespaces, cgroups and processes, then leave.
    {
        let node = topo.node.clone();
        let _ = ctrlc::set_handler(move || {
            eprintln!("stoa-bench: interrupted, cleaning up");
            node.cleanup();
            std::process::exit(130);
        });
    }
    println!(
        "stoa-bench: node {} ready; stoa policy: {}",
        topo.node.id(),
        topo.mode.label()
    );
    let work_dir = topo.node.temp_dir().join("work");
    std::fs::create_dir_all(&work_dir)?;
    let mut runner = Runner {
        plan: plan.clone(),
        layout,
        topo,
        oha,
        work_dir,
        points: Vec::new(),
        done: 0,
    };

    std::thread::sleep(Duration::from_secs(1));
    let idle = runner.idle_memory();
    if plan.has(Scenario::Http1) {
        runner.load_phase("http1");
    }
    let h2_skip = if plan.h2 {
        match runner.topo.stoa_h2c() {
            Ok(()) => None,
            Err(reason) => {
                eprintln!("stoa-bench: skipping stoa over HTTP/2: {reason}");
                Some(reason)
            }
        }
    } else {
        Some("HTTP/2 phase skipped (--skip-h2)".to_string())
    };
    if plan.h2 {
        runner.load_phase_h2(h2_skip.is_some());
    }
    let mcp = if plan.has(Scenario::Mcp) {
        Some(runner.mcp_phase())
    } else {
        None
    };
    let connect = if plan.has(Scenario::Connect) && plan.systems.contains(&System::Stoa) {
        Some(runner.connect_phase())
    } else {
        None
    };
    let memory = if plan.has(Scenario::Memory) {
        runner.memory_phase(idle)
    } else {
        Vec::new()
    };
    let policy = if plan.has(Scenario::Policy) && plan.systems.contains(&System::Stoa) {
        Some(runner.policy_phase())
    } else {
        None
    };

    let meta = report::meta(
        &runner,
        &plan,
        &started_at,
        started.elapsed(),
        &oha_version(&runner.oha),
        nofile,
    );
    let results = Results {
        meta,
        plan: plan.clone(),
        points: runner.points.clone(),
        memory,
        connect,
        policy,
        mode: runner.topo.mode.clone(),
        h2_skip,
        mcp,
    };
    report::write_all(&results, &args.out)?;
    println!(
        "stoa-bench: done in {:.0} s; wrote {}/latest.json, latest.md, latency.png",
        started.elapsed().as_secs_f64(),
        args.out.display()
    );
    drop(runner);
    Ok(())
}

fn find_oha(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let local = PathBuf::from(".tools/bin/oha");
    if local.is_file() {
        return Ok(std::fs::canonicalize(local)?);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("oha");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!("oha not found: run bench/setup.sh (it installs oha into .tools/bin)")
}

fn oha_version(oha: &Path) -> String {
    std::process::Command::new(oha)
        .arg("--version")
        .output()
        .map(|o| o.stdout_str().trim().to_string())
        .unwrap_or_default()
}

pub struct Runner {
    pub plan: Plan,
    pub layout: Layout,
    pub topo: Topology,
    pub oha: PathBuf,
    work_dir: PathBuf,
    pub points: Vec<Point>,
    done: usize,
}

impl Runner {
    fn idle_memory(&self) -> BTreeMap<System, Memory> {
        self.plan
            .systems
            .iter()
            .filter(|s| **s != System::Direct)
            .map(|&s| (s, Memory::of_all(&self.topo.proxy_pids(s))))
            .collect()
    }

    /// HTTP/1.1: every repetition runs every rate, then the max-throughput run, with
    /// the systems interleaved inside each (direct, stoa, nginx, haproxy, repeat).
    fn load_phase(&mut self, protocol: &'static str) {
        let systems = self.plan.systems.clone();
        self.interleave(protocol, &systems, None);
    }

    fn load_phase_h2(&mut self, skip_stoa: bool) {
        let systems: Vec<System> = self
            .plan
            .h2_systems()
            .into_iter()
            .filter(|s| !(skip_stoa && *s == System::Stoa))
            .collect();
        self.interleave("http2", &systems, Some(self.plan.h2_streams));
        if skip_stoa {
            // Count the skipped points as done for the progress line.
            self.done += self.plan.reps * (self.plan.rates.len() + 1);
        }
    }

    fn interleave(&mut self, protocol: &'static str, systems: &[System], h2: Option<usize>) {
        let mut rates: Vec<Option<u32>> = self.plan.rates.iter().map(|r| Some(*r)).collect();
        rates.push(None);
        for rep in 1..=self.plan.reps {
            for rate in &rates {
                for &system in systems {
                    let t = Instant::now();
                    let point = self.point(protocol, system, *rate, rep, h2);
                    self.done += 1;
                    print_point(self.done, self.plan.points(), &point, t.elapsed());
                    self.points.push(point);
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    fn point(
        &self,
        protocol: &'static str,
        system: System,
        rate: Option<u32>,
        rep: usize,
        h2: Option<usize>,
    ) -> Point {
        let point = Point::new(protocol, system, rate, rep);
        if !self.topo.proxy_running(system) {
            return point.failed(format!("{} is not running", system.name()));
        }
        let (pod, url) = self.topo.target(system);
        let spec = LoadSpec {
            url,
            rate,
            connections: if h2.is_some() {
                self.plan.h2_connections
            } else {
                self.plan.connections
            },
            h2_streams: h2,
            headers: vec![self.topo.key_header()],
            post_body: None,
            warmup: Duration::from_secs_f64(self.plan.warmup_s),
            duration: Duration::from_secs_f64(self.plan.duration_s),
        };
        self.measure(point, pod, &spec, self.topo.backend.pid())
    }

    /// MCP: `tools/call` of echo, direct and through stoa. One closed-loop run per
    /// system first (the server's ceiling), then every repetition runs every rate with
    /// the systems interleaved, as the HTTP phases do.
    fn mcp_phase(&mut self) -> McpResult {
        let plan = self.plan.clone();
        let systems = plan.mcp_systems();
        let mut result = McpResult {
            skipped: None,
            probe: Value::Null,
            metered_ok_total: None,
            ledger_ok_total: None,
            ok_total_stoa: 0,
            ok_total_all: 0,
            server_calls: None,
            notes: Vec::new(),
        };
        println!(
            "stoa-bench: MCP tools/call: {} at {:?} calls/s, {} connections",
            crate::mcp::url(),
            plan.mcp_rates,
            plan.mcp_connections
        );
        match crate::mcp::setup(&self.topo, &self.layout.backend, &self.work_dir) {
            Ok(bench) => {
                result.probe = bench.probe.clone();
                // The probe's two echo calls (direct and through stoa).
                result.ok_total_all = 2;
                self.topo.mcp = Some(bench);
            }
            Err(reason) => {
                eprintln!("stoa-bench: skipping the MCP row: {reason}");
                result.skipped = Some(reason);
                self.done += plan.mcp_points();
                return result;
            }
        }
        let warmup = Duration::from_secs_f64(plan.warmup_s);
        // A freshly started Python server is slower for its first thousand calls or so:
        // a short unrecorded closed-loop run first, so the direct max run (the first
        // measured) does not pay for it.
        if let Some(bench) = &self.topo.mcp {
            let spec = LoadSpec {
                url: crate::mcp::url(),
                rate: None,
                connections: plan.mcp_connections,
                h2_streams: None,
                headers: bench.headers.clone(),
                post_body: Some(bench.body_file.clone()),
                warmup: Duration::ZERO,
                duration: Duration::from_secs(2),
            };
            match loadgen::run(
                &self.topo.plain,
                &self.oha,
                &spec,
                &self.layout.loadgen,
                &self.work_dir,
            ) {
                Ok(r) => result.ok_total_all += r.ok_total,
                Err(e) => result.notes.push(format!("server warm-up failed: {e:#}")),
            }
        }
        // The closed-loop run: warm-up + measurement = mcp_max_s.
        let max_duration = Duration::from_secs_f64((plan.mcp_max_s - plan.warmup_s).max(1.0));
        let mut slots: Vec<(usize, Option<u32>, Duration)> = vec![(1, None, max_duration)];
        for rep in 1..=plan.reps {
            for &rate in &plan.mcp_rates {
                slots.push((
                    rep,
                    Some(rate),
                    Duration::from_secs_f64(plan.mcp_duration_s),
                ));
            }
        }
        for (rep, rate, duration) in slots {
            for &system in &systems {
                let t = Instant::now();
                let point = self.mcp_point(system, rate, rep, warmup, duration);
                if rate.is_none() && system == System::Direct && point.failure.is_none() {
                    for &r in &plan.mcp_rates {
                        if f64::from(r) > 0.7 * point.achieved_rps {
                            let note = format!(
                                "{r} calls/s is above 70% of the server's closed-loop maximum ({:.0}/s): queueing in the server dominates that rate",
                                point.achieved_rps
                            );
                            eprintln!("stoa-bench: {note}");
                            result.notes.push(note);
                        }
                    }
                }
                result.ok_total_all += point.ok_total;
                if system == System::Stoa {
                    result.ok_total_stoa += point.ok_total;
                    if let Some(m) = point.metered_ok {
                        *result.metered_ok_total.get_or_insert(0) += m;
                        if m != point.ok_total {
                            let note = format!(
                                "stoa @ {}: {} ok answers but {m} metered ok calls",
                                rate.map_or("max".into(), |r| format!("{r}/s")),
                                point.ok_total
                            );
                            eprintln!("stoa-bench: {note}");
                            result.notes.push(note);
                        }
                    }
                }
                self.done += 1;
                print_point(self.done, self.plan.points(), &point, t.elapsed());
                self.points.push(point);
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        if let Some(bench) = &self.topo.mcp {
            match std::fs::read_to_string(&bench.server.calls_log) {
                Ok(log) => {
                    let calls = log.lines().count() as u64;
                    if calls != result.ok_total_all {
                        result.notes.push(format!(
                            "the server executed {calls} calls, the points and probes got {} ok answers",
                            result.ok_total_all
                        ));
                    }
                    result.server_calls = Some(calls);
                }
                Err(e) => result.notes.push(format!("server calls log not read: {e}")),
            }
        }
        // The ledger behind `stoa usage`: every metered call, the probe's included.
        match crate::mcp::ledger_ok(&self.topo.node) {
            Ok(n) => result.ledger_ok_total = Some(n),
            Err(e) => result.notes.push(format!("usage ledger not read: {e}")),
        }
        result
    }

    fn mcp_point(
        &self,
        system: System,
        rate: Option<u32>,
        rep: usize,
        warmup: Duration,
        duration: Duration,
    ) -> Point {
        let point = Point::new("mcp", system, rate, rep);
        let Some(bench) = &self.topo.mcp else {
            return point.failed("the MCP server is not set up".into());
        };
        if !bench.server.handle.is_running() {
            return point.failed(format!(
                "the MCP server is not running: {}",
                bench.server.handle.describe(10)
            ));
        }
        if !self.topo.proxy_running(system) {
            return point.failed(format!("{} is not running", system.name()));
        }
        let pod = match system {
            System::Stoa => &self.topo.client,
            _ => &self.topo.plain,
        };
        let spec = LoadSpec {
            url: crate::mcp::url(),
            rate,
            connections: self.plan.mcp_connections,
            h2_streams: None,
            headers: bench.headers.clone(),
            post_body: Some(bench.body_file.clone()),
            warmup,
            duration,
        };
        let before = (system == System::Stoa).then(|| crate::mcp::metered_ok(&self.topo.node));
        let mut point = self.measure(point, pod, &spec, bench.server.handle.pid());
        if let Some(before) = before {
            if point.failure.is_none() {
                point.metered_ok =
                    Some(crate::mcp::metered_ok(&self.topo.node).saturating_sub(before));
            }
        }
        point
    }
}

impl Point {
    fn new(protocol: &'static str, system: System, rate: Option<u32>, rep: usize) -> Point {
        Point {
            protocol,
            system,
            rate,
            rep,
            p50_us: None,
            p90_us: None,
            p99_us: None,
            p999_us: None,
            samples: 0,
            achieved_rps: 0.0,
            errors: 0,
            error_kinds: BTreeMap::new(),
            aborted_at_deadline: 0,
            total_requests: 0,
            ok_total: 0,
            metered_ok: None,
            cpu_s_per_10k: None,
            backend_cpu_s_per_10k: None,
            rss_mb: None,
            failure: None,
        }
    }

    fn failed(mut self, why: String) -> Point {
        self.failure = Some(why);
        self
    }
}

impl Runner {
    /// Runs one load point (`spec` from `pod`) and fills `point` with what it measured:
    /// latency, throughput, errors, and the CPU and peak RSS of the system's proxy and
    /// of `backend`.
    fn measure(&self, mut point: Point, pod: &Pod, spec: &LoadSpec, backend: u32) -> Point {
        let system = point.system;
        let pids = self.topo.proxy_pids(system);
        let cpu_before = procfs::cpu_seconds_all(&pids);
        let backend_before = procfs::cpu_seconds(backend).unwrap_or(0.0);
        let stop = AtomicBool::new(false);
        let (result, peak_kib) = std::thread::scope(|s| {
            let sampler =
                s.spawn(|| procfs::sample_peak_rss(&pids, Duration::from_millis(100), &stop));
            let result = loadgen::run(pod, &self.oha, spec, &self.layout.loadgen, &self.work_dir);
            stop.store(true, Ordering::Relaxed);
            (result, sampler.join().unwrap_or(0))
        });
        let cpu = procfs::cpu_seconds_all(&pids) - cpu_before;
        let backend_cpu = procfs::cpu_seconds(backend).unwrap_or(0.0) - backend_before;
        match result {
            Ok(r) => {
                if let Some(lat) = r.latency {
                    point.p50_us = Some(round1(lat.p50_us));
                    point.p90_us = Some(round1(lat.p90_us));
                    point.p99_us = Some(round1(lat.p99_us));
                    point.p999_us = Some(round1(lat.p999_us));
                    point.samples = lat.count;
                }
                point.achieved_rps = round1(r.achieved_rps);
                point.errors = r.errors;
                point.error_kinds = r.error_kinds;
                point.aborted_at_deadline = r.aborted_at_deadline;
                point.total_requests = r.total_requests;
                point.ok_total = r.ok_total;
                if r.total_requests > 0 {
                    let per10k = |s: f64| round3(s / r.total_requests as f64 * 10_000.0);
                    if !pids.is_empty() {
                        point.cpu_s_per_10k = Some(per10k(cpu));
                    }
                    point.backend_cpu_s_per_10k = Some(per10k(backend_cpu));
                }
                if !pids.is_empty() {
                    point.rss_mb = Some(round1(kib_to_mb(peak_kib)));
                }
            }
            Err(e) => point.failure = Some(format!("{e:#}")),
        }
        point
    }

    /// connect() from a pod: direct (pod no policy lists), hook only (listed workload,
    /// destination no contract names: the kernel program runs and passes) and redirect
    /// (listed workload to the contract's address: rewritten to the proxy). Interleaved
    /// in rounds.
    fn connect_phase(&self) -> ConnectResult {
        println!(
            "stoa-bench: connect() cost, {} connections per path",
            self.plan.connect_samples
        );
        let exe = Topology::self_exe().expect("own path");
        let key = self.topo.key_header();
        let variants: [(
            &'static str,
            &'static str,
            &stoa_tests::Pod,
            std::net::Ipv4Addr,
        ); 3] = [
            (
                "direct",
                "pod without policy → backend",
                &self.topo.plain,
                BENCH_IP,
            ),
            (
                "hook_only",
                "listed workload → address without contract (kernel program runs, no redirect)",
                &self.topo.client,
                HOOK_IP,
            ),
            (
                "redirect",
                "listed workload → contract address, redirected to the node proxy",
                &self.topo.client,
                BENCH_IP,
            ),
        ];
        let rounds = 4usize;
        let per_round = self.plan.connect_samples.div_ceil(rounds).max(1);
        let mut connect: Vec<Vec<f64>> = vec![Vec::new(); 3];
        let mut first: Vec<Vec<f64>> = vec![Vec::new(); 3];
        let mut errors = [0u64; 3];
        for _ in 0..rounds {
            for (i, (_, _, pod, ip)) in variants.iter().enumerate() {
                let mut cmd = pod.command(&exe);
                cmd.args(["connect-probe", "--addr", &format!("{ip}:80")])
                    .args(["--count", &per_round.to_string()])
                    .args(["--request", REQUEST_PATH, "--header", &key]);
                let out = procfs::with_affinity(&self.layout.loadgen, || {
                    run_with_timeout(&mut cmd, Duration::from_secs(120))
                });
                match serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                    Ok(v) => {
                        let ns = |k: &str| -> Vec<f64> {
                            v[k].as_array()
                                .map(|a| {
                                    a.iter()
                                        .filter_map(|x| x.as_f64())
                                        .map(|x| x / 1000.0)
                                        .collect()
                                })
                                .unwrap_or_default()
                        };
                        connect[i].extend(ns("connect_ns"));
                        first[i].extend(ns("request_ns"));
                        errors[i] += v["errors"].as_u64().unwrap_or(0);
                    }
                    Err(e) => {
                        eprintln!("connect-probe failed: {e}: {}", out.stderr_str());
                        errors[i] += per_round as u64;
                    }
                }
            }
        }
        let out: Vec<ConnectVariant> = variants
            .iter()
            .enumerate()
            .map(|(i, (name, description, _, _))| ConnectVariant {
                name,
                description,
                connect: Percentiles::of_us(std::mem::take(&mut connect[i])).map(round_pct),
                first_request: Percentiles::of_us(std::mem::take(&mut first[i])).map(round_pct),
                errors: errors[i],
            })
            .collect();
        let get = |name: &str, f: fn(&ConnectVariant) -> Option<Percentiles>| {
            out.iter().find(|v| v.name == name).and_then(f)
        };
        let c = |v: &ConnectVariant| v.connect;
        let r = |v: &ConnectVariant| v.first_request;
        let diff = |a: Option<f64>, b: Option<f64>| Some(round1(a? - b?));
        ConnectResult {
            extra_connect_p50_us: diff(
                get("redirect", c).map(|p| p.p50_us),
                get("direct", c).map(|p| p.p50_us),
            ),
            extra_connect_p99_us: diff(
                get("redirect", c).map(|p| p.p99_us),
                get("direct", c).map(|p| p.p99_us),
            ),
            extra_first_request_p50_us: diff(
                get("redirect", r).map(|p| p.p50_us),
                get("direct", r).map(|p| p.p50_us),
            ),
            hook_only_extra_p50_us: diff(
                get("hook_only", c).map(|p| p.p50_us),
                get("direct", c).map(|p| p.p50_us),
            ),
            variants: out,
        }
    }

    /// Idle memory (taken before any load) and memory with `hold_conns` idle keep-alive
    /// connections open through each proxy (one request served on each).
    fn memory_phase(&self, idle: BTreeMap<System, Memory>) -> Vec<MemoryRow> {
        let exe = Topology::self_exe().expect("own path");
        let key = self.topo.key_header();
        let mut rows = Vec::new();
        for (&system, idle_mem) in &idle {
            let pids = self.topo.proxy_pids(system);
            let mut row = MemoryRow {
                system,
                processes: pids.len(),
                idle_rss_mb: round1(kib_to_mb(idle_mem.rss_kib)),
                idle_hwm_mb: round1(kib_to_mb(idle_mem.hwm_kib)),
                conns_requested: self.plan.hold_conns,
                conns_held: None,
                conns_rss_mb: None,
                conns_hwm_mb: None,
                note: None,
            };
            if self.plan.hold_conns == 0 || !self.topo.proxy_running(system) {
                rows.push(row);
                continue;
            }
            println!(
                "stoa-bench: holding {} connections through {}",
                self.plan.hold_conns,
                system.name()
            );
            let (pod, _) = self.topo.target(system);
            let addr = self.topo.target_addr(system);
            let holder = procfs::with_affinity(&self.layout.loadgen, || {
                let mut cmd = pod.command(&exe);
                cmd.args(["hold-conns", "--addr", &addr.to_string()])
                    .args(["--count", &self.plan.hold_conns.to_string()])
                    .args([
                        "--path",
                        REQUEST_PATH,
                        "--header",
                        &key,
                        "--hold-secs",
                        "600",
                    ]);
                pod.spawn(&format!("hold-{}", system.name()), &mut cmd)
            });
            if holder.wait_for_output("held ", Duration::from_secs(300)) {
                std::thread::sleep(Duration::from_millis(500));
                let mem = Memory::of_all(&pids);
                row.conns_rss_mb = Some(round1(kib_to_mb(mem.rss_kib)));
                row.conns_hwm_mb = Some(round1(kib_to_mb(mem.hwm_kib)));
                let line = holder.stdout();
                let mut f = line.split_whitespace();
                row.conns_held = f.nth(1).and_then(|n| n.parse().ok());
                let errors: u64 = f.nth(1).and_then(|n| n.parse().ok()).unwrap_or(0);
                if errors > 0 {
                    row.note = Some(format!("{errors} connections failed"));
                }
            } else {
                row.note = Some(format!("holder did not finish: {}", holder.describe(5)));
            }
            drop(holder);
            std::thread::sleep(Duration::from_secs(1));
            rows.push(row);
        }
        rows
    }

    /// Policy file change → behaviour change seen from the client pod, `policy_samples`
    /// times, alternating between two states.
    fn policy_phase(&self) -> PolicyResult {
        let n = self.plan.policy_samples;
        println!("stoa-bench: policy change to enforcement, {n} changes");
        let topo = &self.topo;
        let node = &topo.node;
        let l7 = topo.mode.is_l7();
        let change = if l7 {
            "AccessPolicy rewritten: bench consumer allowed getItem on bench-probe ↔ allowed only listItems (200 ↔ 403)".to_string()
        } else {
            format!(
                "ApiContract for {PROBE_IP}:80 written ↔ removed (new connections redirected through the proxy ↔ direct)"
            )
        };
        let mut result = PolicyResult {
            change,
            samples_ms: Vec::new(),
            median_ms: None,
            p90_ms: None,
            min_ms: None,
            max_ms: None,
            timeouts: 0,
            observed_statuses: Vec::new(),
            note: None,
        };
        // The two states and what the client pod sees in each.
        let gateway_peer = format!("body~\"peer\":\"{}:", topo.server.gateway());
        let client_peer = format!("body~\"peer\":\"{}:", topo.client.ip());
        let version = node.agent_snapshot_version();
        if l7 {
            node.write_policy(
                "probe-contract.yaml",
                &topology::probe_contract_yaml(&topo.mode),
            );
            node.write_policy("probe-access.yaml", &topology::probe_access_yaml("getItem"));
            node.wait_for_snapshot_above(version, Duration::from_secs(20));
        }
        let exe = Topology::self_exe().expect("own path");
        let mut cmd = topo.client.command(&exe);
        cmd.args(["policy-probe", "--addr", &format!("{PROBE_IP}:80")])
            .args(["--path", REQUEST_PATH, "--header", &topo.key_header()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let child = procfs::with_affinity(&self.layout.loadgen, || cmd.spawn());
        let mut probe = match child {
            Ok(c) => ProbeChild(c),
            Err(e) => {
                result.note = Some(format!("cannot start the probe: {e}"));
                return result;
            }
        };
        let mut stdin = probe.0.stdin.take().expect("piped stdin");
        let mut stdout = BufReader::new(probe.0.stdout.take().expect("piped stdout"));
        let mut read_line = || {
            let mut line = String::new();
            stdout.read_line(&mut line).ok().filter(|n| *n > 0)?;
            Some(line.trim().to_string())
        };
        // Settle into the first state (and check the probe works at all).
        let first_state = if l7 {
            "status=200"
        } else {
            client_peer.as_str()
        };
        let _ = writeln!(stdin, "until {first_state}");
        match read_line().as_deref() {
            Some(l) if l.starts_with("already") => {}
            Some(l) if l.starts_with("polling") => match read_line() {
                Some(l) if l.starts_with("observed") => {}
                other => {
                    result.note = Some(format!("the probe never saw the initial state: {other:?}"));
                    return result;
                }
            },
            other => {
                result.note = Some(format!("the probe failed: {other:?}"));
                return result;
            }
        }
        for i in 0..n {
            let apply = i % 2 == 0;
            let cond = match (l7, apply) {
                (true, true) => "status!=200".to_string(),
                (true, false) => "status=200".to_string(),
                (false, true) => gateway_peer.clone(),
                (false, false) => client_peer.clone(),
            };
            let _ = writeln!(stdin, "until {cond}");
            match read_line().as_deref() {
                Some(l) if l.starts_with("polling") => {}
                other => {
                    result.note = Some(format!(
                        "sample {i}: unexpected state before the change: {other:?}"
                    ));
                    break;
                }
            }
            let t0 = procfs::monotonic_ns();
            match (l7, apply) {
                (true, true) => {
                    node.write_policy(
                        "probe-access.yaml",
                        &topology::probe_access_yaml("listItems"),
                    );
                }
                (true, false) => {
                    node.write_policy("probe-access.yaml", &topology::probe_access_yaml("getItem"));
                }
                (false, true) => {
                    node.write_policy(
                        "probe-contract.yaml",
                        &topology::probe_contract_yaml(&topo.mode),
                    );
                }
                (false, false) => node.remove_policy("probe-contract.yaml"),
            }
            match read_line() {
                Some(l) if l.starts_with("observed") => {
                    let fields: Vec<&str> = l.split_whitespace().collect();
                    let t1: u64 = fields.get(1).and_then(|t| t.parse().ok()).unwrap_or(t0);
                    result
                        .observed_statuses
                        .push(fields.get(3).and_then(|s| s.parse().ok()).unwrap_or(0));
                    result
                        .samples_ms
                        .push(Some(round3(t1.saturating_sub(t0) as f64 / 1e6)));
                }
                other => {
                    result.timeouts += 1;
                    result.samples_ms.push(None);
                    if i == 0 {
                        result.note = Some(format!(
                            "the first change was never observed ({other:?}): stopping"
                        ));
                        break;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        drop(stdin);
        drop(probe);
        let ok: Vec<f64> = result.samples_ms.iter().flatten().copied().collect();
        if let Some(s) = Spread::of(&ok) {
            result.median_ms = Some(round3(s.median));
            result.min_ms = Some(s.min);
            result.max_ms = Some(s.max);
        }
        let mut sorted = ok;
        sorted.sort_by(f64::total_cmp);
        result.p90_ms = crate::stats::percentile(&sorted, 90.0);
        result
    }
}

/// Stops every process the node started and removes its namespaces, cgroups, pins and
/// files when dropped.
struct CleanupGuard(std::sync::Arc<stoa_tests::SimNode>);

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        self.0.cleanup();
    }
}

/// The policy probe, stopped (SIGKILL by its pid) and reaped when dropped.
struct ProbeChild(Child);

impl Drop for ProbeChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn round_pct(p: Percentiles) -> Percentiles {
    Percentiles {
        count: p.count,
        p50_us: round1(p.p50_us),
        p90_us: round1(p.p90_us),
        p99_us: round1(p.p99_us),
        p999_us: round1(p.p999_us),
    }
}

fn print_point(done: usize, total: usize, p: &Point, took: Duration) {
    let rate = p.rate.map_or("max".to_string(), |r| format!("{r} rps"));
    let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
    if let Some(failure) = &p.failure {
        println!(
            "[{done}/{total}] {} {} @ {rate} rep {}: FAILED {}",
            p.protocol,
            p.system.name(),
            p.rep,
            failure.lines().next().unwrap_or("")
        );
        return;
    }
    println!(
        "[{done}/{total}] {} {:<7} @ {rate:<9} rep {}: p50 {} p99 {} p99.9 {} µs, {:.0} rps, {} errors, cpu {} s/10k, rss {} MB ({:.1} s)",
        p.protocol,
        p.system.name(),
        p.rep,
        f(p.p50_us),
        f(p.p99_us),
        f(p.p999_us),
        p.achieved_rps,
        p.errors,
        p.cpu_s_per_10k.map_or("-".into(), |c| format!("{c:.3}")),
        p.rss_mb.map_or("-".into(), |m| format!("{m:.1}")),
        took.as_secs_f64(),
    );
}

/// So `PolicyMode` is reachable from the report without a second import path.
pub fn mode_reason(mode: &PolicyMode) -> Option<&str> {
    match mode {
        PolicyMode::PassThrough { reason } => Some(reason),
        PolicyMode::L7 { .. } => None,
    }
}
