//! The usage ledger: JSON lines appended to `<dir>/usage.jsonl`, rotated by size to
//! `usage.jsonl.1` (newest) … `usage.jsonl.<max_files>` (oldest).

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::{LedgerError, UsageRecord, FILE_MODE};

/// The file appended to; rotated files carry a `.N` suffix.
pub const CURRENT_FILE_NAME: &str = "usage.jsonl";

/// How stale the last fdatasync may be before an append issues another: a power loss
/// loses at most about this much of the ledger.
const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// After a failed rotation, appends go on into the current file and retry no sooner
/// than this, so a broken directory doesn't cost every call a round of syscalls.
const ROTATION_RETRY: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerConfig {
    pub dir: PathBuf,
    /// The current file is rotated before an append would take it past this size.
    pub max_file_bytes: u64,
    /// Rotated files kept besides the current one; older ones are deleted.
    pub max_files: usize,
}

impl LedgerConfig {
    pub const DEFAULT_MAX_FILE_BYTES: u64 = 16 << 20;
    pub const DEFAULT_MAX_FILES: usize = 8;

    /// A ledger in `dir` with the default size limits.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LedgerConfig {
            dir: dir.into(),
            max_file_bytes: Self::DEFAULT_MAX_FILE_BYTES,
            max_files: Self::DEFAULT_MAX_FILES,
        }
    }
}

/// Appends usage records; shared between tasks through an `Arc`.
pub struct Ledger {
    config: LedgerConfig,
    current_path: PathBuf,
    state: Mutex<AppendState>,
}

struct AppendState {
    // Behind an Arc so an fdatasync can run after the lock is released.
    file: Arc<File>,
    len: u64,
    last_sync: Instant,
    // A failed write may have left part of a line behind: the next write starts with
    // a newline so its record is not glued to the fragment.
    torn: bool,
    rotation_retry_at: Option<Instant>,
}

impl Ledger {
    /// Opens (creating if needed) the ledger directory and its current file.
    pub fn open(config: LedgerConfig) -> Result<Ledger, LedgerError> {
        fs::create_dir_all(&config.dir).map_err(|e| LedgerError::io(&config.dir, e))?;
        let current_path = config.dir.join(CURRENT_FILE_NAME);
        let file = open_for_append(&current_path)?;
        let len = end_with_newline(&file).map_err(|e| LedgerError::io(&current_path, e))?;
        sync_dir(&config.dir)?;
        Ok(Ledger {
            config,
            current_path,
            state: Mutex::new(AppendState {
                file: Arc::new(file),
                len,
                last_sync: Instant::now(),
                torn: false,
                rotation_retry_at: None,
            }),
        })
    }

    pub fn config(&self) -> &LedgerConfig {
        &self.config
    }

    /// Appends one record. Crash-safety contract: when this returns Ok, the record is
    /// in the kernel (one write(2) of the whole line on an O_APPEND fd, no userspace
    /// buffering), so a kill -9 of the process afterwards loses nothing. Call it
    /// before releasing the answer to the client.
    ///
    /// It also fdatasyncs when the last sync is older than ~1 s, so a power loss
    /// loses at most about a second of records (call [`Ledger::sync`] on shutdown or
    /// on a timer to cover the last second before traffic stops).
    pub fn append(&self, record: &UsageRecord) -> Result<(), LedgerError> {
        // Encoded before taking the lock; the leading newline is sent only after a
        // torn write.
        let mut buffer = Vec::with_capacity(256);
        buffer.push(b'\n');
        serde_json::to_writer(&mut buffer, record)?;
        buffer.push(b'\n');

        let mut state = self.lock();
        let record_len = buffer.len() as u64 - 1;
        if state.len > 0 && state.len + record_len > self.config.max_file_bytes {
            self.rotate_or_postpone(&mut state);
        }
        let line = if state.torn {
            &buffer[..]
        } else {
            &buffer[1..]
        };
        if let Err(err) = (&*state.file).write_all(line) {
            state.torn = true;
            if let Ok(metadata) = state.file.metadata() {
                state.len = metadata.len();
            }
            return Err(LedgerError::io(&self.current_path, err));
        }
        state.len += line.len() as u64;
        state.torn = false;

        let due_for_sync = state.last_sync.elapsed() >= SYNC_INTERVAL;
        let file = due_for_sync.then(|| {
            state.last_sync = Instant::now();
            Arc::clone(&state.file)
        });
        drop(state);
        if let Some(file) = file {
            // The record is already in the kernel, which is what Ok promises; a failed
            // sync is the disk's problem, not this call's.
            if let Err(err) = file.sync_data() {
                tracing::warn!(path = %self.current_path.display(), %err, "usage ledger fdatasync failed");
            }
        }
        Ok(())
    }

    /// Flushes what was appended to the disk.
    pub fn sync(&self) -> Result<(), LedgerError> {
        let file = {
            let mut state = self.lock();
            state.last_sync = Instant::now();
            Arc::clone(&state.file)
        };
        file.sync_data()
            .map_err(|e| LedgerError::io(&self.current_path, e))
    }

