//! The usage ledger on real files: append, rotate, recover, read back.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use stoa_usage::{
    read_usage, Ledger, LedgerConfig, LedgerError, Outcome, UsageQuery, UsageRecord, UsageRow,
    CURRENT_FILE_NAME,
};

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
        caller: stoa_usage::caller_name(consumer, workload.as_deref()),
        consumer: consumer.map(str::to_owned),
        workload,
        contract: "tools/weather".to_owned(),
        tool: tool.to_owned(),
        outcome,
        latency_us,
    }
}

fn small_ledger(dir: &Path, max_file_bytes: u64, max_files: usize) -> Ledger {
    Ledger::open(LedgerConfig {
        dir: dir.to_owned(),
        max_file_bytes,
        max_files,
    })
    .unwrap()
}

fn all(dir: &Path) -> stoa_usage::UsageReport {
    read_usage(dir, &UsageQuery::default()).unwrap()
}

fn lines_in(path: &Path) -> usize {
    fs::read_to_string(path).unwrap().lines().count()
}

#[test]
fn append_then_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(LedgerConfig::new(dir.path())).unwrap();
    let records = [
        record(1_000, Some("acme"), "forecast", Outcome::Ok, 300),
        record(2_000, Some("acme"), "forecast", Outcome::Ok, 100),
        record(3_000, Some("acme"), "forecast", Outcome::Ok, 200),
        record(4_000, Some("acme"), "forecast", Outcome::RateLimited, 5),
        record(5_000, None, "alerts", Outcome::ToolError, 40),
    ];
    for record in &records {
        ledger.append(record).unwrap();
    }
    ledger.sync().unwrap();

    // One JSON line per record, exactly as appended.
    let text = fs::read_to_string(dir.path().join(CURRENT_FILE_NAME)).unwrap();
    let parsed: Vec<UsageRecord> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(parsed, records);
    assert!(text.contains(r#""outcome":"rate_limited""#), "{text}");

    let row = |caller: &str, tool: &str, outcome, calls, p50, max| UsageRow {
        caller: caller.to_owned(),
        contract: "tools/weather".to_owned(),
        tool: tool.to_owned(),
        outcome,
        calls,
        p50_latency_us: p50,
        max_latency_us: max,
    };
    let report = all(dir.path());
    assert_eq!(
        report.rows,
        [
            row("acme", "forecast", Outcome::Ok, 3, 200, 300),
            row("acme", "forecast", Outcome::RateLimited, 1, 5, 5),
            row("shop/checkout", "alerts", Outcome::ToolError, 1, 40, 40),
        ]
    );
    assert_eq!(report.skipped_lines, 0);
    assert_eq!(report.total_calls(), 5);
}

#[test]
fn filters_and_since() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(LedgerConfig::new(dir.path())).unwrap();
    ledger
        .append(&record(1_000, Some("acme"), "forecast", Outcome::Ok, 1))
        .unwrap();
    ledger
        .append(&record(2_000, Some("globex"), "forecast", Outcome::Ok, 1))
        .unwrap();
    ledger
        .append(&record(3_000, Some("acme"), "alerts", Outcome::Ok, 1))
        .unwrap();
    let mut other_contract = record(4_000, Some("acme"), "forecast", Outcome::Denied, 1);
    other_contract.contract = "tools/maps".to_owned();
    ledger.append(&other_contract).unwrap();
    ledger
        .append(&record(5_000, None, "forecast", Outcome::Ok, 1))
        .unwrap();

    let calls = |query: UsageQuery| read_usage(dir.path(), &query).unwrap().total_calls();
    let text = |s: &str| Some(s.to_owned());
    assert_eq!(calls(UsageQuery::default()), 5);
    assert_eq!(
        calls(UsageQuery {
            consumer: text("acme"),
            ..Default::default()
        }),
        3
    );
    // A consumer filter matches consumers only, not workload callers.
    assert_eq!(
        calls(UsageQuery {
            consumer: text("shop/checkout"),
            ..Default::default()
        }),
        0
    );
    assert_eq!(
        calls(UsageQuery {
            tool: text("forecast"),
            ..Default::default()
        }),
        4
    );
    assert_eq!(
        calls(UsageQuery {
            contract: text("tools/maps"),
            ..Default::default()
        }),
        1
    );
    assert_eq!(
        calls(UsageQuery {
            since_ms: Some(3_000),
            ..Default::default()
        }),
        3
    );
    assert_eq!(
        calls(UsageQuery {
            since_ms: Some(5_001),
            ..Default::default()
        }),
        0
    );
    assert_eq!(
        calls(UsageQuery {
            since_ms: Some(2_000),
            consumer: text("acme"),
            tool: text("forecast"),
            contract: text("tools/weather"),
        }),
        0
    );
    assert_eq!(
        calls(UsageQuery {
            consumer: text("acme"),
            tool: text("forecast"),
            contract: text("tools/weather"),
            ..Default::default()
        }),
        1
    );
}

