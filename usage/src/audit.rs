//! Audit records: one JSON line per tool call decision, to standard output or a file.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::ledger::{end_with_newline, open_for_append};
use crate::{LedgerError, Outcome};

/// One audited tool call.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuditRecord {
    pub ts_ms: u64,
    pub node: String,
    pub trace_id: Option<String>,
    pub caller: String,
    pub consumer: Option<String>,
    pub workload: Option<String>,
    /// A fingerprint of the API key presented, never the key.
    pub key_id: Option<String>,
    pub contract: String,
    pub tool: String,
    /// Already passed through [`crate::redact_arguments`].
    pub arguments: serde_json::Value,
    /// [`AuditRecord::ALLOW`] or [`AuditRecord::DENY`].
    pub decision: &'static str,
    pub reason: Option<String>,
    /// None when the call was denied before reaching the tool.
    pub outcome: Option<Outcome>,
    pub latency_us: u64,
    pub jsonrpc_id: serde_json::Value,
}

impl AuditRecord {
    pub const ALLOW: &'static str = "allow";
    pub const DENY: &'static str = "deny";
}

/// Where audit records go.
#[derive(Debug)]
pub enum AuditSink {
    Stdout,
    /// Appended to; created with mode 0600.
    File {
        path: PathBuf,
        file: File,
    },
}

impl AuditSink {
    /// `-` or `stdout` means standard output; anything else is a file path.
    pub fn open(spec: &str) -> Result<AuditSink, LedgerError> {
        if spec == "-" || spec == "stdout" {
            return Ok(AuditSink::Stdout);
        }
        let path = Path::new(spec);
        let file = open_for_append(path)?;
        end_with_newline(&file).map_err(|e| LedgerError::io(path, e))?;
        Ok(AuditSink::File {
            path: path.to_owned(),
            file,
        })
    }

    /// Writes one record as one line, in a single write so lines from concurrent
    /// calls never interleave.
    pub fn write(&self, record: &AuditRecord) -> Result<(), LedgerError> {
        let mut line = serde_json::to_vec(record)?;
        line.push(b'\n');
        match self {
            AuditSink::Stdout => {
                // The lock keeps other output of this process from landing mid-line;
                // the flush makes the line leave the process now.
                let mut stdout = io::stdout().lock();
                stdout
                    .write_all(&line)
                    .and_then(|()| stdout.flush())
                    .map_err(LedgerError::Stdout)
            }
            AuditSink::File { path, file } => (&*file)
                .write_all(&line)
                .map_err(|e| LedgerError::io(path, e)),
        }
    }
}
