//! Starting processes inside a pod (netns + cgroup), keeping their logs, and stopping
//! them again by the pid we started, never by name.

use std::fs::File;
use std::io::Read;
use std::ops::Deref;
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a process gets between SIGTERM and SIGKILL when a guard or node drops it.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// Makes `cmd`'s child move itself into a cgroup and join a network namespace before
/// it execs, so its very first syscall already runs governed.
///
/// `cgroup_procs` is an open, writable `cgroup.procs` file; `netns` an open namespace
/// handle. Both are opened here in the parent because the child, between fork and exec,
/// may only make async-signal-safe calls (no allocation, no path building). They are
/// close-on-exec, so the program never sees them.
pub fn enter(cmd: &mut Command, netns: Option<File>, cgroup_procs: Option<File>) {
    let hook = move || -> std::io::Result<()> {
        if let Some(procs) = &cgroup_procs {
            // "0" means "the writing process": the child moves itself.
            // SAFETY: write(2) on an open fd with a valid one-byte buffer.
            if unsafe { libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) } != 1 {
                return Err(std::io::Error::last_os_error());
            }
        }
        if let Some(ns) = &netns {
            // SAFETY: setns(2) on an open namespace fd.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the hook only calls write(2) and setns(2) and reads errno, all
    // async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(hook);
    }
}

struct ChildState {
    child: Child,
    status: Option<ExitStatus>,
}

struct ProcShared {
    label: String,
    pid: u32,
    stdout: PathBuf,
    stderr: PathBuf,
    state: Mutex<ChildState>,
}

/// A started process whose stdout and stderr go to files. Cloning shares it. It lives
/// until [`kill`](Self::kill) / [`terminate`](Self::terminate) or until the node that
/// started it drops; see [`ChildGuard`] for one that stops when it goes out of scope.
#[derive(Clone)]
pub struct ProcHandle(Arc<ProcShared>);

impl ProcHandle {
    /// The name given when starting it (used in log file names and messages).
    pub fn label(&self) -> &str {
        &self.0.label
    }

    /// Its pid (in the initial pid namespace).
    pub fn pid(&self) -> u32 {
        self.0.pid
    }

    /// File receiving its stdout.
    pub fn stdout_path(&self) -> &Path {
        &self.0.stdout
    }

    /// File receiving its stderr.
    pub fn stderr_path(&self) -> &Path {
        &self.0.stderr
    }

    /// Everything it wrote to stdout so far.
    pub fn stdout(&self) -> String {
        read_lossy(&self.0.stdout)
    }

