//! MCP peers for the end-to-end tests: the official SDKs installed by `make setup`
//! under `tests/peers/` (Python `mcp` in a virtualenv, `@modelcontextprotocol/sdk`
//! and `server-everything` from npm), run inside pods.
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use serde_json::Value;

use crate::{node::RUN_TIMEOUT, process, Pod, ProcHandle};

/// `tests/peers`.
pub fn peers_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers")
}

/// The virtualenv's Python with the pinned `mcp` SDK.
pub fn python() -> PathBuf {
    let python = peers_dir().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `make setup` (it installs the MCP test peers)",
        python.display()
    );
    python
}

fn node_modules() -> PathBuf {
    let dir = peers_dir().join("node_modules");
    assert!(
        dir.join("@modelcontextprotocol/sdk").exists(),
        "{} lacks @modelcontextprotocol/sdk: run `make setup`",
        dir.display()
    );
    dir
}

/// The Python SDK's protocol era a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    /// 2026-07-28: stateless, routing headers on every POST.
    Modern,
    /// The newest session-based version (initialize, Mcp-Session-Id).
    Legacy,
}

/// How a client reaches the server.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub transport: &'static str,
    pub era: Era,
    pub headers: Vec<String>,
}

impl Target {
    pub fn streamable(url: &str, era: Era) -> Self {
        Self {
            url: url.to_string(),
            transport: "streamable-http",
            era,
            headers: Vec::new(),
        }
    }

    /// Legacy HTTP+SSE (2024-11-05).
    pub fn sse(url: &str) -> Self {
        Self {
            url: url.to_string(),
            transport: "sse",
            era: Era::Legacy,
            headers: Vec::new(),
        }
    }

    pub fn header(mut self, header: &str) -> Self {
        self.headers.push(header.to_string());
        self
    }

    fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--url".to_string(),
            self.url.clone(),
            "--transport".into(),
            self.transport.into(),
        ];
        if self.transport != "sse" {
            args.push("--era".into());
            args.push(
                match self.era {
                    Era::Modern => "modern",
                    Era::Legacy => "legacy",
                }
                .into(),
            );
        }
        for header in &self.headers {
            args.push("--header".into());
            args.push(header.clone());
        }
        args
    }
}

/// A started MCP server and the file where it logs every call it executed.
pub struct McpServer {
    pub handle: ProcHandle,
    pub calls_log: PathBuf,
}

impl McpServer {
    /// The tool calls the server itself executed, in order.
    pub fn calls(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.calls_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    pub fn saw_tool(&self, tool: &str) -> bool {
        self.calls().iter().any(|c| c["tool"] == tool)
    }
}

impl Pod {
    /// Starts `tests/peers/mcp_server.py` (FastMCP from the Python SDK) on
    /// `0.0.0.0:port` in the pod, with `transport` `streamable-http` or `sse`.
    pub fn spawn_mcp_server(
        &self,
        replica: &str,
        port: u16,
        transport: &str,
        extra_args: &[&str],
    ) -> McpServer {
        let calls_log = self
            .node_temp_dir()
            .join(format!("{}-{replica}-calls.jsonl", self.name()));
        let mut cmd = self.command(python());
        cmd.arg(peers_dir().join("mcp_server.py"))
            .args(["--transport", transport, "--host", "0.0.0.0"])
            .args(["--port", &port.to_string(), "--replica", replica])
            .arg("--calls-log")
            .arg(&calls_log)
            .args(extra_args);
        let handle = self.spawn(&format!("mcp-{replica}"), &mut cmd).detach();
        self.wait_ready_for(&handle, SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
        McpServer { handle, calls_log }
    }

    /// Starts `@modelcontextprotocol/server-everything` over Streamable HTTP on `port`.
    pub fn spawn_server_everything(&self, port: u16) -> ProcHandle {
        let bin = node_modules().join(".bin/mcp-server-everything");
        let mut cmd = self.command(bin);
        cmd.arg("streamableHttp").env("PORT", port.to_string());
        let handle = self.spawn("everything", &mut cmd).detach();
        self.wait_ready_for(&handle, SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
        handle
    }

    fn wait_ready_for(&self, handle: &ProcHandle, addr: SocketAddr) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !self.wait_tcp(addr, Duration::from_millis(200)) {
            if !handle.is_running() || std::time::Instant::now() >= deadline {
                panic!(
                    "{} did not listen on {addr}:\n{}",
                    handle.label(),
                    handle.describe(40)
                );
            }
        }
    }

    /// Runs the Python SDK client (`tests/peers/mcp_client.py`) in the pod with
    /// `subcommand` and its arguments; its JSON output lines.
    pub fn mcp(&self, target: &Target, subcommand: &[&str]) -> Vec<Value> {
        let mut cmd = self.command(python());
        cmd.arg(peers_dir().join("mcp_client.py"))
            .arg(subcommand[0])
            .args(target.args())
            .args(&subcommand[1..]);
        json_lines(process::run_with_timeout(&mut cmd, RUN_TIMEOUT))
    }

    /// One JSON answer of [`mcp`](Self::mcp).
    pub fn mcp_one(&self, target: &Target, subcommand: &[&str]) -> Value {
        let mut lines = self.mcp(target, subcommand);
        assert_eq!(lines.len(), 1, "expected one answer: {lines:#?}");
        lines.remove(0)
    }

    /// Runs a JSON array of ops (`list`, `call`, `sleep`) in one client session; one
    /// answer per op.
    pub fn mcp_script(&self, target: &Target, ops: &Value) -> Vec<Value> {
        let file = self
            .node_temp_dir()
            .join(format!("{}-script-{}.json", self.name(), unique()));
        std::fs::write(&file, ops.to_string()).expect("write script");
        let mut command_line = vec![
            python().display().to_string(),
            peers_dir().join("mcp_client.py").display().to_string(),
            "script".into(),
        ];
        command_line.extend(target.args());
        let quoted: Vec<String> = command_line.iter().map(|a| shell_quote(a)).collect();
        let script = format!(
            "exec {} < {}",
            quoted.join(" "),
            shell_quote(&file.display().to_string())
        );
        let mut cmd = self.command("sh");
        cmd.args(["-c", &script]);
        json_lines(process::run_with_timeout(&mut cmd, RUN_TIMEOUT))
    }

    /// The official TypeScript SDK client (`tests/peers/mcp_client.mjs`) in the pod.
    pub fn mcp_node(&self, target: &Target, subcommand: &[&str]) -> Vec<Value> {
        node_modules();
        let mut cmd = self.command("node");
        cmd.arg(peers_dir().join("mcp_client.mjs"))
            .arg(subcommand[0])
            .args(
                target
                    .args()
                    .into_iter()
                    .filter(|a| a != "--era" && a != "modern" && a != "legacy"),
            )
            .args(&subcommand[1..]);
        json_lines(process::run_with_timeout(&mut cmd, RUN_TIMEOUT))
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn shell_quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', "'\\''"))
}

fn json_lines(output: std::process::Output) -> Vec<Value> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<Value> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("client printed bad JSON ({e}): {l}"))
        })
        .collect();
    assert!(
        !lines.is_empty(),
        "the MCP client printed nothing (status {}):\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    lines
}
