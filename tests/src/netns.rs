//! Named network namespaces (`ip netns`), and running code inside one.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

/// Serialises `ip netns add/del` of parallel tests: on first use iproute2 turns
/// /run/netns into a shared bind mount, and concurrent first uses stack mounts.
static NETNS_LOCK: Mutex<()> = Mutex::new(());

/// Where `ip netns` keeps the handle of namespace `name`.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// Runs `ip ARGS`; the error carries the command line and ip's stderr.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Creates the named namespace.
pub fn add(name: &str) -> Result<(), String> {
    let _guard = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    ip(&["netns", "add", name])
}

/// Deletes the named namespace (its interfaces go with it once no process holds it).
pub fn del(name: &str) -> Result<(), String> {
    let _guard = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if !path(name).exists() {
        return Ok(());
    }
    ip(&["netns", "del", name])
}

/// Opens the namespace handle, for `setns`. The fd is close-on-exec.
pub fn open(name: &str) -> std::io::Result<File> {
    File::open(path(name))
}

/// Runs `f` on a helper thread that has joined network namespace `name`.
///
/// Only the network namespace changes (setns with CLONE_NEWNET is per thread); the
/// thread stays in this process's cgroup, so its sockets are never a workload's.
pub fn in_netns<T, F>(name: &str, f: F) -> std::io::Result<T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let ns = open(name)?;
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: setns on a valid, open namespace fd; affects only this thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Whether a TCP connection to `addr` succeeds from inside namespace `name`.
pub fn tcp_connects(name: &str, addr: SocketAddr, timeout: Duration) -> bool {
    in_netns(name, || TcpStream::connect_timeout(&addr, timeout).is_ok()).unwrap_or(false)
}

/// Writes `value` to the per-namespace sysctl file `/proc/sys/<key>` inside `name`
/// (`key` like `net/ipv4/ip_forward`): /proc/sys/net follows the writer's namespace.
pub fn sysctl(name: &str, key: &str, value: &str) -> Result<(), String> {
    let file = format!("/proc/sys/{key}");
    in_netns(name, || std::fs::write(&file, value))
        .and_then(|r| r)
        .map_err(|e| format!("cannot write {value} to {file} in netns {name}: {e}"))
}