    fn lock(&self) -> MutexGuard<'_, AppendState> {
        // A panic while holding the lock cannot leave the state inconsistent in a way
        // that matters: at worst `len` is off until the next rotation.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn rotate_or_postpone(&self, state: &mut AppendState) {
        if state
            .rotation_retry_at
            .is_some_and(|at| Instant::now() < at)
        {
            return;
        }
        match self.rotate(state) {
            Ok(()) => state.rotation_retry_at = None,
            Err(err) => {
                // Metering beats the size limit: keep appending to the current file.
                tracing::warn!(%err, "usage ledger rotation failed; appending to the current file");
                state.rotation_retry_at = Some(Instant::now() + ROTATION_RETRY);
            }
        }
    }

    fn rotate(&self, state: &mut AppendState) -> Result<(), LedgerError> {
        // Rotated files are never synced again, so this is their last chance.
        state
            .file
            .sync_data()
            .map_err(|e| LedgerError::io(&self.current_path, e))?;
        self.shift_files()?;
        let file = open_for_append(&self.current_path)?;
        sync_dir(&self.config.dir)?;
        *state = AppendState {
            file: Arc::new(file),
            len: 0,
            last_sync: Instant::now(),
            torn: false,
            rotation_retry_at: None,
        };
        Ok(())
    }

    /// Renames the current file to `.1`, moving older files up by one. Only files
    /// below the first missing number move, so a rotation that failed half way and is
    /// retried deletes nothing more.
    fn shift_files(&self) -> Result<(), LedgerError> {
        let dir = &self.config.dir;
        let max_files = self.config.max_files;
        let rotated: BTreeSet<usize> = ledger_files(dir)?
            .into_iter()
            .filter_map(|(index, _)| index)
            .collect();
        let rotated_path = |index: usize| dir.join(format!("{CURRENT_FILE_NAME}.{index}"));
        let remove = |path: PathBuf| match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(LedgerError::io(path, err)),
        };
        let rename = |from: PathBuf, to: PathBuf| {
            fs::rename(&from, &to).map_err(|e| LedgerError::io(from, e))
        };

        // Left over from a larger max_files.
        for &index in rotated.range(max_files + 1..) {
            remove(rotated_path(index))?;
        }
        if max_files == 0 {
            return remove(self.current_path.clone());
        }
        let first_free = match (1..=max_files).find(|index| !rotated.contains(index)) {
            Some(index) => index,
            None => {
                remove(rotated_path(max_files))?;
                max_files
            }
        };
        for index in (1..first_free).rev() {
            rename(rotated_path(index), rotated_path(index + 1))?;
        }
        rename(self.current_path.clone(), rotated_path(1))
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Err(err) = state.file.sync_data() {
            tracing::warn!(path = %self.current_path.display(), %err, "usage ledger fdatasync failed");
        }
    }
}

/// The ledger's files in `dir`: `(None, current)` and `(Some(n), usage.jsonl.n)`.
pub(crate) fn ledger_files(dir: &Path) -> Result<Vec<(Option<usize>, PathBuf)>, LedgerError> {
    let entries = fs::read_dir(dir).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => LedgerError::NoLedgerDir(dir.to_owned()),
        _ => LedgerError::io(dir, e),
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| LedgerError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name == CURRENT_FILE_NAME {
            files.push((None, entry.path()));
        } else if let Some(index) = rotated_index(name) {
            files.push((Some(index), entry.path()));
        }
    }
    Ok(files)
}

fn rotated_index(file_name: &str) -> Option<usize> {
    let suffix = file_name
        .strip_prefix(CURRENT_FILE_NAME)?
        .strip_prefix('.')?;
    if suffix.is_empty() || !suffix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    suffix.parse().ok().filter(|&index| index > 0)
}

pub(crate) fn open_for_append(path: &Path) -> Result<File, LedgerError> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(|e| LedgerError::io(path, e))
}

/// After a crash mid-write the file ends in part of a line; a newline closes it so
/// the next record starts clean (readers skip the fragment). Returns the length.
pub(crate) fn end_with_newline(file: &File) -> io::Result<u64> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(0);
    }
    let mut last = [0u8];
    file.read_exact_at(&mut last, len - 1)?;
    if last[0] == b'\n' {
        return Ok(len);
    }
    let mut file = file;
    file.write_all(b"\n")?;
    Ok(len + 1)
}

/// Makes a created or renamed file's directory entry survive a power loss.
fn sync_dir(dir: &Path) -> Result<(), LedgerError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| LedgerError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_index_accepts_only_numbered_ledger_files() {
        assert_eq!(rotated_index("usage.jsonl.1"), Some(1));
        assert_eq!(rotated_index("usage.jsonl.12"), Some(12));
        for name in [
            "usage.jsonl",
            "usage.jsonl.",
            "usage.jsonl.0",
            "usage.jsonl.+1",
            "usage.jsonl.1.tmp",
            "usage.jsonlx.1",
            "other.jsonl.1",
        ] {
            assert_eq!(rotated_index(name), None, "{name}");
        }
    }
}
