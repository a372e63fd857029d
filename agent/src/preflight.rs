//! Checks that make the agent exit with one clear line instead of a late, cryptic
//! failure inside the loader.
use std::path::{Path, PathBuf};

use crate::cgroup;

/// Returns the cgroup v2 root to use, or the reason the agent cannot run here.
pub fn check(cgroup_root_override: Option<&Path>) -> Result<PathBuf, String> {
    if !has_required_capabilities() {
        return Err(
            "needs root or CAP_BPF + CAP_NET_ADMIN + CAP_SYS_ADMIN to load and attach eBPF programs"
                .into(),
        );
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err("the kernel has no BTF (/sys/kernel/btf/vmlinux is missing)".into());
    }
    match cgroup_root_override {
        Some(root) if cgroup::is_cgroup2(root) => Ok(root.to_path_buf()),
        Some(root) => Err(format!("{} is not a cgroup v2 mount", root.display())),
        None => cgroup::detect_root()
            .ok_or_else(|| "no cgroup v2 hierarchy is mounted (see /proc/mounts)".to_string()),
    }
}

fn has_required_capabilities() -> bool {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_BPF: u32 = 39;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    has(CAP_SYS_ADMIN) && has(CAP_NET_ADMIN) && (has(CAP_BPF) || has(CAP_SYS_ADMIN))
}
