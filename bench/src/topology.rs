//! The simulated node the benchmark runs on, its four paths and the STOA policy.
//!
//! ```text
//!  pod "client" (Workload: governed)      pod "plain" (no Workload)
//!    oha ──connect(10.96.0.10:80)            oha ──► 10.96.0.10:80            (direct)
//!      │ cgroup/connect4 rewrites            oha ──► 10.1.3.1:8081 nginx ─┐   (node netns)
//!      ▼                                     oha ──► 10.1.3.1:8082 haproxy┤   (node netns)
//!    169.254.42.1:15001 stoa-agent (node netns) ──────────────────────────┤
//!                                                                         ▼
//!                                 pod "server": stoa-bench-backend on 10.96.0.10:80 (+ .11)
//!                                               stoa-test-backend on 10.96.0.12:80 (policy probe)
//!                                 pod "mcp":    mcp_server.py on 10.96.0.20:8080 (MCP row, `crate::mcp`)
//! ```
//! Every path crosses the same veth pairs: pod → node netns → server pod. The direct,
//! nginx and HAProxy clients run in a pod that no policy lists, so no kernel program
//! touches their sockets; STOA's client is a listed workload.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;
use stoa_tests::{bin_path, OutputExt, Pod, ProcHandle, SimNode};

use crate::{peers, procfs};

/// The governed service address (the contract's); the backend listens here.
pub const BENCH_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The same backend on an address no contract names: a listed workload's connect()
/// runs the kernel program but is not redirected (the hook's own cost).
pub const HOOK_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
/// The policy-change probe's service (stoa-test-backend, which echoes the peer).
pub const PROBE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 12);
pub const NGINX_PORT: u16 = 8081;
pub const HAPROXY_PORT: u16 = 8082;
/// The request every system serves: one route, one key header.
pub const REQUEST_PATH: &str = "/items/1";
pub const KEY_HEADER: &str = "x-api-key";
pub const NAMESPACE: &str = "bench";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    Direct,
    Stoa,
    Nginx,
    Haproxy,
}

impl System {
    pub const ALL: [System; 4] = [System::Direct, System::Stoa, System::Nginx, System::Haproxy];

    pub fn name(self) -> &'static str {
        match self {
            System::Direct => "direct",
            System::Stoa => "stoa",
            System::Nginx => "nginx",
            System::Haproxy => "haproxy",
        }
    }
}

/// Which STOA policy the run uses.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum PolicyMode {
    /// ApiContract with apiKey credentials and one operation, a Consumer with the key's
    /// hash, an AccessPolicy and a Quota: one key check, one route match, one quota.
    L7 {
        #[serde(skip)]
        secret_file: PathBuf,
        #[serde(skip)]
        key_hash: String,
    },
    /// A plain `protocol: http` contract: redirect + HTTP/1.1 forwarding only.
    PassThrough { reason: String },
}

impl PolicyMode {
    pub fn is_l7(&self) -> bool {
        matches!(self, PolicyMode::L7 { .. })
    }

    pub fn label(&self) -> &'static str {
        match self {
            PolicyMode::L7 { .. } => "l7 (api key + route + quota)",
            PolicyMode::PassThrough { .. } => "pass-through (redirect + HTTP/1.1 forwarding)",
        }
    }
}

pub struct Layout {
    pub loadgen: Vec<usize>,
    pub proxy: Vec<usize>,
    pub backend: Vec<usize>,
}

pub struct Topology {
    pub node: Arc<SimNode>,
    pub client: Pod,
    pub plain: Pod,
    pub server: Pod,
    pub backend: ProcHandle,
    pub agent: ProcHandle,
    pub controller: ProcHandle,
    pub nginx: Option<(ProcHandle, Vec<u32>)>,
    pub haproxy: Option<ProcHandle>,
    /// The MCP row's server, once its phase set it up.
    pub mcp: Option<crate::mcp::McpBench>,
    pub api_key: String,
    pub mode: PolicyMode,
    pub notes: Vec<String>,
    /// The open-file limit every process started here inherits.
    pub nofile: u64,
}

pub fn workload_yaml(pod: &Pod) -> String {
    format!(
        "apiVersion: gostoa.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: bench-client\n  namespace: {NAMESPACE}\nspec:\n  cgroup: {}\n  serviceAccount: bench-client\n",
        pod.cgroup_rel()
    )
}