    /// Everything it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        read_lossy(&self.0.stderr)
    }

    /// Its exit status if it has exited (reaping it), `None` while it runs.
    pub fn try_status(&self) -> Option<ExitStatus> {
        let mut st = self.lock();
        if st.status.is_none() {
            if let Ok(Some(status)) = st.child.try_wait() {
                st.status = Some(status);
            }
        }
        st.status
    }

    /// Whether it is still running.
    pub fn is_running(&self) -> bool {
        self.try_status().is_none()
    }

    /// Waits up to `timeout` for it to exit.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` if it has not been reaped yet (so the pid is still ours);
    /// returns whether the signal was sent.
    pub fn signal(&self, signal: libc::c_int) -> bool {
        let mut st = self.lock();
        if st.status.is_some() {
            return false;
        }
        if let Ok(Some(status)) = st.child.try_wait() {
            st.status = Some(status);
            return false;
        }
        // SAFETY: plain kill(2); the pid is our unreaped child while we hold the lock.
        unsafe { libc::kill(self.0.pid as libc::pid_t, signal) == 0 }
    }

    /// SIGKILL and wait: a crash, as far as the process can tell.
    pub fn kill(&self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        let mut st = self.lock();
        if let Some(status) = st.status {
            return status;
        }
        let status = st
            .child
            .wait()
            .unwrap_or_else(|_| ExitStatus::from_raw(libc::SIGKILL));
        st.status = Some(status);
        status
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL.
    pub fn terminate(&self, grace: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
        match self.wait_timeout(grace) {
            Some(status) => status,
            None => self.kill(),
        }
    }

    /// Waits up to `timeout` until its stdout or stderr contains `needle`.
    pub fn wait_for_output(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stdout().contains(needle) || self.stderr().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Label, pid, state and the last `lines` lines of stdout and stderr, for messages.
    pub fn describe(&self, lines: usize) -> String {
        let state = match self.try_status() {
            Some(status) => format!("exited: {status}"),
            None => "running".to_string(),
        };
        format!(
            "{} (pid {}, {state})\n--- stdout (last {lines} lines) ---\n{}\n--- stderr (last {lines} lines) ---\n{}",
            self.0.label,
            self.0.pid,
            tail(&self.stdout(), lines),
            tail(&self.stderr(), lines),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ChildState> {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::fmt::Debug for ProcHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcHandle")
            .field("label", &self.0.label)
            .field("pid", &self.0.pid)
            .finish()
    }
}

/// A started process that is stopped (SIGTERM, then SIGKILL after [`STOP_GRACE`]) and
/// reaped when the guard drops. Derefs to [`ProcHandle`].
#[must_use = "dropping a ChildGuard stops the process at once"]
#[derive(Debug)]
pub struct ChildGuard {
    handle: Option<ProcHandle>,
}

impl ChildGuard {
    /// Wraps a handle so that dropping the guard stops the process.
    pub fn new(handle: ProcHandle) -> Self {
        Self {
            handle: Some(handle),
        }
    }

    /// Gives up the guard: the process then lives until it is stopped through the
    /// handle or its node drops.
    pub fn detach(mut self) -> ProcHandle {
        self.handle
            .take()
            .expect("guard holds its handle until drop")
    }
}

impl Deref for ChildGuard {
    type Target = ProcHandle;
    fn deref(&self) -> &ProcHandle {
        self.handle
            .as_ref()
            .expect("guard holds its handle until drop")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.terminate(STOP_GRACE);
        }
    }
}

/// Starts `cmd` with stdin closed and stdout/stderr going to
/// `<logs_dir>/<label>-<n>.stdout|stderr`.
pub fn spawn_logged(
    cmd: &mut Command,
    label: &str,
    logs_dir: &Path,
) -> std::io::Result<ProcHandle> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let safe: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let stdout = logs_dir.join(format!("{safe}-{n}.stdout"));
    let stderr = logs_dir.join(format!("{safe}-{n}.stderr"));
    let child = cmd
        .stdin(Stdio::null())
        .stdout(File::create(&stdout)?)
        .stderr(File::create(&stderr)?)
        .spawn()?;
    Ok(ProcHandle(Arc::new(ProcShared {
        label: label.to_string(),
        pid: child.id(),
        stdout,
        stderr,
        state: Mutex::new(ChildState {
            child,
            status: None,
        }),
    })))
}

/// Stops several processes at once: SIGTERM to all, one shared grace period, then
/// SIGKILL to whatever is left.
pub fn terminate_all(handles: &[ProcHandle], grace: Duration) {
    for h in handles {
        h.signal(libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    for h in handles {
        if h.wait_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_none()
        {
            h.kill();
        }
    }
}

/// Runs `cmd` to completion with stdin closed, capturing its output; after `timeout`
/// it is killed (its status then shows SIGKILL). Panics if it cannot be started.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
    // Drain both pipes while waiting, or a chatty child blocks on a full pipe.
    let out_reader = drain(child.stdout.take());
    let err_reader = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                eprintln!(
                    "{:?} still running after {timeout:?}: killing it",
                    cmd.get_program()
                );
                let _ = child.kill();
                break child.wait().expect("wait for killed child");
            }
            Err(e) => panic!("cannot wait for {:?}: {e}", cmd.get_program()),
        }
    };
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

/// Conveniences on a finished command's [`Output`].
pub trait OutputExt {
    /// stdout as (lossy) UTF-8.
    fn stdout_str(&self) -> String;
    /// stderr as (lossy) UTF-8.
    fn stderr_str(&self) -> String;
    /// Panics, showing status, stdout and stderr, unless the command succeeded.
    fn assert_success(&self) -> &Self;
    /// stdout parsed as JSON; panics showing the output if it is not.
    fn json(&self) -> serde_json::Value;
}

impl OutputExt for Output {
    fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    fn assert_success(&self) -> &Self {
        assert!(
            self.status.success(),
            "command failed ({})\nstdout: {}\nstderr: {}",
            self.status,
            self.stdout_str(),
            self.stderr_str()
        );
        self
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}); status {}\nstdout: {}\nstderr: {}",
                self.status,
                self.stdout_str(),
                self.stderr_str()
            )
        })
    }
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
