//! One load point with oha, run inside a pod.
//!
//! oha runs for warm-up + measurement in one process (so the measured part reuses
//! warm connections, upstream pools included) and writes every completed request to a
//! SQLite file (`--db-url`): scheduled start (with `--latency-correction`, the instant
//! the open-loop scheduler released the request, so queueing behind a slow response
//! counts: no coordinated omission), duration and status. Only requests scheduled
//! inside the measurement window are counted; the warm-up's connection set-up never
//! reaches a percentile.
//!
//! The max-throughput run (closed loop) skips the database: hundreds of thousands of
//! rows cost seconds to write. Its figures come from oha's own summary over the whole
//! run (warm-up included): 2xx responses / run time, and oha's latency percentiles.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};
use stoa_tests::{run_with_timeout, OutputExt, Pod};

use crate::procfs;
use crate::stats::Percentiles;

/// What to offer.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub url: String,
    /// Open loop at this many requests per second; `None`: closed loop, as fast as the
    /// connections allow (the max-throughput run).
    pub rate: Option<u32>,
    pub connections: usize,
    /// HTTP/2 (h2c prior knowledge) with this many streams per connection.
    pub h2_streams: Option<usize>,
    pub headers: Vec<String>,
    /// POST this file as the body of every request (GET without a body when `None`).
    pub post_body: Option<PathBuf>,
    pub warmup: Duration,
    pub duration: Duration,
}

/// What one point measured.
#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    /// Latency of the 2xx responses scheduled in the window.
    pub latency: Option<Percentiles>,
    /// 2xx responses scheduled in the window, per second of window.
    pub achieved_rps: f64,
    /// Transport errors over the whole run plus non-2xx answers in the window.
    pub errors: u64,
    pub error_kinds: BTreeMap<String, u64>,
    /// Requests oha abandoned when the run's time was up ("aborted due to deadline").
    /// Over HTTP/2 oha reports one per idle stream worker at shutdown whatever `-w`
    /// says: an artefact of the generator's shutdown, not an answer the system failed.
    pub aborted_at_deadline: u64,
    /// Every request that completed or failed during the whole run (warm-up included):
    /// the denominator of CPU per request.
    pub total_requests: u64,
    /// 2xx answers over the whole run (warm-up included).
    pub ok_total: u64,
}

/// Runs oha in `pod` pinned to `cpus`.
pub fn run(
    pod: &Pod,
    oha: &Path,
    spec: &LoadSpec,
    cpus: &[usize],
    work_dir: &Path,
) -> anyhow::Result<LoadResult> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let db: PathBuf = work_dir.join(format!("oha-{}.db", SEQ.fetch_add(1, Ordering::Relaxed)));
    let _ = std::fs::remove_file(&db);
    let total = spec.warmup + spec.duration;
    let mut cmd = pod.command(oha);
    cmd.arg(&spec.url)
        .args(["-z", &format!("{}ms", total.as_millis())])
        .args(["-c", &spec.connections.to_string()])
        .args(["--no-tui", "--output-format", "json", "-w"])
        .args(["--worker-threads", "1"]);
    if spec.rate.is_some() {
        cmd.arg("--db-url").arg(&db);
    }
    for h in &spec.headers {
        cmd.args(["-H", h]);
    }
    if let Some(body) = &spec.post_body {
        cmd.args(["-m", "POST", "-D"]).arg(body);
    }
    if let Some(rate) = spec.rate {
        cmd.args(["-q", &rate.to_string(), "--latency-correction"]);
    }
    if let Some(streams) = spec.h2_streams {
        cmd.args(["--http2", "-p", &streams.to_string()]);
    }
    let out = procfs::with_affinity(cpus, || {
        run_with_timeout(&mut cmd, total + Duration::from_secs(90))
    });
    if !out.status.success() {
        bail!(
            "oha failed ({}): {}\n{}",
            out.status,
            out.stderr_str(),
            out.stdout_str()
        );
    }
    let summary: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("oha's JSON output")?;
    let mut result = if spec.rate.is_some() {
        let rows = read_db(&db)?;
        let _ = std::fs::remove_file(&db);
        evaluate(&rows, spec.warmup, spec.duration)
    } else {
        from_summary(&summary)
    };
    if let Some(errors) = summary["errorDistribution"].as_object() {
        for (kind, n) in errors {
            let n = n.as_u64().unwrap_or(0);
            if kind.contains("aborted due to deadline") {
                result.aborted_at_deadline += n;
                continue;
            }
            result.errors += n;
            result.total_requests += n;
            *result.error_kinds.entry(kind.clone()).or_default() += n;
        }
    }
    Ok(result)
}

/// (scheduled start s, duration s, status) of every completed request.
type Row = (f64, f64, u16);