/// The benchmark's contract (and, in L7 mode, its consumer, access policy and quota).
pub fn bench_policy_yaml(mode: &PolicyMode) -> String {
    let addr = SocketAddrV4::new(BENCH_IP, 80);
    match mode {
        PolicyMode::PassThrough { .. } => format!(
            "apiVersion: gostoa.dev/v1alpha1\nkind: ApiContract\nmetadata:\n  name: bench-api\n  namespace: {NAMESPACE}\nspec:\n  protocol: http\n  address: \"{addr}\"\n"
        ),
        PolicyMode::L7 { key_hash, .. } => format!(
            r#"apiVersion: gostoa.dev/v1alpha1
kind: ApiContract
metadata:
  name: bench-api
  namespace: {NAMESPACE}
spec:
  protocol: http
  address: "{addr}"
  credentials: [apiKey]
  apiKey: {{header: {KEY_HEADER}}}
  operations:
    - {{id: getItem, method: GET, path: "/items/{{id}}"}}
---
apiVersion: gostoa.dev/v1alpha1
kind: Consumer
metadata:
  name: bench
  namespace: {NAMESPACE}
spec:
  apiKeys: [{{id: bench, hash: "{key_hash}"}}]
---
apiVersion: gostoa.dev/v1alpha1
kind: AccessPolicy
metadata:
  name: bench-read
  namespace: {NAMESPACE}
spec:
  subjects: [{{consumer: bench}}]
  allow:
    - {{contract: bench-api, operations: [getItem]}}
---
apiVersion: gostoa.dev/v1alpha1
kind: Quota
metadata:
  name: bench-quota
  namespace: {NAMESPACE}
spec:
  subjects: [{{consumer: bench}}]
  scope: {{contract: bench-api}}
  limit: {{requests: 100000000, per: second}}
  mode: enforce
"#
        ),
    }
}

/// The policy-change probe's contract (in pass-through mode, the thing that toggles).
pub fn probe_contract_yaml(mode: &PolicyMode) -> String {
    let addr = SocketAddrV4::new(PROBE_IP, 80);
    let l7 = if mode.is_l7() {
        format!(
            "  credentials: [apiKey]\n  apiKey: {{header: {KEY_HEADER}}}\n  operations:\n    - {{id: getItem, method: GET, path: \"/items/{{id}}\"}}\n    - {{id: listItems, method: GET, path: /items}}\n"
        )
    } else {
        String::new()
    };
    format!(
        "apiVersion: gostoa.dev/v1alpha1\nkind: ApiContract\nmetadata:\n  name: bench-probe\n  namespace: {NAMESPACE}\nspec:\n  protocol: http\n  address: \"{addr}\"\n{l7}"
    )
}

/// L7 mode's toggle: the bench consumer may call `operation` on the probe contract.
pub fn probe_access_yaml(operation: &str) -> String {
    format!(
        "apiVersion: gostoa.dev/v1alpha1\nkind: AccessPolicy\nmetadata:\n  name: bench-probe-access\n  namespace: {NAMESPACE}\nspec:\n  subjects: [{{consumer: bench}}]\n  allow:\n    - {{contract: bench-probe, operations: [{operation}]}}\n"
    )
}

/// A random-enough token from the kernel's entropy (no extra dependency).
fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut buf);
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// `stoa-agent --help` (stdout and stderr), empty when it cannot run.
fn agent_help() -> String {
    Command::new(bin_path("stoa-agent"))
        .arg("--help")
        .output()
        .map(|out| out.stdout_str() + &out.stderr_str())
        .unwrap_or_default()
}

