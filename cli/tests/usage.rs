//! `stoa usage` on ledgers written by the agent's own ledger code.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{json, Value};
use stoa_usage::{caller_name, unix_millis_now, Ledger, LedgerConfig, Outcome, UsageRecord};

const BIN: &str = env!("CARGO_BIN_EXE_stoa");

fn stoa(args: &[&str]) -> Output {
    // The operator's own STOA_USAGE_DIR must not leak into a test.
    Command::new(BIN)
        .args(args)
        .env_remove("STOA_USAGE_DIR")
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

fn record(
    ts_ms: u64,
    consumer: Option<&str>,
    tool: &str,
    outcome: Outcome,
    latency_us: u64,
) -> UsageRecord {
    let workload = Some("shop/checkout".to_owned());
    UsageRecord {
        ts_ms,
        node: "node-1".to_owned(),
        caller: caller_name(consumer, workload.as_deref()),
        consumer: consumer.map(str::to_owned),
        workload,
        contract: "tools/weather".to_owned(),
        tool: tool.to_owned(),
        outcome,
        latency_us,
    }
}

/// Two days of calls: most within the last hour, two older ones.
fn write_ledger(dir: &Path) {
    let now = unix_millis_now();
    let hour_ago = now - 3_600_000;
    let two_days_ago = now - 2 * 86_400_000;
    let ledger = Ledger::open(LedgerConfig::new(dir)).unwrap();
    for record in [
        record(two_days_ago, Some("acme"), "forecast", Outcome::Ok, 900),
        record(two_days_ago, Some("globex"), "alerts", Outcome::Ok, 100),
        record(hour_ago, Some("acme"), "forecast", Outcome::Ok, 1_200),
        record(hour_ago, Some("acme"), "forecast", Outcome::Ok, 15_400),
        record(hour_ago, Some("acme"), "forecast", Outcome::RateLimited, 35),
        record(hour_ago, None, "alerts", Outcome::ToolError, 2_500_000),
    ] {
        ledger.append(&record).unwrap();
    }
}

#[test]
fn usage_table() {
    let dir = tempfile::tempdir().unwrap();
    write_ledger(dir.path());
    let out = stoa(&["usage", "--ledger-dir", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "\
CALLER         CONTRACT       TOOL      OUTCOME       CALLS    P50     MAX
acme           tools/weather  forecast  ok                3  1.2ms  15.4ms
acme           tools/weather  forecast  rate_limited      1   35µs    35µs
globex         tools/weather  alerts    ok                1  100µs   100µs
shop/checkout  tools/weather  alerts    tool_error        1  2.50s   2.50s
TOTAL                                                     6
"
    );
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
}

#[test]
fn usage_json_with_filters_and_since() {
    let dir = tempfile::tempdir().unwrap();
    write_ledger(dir.path());
    let dir = dir.path().to_str().unwrap();

    let json_of = |args: &[&str]| -> Value {
        let out = stoa(&[&["usage", "--ledger-dir", dir, "-o", "json"], args].concat());
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_str(&stdout(&out)).unwrap()
    };
    assert_eq!(
        json_of(&["--since", "24h", "--consumer", "acme", "--tool", "forecast"]),
        json!({
            "rows": [
                {"caller": "acme", "contract": "tools/weather", "tool": "forecast",
                 "outcome": "ok", "calls": 2, "p50_latency_us": 1200, "max_latency_us": 15400},
                {"caller": "acme", "contract": "tools/weather", "tool": "forecast",
                 "outcome": "rate_limited", "calls": 1, "p50_latency_us": 35, "max_latency_us": 35},
            ],
            "total_calls": 3,
            "skipped_lines": 0,
        })
    );
    let total = |args: &[&str]| json_of(args)["total_calls"].clone();
    assert_eq!(total(&[]), 6);
    assert_eq!(total(&["--since", "24h"]), 4);
    assert_eq!(total(&["--since", "2000-01-01T00:00:00Z"]), 6);
    assert_eq!(total(&["--tool", "alerts"]), 2);
    assert_eq!(total(&["--contract", "tools/weather"]), 6);
    assert_eq!(total(&["--contract", "tools/maps"]), 0);
}

#[test]
fn usage_reports_skipped_lines() {
    let dir = tempfile::tempdir().unwrap();
    write_ledger(dir.path());
    // What a crash in the middle of an append leaves behind.
    let current = dir.path().join(stoa_usage::CURRENT_FILE_NAME);
    let mut text = std::fs::read_to_string(&current).unwrap();
    text.push_str("{\"ts_ms\":17");
    std::fs::write(&current, text).unwrap();

    let dir = dir.path().to_str().unwrap();
    let out = stoa(&["usage", "--ledger-dir", dir, "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        (json["total_calls"].clone(), json["skipped_lines"].clone()),
        (json!(6), json!(1))
    );

    let out = stoa(&["usage", "--ledger-dir", dir]);
    assert!(out.status.success());
    assert!(stdout(&out).ends_with("6\n"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("skipped 1 ledger line"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn usage_reads_the_directory_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    write_ledger(dir.path());
    let out = Command::new(BIN)
        .args(["usage", "-o", "json"])
        .env("STOA_USAGE_DIR", dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let json: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["total_calls"], 6);
}

#[test]
fn usage_of_an_empty_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let out = stoa(&["usage", "--ledger-dir", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "CALLER  CONTRACT  TOOL  OUTCOME  CALLS  P50  MAX\nTOTAL                                0\n"
    );
}

#[test]
fn usage_errors() {
    let out = stoa(&["usage", "--ledger-dir", "/nonexistent/stoa-usage"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("usage ledger directory /nonexistent/stoa-usage does not exist"),
        "{}",
        stderr(&out)
    );

    let dir = tempfile::tempdir().unwrap();
    let out = stoa(&[
        "usage",
        "--ledger-dir",
        dir.path().to_str().unwrap(),
        "--since",
        "yesterday",
    ]);
    assert_eq!(out.status.code(), Some(2), "usage error");
    assert!(
        stderr(&out).contains("expected a duration such as 24h"),
        "{}",
        stderr(&out)
    );

    let out = stoa(&[
        "usage",
        "--ledger-dir",
        dir.path().to_str().unwrap(),
        "-o",
        "yaml",
    ]);
    assert_eq!(out.status.code(), Some(2), "usage error");
}