fn read_db(db: &Path) -> anyhow::Result<Vec<Row>> {
    if !db.exists() {
        // oha writes no database when nothing succeeded.
        return Ok(Vec::new());
    }
    let out = Command::new("sqlite3")
        .args(["-batch", "-noheader", "-separator", " "])
        .arg(db)
        .arg("SELECT COALESCE(start_latency_correction, start), duration, status FROM oha;")
        .output()
        .context("running sqlite3 (apt-get install sqlite3)")?;
    if !out.status.success() {
        bail!("sqlite3 {}: {}", db.display(), out.stderr_str());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(parse_rows(&text))
}

fn parse_rows(text: &str) -> Vec<Row> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split(' ');
            Some((
                f.next()?.parse().ok()?,
                f.next()?.parse().ok()?,
                f.next()?.parse().ok()?,
            ))
        })
        .collect()
}

fn evaluate(rows: &[Row], warmup: Duration, duration: Duration) -> LoadResult {
    let (from, to) = (warmup.as_secs_f64(), (warmup + duration).as_secs_f64());
    let mut latencies = Vec::with_capacity(rows.len());
    let mut non_2xx = BTreeMap::<String, u64>::new();
    for &(start, dur, status) in rows {
        if start < from || start >= to {
            continue;
        }
        if (200..300).contains(&status) {
            latencies.push(dur * 1e6);
        } else {
            *non_2xx.entry(format!("HTTP {status}")).or_default() += 1;
        }
    }
    let ok = latencies.len();
    let ok_total = rows.iter().filter(|r| (200..300).contains(&r.2)).count() as u64;
    LoadResult {
        latency: Percentiles::of_us(latencies),
        achieved_rps: ok as f64 / duration.as_secs_f64(),
        errors: non_2xx.values().sum(),
        error_kinds: non_2xx,
        aborted_at_deadline: 0,
        total_requests: rows.len() as u64,
        ok_total,
    }
}

/// A closed-loop run's figures from oha's JSON summary.
fn from_summary(summary: &serde_json::Value) -> LoadResult {
    let mut ok = 0u64;
    let mut result = LoadResult::default();
    if let Some(codes) = summary["statusCodeDistribution"].as_object() {
        for (code, n) in codes {
            let n = n.as_u64().unwrap_or(0);
            result.total_requests += n;
            if code.starts_with('2') {
                ok += n;
                result.ok_total += n;
            } else {
                result.errors += n;
                *result
                    .error_kinds
                    .entry(format!("HTTP {code}"))
                    .or_default() += n;
            }
        }
    }
    let total_s = summary["summary"]["total"].as_f64().unwrap_or(0.0);
    if total_s > 0.0 {
        result.achieved_rps = ok as f64 / total_s;
    }
    let p = &summary["latencyPercentiles"];
    let us = |key: &str| p[key].as_f64().map(|s| s * 1e6);
    if let (Some(p50_us), Some(p90_us), Some(p99_us), Some(p999_us)) =
        (us("p50"), us("p90"), us("p99"), us("p99.9"))
    {
        result.latency = Some(Percentiles {
            count: ok as usize,
            p50_us,
            p90_us,
            p99_us,
            p999_us,
        });
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_loop_from_summary() {
        let v = serde_json::json!({
            "summary": {"total": 2.0},
            "statusCodeDistribution": {"200": 1000, "503": 2},
            "latencyPercentiles": {"p50": 0.0001, "p90": 0.0002, "p99": 0.0005, "p99.9": 0.001},
        });
        let r = from_summary(&v);
        assert_eq!(r.achieved_rps, 500.0);
        assert_eq!(r.errors, 2);
        assert_eq!(r.total_requests, 1002);
        assert_eq!(r.ok_total, 1000);
        let l = r.latency.unwrap();
        assert!((l.p99_us - 500.0).abs() < 1e-6 && (l.p999_us - 1000.0).abs() < 1e-6);
    }

    #[test]
    fn only_the_window_counts() {
        let text = "0.5 0.001 200\n1.2 0.0001 200\n1.3 0.0002 200\n1.4 0.0003 503\n2.1 0.5 200\nbad line\n";
        let rows = parse_rows(text);
        assert_eq!(rows.len(), 5);
        let r = evaluate(&rows, Duration::from_secs(1), Duration::from_secs(1));
        let lat = r.latency.unwrap();
        assert_eq!(lat.count, 2);
        assert!((lat.p50_us - 100.0).abs() < 1e-6);
        assert!((lat.p99_us - 200.0).abs() < 1e-6);
        assert_eq!(r.achieved_rps, 2.0);
        assert_eq!(r.errors, 1);
        assert_eq!(r.error_kinds["HTTP 503"], 1);
        assert_eq!(r.total_requests, 5);
        assert_eq!(r.ok_total, 4);
    }
}
