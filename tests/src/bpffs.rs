//! The BPF filesystem at `/sys/fs/bpf`, where the agent pins its maps.

use std::path::Path;
use std::sync::Mutex;

/// The conventional bpffs mount point.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Whether a bpffs is mounted at [`BPFFS`].
pub fn is_mounted() -> bool {
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|line| {
            let mut fields = line.split_whitespace();
            let (_dev, dir, fstype) = (fields.next(), fields.next(), fields.next());
            dir == Some(BPFFS) && fstype == Some("bpf")
        })
}

/// Mounts a bpffs at [`BPFFS`] unless one is there. systemd does this on most hosts;
/// minimal machines (and CI here) leave it to whoever pins first.
pub fn ensure_mounted() -> std::io::Result<()> {
    // Serialises the check-and-mount of parallel tests in this process, so the
    // filesystem is not mounted twice on top of itself.
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if is_mounted() {
        return Ok(());
    }
    if !Path::new(BPFFS).is_dir() {
        return Err(std::io::Error::other(format!("{BPFFS} does not exist")));
    }
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c"/sys/fs/bpf".as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
