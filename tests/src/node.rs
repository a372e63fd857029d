//! The simulated node and its pods.
//!
//! Layout of node `<id>` (a unique 6-hex-digit id per [`SimNode`]):
//! - netns `stoa-<id>-node` plays the node's root netns: lo up, [`PROXY_IP`]/32 on lo,
//!   IPv4 forwarding on;
//! - pod number `i` (1, 2, …) is netns `stoa-<id>-<name>` with `eth0` = 10.1.i.2/24,
//!   peered with `h<i>` = 10.1.i.1/24 in the node netns, default route via 10.1.i.1,
//!   and cgroup `<cgroup2 root>/stoa-test-<id>/<name>`;
//! - the agent pins under `/sys/fs/bpf/stoa-test-<id>`;
//! - policy files and process logs live in a temporary directory.
//!
//! Veth interfaces are created directly inside the namespaces, so identical interface
//! names in parallel tests never meet.

use std::ffi::OsStr;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;

use crate::process::{self, ChildGuard, ProcHandle, STOP_GRACE};
use crate::{
    bins, bpffs, cgroup, netns, AGENT_METRICS_ADDR, CONTROLLER_ADDR, PROXY_IP, PROXY_PORT,
};

/// How long `start_controller`, `start_agent` and `spawn_backend` wait for a listener.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Timeout of [`Pod::run`] and [`SimNode::run`].
pub const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// `curl --max-time` of [`Pod::curl`] and [`SimNode::curl`], in seconds.
pub const CURL_MAX_TIME_SECS: u64 = 10;

/// A simulated node. Dropping it (also during a panic) stops every process it started
/// and removes its namespaces, cgroups, pins and temporary files.
pub struct SimNode {
    inner: Arc<NodeInner>,
}

struct NodeInner {
    id: String,
    netns: String,
    cgroup_dir: PathBuf,
    pin_path: PathBuf,
    tmp_path: PathBuf,
    tmp: Mutex<Option<TempDir>>,
    state: Mutex<NodeState>,
}

#[derive(Default)]
struct NodeState {
    /// Namespaces made, in creation order (the node's first).
    netns: Vec<String>,
    /// cgroup directories made, in creation order (parents first).
    cgroups: Vec<PathBuf>,
    /// Every process started through this node or its pods.
    procs: Vec<ProcHandle>,
    /// Pod names, index i-1 holds pod i.
    pods: Vec<String>,
}

/// A pod of a [`SimNode`]: a network namespace plus a cgroup. Cheap to clone; it is
/// only usable while its node lives.
#[derive(Clone)]
pub struct Pod {
    node: Arc<NodeInner>,
    name: String,
    index: u8,
    netns: String,
    cgroup_path: PathBuf,
    cgroup_rel: String,
}

impl Default for SimNode {
    fn default() -> Self {
        Self::new()
    }
}

impl SimNode {
    /// Builds a fresh node; panics (after cleaning up what was made) if a step fails.
    pub fn new() -> Self {
        Self::build(None)
    }

    /// A node whose pods' cgroups live under `cgroup_parent` (relative to the cgroup v2
    /// root) instead of `stoa-test-<id>`, so that a fixed policy such as `examples/`
    /// (pod `billing-agent` → `stoa.slice/billing-agent`) names them. The parent is
    /// created if missing and then removed on drop; an existing one is left in place.
    pub fn with_cgroup_parent(cgroup_parent: &str) -> Self {
        Self::build(Some(cgroup_parent))
    }

    fn build(cgroup_parent: Option<&str>) -> Self {
        if let Err(e) = bpffs::ensure_mounted() {
            // Only tests that start an agent need it; they will say so themselves.
            eprintln!("warning: no bpffs at {}: {e}", bpffs::BPFFS);
        }
        let id = unique_id();
        let tmp = tempfile::Builder::new()
            .prefix(&format!("stoa-test-{id}-"))
            .tempdir()
            .expect("cannot create the node's temp dir");
        let node = SimNode {
            inner: Arc::new(NodeInner {
                netns: format!("stoa-{id}-node"),
                cgroup_dir: match cgroup_parent {
                    Some(parent) => cgroup::root().join(parent.trim_matches('/')),
                    None => cgroup::root().join(format!("stoa-test-{id}")),
                },
                pin_path: Path::new(bpffs::BPFFS).join(format!("stoa-test-{id}")),
                tmp_path: tmp.path().to_path_buf(),
                tmp: Mutex::new(Some(tmp)),
                state: Mutex::new(NodeState::default()),
                id,
            }),
        };
        // From here on a panic unwinds through SimNode::drop, which removes what exists.
        node.setup();
        node
    }

