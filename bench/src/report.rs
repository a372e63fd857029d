//! The three outputs: `latest.json` (meta + rows per protocol + the STOA extras),
//! `latest.md` (the same as tables) and `latency.png` (gnuplot).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde_json::{json, Value};
use stoa_tests::OutputExt;

use crate::procfs;
use crate::run::{
    mode_reason, ConnectResult, McpResult, MemoryRow, Plan, Point, PolicyResult, Runner,
};
use crate::stats::{round1, round3, Spread};
use crate::topology::{PolicyMode, System};

pub struct Results {
    pub meta: Value,
    pub plan: Plan,
    pub points: Vec<Point>,
    pub memory: Vec<MemoryRow>,
    pub connect: Option<ConnectResult>,
    pub policy: Option<PolicyResult>,
    pub mode: PolicyMode,
    /// Why stoa has no HTTP/2 rows, if it has none.
    pub h2_skip: Option<String>,
    /// The MCP row's extras, when that phase ran.
    pub mcp: Option<McpResult>,
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC) without a date crate.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr_str()
            } else {
                o.stdout_str()
            };
            text.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_default()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default()
}

fn mem_total_gib() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(round1(kib / 1024.0 / 1024.0))
}

pub fn meta(
    runner: &Runner,
    plan: &Plan,
    started_at: &str,
    elapsed: Duration,
    oha_version: &str,
    nofile: u64,
) -> Value {
    let topo = &runner.topo;
    let commit = command_line("git", &["rev-parse", "HEAD"]);
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    let agent = stoa_tests::bin_path("stoa-agent");
    json!({
        "quick": plan.quick,
        "date": started_at,
        "duration_s": elapsed.as_secs(),
        "machine": {
            "hostname": std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim(),
            "cpu": cpu_model(),
            "cpus": procfs::online_cpus(),
            "memory_gib": mem_total_gib(),
        },
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "commit": commit,
        "commit_dirty": dirty,
        "tools": {
            "oha": oha_version,
            "nginx": command_line("nginx", &["-v"]),
            "haproxy": command_line("haproxy", &["-v"]),
            "gnuplot": command_line("gnuplot", &["--version"]),
            "sqlite3": command_line("sqlite3", &["--version"]),
            "rustc": command_line("rustc", &["--version"]),
            "stoa-agent": command_line(&agent.display().to_string(), &["--version"]),
        },
        "layout": {
            "loadgen_cpus": runner.layout.loadgen,
            "proxy_cpus": runner.layout.proxy,
            "backend_cpus": runner.layout.backend,
            "controller_cpus": runner.layout.loadgen,
            "runner_cpus": runner.layout.loadgen,
            "how": "sched_setaffinity inherited from the runner's thread at spawn (like taskset -c); the agent's tokio runtime sizes itself to its one CPU",
            "processes": topo.process_layout(),
            "open_files_limit": nofile,
        },
        "topology": {
            "node": "SimNode from stoa-tests: a node netns with the proxy address 169.254.42.1:15001 on lo; pods are netns + veth + cgroup v2",
            "backend": "stoa-bench-backend in pod 'server' on 10.96.0.10:80 (and .11): 200 with a 1 KiB body, HTTP/1.1 and h2c, one thread",
            "direct": "oha in pod 'plain' (no policy lists it) → 10.96.0.10:80",
            "stoa": "oha in pod 'client' (a Workload) → 10.96.0.10:80, redirected by cgroup/connect4 to the agent's proxy in the node netns → backend",
            "nginx": format!("oha in pod 'plain' → nginx on {}:{} in the node netns → backend (1 worker, upstream keep-alive 256)", topo.plain.gateway(), crate::topology::NGINX_PORT),
            "haproxy": format!("oha in pod 'plain' → HAProxy on {}:{} in the node netns → backend (nbthread 1, http mode, keep-alive, http-reuse always)", topo.plain.gateway(), crate::topology::HAPROXY_PORT),
            "peer_work": "nginx and HAProxy check the x-api-key header, match the /items/{id} route and evaluate a per-key rate limit far above the load",
        },
        "load": {
            "generator": "oha (in the client's pod): open loop -q RATE --latency-correction, -w; closed loop for the max run; per-request records via --db-url, warm-up excluded",
            "max_run": "closed loop over the same connections for warm-up + duration; figures from oha's summary of the whole run (2xx / run time, oha's percentiles)",
            "request": "GET /items/1 with an x-api-key header; response 200 with 1 KiB",
            "rates": plan.rates,
            "connections_http1": plan.connections,
            "connections_http2": plan.h2_connections,
            "streams_per_connection_http2": plan.h2_streams,
            "warmup_s": plan.warmup_s,
            "duration_s": plan.duration_s,
            "repetitions": plan.reps,
            "order": "per repetition: each rate then the max run; systems interleaved inside each (direct, stoa, nginx, haproxy)",
            "percentiles": "nearest rank over the 2xx responses scheduled inside the window; rows give the median over repetitions, range gives min–max",
        },
        "logging": {
            "stoa-agent": format!("RUST_LOG={}", crate::topology::agent_log_filter(plan.agent_access_log)),
            "nginx": "access_log off; error_log warn",
            "haproxy": "no log",
        },
        "stoa_policy": {
            "mode": topo.mode.label(),
            "fallback_reason": mode_reason(&topo.mode),
        },
        "bin_dir": stoa_tests::bin_dir().display().to_string(),
        "notes": topo.notes,
    })
}

