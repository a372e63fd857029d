//! What the benchmark reads from /proc (memory and CPU time of a process) and the few
//! scheduler and resource-limit calls it makes on itself.

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Resident memory of one process, in KiB, from `/proc/PID/status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss_kib: u64,
    /// `VmHWM`: peak resident since the process started.
    pub hwm_kib: u64,
}

impl Memory {
    pub fn of(pid: u32) -> Option<Memory> {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        };
        Some(Memory {
            rss_kib: field("VmRSS:")?,
            hwm_kib: field("VmHWM:")?,
        })
    }

    /// Sum over several processes (nginx's master and worker, say).
    pub fn of_all(pids: &[u32]) -> Memory {
        pids.iter()
            .filter_map(|&pid| Memory::of(pid))
            .fold(Memory::default(), |acc, m| Memory {
                rss_kib: acc.rss_kib + m.rss_kib,
                hwm_kib: acc.hwm_kib + m.hwm_kib,
            })
    }
}

pub fn kib_to_mb(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// CPU time (user + system, all threads, living and exited) of a process in seconds,
/// from fields 14 and 15 of `/proc/PID/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: fields are counted after its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14 → index 11.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks())
}

pub fn cpu_seconds_all(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|&pid| cpu_seconds(pid)).sum()
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// Direct children of `pid` (nginx's worker under its master).
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let path = task.path().join("children");
            if let Ok(text) = fs::read_to_string(path) {
                out.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
        }
    }
    out
}

/// `Cpus_allowed_list` of a process, as the kernel prints it ("1", "0-1").
pub fn cpus_allowed(pid: u32) -> Option<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_string())
}

/// Number of threads of a process.
pub fn threads(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
}

/// CPUs online on the machine (not this thread's mask: the runner pins itself).
pub fn online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

/// The calling thread's CPU affinity.
pub fn affinity() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity(0) reads the
    // calling thread's mask into it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// Pins the calling thread to `cpus`. Processes started from this thread inherit it,
/// and a tokio runtime started under it sizes its worker pool to it.
pub fn set_affinity(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: as above; CPU_SET only writes inside the set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Runs `f` with the calling thread pinned to `cpus`, then restores the old mask:
/// every process `f` starts runs on `cpus`.
pub fn with_affinity<T>(cpus: &[usize], f: impl FnOnce() -> T) -> T {
    let old = affinity();
    if let Err(err) = set_affinity(cpus) {
        panic!("cannot pin to CPUs {cpus:?}: {err}");
    }
    let out = f();
    if !old.is_empty() {
        let _ = set_affinity(&old);
    }
    out
}

/// Raises this process's open-file limit towards `n`: the soft limit up to the hard
/// one, and the hard one too where allowed (CAP_SYS_RESOURCE; sandboxes often lack it).
/// Children (the agent, nginx, the connection holder) inherit it. Returns the soft
/// limit now in force.
pub fn raise_nofile(n: u64) -> std::io::Result<u64> {
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if lim.rlim_cur >= n {
            return Ok(lim.rlim_cur);
        }
        let both = libc::rlimit {
            rlim_cur: n,
            rlim_max: n.max(lim.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &both) == 0 {
            return Ok(n);
        }
        let soft = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &soft) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(lim.rlim_max)
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: one clock for every process on the machine, so a
/// probe in a pod and the runner can compare instants.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Samples the summed `VmRSS` of `pids` every `every` until `stop` is set; returns the
/// largest sample (KiB).
pub fn sample_peak_rss(pids: &[u32], every: Duration, stop: &AtomicBool) -> u64 {
    let mut peak = Memory::of_all(pids).rss_kib;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(every);
        peak = peak.max(Memory::of_all(pids).rss_kib);
    }
    peak
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        let mem = Memory::of(pid).expect("own status");
        assert!(mem.rss_kib > 0 && mem.hwm_kib >= mem.rss_kib);
        assert!(cpu_seconds(pid).is_some());
        assert!(cpus_allowed(pid).is_some());
        assert!(threads(pid).unwrap_or(0) >= 1);
    }

    #[test]
    fn monotonic_clock_advances() {
        let a = monotonic_ns();
        std::thread::sleep(Duration::from_millis(2));
        assert!(monotonic_ns() > a);
    }
}