#[test]
fn rotation_keeps_at_most_max_files_and_reader_sums_them() {
    let dir = tempfile::tempdir().unwrap();
    let line_len = serde_json::to_vec(&record(
        1_000_000,
        Some("acme"),
        "forecast",
        Outcome::Ok,
        100,
    ))
    .unwrap()
    .len() as u64
        + 1;
    // Three records per file.
    let ledger = small_ledger(dir.path(), 3 * line_len, 3);
    for i in 0..20 {
        ledger
            .append(&record(
                1_000_000 + i,
                Some("acme"),
                "forecast",
                Outcome::Ok,
                100,
            ))
            .unwrap();
    }

    let mut names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "usage.jsonl",
            "usage.jsonl.1",
            "usage.jsonl.2",
            "usage.jsonl.3"
        ]
    );
    for name in &names {
        let size = fs::metadata(dir.path().join(name)).unwrap().len();
        assert!(size <= 3 * line_len, "{name}: {size} bytes");
    }
    // 20 records: 18 in six full files, of which three survive, and 2 in the current.
    let kept: usize = names
        .iter()
        .map(|name| lines_in(&dir.path().join(name)))
        .sum();
    assert_eq!(kept, 11);
    assert_eq!(lines_in(&dir.path().join("usage.jsonl")), 2);
    assert_eq!(all(dir.path()).total_calls(), 11);

    // .3 is the oldest survivor: records 9, 10, 11 (0-based) of the 20.
    let oldest = fs::read_to_string(dir.path().join("usage.jsonl.3")).unwrap();
    let first: UsageRecord = serde_json::from_str(oldest.lines().next().unwrap()).unwrap();
    assert_eq!(first.ts_ms, 1_000_009);
}

#[test]
fn rotation_with_room_loses_nothing_and_reopen_continues() {
    let dir = tempfile::tempdir().unwrap();
    {
        let ledger = small_ledger(dir.path(), 500, 100);
        for i in 0..50 {
            ledger
                .append(&record(i, Some("acme"), "forecast", Outcome::Ok, i))
                .unwrap();
        }
    }
    let ledger = small_ledger(dir.path(), 500, 100);
    for i in 50..60 {
        ledger
            .append(&record(i, Some("acme"), "forecast", Outcome::Ok, i))
            .unwrap();
    }
    let report = all(dir.path());
    assert_eq!(report.total_calls(), 60);
    assert_eq!(report.rows[0].max_latency_us, 59);
    assert_eq!(report.rows[0].p50_latency_us, 29);
    assert!(dir.path().join("usage.jsonl.10").exists());
}