    fn setup(&self) {
        let inner = &self.inner;
        for dir in [self.policy_dir(), self.logs_dir()] {
            fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        }
        let ns = inner.netns.as_str();
        netns::add(ns).unwrap_or_else(|e| panic!("{e}"));
        inner.state().netns.push(ns.to_string());
        must(netns::ip(&["-n", ns, "link", "set", "lo", "up"]));
        let proxy = format!("{PROXY_IP}/32");
        must(netns::ip(&["-n", ns, "addr", "add", &proxy, "dev", "lo"]));
        must(netns::sysctl(ns, "net/ipv4/ip_forward", "1"));
        if inner.cgroup_dir.is_dir()
            && !inner
                .cgroup_dir
                .ends_with(format!("stoa-test-{}", inner.id))
        {
            // A shared parent (with_cgroup_parent) that exists already is not ours to remove.
        } else {
            fs::create_dir_all(&inner.cgroup_dir)
                .unwrap_or_else(|e| panic!("mkdir {}: {e}", inner.cgroup_dir.display()));
            inner.state().cgroups.push(inner.cgroup_dir.clone());
        }
    }

    /// Removes everything now (as drop does); for a signal handler of a long-running
    /// program such as the demo. Idempotent.
    pub fn cleanup(&self) {
        self.inner.cleanup();
    }

    /// The node's unique id (6 hex digits); also its `--node-name`.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Name of the node's network namespace, `stoa-<id>-node`.
    pub fn netns(&self) -> &str {
        &self.inner.netns
    }

    /// The node's cgroup directory `<cgroup2 root>/stoa-test-<id>`, parent of the pods'.
    pub fn cgroup_path(&self) -> &Path {
        &self.inner.cgroup_dir
    }

    /// The agent's `--pin-path`, `/sys/fs/bpf/stoa-test-<id>` (not created here).
    pub fn pin_path(&self) -> &Path {
        &self.inner.pin_path
    }

    /// The node's temporary directory (removed on drop unless `STOA_KEEP_LOGS` is set).
    pub fn temp_dir(&self) -> &Path {
        &self.inner.tmp_path
    }

    /// Folder for this test's policy YAML (what `start_controller` usually gets).
    pub fn policy_dir(&self) -> PathBuf {
        self.inner.tmp_path.join("policy")
    }

    /// The agent's MCP usage ledger (`--usage-dir`) for this node.
    pub fn usage_dir(&self) -> PathBuf {
        self.inner.tmp_path.join("usage")
    }

    /// Folder receiving the stdout/stderr files of started processes.
    pub fn logs_dir(&self) -> PathBuf {
        self.inner.logs_dir()
    }

    /// Writes `policy_dir()/file_name` atomically (temp file + rename), so a watching
    /// controller never reads half a file. The temp name is hidden and ends in `.tmp`.
    pub fn write_policy(&self, file_name: &str, yaml: &str) -> PathBuf {
        let dir = self.policy_dir();
        let target = dir.join(file_name);
        let tmp = dir.join(format!(".{file_name}.tmp"));
        fs::write(&tmp, yaml).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
        fs::rename(&tmp, &target).unwrap_or_else(|e| panic!("rename to {}: {e}", target.display()));
        target
    }

    /// Removes `policy_dir()/file_name`.
    pub fn remove_policy(&self, file_name: &str) {
        let path = self.policy_dir().join(file_name);
        fs::remove_file(&path).unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
    }