struct Agg {
    p50: Option<Spread>,
    p90: Option<Spread>,
    p99: Option<Spread>,
    p999: Option<Spread>,
    rps: Option<Spread>,
    cpu: Option<Spread>,
    backend_cpu: Option<Spread>,
    rss: Option<Spread>,
    errors: u64,
    reps: usize,
    failures: Vec<String>,
}

fn aggregate(points: &[&Point]) -> Agg {
    let ok: Vec<&&Point> = points.iter().filter(|p| p.failure.is_none()).collect();
    let spread = |f: fn(&Point) -> Option<f64>| {
        let v: Vec<f64> = ok.iter().filter_map(|p| f(p)).collect();
        Spread::of(&v)
    };
    Agg {
        p50: spread(|p| p.p50_us),
        p90: spread(|p| p.p90_us),
        p99: spread(|p| p.p99_us),
        p999: spread(|p| p.p999_us),
        rps: spread(|p| Some(p.achieved_rps)),
        cpu: spread(|p| p.cpu_s_per_10k),
        backend_cpu: spread(|p| p.backend_cpu_s_per_10k),
        rss: spread(|p| p.rss_mb),
        errors: points.iter().map(|p| p.errors).sum(),
        reps: ok.len(),
        failures: points.iter().filter_map(|p| p.failure.clone()).collect(),
    }
}

fn med(s: Option<Spread>) -> Option<f64> {
    s.map(|s| round1(s.median))
}

fn range(s: Option<Spread>) -> Value {
    s.map_or(Value::Null, |s| json!([round1(s.min), round1(s.max)]))
}

fn rate_key(rate: Option<u32>) -> Value {
    rate.map_or(json!("max"), |r| json!(r))
}

/// The rows of one protocol: per system and rate (fixed rates first, then "max").
pub fn rows(results: &Results, protocol: &str) -> Vec<Value> {
    let (rates, systems): (&[u32], Vec<System>) = match protocol {
        "mcp" => (&results.plan.mcp_rates, results.plan.mcp_systems()),
        "http2" => (&results.plan.rates, results.plan.h2_systems()),
        _ => (&results.plan.rates, results.plan.systems.clone()),
    };
    rows_of(results, protocol, rates, &systems)
}

