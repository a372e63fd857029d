//! Usage metering and audit for MCP tool calls.
//!
//! The agent appends one [`UsageRecord`] per completed `tools/call` to a [`Ledger`]
//! (JSON lines, rotated by size) before it releases the answer, so what a client was
//! served is always metered; `stoa usage` summarizes the ledger with [`read_usage`].
//! Audit records ([`AuditRecord`]) go to an [`AuditSink`] with their arguments passed
//! through [`redact_arguments`] first.

mod audit;
mod ledger;
mod redact;
mod report;

use std::io;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use audit::{AuditRecord, AuditSink};
pub use ledger::{Ledger, LedgerConfig, CURRENT_FILE_NAME};
pub use redact::{redact_arguments, REDACTED};
pub use report::{read_usage, UsageQuery, UsageReport, UsageRow};

/// Where the agent keeps its ledger unless told otherwise, and where `stoa usage`
/// looks for it.
pub const DEFAULT_LEDGER_DIR: &str = "/var/lib/stoa/usage";

/// Outcome of one completed tool invocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    ToolError,
    Denied,
    RateLimited,
    ProtocolError,
}

impl Outcome {
    /// The name used in the ledger and by `stoa usage`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::ToolError => "tool_error",
            Outcome::Denied => "denied",
            Outcome::RateLimited => "rate_limited",
            Outcome::ProtocolError => "protocol_error",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One metered invocation, one JSON line in the ledger.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// Unix milliseconds when the answer was sent.
    pub ts_ms: u64,
    pub node: String,
    /// See [`caller_name`].
    pub caller: String,
    pub consumer: Option<String>,
    /// `namespace/serviceAccount` of the calling workload.
    pub workload: Option<String>,
    /// `namespace/name` of the ApiContract.
    pub contract: String,
    pub tool: String,
    pub outcome: Outcome,
    pub latency_us: u64,
}

/// Who is billed for a call: the consumer if the caller presented a key, otherwise
/// the workload identity, otherwise `unknown`.
pub fn caller_name(consumer: Option<&str>, workload: Option<&str>) -> String {
    consumer.or(workload).unwrap_or("unknown").to_owned()
}

/// Current time in unix milliseconds, as [`UsageRecord::ts_ms`] holds it.
pub fn unix_millis_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("usage ledger directory {} does not exist", .0.display())]
    NoLedgerDir(PathBuf),
    #[error("cannot write an audit record to standard output: {0}")]
    Stdout(io::Error),
    #[error("cannot encode a record as JSON: {0}")]
    Encode(#[from] serde_json::Error),
}

impl LedgerError {
    fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        LedgerError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Mode of the ledger and audit files: they name who called what, which is nobody
/// else's business on the node.
const FILE_MODE: u32 = 0o600;
