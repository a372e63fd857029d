//! cgroup v2 directories for simulated pods.

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Mount point of the cgroup v2 hierarchy, read from /proc/mounts: `/sys/fs/cgroup`
/// on pure v2 hosts, `/sys/fs/cgroup/unified` on hybrid ones. Panics without one.
pub fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let mounts = fs::read_to_string("/proc/mounts").expect("cannot read /proc/mounts");
        mounts
            .lines()
            .find_map(|line| {
                let mut fields = line.split_whitespace();
                let (_dev, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
                (fstype == "cgroup2").then(|| PathBuf::from(dir))
            })
            .expect("no cgroup v2 hierarchy is mounted (no cgroup2 line in /proc/mounts)")
    })
}

/// The cgroup id the kernel (and `bpf_get_current_cgroup_id`) uses: the directory's inode.
pub fn id(path: &Path) -> u64 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("cannot stat cgroup {}: {e}", path.display()))
        .ino()
}

/// The pids currently in the cgroup at `path` (empty if it cannot be read).
pub fn procs(path: &Path) -> Vec<u32> {
    fs::read_to_string(path.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The cgroup v2 path of process `pid`, relative to the cgroup root (no leading `/`).
pub fn of_pid(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_start_matches('/').to_string())
}

/// Removes the (leaf) cgroup at `path`, waiting briefly for exiting processes to leave;
/// if some stay (strays such as a started process's background children), kills them
/// through `cgroup.kill`. Only ever our own test cgroups get here.
pub fn remove(path: &Path) -> Result<(), String> {
    if !path.exists() {
        return Ok(());
    }
    // Started processes are reaped before this runs, so only strays can still be inside.
    if try_rmdir_for(path, Duration::from_millis(300)) {
        return Ok(());
    }
    if let Ok(mut f) = fs::OpenOptions::new()
        .write(true)
        .open(path.join("cgroup.kill"))
    {
        let _ = f.write_all(b"1");
    }
    if try_rmdir_for(path, Duration::from_secs(3)) {
        return Ok(());
    }
    Err(format!(
        "cannot remove cgroup {} (processes still inside: {:?})",
        path.display(),
        procs(path)
    ))
}

fn try_rmdir_for(path: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return true,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => return false,
        }
    }
}