fn rows_of(results: &Results, protocol: &str, rates: &[u32], systems: &[System]) -> Vec<Value> {
    let points: Vec<&Point> = results
        .points
        .iter()
        .filter(|p| p.protocol == protocol)
        .collect();
    let mut groups: BTreeMap<(System, u32), Vec<&Point>> = BTreeMap::new();
    for p in &points {
        groups
            .entry((p.system, p.rate.unwrap_or(u32::MAX)))
            .or_default()
            .push(p);
    }
    let aggs: BTreeMap<(System, u32), Agg> =
        groups.iter().map(|(k, v)| (*k, aggregate(v))).collect();
    let rps_max = |system: System| aggs.get(&(system, u32::MAX)).and_then(|a| med(a.rps));
    let mut rates: Vec<u32> = rates.to_vec();
    rates.push(u32::MAX);
    let mut out = Vec::new();
    for &rate in &rates {
        let direct = aggs.get(&(System::Direct, rate));
        for &system in systems {
            let rate_v = rate_key((rate != u32::MAX).then_some(rate));
            let Some(a) = aggs.get(&(system, rate)) else {
                if protocol == "http2" && system == System::Stoa {
                    out.push(json!({
                        "system": system.name(), "rate": rate_v,
                        "p50_us": null, "p90_us": null, "p99_us": null, "p999_us": null,
                        "achieved_rps": null, "errors": null, "rps_max": null,
                        "cpu_s_per_10k": null, "rss_mb": null,
                        "skipped": results.h2_skip,
                    }));
                }
                continue;
            };
            let added = |f: fn(&Agg) -> Option<Spread>| -> Value {
                match (med(f(a)), direct.and_then(|d| med(f(d)))) {
                    (Some(x), Some(d)) if system != System::Direct => json!(round1(x - d)),
                    _ => Value::Null,
                }
            };
            let mut row = json!({
                "system": system.name(),
                "rate": rate_v,
                "p50_us": med(a.p50),
                "p90_us": med(a.p90),
                "p99_us": med(a.p99),
                "p999_us": med(a.p999),
                "achieved_rps": med(a.rps),
                "errors": a.errors,
                "rps_max": rps_max(system),
                "cpu_s_per_10k": a.cpu.map(|s| round3(s.median)),
                "rss_mb": med(a.rss),
                "added_p50_us": added(|a| a.p50),
                "added_p90_us": added(|a| a.p90),
                "added_p99_us": added(|a| a.p99),
                "added_p999_us": added(|a| a.p999),
                "backend_cpu_s_per_10k": a.backend_cpu.map(|s| round3(s.median)),
                "reps": a.reps,
                "range": {
                    "p50_us": range(a.p50), "p90_us": range(a.p90),
                    "p99_us": range(a.p99), "p999_us": range(a.p999),
                    "achieved_rps": range(a.rps),
                    "cpu_s_per_10k": a.cpu.map_or(Value::Null, |s| json!([round3(s.min), round3(s.max)])),
                },
            });
            if protocol == "mcp" {
                // stoa / direct at the same rate (the server dominates both).
                let ratio = |f: fn(&Agg) -> Option<Spread>| -> Value {
                    match (med(f(a)), direct.and_then(|d| med(f(d)))) {
                        (Some(x), Some(d)) if system != System::Direct && d > 0.0 => {
                            json!(round3(x / d))
                        }
                        _ => Value::Null,
                    }
                };
                row["ratio_p50"] = ratio(|a| a.p50);
                row["ratio_p90"] = ratio(|a| a.p90);
                row["ratio_p99"] = ratio(|a| a.p99);
            }
            if !a.failures.is_empty() {
                row["failures"] = json!(a.failures);
            }
            out.push(row);
        }
    }
    out
}