    /// Adds pod `name` (lowercase letters, digits, `-`; not `node`); see the module doc.
    pub fn add_pod(&self, name: &str) -> Pod {
        assert!(
            !name.is_empty()
                && name != "node"
                && name.len() <= 32
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "invalid pod name {name:?}: use [a-z0-9-], at most 32 chars, not \"node\""
        );
        let index = {
            let mut st = self.inner.state();
            assert!(
                !st.pods.iter().any(|p| p == name),
                "pod {name} exists already"
            );
            assert!(st.pods.len() < 254, "at most 254 pods per node");
            st.pods.push(name.to_string());
            st.pods.len() as u8
        };
        let pod_ns = format!("stoa-{}-{name}", self.inner.id);
        netns::add(&pod_ns).unwrap_or_else(|e| panic!("{e}"));
        self.inner.state().netns.push(pod_ns.clone());

        let node_ns = self.inner.netns.as_str();
        let host_if = format!("h{index}");
        let node_addr = format!("10.1.{index}.1/24");
        let pod_addr = format!("10.1.{index}.2/24");
        let gateway = format!("10.1.{index}.1");
        let veth = [
            "-n", node_ns, "link", "add", &host_if, "type", "veth", "peer", "name", "eth0",
            "netns", &pod_ns,
        ];
        must(netns::ip(&veth));
        must(netns::ip(&[
            "-n", node_ns, "addr", "add", &node_addr, "dev", &host_if,
        ]));
        must(netns::ip(&["-n", node_ns, "link", "set", &host_if, "up"]));
        must(netns::ip(&["-n", &pod_ns, "link", "set", "lo", "up"]));
        must(netns::ip(&[
            "-n", &pod_ns, "addr", "add", &pod_addr, "dev", "eth0",
        ]));
        must(netns::ip(&["-n", &pod_ns, "link", "set", "eth0", "up"]));
        must(netns::ip(&[
            "-n", &pod_ns, "route", "add", "default", "via", &gateway,
        ]));

        let cgroup_path = self.inner.cgroup_dir.join(name);
        fs::create_dir(&cgroup_path)
            .unwrap_or_else(|e| panic!("mkdir {}: {e}", cgroup_path.display()));
        self.inner.state().cgroups.push(cgroup_path.clone());
        let cgroup_rel = cgroup_path
            .strip_prefix(cgroup::root())
            .expect("pod cgroup lies under the cgroup root")
            .to_string_lossy()
            .into_owned();
        Pod {
            node: self.inner.clone(),
            name: name.to_string(),
            index,
            netns: pod_ns,
            cgroup_path,
            cgroup_rel,
        }
    }

