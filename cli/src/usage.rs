//! `stoa usage`: calls per caller, contract, tool and outcome, from the usage ledger
//! the agent keeps on this node.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::ValueEnum;
use stoa_usage::{read_usage, LedgerError, UsageQuery, UsageReport, DEFAULT_LEDGER_DIR};

#[derive(clap::Args)]
pub struct Args {
    /// Folder of the agent's usage ledger.
    #[arg(long, value_name = "DIR", env = "STOA_USAGE_DIR", default_value = DEFAULT_LEDGER_DIR)]
    ledger_dir: PathBuf,
    /// Only calls this recent (24h, 90m, 7d) or since a UTC time (2026-01-31T08:00:00Z).
    /// Default: all calls in the ledger.
    #[arg(long, value_name = "DURATION|TIME", value_parser = parse_since)]
    since: Option<u64>,
    /// Only calls made with this Consumer's API key.
    #[arg(long, value_name = "CONSUMER")]
    consumer: Option<String>,
    /// Only calls of this tool.
    #[arg(long, value_name = "TOOL")]
    tool: Option<String>,
    /// Only calls through this ApiContract (namespace/name).
    #[arg(long, value_name = "CONTRACT")]
    contract: Option<String>,
    /// Aligned columns for people, or JSON for scripts.
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    output: Format,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let query = UsageQuery {
        since_ms: args.since,
        consumer: args.consumer,
        tool: args.tool,
        contract: args.contract,
    };
    let report = match read_usage(&args.ledger_dir, &query) {
        Ok(report) => report,
        Err(err @ LedgerError::NoLedgerDir(_)) => {
            bail!("{err} (pass --ledger-dir DIR or set STOA_USAGE_DIR)")
        }
        Err(err) => return Err(err).context("cannot read the usage ledger"),
    };
    match args.output {
        Format::Table => {
            print!("{}", table(&report));
            if report.skipped_lines > 0 {
                eprintln!(
                    "warning: skipped {} ledger line(s) that hold no complete record",
                    report.skipped_lines
                );
            }
        }
        Format::Json => {
            let json = serde_json::json!({
                "rows": report.rows,
                "total_calls": report.total_calls(),
                "skipped_lines": report.skipped_lines,
            });
            println!("{}", serde_json::to_string_pretty(&json)?);
        }
    }
    Ok(())
}

/// A duration back from now, or an RFC 3339 time; as unix milliseconds.
fn parse_since(text: &str) -> Result<u64, String> {
    let to_millis = |time: SystemTime| {
        time.duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64)
    };
    if let Ok(duration) = humantime::parse_duration(text) {
        let now = to_millis(SystemTime::now());
        return Ok(now.saturating_sub(duration.as_millis() as u64));
    }
    humantime::parse_rfc3339_weak(text)
        .map(to_millis)
        .map_err(|_| {
            "expected a duration such as 24h or a time such as 2026-01-31T08:00:00Z".into()
        })
}

/// Aligned columns, numbers to the right, and a TOTAL line.
fn table(report: &UsageReport) -> String {
    const HEADER: [&str; 7] = [
        "CALLER", "CONTRACT", "TOOL", "OUTCOME", "CALLS", "P50", "MAX",
    ];
    const RIGHT_ALIGNED_FROM: usize = 4;
    let mut lines: Vec<[String; 7]> = vec![HEADER.map(str::to_owned)];
    for row in &report.rows {
        lines.push([
            row.caller.clone(),
            row.contract.clone(),
            row.tool.clone(),
            row.outcome.to_string(),
            row.calls.to_string(),
            format_latency(row.p50_latency_us),
            format_latency(row.max_latency_us),
        ]);
    }
    let mut total = [(); 7].map(|()| String::new());
    total[0] = "TOTAL".to_owned();
    total[4] = report.total_calls().to_string();
    lines.push(total);

    let mut widths = [0; 7];
    for line in &lines {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for line in &lines {
        let mut text = String::new();
        for (column, (cell, width)) in line.iter().zip(widths).enumerate() {
            if column > 0 {
                text.push_str("  ");
            }
            let padding = " ".repeat(width - cell.chars().count());
            if column >= RIGHT_ALIGNED_FROM {
                text.push_str(&padding);
                text.push_str(cell);
            } else {
                text.push_str(cell);
                text.push_str(&padding);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

/// `850µs`, `12.3ms`, `2.35s`: a unit that keeps the number short.
fn format_latency(micros: u64) -> String {
    match micros {
        0..1_000 => format!("{micros}µs"),
        1_000..1_000_000 => format!("{:.1}ms", micros as f64 / 1e3),
        _ => format!("{:.2}s", micros as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_read_at_a_glance() {
        assert_eq!(format_latency(0), "0µs");
        assert_eq!(format_latency(999), "999µs");
        assert_eq!(format_latency(1_000), "1.0ms");
        assert_eq!(format_latency(12_345), "12.3ms");
        assert_eq!(format_latency(2_345_678), "2.35s");
    }

    #[test]
    fn since_takes_a_duration_or_a_time() {
        assert_eq!(parse_since("2026-01-31T08:00:00Z"), Ok(1_769_846_400_000));
        let day_ago = parse_since("24h").unwrap();
        let now = stoa_usage::unix_millis_now();
        assert!((now - 86_400_000).abs_diff(day_ago) < 60_000, "{day_ago}");
        assert!(parse_since("yesterday").is_err());
    }
}