/// `latest.json`'s `mcp`: what was measured, the rows, the closed-loop maxima and the
/// checks that the stoa rows measure governed calls.
fn mcp_section(results: &Results, m: &McpResult) -> Value {
    let plan = &results.plan;
    let rows = rows(results, "mcp");
    let max_of = |system: &str| {
        rows.iter()
            .find(|r| r["system"] == system && r["rate"] == "max")
            .map_or(Value::Null, |r| r["achieved_rps"].clone())
    };
    let credentials = if results.mode.is_l7() {
        "credentials [apiKey] (the bench consumer's x-api-key, as the HTTP contract)"
    } else {
        "credentials [workload] (the client pod's identity)"
    };
    json!({
        "skipped": m.skipped,
        "request": format!(
            "POST {} (MCP {} tools/call of {} with {{\"text\":\"hi\"}}; headers MCP-Protocol-Version, Mcp-Method, Mcp-Name, x-api-key): 200 application/json with the JSON-RPC result",
            crate::mcp::url(), crate::mcp::PROTOCOL_VERSION, crate::mcp::TOOL
        ),
        "server": format!(
            "tests/peers/mcp_server.py {} (Python SDK MCPServer on uvicorn, one process) in pod 'mcp' on {}, pinned to the backend CPU {}",
            crate::mcp::SERVER_ARGS.join(" "), crate::mcp::addr(), results.meta["layout"]["backend_cpus"]
        ),
        "stoa_path": format!(
            "oha in pod 'client' (a Workload) → {} redirected to the agent: JSON-RPC parse, routing headers checked against the body, {credentials}, tool authorization (AccessPolicy allows {}), per-tool Quota (100,000,000/s on {}, enforce), metering to the usage ledger; audit off",
            crate::mcp::addr(), crate::mcp::TOOL, crate::mcp::TOOL
        ),
        "direct_path": format!("oha in pod 'plain' (no policy lists it) → {}", crate::mcp::addr()),
        "policy": crate::mcp::policy_yaml(&results.mode),
        "rates": plan.mcp_rates,
        "connections": plan.mcp_connections,
        "warmup_s": plan.warmup_s,
        "duration_s": plan.mcp_duration_s,
        "repetitions": plan.reps,
        "max_run_s": plan.mcp_max_s,
        "order": "one closed-loop run per system first (direct, stoa), then per repetition each rate with the systems interleaved",
        "server_max_rps": max_of("direct"),
        "stoa_max_rps": max_of("stoa"),
        "rows": rows,
        "probe": m.probe,
        "metering": {
            "stoa_ok_answers": m.ok_total_stoa,
            "metered_ok": m.metered_ok_total,
            "ledger_ok": m.ledger_ok_total,
            "ok_answers": m.ok_total_all,
            "server_calls": m.server_calls,
            "how": "stoa_ok_answers: 2xx answers oha got on the stoa points (warm-up included); metered_ok: the agent's stoa_mcp_tool_calls_total{outcome=ok} for the tool over the same points (a denial or a tool error would be counted under another outcome, at HTTP 200 too); ledger_ok: `stoa usage` over the agent's ledger at the end (the stoa probe's call included); ok_answers: 2xx answers of every MCP point, the two probe calls and the 2 s unrecorded warm-up run; server_calls: tool calls the server executed (its calls log)",
        },
        "notes": m.notes,
    })
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// The targets, evaluated (reported only; nothing fails on them).
fn targets(results: &Results, http1: &[Value]) -> Vec<Value> {
    let mut out = Vec::new();
    let find = |system: &str, rate: u32| {
        http1
            .iter()
            .find(|r| r["system"] == system && r["rate"] == json!(rate))
    };
    for &rate in &results.plan.rates {
        let stoa = find("stoa", rate).and_then(|r| num(&r["added_p99_us"]));
        let peers: Vec<f64> = ["nginx", "haproxy"]
            .iter()
            .filter_map(|s| find(s, rate).and_then(|r| num(&r["added_p99_us"])))
            .collect();
        let best = peers.iter().copied().reduce(f64::min);
        out.push(json!({
            "target": format!("stoa added p99 ≤ lower of nginx's and HAProxy's at {rate} rps (http1)"),
            "value_us": stoa, "limit_us": best,
            "met": match (stoa, best) { (Some(s), Some(b)) => json!(s <= b), _ => Value::Null },
        }));
    }
    let p50 = find("stoa", 5000).and_then(|r| num(&r["added_p50_us"]));
    out.push(json!({
        "target": "stoa added p50 ≤ 25 µs at 5000 rps (http1)",
        "value_us": p50, "limit_us": 25.0,
        "met": p50.map_or(Value::Null, |v| json!(v <= 25.0)),
    }));
    let mem = results.memory.iter().find(|m| m.system == System::Stoa);
    let idle = mem.map(|m| m.idle_rss_mb);
    let conns = mem.and_then(|m| m.conns_rss_mb);
    out.push(json!({
        "target": "agent RSS ≤ 20 MB idle",
        "value_mb": idle, "limit_mb": 20.0,
        "met": idle.map_or(Value::Null, |v| json!(v <= 20.0)),
    }));
    out.push(json!({
        "target": format!("agent RSS ≤ 40 MB with {} open connections", results.plan.hold_conns),
        "value_mb": conns, "limit_mb": 40.0,
        "met": conns.map_or(Value::Null, |v| json!(v <= 40.0)),
    }));
    let policy = results.policy.as_ref().and_then(|p| p.median_ms);
    out.push(json!({
        "target": "policy change to enforcement ≤ 100 ms (median)",
        "value_ms": policy, "limit_ms": 100.0,
        "met": policy.map_or(Value::Null, |v| json!(v <= 100.0)),
    }));
    out
}

pub fn write_all(results: &Results, out_dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let http1 = rows(results, "http1");
    let http2 = if results.plan.h2 {
        rows(results, "http2")
    } else {
        Vec::new()
    };
    let targets = targets(results, &http1);
    let mut doc = json!({
        "meta": results.meta,
        "http1": http1,
    });
    if results.plan.h2 {
        doc["http2"] = json!(http2);
    }
    if let Some(m) = &results.mcp {
        doc["mcp"] = mcp_section(results, m);
    }
    doc["memory"] = json!(results.memory);
    doc["stoa"] = json!({
        "policy_mode": results.mode,
        "connect": results.connect,
        "policy_to_enforcement": results.policy,
        "http2_skipped": results.h2_skip,
    });
    doc["targets"] = json!(targets);
    doc["points"] = json!(results.points);
    let json_path = out_dir.join("latest.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&doc)? + "\n")?;
    std::fs::write(out_dir.join("latest.md"), markdown(&doc, results))?;
    if let Err(e) = plot(results, &doc, out_dir) {
        eprintln!("stoa-bench: no plot: {e:#}");
    }
    Ok(())
}

fn fmt_opt(v: &Value, digits: usize) -> String {
    match v.as_f64() {
        Some(x) => format!("{x:.digits$}"),
        None => "–".to_string(),
    }
}

/// "412 (398–430)": median with the min–max over repetitions.
/// The cells every latency row starts with: system, rate, p50, p90, p99, p99.9.
fn latency_cells(r: &Value) -> String {
    [
        r["system"].as_str().unwrap_or("").to_string(),
        r["rate"]
            .as_str()
            .map_or(r["rate"].to_string(), str::to_string),
        with_range(r, "p50_us"),
        with_range(r, "p90_us"),
        with_range(r, "p99_us"),
        with_range(r, "p999_us"),
    ]
    .join(" | ")
}

fn with_range(row: &Value, key: &str) -> String {
    let m = fmt_opt(&row[key], 0);
    match row["range"][key].as_array() {
        Some(r) if r.len() == 2 && r[0] != r[1] && row["reps"].as_u64().unwrap_or(0) > 1 => {
            format!("{m} ({}–{})", fmt_opt(&r[0], 0), fmt_opt(&r[1], 0))
        }
        _ => m,
    }
}

fn signed(v: &Value) -> String {
    match v.as_f64() {
        Some(x) => format!("{x:+.0}"),
        None => "–".to_string(),
    }
}

fn markdown(doc: &Value, results: &Results) -> String {
    let meta = &doc["meta"];
    let mut md = String::new();
    let _ = writeln!(md, "# STOA benchmark results\n");
    if results.plan.quick {
        let _ = writeln!(
            md,
            "> **Quick smoke run** (`--quick`: one rate, short points, one repetition): it proves the pipeline, its numbers are not for quoting.\n"
        );
    }
    let _ = writeln!(
        md,
        "- date: {} · duration {} s · commit `{}`{}",
        meta["date"].as_str().unwrap_or(""),
        meta["duration_s"],
        meta["commit"].as_str().unwrap_or(""),
        if meta["commit_dirty"] == true {
            " (with uncommitted changes)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        md,
        "- machine: {} × {} · {} GiB · kernel {}",
        meta["machine"]["cpus"],
        meta["machine"]["cpu"].as_str().unwrap_or("?"),
        meta["machine"]["memory_gib"],
        meta["kernel"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        md,
        "- pinning: load generator CPU {}, proxy CPU {}, backend CPU {} (controller and runner with the load generator)",
        meta["layout"]["loadgen_cpus"], meta["layout"]["proxy_cpus"], meta["layout"]["backend_cpus"]
    );
    let _ = writeln!(
        md,
        "- load: {} (HTTP/1.1: {} connections; HTTP/2: {} connections × {} streams); {} s warm-up + {} s per point; {} repetition(s), systems interleaved",
        meta["load"]["generator"].as_str().unwrap_or(""),
        results.plan.connections,
        results.plan.h2_connections,
        results.plan.h2_streams,
        results.plan.warmup_s,
        results.plan.duration_s,
        results.plan.reps
    );
    let _ = writeln!(
        md,
        "- stoa policy: {}{}",
        results.mode.label(),
        mode_reason(&results.mode)
            .map(|r| format!(" — {r}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        md,
        "- tools: {} · {} · {}",
        meta["tools"]["oha"].as_str().unwrap_or(""),
        meta["tools"]["nginx"].as_str().unwrap_or(""),
        meta["tools"]["haproxy"].as_str().unwrap_or("")
    );
    let _ = writeln!(
        md,
        "- logging: stoa-agent {} · nginx {} · HAProxy {}",
        meta["logging"]["stoa-agent"].as_str().unwrap_or(""),
        meta["logging"]["nginx"].as_str().unwrap_or(""),
        meta["logging"]["haproxy"].as_str().unwrap_or("")
    );
    let _ = writeln!(
        md,
        "\nReproduce: `make bench` (as root; `make bench BENCH_ARGS=--quick` for a smoke run).\n"
    );
    let _ = writeln!(
        md,
        "![latency percentiles by system and rate](latency.png)\n"
    );

    for (proto, title) in [("http1", "HTTP/1.1"), ("http2", "HTTP/2 (h2c)")] {
        let Some(rows) = doc[proto].as_array().filter(|r| !r.is_empty()) else {
            continue;
        };
        let _ = writeln!(md, "## {title}\n");
        let _ = writeln!(md, "Latency in µs: median over repetitions (min–max). “+” columns: added over direct at the same rate. Rate `max`: closed loop, as fast as the connections go.\n");
        let _ = writeln!(
            md,
            "| system | rate | p50 | p90 | p99 | p99.9 | +p50 | +p99 | achieved rps | errors | max rps | CPU s / 10k req | RSS MB |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for r in rows {
            if let Some(reason) = r["skipped"].as_str() {
                let _ = writeln!(
                    md,
                    "| {} | {} | skipped: {} ||||||||||||",
                    r["system"].as_str().unwrap_or(""),
                    r["rate"],
                    reason
                );
                continue;
            }
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                latency_cells(r),
                signed(&r["added_p50_us"]),
                signed(&r["added_p99_us"]),
                fmt_opt(&r["achieved_rps"], 0),
                r["errors"],
                fmt_opt(&r["rps_max"], 0),
                fmt_opt(&r["cpu_s_per_10k"], 3),
                fmt_opt(&r["rss_mb"], 1),
            );
        }
        let _ = writeln!(md);
    }

    if let Some(mcp) = doc.get("mcp") {
        markdown_mcp(&mut md, mcp);
    }

    if !results.memory.is_empty() {
        let _ = writeln!(md, "## Memory of the proxy process\n");
        let _ = writeln!(md, "RSS from /proc/PID/status (nginx: master + worker). Idle: after start-up and one request, before any load. With connections: {} idle keep-alive connections open, one request served on each; HWM is the peak since start, load phases included.\n", results.plan.hold_conns);
        let _ = writeln!(md, "| system | idle RSS MB | idle HWM MB | connections held | RSS MB with them | HWM MB | note |");
        let _ = writeln!(md, "|---|---|---|---|---|---|---|");
        for m in &results.memory {
            let _ = writeln!(
                md,
                "| {} | {:.1} | {:.1} | {} | {} | {} | {} |",
                m.system.name(),
                m.idle_rss_mb,
                m.idle_hwm_mb,
                m.conns_held.map_or("–".into(), |n| n.to_string()),
                m.conns_rss_mb.map_or("–".into(), |v| format!("{v:.1}")),
                m.conns_hwm_mb.map_or("–".into(), |v| format!("{v:.1}")),
                m.note.as_deref().unwrap_or("")
            );
        }
        let _ = writeln!(md);
    }

    if let Some(c) = &results.connect {
        let _ = writeln!(md, "## STOA: cost of connect() with the redirect\n");
        let _ = writeln!(md, "Fresh TCP connections from a pod, interleaved in rounds; connect() alone, and connect + first request + response.\n");
        let _ = writeln!(
            md,
            "| path | connect p50 µs | p90 | p99 | first request p50 µs | p99 | samples | errors |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
        for v in &c.variants {
            let p = |x: Option<f64>| x.map_or("–".to_string(), |v| format!("{v:.1}"));
            let _ = writeln!(
                md,
                "| {} — {} | {} | {} | {} | {} | {} | {} | {} |",
                v.name,
                v.description,
                p(v.connect.map(|c| c.p50_us)),
                p(v.connect.map(|c| c.p90_us)),
                p(v.connect.map(|c| c.p99_us)),
                p(v.first_request.map(|c| c.p50_us)),
                p(v.first_request.map(|c| c.p99_us)),
                v.connect.map_or(0, |c| c.count),
                v.errors
            );
        }
        let _ = writeln!(
            md,
            "\nExtra connect() cost of the redirect: p50 {} µs, p99 {} µs (kernel program without redirect: p50 {} µs); extra on the first request of a new connection: p50 {} µs.\n",
            c.extra_connect_p50_us.map_or("–".into(), |v| format!("{v:+.1}")),
            c.extra_connect_p99_us.map_or("–".into(), |v| format!("{v:+.1}")),
            c.hook_only_extra_p50_us.map_or("–".into(), |v| format!("{v:+.1}")),
            c.extra_first_request_p50_us.map_or("–".into(), |v| format!("{v:+.1}")),
        );
    }
    if let Some(p) = &results.policy {
        let _ = writeln!(md, "## STOA: policy change to enforcement\n");
        let _ = writeln!(md, "Change: {}. Time from the file write (atomic rename into the controller's folder) to the first request from the client pod that sees the new behaviour (polled every 2 ms, a new connection each time).\n", p.change);
        let f = |x: Option<f64>| x.map_or("–".to_string(), |v| format!("{v:.1}"));
        let _ = writeln!(
            md,
            "median {} ms · p90 {} ms · min {} ms · max {} ms · {} samples, {} timeouts · statuses seen at the change: {:?}{}\n",
            f(p.median_ms),
            f(p.p90_ms),
            f(p.min_ms),
            f(p.max_ms),
            p.samples_ms.len(),
            p.timeouts,
            p.observed_statuses,
            p.note
                .as_ref()
                .map(|n| format!(" · {n}"))
                .unwrap_or_default()
        );
    }
    // A run of some parts only (--only) may have nothing to evaluate.
    let targets = doc["targets"]
        .as_array()
        .filter(|ts| ts.iter().any(|t| !t["met"].is_null()));
    if targets.is_some() {
        let _ = writeln!(md, "## Targets (reported, not enforced)\n");
        let _ = writeln!(md, "| target | value | limit | met |");
        let _ = writeln!(md, "|---|---|---|---|");
    }
    if let Some(ts) = targets {
        for t in ts {
            let (value, limit) = ["us", "mb", "ms"]
                .iter()
                .find_map(|u| {
                    t.get(format!("value_{u}")).map(|v| {
                        let unit = match *u {
                            "us" => "µs",
                            "mb" => "MB",
                            _ => "ms",
                        };
                        (
                            format!("{} {unit}", fmt_opt(v, 1)),
                            format!("{} {unit}", fmt_opt(&t[format!("limit_{u}")], 1)),
                        )
                    })
                })
                .unwrap_or_default();
            let met = match t["met"].as_bool() {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "–",
            };
            let _ = writeln!(
                md,
                "| {} | {value} | {limit} | {met} |",
                t["target"].as_str().unwrap_or("")
            );
        }
    }
    if let Some(notes) = meta["notes"].as_array() {
        if !notes.is_empty() {
            let _ = writeln!(md, "\nNotes:");
            for n in notes {
                let _ = writeln!(md, "- {}", n.as_str().unwrap_or(""));
            }
        }
    }
    md
}

fn markdown_mcp(md: &mut String, mcp: &Value) {
    let _ = writeln!(md, "## MCP tools/call\n");
    if let Some(reason) = mcp["skipped"].as_str() {
        let _ = writeln!(md, "Skipped: {reason}\n");
        return;
    }
    let s = |k: &str| mcp[k].as_str().unwrap_or("").to_string();
    let _ = writeln!(md, "- request: {}", s("request"));
    let _ = writeln!(md, "- server: {}", s("server"));
    let _ = writeln!(md, "- direct: {}", s("direct_path"));
    let _ = writeln!(md, "- stoa: {}", s("stoa_path"));
    let _ = writeln!(
        md,
        "- load: open loop at {} calls/s over {} keep-alive connections; {} s warm-up + {} s per point; {} repetition(s), direct and stoa interleaved; the `max` rows are one closed-loop run of {} s each",
        mcp["rates"],
        mcp["connections"],
        mcp["warmup_s"],
        mcp["duration_s"],
        mcp["repetitions"],
        mcp["max_run_s"]
    );
    let _ = writeln!(
        md,
        "\nLatency in µs: median over repetitions (min–max). “+”: stoa − direct at the same rate; “×”: stoa / direct. CPU s / 10k calls: the agent's (stoa) and the MCP server's.\n"
    );
    let _ = writeln!(
        md,
        "| system | rate | p50 | p90 | p99 | p99.9 | +p50 | +p90 | +p99 | ×p50 | ×p99 | achieved rps | errors | agent CPU s / 10k | server CPU s / 10k |"
    );
    let _ = writeln!(
        md,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let ratio = |v: &Value| v.as_f64().map_or("–".to_string(), |x| format!("{x:.2}"));
    for r in mcp["rows"].as_array().into_iter().flatten() {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            latency_cells(r),
            signed(&r["added_p50_us"]),
            signed(&r["added_p90_us"]),
            signed(&r["added_p99_us"]),
            ratio(&r["ratio_p50"]),
            ratio(&r["ratio_p99"]),
            fmt_opt(&r["achieved_rps"], 0),
            r["errors"],
            fmt_opt(&r["cpu_s_per_10k"], 3),
            fmt_opt(&r["backend_cpu_s_per_10k"], 3),
        );
    }
    let p = &mcp["probe"];
    let m = &mcp["metering"];
    let _ = writeln!(
        md,
        "\nServer maximum (closed loop, {} connections): {} calls/s direct, {} through stoa.",
        mcp["connections"],
        fmt_opt(&mcp["server_max_rps"], 0),
        fmt_opt(&mcp["stoa_max_rps"], 0)
    );
    let _ = writeln!(
        md,
        "Checked before the load: the call answered `{}` direct and `{}` through stoa (metered once); `{}` (not allowed) through stoa got JSON-RPC error {} at HTTP {}; without the key: HTTP {}{}.",
        p["direct"]["text"].as_str().unwrap_or("?"),
        p["stoa"]["text"].as_str().unwrap_or("?"),
        p["stoa_denied_tool"]["tool"].as_str().unwrap_or("?"),
        p["stoa_denied_tool"]["code"],
        p["stoa_denied_tool"]["status"],
        p["stoa_without_key"]["status"],
        p["stoa_without_key"]["code"]
            .as_i64()
            .map(|c| format!(" (JSON-RPC error {c})"))
            .unwrap_or_default(),
    );
    let _ = writeln!(
        md,
        "Answers checked against what was governed and executed: {} ok answers on the stoa points, {} ok calls metered by the agent over them, {} in the usage ledger at the end (+1: the probe); {} ok answers in all (probes and the server warm-up included), {} calls executed by the server.",
        m["stoa_ok_answers"], m["metered_ok"], m["ledger_ok"], m["ok_answers"], m["server_calls"]
    );
    for n in mcp["notes"].as_array().into_iter().flatten() {
        let _ = writeln!(md, "- note: {}", n.as_str().unwrap_or(""));
    }
    let _ = writeln!(md);
}

/// latency.png: one panel per protocol and fixed rate, percentiles per system as
/// clustered bars with min–max error bars, log scale.
fn plot(results: &Results, doc: &Value, out_dir: &Path) -> anyhow::Result<()> {
    let tmp = plot_tmpdir()?;
    let mut panels = Vec::new();
    let mut cols = 1;
    let sections: [(&str, &str, &Value, &[u32], &str); 3] = [
        (
            "http1",
            "HTTP/1.1",
            &doc["http1"],
            &results.plan.rates,
            "rps",
        ),
        ("http2", "HTTP/2", &doc["http2"], &results.plan.rates, "rps"),
        (
            "mcp",
            "MCP tools/call",
            &doc["mcp"]["rows"],
            &results.plan.mcp_rates,
            "calls/s",
        ),
    ];
    for (proto, title, rows, rates, unit) in sections {
        let Some(rows) = rows.as_array() else {
            continue;
        };
        let mut in_section = 0;
        for &rate in rates {
            let mut data = String::from(
                "# system p50 p50lo p50hi p90 p90lo p90hi p99 p99lo p99hi p999 p999lo p999hi\n",
            );
            let mut any = false;
            for r in rows.iter().filter(|r| r["rate"] == json!(rate)) {
                let _ = write!(data, "{}", r["system"].as_str().unwrap_or("?"));
                for key in ["p50_us", "p90_us", "p99_us", "p999_us"] {
                    let m = r[key].as_f64();
                    any |= m.is_some();
                    let (lo, hi) = match r["range"][key].as_array() {
                        Some(a) if a.len() == 2 => (a[0].as_f64(), a[1].as_f64()),
                        _ => (m, m),
                    };
                    for v in [m, lo, hi] {
                        let _ = write!(
                            data,
                            " {}",
                            v.map_or("NaN".to_string(), |v| v.max(1.0).to_string())
                        );
                    }
                }
                data.push('\n');
            }
            if any {
                let file = tmp.join(format!("{proto}-{rate}.dat"));
                std::fs::write(&file, data)?;
                panels.push((format!("{title}, {rate} {unit}"), file));
                in_section += 1;
            }
        }
        cols = cols.max(in_section);
    }
    if panels.is_empty() {
        anyhow::bail!("no latency to plot");
    }
    let cols = cols.clamp(1, 4);
    let prows = panels.len().div_ceil(cols);
    let png = out_dir.join("latency.png");
    let mut gp = String::new();
    let _ = writeln!(
        gp,
        "set terminal pngcairo size {},{} font 'sans,10'",
        (520 * cols).max(900),
        380 * prows + 60
    );
    let _ = writeln!(gp, "set output '{}'", png.display());
    let title = if results.plan.quick {
        "STOA vs direct, nginx, HAProxy: latency percentiles (QUICK SMOKE RUN)"
    } else {
        "STOA vs direct, nginx, HAProxy: latency percentiles (median of repetitions, bars min-max)"
    };
    let _ = writeln!(gp, "set multiplot layout {prows},{cols} title '{title}'");
    let _ = writeln!(gp, "set datafile missing 'NaN'");
    let _ = writeln!(gp, "set style data histograms");
    let _ = writeln!(gp, "set style histogram errorbars gap 1 lw 1");
    let _ = writeln!(gp, "set style fill solid 0.85 border -1");
    let _ = writeln!(gp, "set logscale y");
    let _ = writeln!(gp, "set ylabel 'latency (µs, log)'");
    let _ = writeln!(gp, "set grid ytics");
    let _ = writeln!(gp, "set key top left font ',8'");
    let _ = writeln!(gp, "set yrange [10:*]");
    for (title, file) in &panels {
        let f = file.display();
        let _ = writeln!(gp, "set title '{title}'");
        let _ = writeln!(
            gp,
            "plot '{f}' using 2:3:4:xtic(1) title 'p50' lc rgb '#4c72b0', '' using 5:6:7 title 'p90' lc rgb '#55a868', '' using 8:9:10 title 'p99' lc rgb '#dd8452', '' using 11:12:13 title 'p99.9' lc rgb '#c44e52'"
        );
    }
    let _ = writeln!(gp, "unset multiplot");
    let script = tmp.join("latency.gp");
    std::fs::write(&script, gp)?;
    let out = Command::new("gnuplot").arg(&script).output();
    let _ = std::fs::remove_dir_all(&tmp);
    let out = out.context("running gnuplot (apt-get install gnuplot-nox)")?;
    if !out.status.success() {
        anyhow::bail!("gnuplot failed: {}", out.stderr_str());
    }
    Ok(())
}

fn plot_tmpdir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "stoa-bench-plot-{}-{}",
        std::process::id(),
        procfs::monotonic_ns()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_date_has_the_shape() {
        let d = utc_now();
        assert_eq!(d.len(), 20);
        assert!(d.ends_with('Z') && d.as_bytes()[10] == b'T');
        assert!(d.starts_with("20"));
    }
}