    /// A command that runs `program` in the node netns, outside every pod cgroup
    /// (as the controller and agent must).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let ns = netns::open(&self.inner.netns)
            .unwrap_or_else(|e| panic!("open netns {}: {e}", self.inner.netns));
        process::enter(&mut cmd, Some(ns), None);
        cmd
    }

    /// Starts `cmd` (made by one of the `command` methods), logging to [`logs_dir`](Self::logs_dir).
    /// The guard stops it on drop; `.detach()` keeps it until the node drops.
    pub fn spawn(&self, label: &str, cmd: &mut Command) -> ChildGuard {
        ChildGuard::new(self.inner.spawn(label, cmd))
    }

    /// Every process started through this node or its pods, in start order.
    pub fn processes(&self) -> Vec<ProcHandle> {
        self.inner.state().procs.clone()
    }

    /// Runs `args[0]` with `args[1..]` in the node netns and waits (up to [`RUN_TIMEOUT`]).
    pub fn run(&self, args: &[&str]) -> Output {
        let (program, rest) = args.split_first().expect("run needs a program");
        process::run_with_timeout(self.command(program).args(rest), RUN_TIMEOUT)
    }

    /// Runs curl in the node netns (e.g. to scrape `/metrics`); see [`Pod::curl`].
    pub fn curl(&self, args: &[&str]) -> Output {
        process::run_with_timeout(&mut curl_args(self.command("curl"), args), RUN_TIMEOUT)
    }

    /// Runs `f` on a thread inside the node netns (not in any pod cgroup).
    pub fn in_netns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        netns::in_netns(&self.inner.netns, f).expect("enter node netns")
    }

    /// Whether `addr` accepts TCP connections from the node netns within `timeout`.
    pub fn wait_tcp(&self, addr: SocketAddr, timeout: Duration) -> bool {
        wait_tcp(&self.inner.netns, addr, timeout, None)
    }

    /// Starts `stoa-controller --policy-dir DIR --listen 127.0.0.1:7070` in the node netns
    /// and waits until it listens. It runs until stopped through the handle or node drop.
    pub fn start_controller(&self, policy_dir: &Path) -> ProcHandle {
        self.start_controller_with(policy_dir, &[])
    }

    /// [`start_controller`](Self::start_controller) with extra arguments appended.
    pub fn start_controller_with(&self, policy_dir: &Path, extra_args: &[&str]) -> ProcHandle {
        let mut cmd = self.command(bins::bin_path("stoa-controller"));
        cmd.arg("--policy-dir")
            .arg(policy_dir)
            .args(["--listen", CONTROLLER_ADDR])
            .args(extra_args);
        with_log_env(&mut cmd);
        let handle = self.inner.spawn("controller", &mut cmd);
        let addr = CONTROLLER_ADDR.parse().expect("controller address");
        self.inner.wait_ready(&handle, &self.inner.netns, addr);
        handle
    }

    /// Starts `stoa-agent` in the node netns with the node's controller, proxy, pin path,
    /// node name and metrics address, plus `extra_args`, and waits until the proxy
    /// listens on 169.254.42.1:15001 (it logs "node proxy listening"). It runs until stopped through the handle or node
    /// drop; start it again after `kill()` to simulate a restart.
    pub fn start_agent(&self, extra_args: &[&str]) -> ProcHandle {
        let mut cmd = self.command(bins::bin_path("stoa-agent"));
        cmd.args(["--controller", &format!("http://{CONTROLLER_ADDR}")])
            .args(["--proxy-addr", &format!("{PROXY_IP}:{PROXY_PORT}")])
            .arg("--pin-path")
            .arg(&self.inner.pin_path)
            .args(["--node-name", &self.inner.id])
            .args(["--metrics-addr", AGENT_METRICS_ADDR]);
        // Each node keeps its own usage ledger, never the machine's default folder.
        if !extra_args.contains(&"--usage-dir") {
            cmd.arg("--usage-dir").arg(self.usage_dir());
        }
        cmd.args(extra_args);
        with_log_env(&mut cmd);
        let handle = self.inner.spawn("agent", &mut cmd);
        // The agent says when its proxy listens; a TCP probe would only be refused
        // (no redirect record) and count as a refused connection.
        let deadline = std::time::Instant::now() + READY_TIMEOUT;
        while !handle.stderr().contains("node proxy listening") {
            if !handle.is_running() || std::time::Instant::now() >= deadline {
                panic!(
                    "agent did not start its proxy on {PROXY_IP}:{PROXY_PORT}:\n{}",
                    handle.describe(60)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        handle
    }
}

impl Drop for SimNode {
    fn drop(&mut self) {
        self.inner.cleanup();
    }
}

impl NodeInner {
    fn state(&self) -> std::sync::MutexGuard<'_, NodeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn logs_dir(&self) -> PathBuf {
        self.tmp_path.join("logs")
    }

    fn spawn(&self, label: &str, cmd: &mut Command) -> ProcHandle {
        let handle = process::spawn_logged(cmd, label, &self.logs_dir())
            .unwrap_or_else(|e| panic!("cannot start {label} ({:?}): {e}", cmd.get_program()));
        self.state().procs.push(handle.clone());
        handle
    }

    /// Waits until `addr` accepts in `ns`; panics with the process's logs if it exits
    /// first or [`READY_TIMEOUT`] passes.
    fn wait_ready(&self, handle: &ProcHandle, ns: &str, addr: SocketAddr) {
        if !wait_tcp(ns, addr, READY_TIMEOUT, Some(handle)) {
            let why = if handle.is_running() {
                format!("did not accept within {READY_TIMEOUT:?}")
            } else {
                "exited before accepting".to_string()
            };
            panic!(
                "{} {why} on {addr} in netns {ns}:\n{}",
                handle.label(),
                handle.describe(60)
            );
        }
    }

    /// Stops processes, then removes namespaces, cgroups, pins and the temp dir. Errors
    /// are printed: panicking here would abort a test that is already unwinding.
    fn cleanup(&self) {
        let (procs, namespaces, cgroups) = {
            let mut st = self.state();
            (
                std::mem::take(&mut st.procs),
                std::mem::take(&mut st.netns),
                std::mem::take(&mut st.cgroups),
            )
        };
        if std::thread::panicking() {
            for p in &procs {
                eprintln!("=== node {} process {}", self.id, p.describe(40));
            }
        }
        process::terminate_all(&procs, STOP_GRACE);
        // Pods first, then the node: reverse creation order.
        for ns in namespaces.iter().rev() {
            if let Err(e) = netns::del(ns) {
                eprintln!("cleanup of node {}: {e}", self.id);
            }
        }
        for dir in cgroups.iter().rev() {
            if let Err(e) = cgroup::remove(dir) {
                eprintln!("cleanup of node {}: {e}", self.id);
            }
        }
        if self.pin_path.exists() {
            if let Err(e) = fs::remove_dir_all(&self.pin_path) {
                eprintln!(
                    "cleanup of node {}: rm -rf {}: {e}",
                    self.id,
                    self.pin_path.display()
                );
            }
        }
        let tmp = self.tmp.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(tmp) = tmp {
            if std::env::var_os("STOA_KEEP_LOGS").is_some() {
                eprintln!("node {}: keeping {}", self.id, tmp.keep().display());
            } else if let Err(e) = tmp.close() {
                eprintln!("cleanup of node {}: remove temp dir: {e}", self.id);
            }
        }
    }
}

impl Pod {
    /// The pod's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pod's number i (1, 2, …) on its node.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The pod's address, 10.1.i.2.
    pub fn ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 1, self.index, 2)
    }

    /// The node side of the pod's veth, 10.1.i.1 (its default gateway).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 1, self.index, 1)
    }

    /// Name of the node-side veth interface, `h<i>` (in the node netns).
    pub fn host_if(&self) -> String {
        format!("h{}", self.index)
    }

    /// Name of the pod's network namespace, `stoa-<id>-<name>`.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The pod's cgroup relative to the cgroup v2 root (what a Workload's `spec.cgroup` holds).
    pub fn cgroup_rel(&self) -> &str {
        &self.cgroup_rel
    }

    /// The pod's cgroup directory.
    pub fn cgroup_path(&self) -> &Path {
        &self.cgroup_path
    }

    /// The pod's cgroup id (the directory's inode), as the kernel programs see it.
    pub fn cgroup_id(&self) -> u64 {
        cgroup::id(&self.cgroup_path)
    }

    /// The node's temporary folder (removed with the node).
    pub fn node_temp_dir(&self) -> PathBuf {
        self.node.tmp_path.clone()
    }

    /// Pids currently in the pod's cgroup.
    pub fn cgroup_procs(&self) -> Vec<u32> {
        cgroup::procs(&self.cgroup_path)
    }

    /// Serves service address `ip` from this pod: `ip`/32 on the pod's lo and a node
    /// route `ip`/32 via the pod.
    pub fn add_service_ip(&self, ip: &str) {
        let addr: Ipv4Addr = ip
            .parse()
            .unwrap_or_else(|e| panic!("bad IPv4 {ip:?}: {e}"));
        let host = format!("{addr}/32");
        let via = self.ip().to_string();
        must(netns::ip(&[
            "-n",
            &self.netns,
            "addr",
            "add",
            &host,
            "dev",
            "lo",
        ]));
        must(netns::ip(&[
            "-n",
            &self.node.netns,
            "route",
            "add",
            &host,
            "via",
            &via,
        ]));
    }

    /// A command that runs `program` in the pod: in its cgroup and its netns.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(self.cgroup_path.join("cgroup.procs"))
            .unwrap_or_else(|e| panic!("open {}/cgroup.procs: {e}", self.cgroup_path.display()));
        let mut cmd = Command::new(program);
        process::enter(&mut cmd, Some(self.open_netns()), Some(procs));
        cmd
    }

    /// A command that runs `program` in the pod's netns but outside its cgroup: a
    /// process the policy does not list as a workload.
    pub fn command_no_cgroup(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        process::enter(&mut cmd, Some(self.open_netns()), None);
        cmd
    }

    /// Starts `cmd` (from [`command`](Self::command) or
    /// [`command_no_cgroup`](Self::command_no_cgroup)); see [`SimNode::spawn`].
    pub fn spawn(&self, label: &str, cmd: &mut Command) -> ChildGuard {
        ChildGuard::new(self.node.spawn(&format!("{}-{label}", self.name), cmd))
    }

    /// Runs `args[0]` with `args[1..]` in the pod (cgroup + netns), up to [`RUN_TIMEOUT`].
    pub fn run(&self, args: &[&str]) -> Output {
        let (program, rest) = args.split_first().expect("run needs a program");
        process::run_with_timeout(self.command(program).args(rest), RUN_TIMEOUT)
    }

    /// Runs `curl -sS --noproxy '*' --connect-timeout 3 --max-time 10 ARGS` in the pod
    /// (cgroup + netns), so its connections are the pod's.
    pub fn curl(&self, args: &[&str]) -> Output {
        process::run_with_timeout(&mut curl_args(self.command("curl"), args), RUN_TIMEOUT)
    }

    /// [`curl`](Self::curl) from the pod's netns but outside its cgroup.
    pub fn curl_no_cgroup(&self, args: &[&str]) -> Output {
        let cmd = self.command_no_cgroup("curl");
        process::run_with_timeout(&mut curl_args(cmd, args), RUN_TIMEOUT)
    }

    /// Starts `stoa-test-backend --name NAME --listen LISTEN` (HTTP/1.1) in the pod and
    /// waits until it accepts. It runs until stopped through the handle or node drop.
    pub fn spawn_backend(&self, name: &str, listen: &str) -> ProcHandle {
        self.spawn_backend_with(name, listen, &[])
    }

    /// [`spawn_backend`](Self::spawn_backend) with extra arguments, e.g.
    /// `["--mode", "tcp-echo"]` or `["--http2"]`.
    pub fn spawn_backend_with(&self, name: &str, listen: &str, extra_args: &[&str]) -> ProcHandle {
        let addr: SocketAddr = listen
            .parse()
            .unwrap_or_else(|e| panic!("bad listen address {listen:?}: {e}"));
        let mut cmd = self.command(bins::bin_path("stoa-test-backend"));
        cmd.args(["--name", name, "--listen", listen])
            .args(extra_args);
        let handle = self
            .node
            .spawn(&format!("{}-backend-{name}", self.name), &mut cmd);
        let probe = if addr.ip().is_unspecified() {
            SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()))
        } else {
            addr
        };
        self.node.wait_ready(&handle, &self.netns, probe);
        handle
    }

    /// Runs `f` on a thread inside the pod's netns. The thread stays in the test's own
    /// cgroup, so its connections are not the pod workload's.
    pub fn in_netns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        netns::in_netns(&self.netns, f).expect("enter pod netns")
    }

    /// Whether `addr` accepts TCP connections from the pod netns (outside its cgroup)
    /// within `timeout`.
    pub fn wait_tcp(&self, addr: SocketAddr, timeout: Duration) -> bool {
        wait_tcp(&self.netns, addr, timeout, None)
    }

    fn open_netns(&self) -> fs::File {
        netns::open(&self.netns).unwrap_or_else(|e| panic!("open netns {}: {e}", self.netns))
    }
}