/// Picks the policy mode: L7 when the agent takes `--api-key-secret-file` and the CLI
/// hashes a key, pass-through otherwise (with the reason).
fn choose_mode(dir: &Path, api_key: &str) -> PolicyMode {
    let help = Command::new(bin_path("stoa-agent")).arg("--help").output();
    let help = match help {
        Ok(out) => out.stdout_str() + &out.stderr_str(),
        Err(e) => {
            return PolicyMode::PassThrough {
                reason: format!("cannot run stoa-agent --help: {e}"),
            }
        }
    };
    if !help.contains("--api-key-secret-file") {
        return PolicyMode::PassThrough {
            reason: "stoa-agent --help does not list --api-key-secret-file".into(),
        };
    }
    let secret_file = dir.join("api-key-secret");
    if let Err(e) = std::fs::write(&secret_file, random_hex(32)) {
        return PolicyMode::PassThrough {
            reason: format!("cannot write the key secret: {e}"),
        };
    }
    let cli = bin_dir_file("stoa");
    let out = Command::new(&cli)
        .args(["keys", "hash", "--secret-file"])
        .arg(&secret_file)
        .args(["--key", api_key])
        .output();
    let out = match out {
        Ok(out) if out.status.success() => out.stdout_str(),
        Ok(out) => {
            return PolicyMode::PassThrough {
                reason: format!(
                    "`stoa keys hash` failed ({}): {}",
                    out.status,
                    out.stderr_str().trim()
                ),
            }
        }
        Err(e) => {
            return PolicyMode::PassThrough {
                reason: format!("cannot run {}: {e}", cli.display()),
            }
        }
    };
    match out
        .split(|c: char| c.is_whitespace() || c == '"' || c == '\'')
        .find(|t| t.starts_with("hmac-sha256:"))
    {
        Some(hash) => PolicyMode::L7 {
            secret_file,
            key_hash: hash.to_string(),
        },
        None => PolicyMode::PassThrough {
            reason: format!(
                "`stoa keys hash` printed no hmac-sha256 hash: {}",
                out.trim()
            ),
        },
    }
}

fn bin_dir_file(name: &str) -> PathBuf {
    stoa_tests::bin_dir().join(name)
}

/// `RUST_LOG` of the agent: its per-request access log off unless asked for, as nginx
/// (`access_log off`) and HAProxy (no `log`) run here.
pub fn agent_log_filter(access_log: bool) -> &'static str {
    if access_log {
        "info"
    } else {
        "info,access=off"
    }
}

/// Starts `stoa-agent` in the node netns with the arguments `SimNode::start_agent`
/// gives it, and waits for its "node proxy listening" line. (A TCP probe of the proxy
/// port is no readiness test: the proxy resets connections without a redirect record
/// at once, and a reset that beats the prober's connect() check reads as a failure.)
fn start_agent(node: &SimNode, extra: &[String], access_log: bool) -> anyhow::Result<ProcHandle> {
    let mut cmd = node.command(bin_path("stoa-agent"));
    cmd.args([
        "--controller",
        &format!("http://{}", stoa_tests::CONTROLLER_ADDR),
    ])
    .args([
        "--proxy-addr",
        &format!("{}:{}", stoa_tests::PROXY_IP, stoa_tests::PROXY_PORT),
    ])
    .arg("--pin-path")
    .arg(node.pin_path())
    .args(["--node-name", node.id()])
    .args(["--metrics-addr", stoa_tests::AGENT_METRICS_ADDR])
    .args(extra)
    .env("RUST_LOG", agent_log_filter(access_log))
    .env("RUST_BACKTRACE", "1");
    let agent = node.spawn("agent", &mut cmd).detach();
    if !agent.wait_for_output("node proxy listening", Duration::from_secs(60)) {
        bail!("the agent did not start listening:\n{}", agent.describe(30));
    }
    let metrics: SocketAddr = stoa_tests::AGENT_METRICS_ADDR.parse()?;
    if !node.wait_tcp(metrics, Duration::from_secs(20)) {
        bail!(
            "the agent serves no metrics on {metrics}:\n{}",
            agent.describe(30)
        );
    }
    Ok(agent)
}

/// Whether the agent applies a first snapshot within `timeout`.
fn wait_for_first_snapshot(node: &SimNode, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if node.agent_snapshot_version() > 0 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// `curl -o /dev/null -w '%{http_code} %{size_download}'` from a pod; (status, bytes).
fn probe_get(pod: &Pod, url: &str, headers: &[&str], extra: &[&str]) -> (u16, u64, String) {
    let mut args: Vec<&str> = vec!["-o", "/dev/null", "-w", "%{http_code} %{size_download}"];
    for h in headers {
        args.extend(["-H", h]);
    }
    args.extend(extra);
    args.push(url);
    let out = pod.curl(&args);
    let text = out.stdout_str();
    let mut f = text.split_whitespace();
    let status = f.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let bytes = f.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, bytes, out.stderr_str().trim().to_string())
}