#[test]
fn without_rotated_files_a_full_ledger_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = small_ledger(dir.path(), 1, 0);
    for i in 0..5 {
        ledger
            .append(&record(i, Some("acme"), "forecast", Outcome::Ok, 1))
            .unwrap();
    }
    assert_eq!(all(dir.path()).total_calls(), 1);
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn torn_last_line_is_skipped_and_the_next_append_starts_clean() {
    let dir = tempfile::tempdir().unwrap();
    let current = dir.path().join(CURRENT_FILE_NAME);
    {
        let ledger = Ledger::open(LedgerConfig::new(dir.path())).unwrap();
        for i in 0..5 {
            ledger
                .append(&record(i, Some("acme"), "forecast", Outcome::Ok, 1))
                .unwrap();
        }
    }
    // A crash in the middle of a write.
    fs::OpenOptions::new()
        .append(true)
        .open(&current)
        .unwrap()
        .write_all(br#"{"ts_ms":6,"node":"no"#)
        .unwrap();
    let report = all(dir.path());
    assert_eq!((report.total_calls(), report.skipped_lines), (5, 1));

    let ledger = Ledger::open(LedgerConfig::new(dir.path())).unwrap();
    ledger
        .append(&record(7, Some("acme"), "forecast", Outcome::Ok, 1))
        .unwrap();
    let report = all(dir.path());
    assert_eq!((report.total_calls(), report.skipped_lines), (6, 1));
    let text = fs::read_to_string(&current).unwrap();
    let last_two: Vec<&str> = text.lines().rev().take(2).collect();
    assert_eq!(last_two[1], r#"{"ts_ms":6,"node":"no"#);
    assert!(last_two[0].starts_with(r#"{"ts_ms":7,"#), "{text}");
}

#[test]
fn unparsable_lines_are_counted_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("usage.jsonl.1"),
        "not json\n{\"ts_ms\":1}\n\n\u{fffd}\n",
    )
    .unwrap();
    fs::write(dir.path().join("usage.jsonl.2"), [0xff, 0xfe, b'\n']).unwrap();
    let ledger = Ledger::open(LedgerConfig::new(dir.path())).unwrap();
    ledger
        .append(&record(1, Some("acme"), "forecast", Outcome::Ok, 1))
        .unwrap();
    // Files that are not the ledger's are left alone.
    fs::write(dir.path().join("notes.txt"), "garbage").unwrap();
    let report = all(dir.path());
    assert_eq!((report.total_calls(), report.skipped_lines), (1, 4));
}

#[test]
fn shared_across_tasks() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Ledger>();
    assert_send_sync::<stoa_usage::AuditSink>();
}

#[test]
fn concurrent_appends_are_all_counted() {
    const THREADS: usize = 8;
    const PER_THREAD: u64 = 1000;
    let dir = tempfile::tempdir().unwrap();
    // Small files, so rotations happen while the threads append.
    let ledger = Arc::new(small_ledger(dir.path(), 64 * 1024, 10_000));
    let threads: Vec<_> = (0..THREADS)
        .map(|thread| {
            let ledger = Arc::clone(&ledger);
            std::thread::spawn(move || {
                let consumer = format!("consumer-{thread}");
                for i in 0..PER_THREAD {
                    ledger
                        .append(&record(i, Some(&consumer), "forecast", Outcome::Ok, i))
                        .unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }

    let report = all(dir.path());
    assert_eq!(report.skipped_lines, 0);
    assert_eq!(report.rows.len(), THREADS);
    for row in &report.rows {
        assert_eq!(row.calls, PER_THREAD, "{}", row.caller);
        assert_eq!(row.max_latency_us, PER_THREAD - 1);
    }
    assert!(
        dir.path().join("usage.jsonl.5").exists(),
        "rotated while appending"
    );
}

#[test]
fn missing_directory_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let err = read_usage(&missing, &UsageQuery::default()).unwrap_err();
    assert!(matches!(err, LedgerError::NoLedgerDir(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "usage ledger directory {} does not exist",
            missing.display()
        )
    );
}

#[test]
fn ledger_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let _ledger = Ledger::open(LedgerConfig::new(dir.path().join("a/b"))).unwrap();
    let mode = fs::metadata(dir.path().join("a/b").join(CURRENT_FILE_NAME))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// Set in the child process of `sigkill_after_append_loses_nothing`.
const CRASH_CHILD_DIR: &str = "STOA_USAGE_CRASH_CHILD_DIR";
const CRASH_CHILD_RECORDS: u64 = 500;
/// What the child prints once its appends returned; the test harness may have put
/// its own `test crash_child ... ` before it on the same line.
const CRASH_CHILD_DONE: &str = "crash child: appended";

/// Does nothing in a normal run; in the child, appends, says so, and waits to be
/// killed.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CRASH_CHILD_DIR) else {
        return;
    };
    let ledger = Ledger::open(LedgerConfig::new(dir)).unwrap();
    for i in 0..CRASH_CHILD_RECORDS {
        ledger
            .append(&record(i, Some("acme"), "forecast", Outcome::Ok, i))
            .unwrap();
    }
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{CRASH_CHILD_DONE}").unwrap();
    stdout.flush().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(60));
    panic!("the parent should have killed this process");
}

#[test]
fn sigkill_after_append_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CRASH_CHILD_DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut said_done = false;
    for line in stdout.lines() {
        if line.unwrap().ends_with(CRASH_CHILD_DONE) {
            said_done = true;
            break;
        }
    }
    assert!(said_done, "the child exited before appending");
    // SAFETY: kill(2) on the pid of our own child, which has not been waited for yet.
    let killed = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    assert_eq!(killed, 0);
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));

    let report = all(dir.path());
    assert_eq!(report.total_calls(), CRASH_CHILD_RECORDS);
    assert_eq!(report.skipped_lines, 0);
}
