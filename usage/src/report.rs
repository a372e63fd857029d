//! Reading side of the ledger: per caller, contract, tool and outcome totals.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::ledger::ledger_files;
use crate::{LedgerError, Outcome, UsageRecord};

/// Which records to count; `None` fields match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageQuery {
    /// Records at or after this unix millisecond.
    pub since_ms: Option<u64>,
    /// Records whose `consumer` is exactly this.
    pub consumer: Option<String>,
    pub tool: Option<String>,
    /// `namespace/name` of the ApiContract.
    pub contract: Option<String>,
}

impl UsageQuery {
    fn matches(&self, record: &UsageRecord) -> bool {
        self.since_ms.is_none_or(|since| record.ts_ms >= since)
            && self
                .consumer
                .as_ref()
                .is_none_or(|consumer| record.consumer.as_ref() == Some(consumer))
            && self.tool.as_ref().is_none_or(|tool| &record.tool == tool)
            && self
                .contract
                .as_ref()
                .is_none_or(|contract| &record.contract == contract)
    }
}

/// Calls of one tool by one caller with one outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRow {
    pub caller: String,
    pub contract: String,
    pub tool: String,
    pub outcome: Outcome,
    pub calls: u64,
    /// Nearest-rank median.
    pub p50_latency_us: u64,
    pub max_latency_us: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UsageReport {
    /// Sorted by caller, contract, tool, outcome.
    pub rows: Vec<UsageRow>,
    /// Lines that were not a complete record: a torn last line left by a crash, or
    /// anything unparsable.
    pub skipped_lines: u64,
}

impl UsageReport {
    pub fn total_calls(&self) -> u64 {
        self.rows.iter().map(|row| row.calls).sum()
    }
}

/// Summarizes every ledger file in `dir` (current and rotated).
///
/// Fails with [`LedgerError::NoLedgerDir`] when `dir` does not exist. Run while the
/// agent rotates, a file may be counted twice or missed; rotation is rare (every
/// `max_file_bytes`), so a report taken again is right.
pub fn read_usage(dir: &Path, query: &UsageQuery) -> Result<UsageReport, LedgerError> {
    let mut files = ledger_files(dir)?;
    // Oldest first; the order changes no total but keeps reading predictable.
    files.sort_by_key(|(index, _)| std::cmp::Reverse(index.unwrap_or(0)));
    // Opened together before reading, so a rotation meanwhile moves names, not data.
    let mut opened = Vec::with_capacity(files.len());
    for (_, path) in files {
        match File::open(&path) {
            Ok(file) => opened.push((path, file)),
            // Deleted by a rotation since the listing.
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(LedgerError::io(path, err)),
        }
    }

    let mut latencies: BTreeMap<RowKey, Vec<u64>> = BTreeMap::new();
    let mut skipped_lines = 0;
    for (path, file) in opened {
        skipped_lines +=
            read_file(file, query, &mut latencies).map_err(|e| LedgerError::io(&path, e))?;
    }
    let rows = latencies
        .into_iter()
        .map(|((caller, contract, tool, outcome), mut latencies)| {
            let max_latency_us = latencies.iter().copied().max().unwrap_or(0);
            let median_index = (latencies.len() - 1) / 2;
            let (_, &mut p50_latency_us, _) = latencies.select_nth_unstable(median_index);
            UsageRow {
                caller,
                contract,
                tool,
                outcome,
                calls: latencies.len() as u64,
                p50_latency_us,
                max_latency_us,
            }
        })
        .collect();
    Ok(UsageReport {
        rows,
        skipped_lines,
    })
}

/// Field order is the report's sort order.
type RowKey = (String, String, String, Outcome);

/// Adds the matching records of one file; returns how many lines it skipped.
fn read_file(
    file: File,
    query: &UsageQuery,
    latencies: &mut BTreeMap<RowKey, Vec<u64>>,
) -> io::Result<u64> {
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let mut line = Vec::with_capacity(512);
    let mut skipped = 0;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(skipped);
        }
        let Some(complete) = line.strip_suffix(b"\n") else {
            // A record is written with its newline in one write, so a line without
            // one is a write cut short.
            skipped += 1;
            continue;
        };
        if complete.is_empty() {
            continue;
        }
        let Ok(record) = serde_json::from_slice::<UsageRecord>(complete) else {
            skipped += 1;
            continue;
        };
        if query.matches(&record) {
            latencies
                .entry((record.caller, record.contract, record.tool, record.outcome))
                .or_default()
                .push(record.latency_us);
        }
    }
}
