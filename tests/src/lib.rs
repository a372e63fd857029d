//! Simulated node for STOA's privileged end-to-end tests.
//!
//! One [`SimNode`] plays a Kubernetes node on this machine: a network namespace stands
//! in for the node's root netns (with the proxy address on its loopback), each [`Pod`]
//! is a network namespace joined to it by a veth pair plus a cgroup v2 directory, and
//! processes are started in both. Every node has a unique id, so tests run in parallel,
//! and everything it made is removed when it is dropped, also while a test panics.
//!
//! ```no_run
//! if !stoa_tests::require_root() { return; }
//! let node = stoa_tests::SimNode::new();
//! let client = node.add_pod("client");
//! let server = node.add_pod("server");
//! server.add_service_ip("10.96.0.10");
//! server.spawn_backend("orders", "0.0.0.0:80");
//! let out = client.curl(&["http://10.96.0.10/orders"]);
//! assert!(out.status.success());
//! ```

pub mod bins;
pub mod bpffs;
pub mod cgroup;
pub mod http;
pub mod issuer;
pub mod mcp;
pub mod metrics;
pub mod netns;
pub mod node;
pub mod process;

use std::net::Ipv4Addr;

pub use bins::{bin_dir, bin_path};
pub use node::{Pod, SimNode};
pub use process::{run_with_timeout, ChildGuard, OutputExt, ProcHandle};

/// The node-local proxy address; it sits on the node netns' loopback.
pub const PROXY_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 42, 1);
/// The port the agent's proxy listens on.
pub const PROXY_PORT: u16 = 15001;
/// Where `start_controller` makes the controller listen (inside the node netns).
pub const CONTROLLER_ADDR: &str = "127.0.0.1:7070";
/// Where `start_agent` makes the agent serve `/metrics` (inside the node netns).
pub const AGENT_METRICS_ADDR: &str = "127.0.0.1:9091";

/// Whether the privileged tests can run. Tests start with
/// `if !stoa_tests::require_root() { return; }`.
///
/// Without root this prints a skip notice and returns false, except under CI
/// (`CI=true`), where a silently skipped suite would look green: there it panics.
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "STOA end-to-end tests need root (network namespaces, cgroups, eBPF); \
             CI=true, so they must not be skipped"
        );
    }
    eprintln!("skipping: STOA end-to-end tests need root (network namespaces, cgroups, eBPF)");
    false
}