impl Topology {
    pub fn build(
        layout: &Layout,
        systems: &[System],
        nofile: u64,
        agent_access_log: bool,
    ) -> anyhow::Result<Topology> {
        let node = Arc::new(SimNode::new());
        let client = node.add_pod("client");
        let server = node.add_pod("server");
        let plain = node.add_pod("plain");
        for ip in [BENCH_IP, HOOK_IP, PROBE_IP] {
            server.add_service_ip(&ip.to_string());
        }
        let api_key = format!("stoa-bench-{}", random_hex(12));

        // The backend, pinned.
        let backend_bin = bin_dir_file("stoa-bench-backend");
        if !backend_bin.is_file() {
            bail!(
                "{} is missing: build with cargo build --release -p stoa-bench",
                backend_bin.display()
            );
        }
        let backend = procfs::with_affinity(&layout.backend, || {
            let mut cmd = server.command(&backend_bin);
            cmd.args(["--listen", &format!("{BENCH_IP}:80")])
                .args(["--listen", &format!("{HOOK_IP}:80")]);
            server.spawn("bench-backend", &mut cmd).detach()
        });
        let bench_addr = SocketAddr::from((BENCH_IP, 80));
        if !node.wait_tcp(bench_addr, Duration::from_secs(20)) {
            bail!("the backend did not start:\n{}", backend.describe(20));
        }
        // The policy probe's upstream echoes the peer address (tells redirect apart).
        server.spawn_backend("probe", &format!("{PROBE_IP}:80"));

        // STOA: controller (on the load generator's CPU: it idles during the load) and
        // agent (on the proxy CPU: its tokio runtime sizes itself to one worker).
        let mode = choose_mode(node.temp_dir(), &api_key);
        node.write_policy("workloads.yaml", &workload_yaml(&client));
        node.write_policy("bench.yaml", &bench_policy_yaml(&mode));
        let controller = procfs::with_affinity(&layout.loadgen, || {
            node.start_controller(&node.policy_dir())
        });
        let mut agent_args: Vec<String> = Vec::new();
        // The MCP usage ledger goes to the node's own folder, never /var/lib/stoa.
        if agent_help().contains("--usage-dir") {
            agent_args.push("--usage-dir".into());
            agent_args.push(node.usage_dir().display().to_string());
        }
        if let PolicyMode::L7 { secret_file, .. } = &mode {
            agent_args.push("--api-key-secret-file".into());
            agent_args.push(secret_file.display().to_string());
        }
        let agent = procfs::with_affinity(&layout.proxy, || {
            start_agent(&node, &agent_args, agent_access_log)
        })?;
        let mut mode = mode;
        if !wait_for_first_snapshot(&node, Duration::from_secs(20)) {
            if !mode.is_l7() {
                bail!(
                    "the agent never applied a snapshot:\n{}\n{}",
                    controller.describe(20),
                    agent.describe(20)
                );
            }
            // The L7 policy set was refused (shapes changed?): measure what works.
            let reason = format!(
                "the controller produced no snapshot from the L7 policy; controller log: {}",
                controller
                    .stderr()
                    .lines()
                    .rev()
                    .take(3)
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
            eprintln!("stoa-bench: {reason}; falling back to pass-through");
            mode = PolicyMode::PassThrough { reason };
            node.write_policy("bench.yaml", &bench_policy_yaml(&mode));
            node.wait_for_snapshot_above(0, Duration::from_secs(30));
        }

        let mut topo = Topology {
            node,
            client,
            plain,
            server,
            backend,
            agent,
            controller,
            nginx: None,
            haproxy: None,
            mcp: None,
            api_key,
            mode,
            notes: Vec::new(),
            nofile,
        };
        topo.verify_stoa()?;
        if systems.contains(&System::Nginx) {
            topo.start_nginx(layout)?;
        }
        if systems.contains(&System::Haproxy) {
            topo.start_haproxy(layout)?;
        }
        for system in systems {
            topo.verify(*system)?;
        }
        Ok(topo)
    }

    pub fn key_header(&self) -> String {
        format!("{KEY_HEADER}: {}", self.api_key)
    }

    /// The URL and the pod a system's load comes from.
    pub fn target(&self, system: System) -> (&Pod, String) {
        let gw = self.plain.gateway();
        match system {
            System::Direct => (&self.plain, format!("http://{BENCH_IP}{REQUEST_PATH}")),
            System::Stoa => (&self.client, format!("http://{BENCH_IP}{REQUEST_PATH}")),
            System::Nginx => (
                &self.plain,
                format!("http://{gw}:{NGINX_PORT}{REQUEST_PATH}"),
            ),
            System::Haproxy => (
                &self.plain,
                format!("http://{gw}:{HAPROXY_PORT}{REQUEST_PATH}"),
            ),
        }
    }

    pub fn target_addr(&self, system: System) -> SocketAddr {
        let gw = self.plain.gateway();
        match system {
            System::Direct | System::Stoa => SocketAddr::from((BENCH_IP, 80)),
            System::Nginx => SocketAddr::from((gw, NGINX_PORT)),
            System::Haproxy => SocketAddr::from((gw, HAPROXY_PORT)),
        }
    }

    /// The processes that are "the proxy" of a system (empty for direct).
    pub fn proxy_pids(&self, system: System) -> Vec<u32> {
        match system {
            System::Direct => Vec::new(),
            System::Stoa => vec![self.agent.pid()],
            System::Nginx => self
                .nginx
                .as_ref()
                .map(|(_, pids)| pids.clone())
                .unwrap_or_default(),
            System::Haproxy => self.haproxy.iter().map(|h| h.pid()).collect(),
        }
    }

    pub fn proxy_running(&self, system: System) -> bool {
        match system {
            System::Direct => true,
            System::Stoa => self.agent.is_running(),
            System::Nginx => self.nginx.as_ref().is_some_and(|(h, _)| h.is_running()),
            System::Haproxy => self.haproxy.as_ref().is_some_and(|h| h.is_running()),
        }
    }

    /// Checks the L7 policy end to end; falls back to pass-through when it fails.
    fn verify_stoa(&mut self) -> anyhow::Result<()> {
        let key = self.key_header();
        let url = self.target(System::Stoa).1;
        if self.mode.is_l7() {
            let (ok, bytes, err) = probe_get(&self.client, &url, &[&key], &[]);
            let (no_key, _, _) = probe_get(&self.client, &url, &[], &[]);
            if ok == 200 && bytes == 1024 {
                self.notes.push(format!(
                    "L7 check: with the key 200, without it {no_key} (expected 401)"
                ));
                return Ok(());
            }
            let reason = format!(
                "the L7 policy was not enforced as expected (with key: {ok} {err}; without: {no_key})"
            );
            eprintln!("stoa-bench: {reason}; falling back to pass-through");
            let version = self.node.agent_snapshot_version();
            self.mode = PolicyMode::PassThrough { reason };
            self.node
                .write_policy("bench.yaml", &bench_policy_yaml(&self.mode));
            self.node
                .wait_for_snapshot_above(version, Duration::from_secs(20));
        }
        Ok(())
    }

    /// One request through a system's path: 200 with the 1 KiB body, or an error.
    fn verify(&self, system: System) -> anyhow::Result<()> {
        let (pod, url) = self.target(system);
        let key = self.key_header();
        let (status, bytes, err) = probe_get(pod, &url, &[&key], &[]);
        if status != 200 || bytes != 1024 {
            bail!(
                "{} path check failed: {url} from pod {} answered {status} with {bytes} bytes ({err})\n{}",
                system.name(),
                pod.name(),
                self.describe_processes()
            );
        }
        if system == System::Stoa {
            let accepted = self
                .node
                .agent_metric("stoa_proxy_connections_total{verdict=\"accepted\"}");
            if accepted < 1.0 {
                bail!(
                    "the stoa path answered but the proxy accepted no connection: not redirected"
                );
            }
        }
        Ok(())
    }

    /// Whether the agent's proxy serves h2c (prior knowledge) on the redirected path.
    pub fn stoa_h2c(&self) -> Result<(), String> {
        let (pod, url) = self.target(System::Stoa);
        let key = self.key_header();
        let (status, bytes, err) = probe_get(pod, &url, &[&key], &["--http2-prior-knowledge"]);
        if status == 200 && bytes == 1024 {
            Ok(())
        } else {
            Err(format!(
                "h2c (prior knowledge) through the agent failed: status {status}, {bytes} bytes {err}"
            ))
        }
    }

    fn start_nginx(&mut self, layout: &Layout) -> anyhow::Result<()> {
        let dir = self.node.temp_dir().join("nginx");
        std::fs::create_dir_all(&dir)?;
        let listen = SocketAddr::from((self.plain.gateway(), NGINX_PORT));
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            peers::nginx_conf(
                &dir,
                listen,
                SocketAddr::from((BENCH_IP, 80)),
                &self.api_key,
                self.nofile,
            ),
        )?;
        let node = self.node.clone();
        let master = procfs::with_affinity(&layout.proxy, || {
            let mut cmd = node.command("nginx");
            cmd.arg("-p")
                .arg(&dir)
                .arg("-e")
                .arg(dir.join("error.log"))
                .arg("-c")
                .arg(&conf)
                .args(["-g", "daemon off;"]);
            node.spawn("nginx", &mut cmd).detach()
        });
        if !self.plain.wait_tcp(listen, Duration::from_secs(20)) {
            bail!(
                "nginx did not listen on {listen}:\n{}\n{}",
                master.describe(20),
                std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            );
        }
        let mut pids = vec![master.pid()];
        for _ in 0..100 {
            let workers = procfs::children(master.pid());
            if !workers.is_empty() {
                pids.extend(workers);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if pids.len() < 2 {
            self.notes
                .push("nginx worker pid not found: counting the master only".into());
        }
        self.nginx = Some((master, pids));
        Ok(())
    }

    fn start_haproxy(&mut self, layout: &Layout) -> anyhow::Result<()> {
        let dir = self.node.temp_dir().join("haproxy");
        std::fs::create_dir_all(&dir)?;
        let listen = SocketAddr::from((self.plain.gateway(), HAPROXY_PORT));
        let conf = dir.join("haproxy.cfg");
        std::fs::write(
            &conf,
            peers::haproxy_conf(
                listen,
                SocketAddr::from((BENCH_IP, 80)),
                &self.api_key,
                // Client connections plus a few to the backend must fit the fd limit.
                self.nofile * 6 / 10,
            ),
        )?;
        let node = self.node.clone();
        let handle = procfs::with_affinity(&layout.proxy, || {
            let mut cmd = node.command("haproxy");
            cmd.arg("-f").arg(&conf).arg("-db");
            node.spawn("haproxy", &mut cmd).detach()
        });
        if !self.plain.wait_tcp(listen, Duration::from_secs(20)) {
            bail!(
                "haproxy did not listen on {listen}:\n{}",
                handle.describe(20)
            );
        }
        self.haproxy = Some(handle);
        Ok(())
    }

    pub fn describe_processes(&self) -> String {
        self.node
            .processes()
            .iter()
            .map(|p| p.describe(15))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every long-running process with its pid, CPU mask and thread count (for meta).
    pub fn process_layout(&self) -> Vec<serde_json::Value> {
        let mut procs: Vec<(&str, u32)> = vec![
            ("stoa-bench-backend", self.backend.pid()),
            ("stoa-agent", self.agent.pid()),
            ("stoa-controller", self.controller.pid()),
        ];
        if let Some((_, pids)) = &self.nginx {
            procs.extend(pids.iter().map(|&p| ("nginx", p)));
        }
        if let Some(h) = &self.haproxy {
            procs.push(("haproxy", h.pid()));
        }
        if let Some(m) = &self.mcp {
            procs.push(("mcp_server.py", m.server.handle.pid()));
        }
        procs
            .into_iter()
            .map(|(name, pid)| {
                serde_json::json!({
                    "process": name,
                    "pid": pid,
                    "cpus": procfs::cpus_allowed(pid),
                    "threads": procfs::threads(pid),
                })
            })
            .collect()
    }

    /// Path of the running `stoa-bench` (helpers run from it inside pods).
    pub fn self_exe() -> anyhow::Result<PathBuf> {
        std::env::current_exe().context("path of stoa-bench")
    }
}