impl std::fmt::Debug for Pod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pod")
            .field("name", &self.name)
            .field("ip", &self.ip())
            .field("netns", &self.netns)
            .field("cgroup", &self.cgroup_rel)
            .finish()
    }
}

impl std::fmt::Debug for SimNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimNode")
            .field("id", &self.inner.id)
            .field("netns", &self.inner.netns)
            .finish()
    }
}

/// Polls a TCP connect to `addr` from `ns` until it succeeds (true), `timeout` passes
/// or `proc` exits (false).
fn wait_tcp(ns: &str, addr: SocketAddr, timeout: Duration, proc: Option<&ProcHandle>) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if netns::tcp_connects(ns, addr, Duration::from_millis(500)) {
            return true;
        }
        if proc.is_some_and(|p| !p.is_running()) || Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn curl_args(mut cmd: Command, args: &[&str]) -> Command {
    cmd.args([
        "-sS",
        "--noproxy",
        "*",
        "--connect-timeout",
        "3",
        "--max-time",
    ])
    .arg(CURL_MAX_TIME_SECS.to_string())
    .args(args);
    cmd
}

/// Gives the controller and agent informative logs unless the caller chose a level.
fn with_log_env(cmd: &mut Command) {
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    cmd.env("RUST_BACKTRACE", "1");
}

fn must(result: Result<(), String>) {
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// A 6-hex-digit id unique among live nodes: pid, a counter and the clock, mixed, and
/// checked against existing namespaces and cgroups.
fn unique_id() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    loop {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        // splitmix64 finaliser: every input bit affects the 24 bits we keep.
        let mut x = (u64::from(std::process::id()) << 40) ^ (seq << 24) ^ nanos;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
        let id = format!("{:06x}", x & 0xff_ffff);
        let taken = netns::path(&format!("stoa-{id}-node")).exists()
            || cgroup::root().join(format!("stoa-test-{id}")).exists()
            || Path::new(bpffs::BPFFS)
                .join(format!("stoa-test-{id}"))
                .exists();
        if !taken {
            return id;
        }
    }
}
