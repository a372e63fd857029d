//! The MCP row: 2026-07-28 `tools/call` of `echo` to the Python SDK's test server
//! (`tests/peers/mcp_server.py`, stateless, JSON answers), direct from the pod no
//! policy lists and through STOA from the governed pod.
//!
//! Through STOA each call pays the redirect, the proxy's MCP pipeline (JSON-RPC parse,
//! the routing headers checked against the body, the API key, tool authorization, a
//! per-tool quota) and metering into the usage ledger (`--usage-dir`); audit is off.

use std::net::{Ipv4Addr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use stoa_tests::mcp::McpServer;
use stoa_tests::{OutputExt, Pod, SimNode};

use crate::procfs;
use crate::topology::{PolicyMode, Topology, KEY_HEADER, NAMESPACE};

/// The MCP server's in-cluster address (the contract's); it listens in pod "mcp".
pub const MCP_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
pub const MCP_PORT: u16 = 8080;
pub const MCP_PATH: &str = "/mcp";
pub const PROTOCOL_VERSION: &str = "2026-07-28";
/// The tool the load calls (allowed, with a quota).
pub const TOOL: &str = "echo";
/// A tool the contract lists but the access policy does not allow (the denial probe).
pub const DENIED_TOOL: &str = "add";
/// JSON-RPC error code of a call the policy denies.
pub const DENIED_CODE: i64 = -32010;
pub const CONTRACT: &str = "bench-mcp";
/// The server's options: no sessions, every request POST answered `application/json`.
pub const SERVER_ARGS: [&str; 2] = ["--stateless", "--json-response"];

pub fn url() -> String {
    format!("http://{MCP_IP}:{MCP_PORT}{MCP_PATH}")
}

pub fn addr() -> SocketAddr {
    SocketAddr::from((MCP_IP, MCP_PORT))
}

/// A 2026-07-28 `tools/call` body: self-contained, no session.
pub fn call_body(tool: &str, arguments: Value) -> String {
    json!({
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": tool,
            "arguments": arguments,
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": PROTOCOL_VERSION,
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    })
    .to_string()
}

/// The headers a 2026-07-28 client sends with a `tools/call` of `tool` (plus the key).
pub fn call_headers(tool: &str, key_header: &str) -> Vec<String> {
    vec![
        "Content-Type: application/json".into(),
        "Accept: application/json, text/event-stream".into(),
        format!("MCP-Protocol-Version: {PROTOCOL_VERSION}"),
        "Mcp-Method: tools/call".into(),
        format!("Mcp-Name: {tool}"),
        key_header.to_string(),
    ]
}

/// The MCP contract, the access policy (echo only) and a per-tool quota far above
/// the load. L7 mode: the bench consumer's API key, as the HTTP contract; otherwise
/// the client pod's workload identity.
pub fn policy_yaml(mode: &PolicyMode) -> String {
    let (credentials, subject) = if mode.is_l7() {
        (
            format!("credentials: [apiKey]\n  apiKey: {{header: {KEY_HEADER}}}"),
            "{consumer: bench}".to_string(),
        )
    } else {
        (
            "credentials: [workload]".to_string(),
            format!("{{workload: {{namespace: {NAMESPACE}, serviceAccount: bench-client}}}}"),
        )
    };
    format!(
        r#"apiVersion: gostoa.dev/v1alpha1
kind: ApiContract
metadata:
  name: {CONTRACT}
  namespace: {NAMESPACE}
spec:
  protocol: mcp
  address: "{MCP_IP}:{MCP_PORT}"
  {credentials}
  mcp: {{path: {MCP_PATH}, unlistedTools: deny}}
  tools:
    - {{name: {TOOL}}}
    - {{name: {DENIED_TOOL}}}
---
apiVersion: gostoa.dev/v1alpha1
kind: AccessPolicy
metadata:
  name: bench-mcp-tools
  namespace: {NAMESPACE}
spec:
  subjects: [{subject}]
  allow:
    - {{contract: {CONTRACT}, tools: [{TOOL}]}}
---
apiVersion: gostoa.dev/v1alpha1
kind: Quota
metadata:
  name: bench-mcp-{TOOL}
  namespace: {NAMESPACE}
spec:
  subjects: [{subject}]
  scope: {{contract: {CONTRACT}, tool: {TOOL}}}
  limit: {{requests: 100000000, per: second}}
  mode: enforce
"#
    )
}

/// The running MCP scenario: the server's pod and process, and the load's request.
pub struct McpBench {
    pub server: McpServer,
    /// The `tools/call` body oha POSTs.
    pub body_file: PathBuf,
    pub headers: Vec<String>,
    /// What the probes before the load saw.
    pub probe: Value,
}

/// One POST from `pod`: (HTTP status, body).
fn post(pod: &Pod, headers: &[String], body_file: &Path) -> (u16, String, String) {
    let mut args: Vec<String> = vec![
        "-o".into(),
        "-".into(),
        "-w".into(),
        "\n%{http_code}".into(),
        "-X".into(),
        "POST".into(),
        "--data-binary".into(),
        format!("@{}", body_file.display()),
    ];
    for h in headers {
        args.push("-H".into());
        args.push(h.clone());
    }
    args.push(url());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = pod.curl(&args);
    let text = out.stdout_str();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    (
        status.trim().parse().unwrap_or(0),
        body.to_string(),
        out.stderr_str().trim().to_string(),
    )
}

/// The text of a successful `tools/call` answer, or why it is not one.
fn result_text(status: u16, body: &str) -> Result<String, String> {
    let v: Value = serde_json::from_str(body)
        .map_err(|e| format!("HTTP {status}, body is not JSON ({e}): {body:.200}"))?;
    let result = &v["result"];
    if status != 200 || result.is_null() || result["isError"] != false {
        return Err(format!(
            "HTTP {status}, not a successful result: {body:.300}"
        ));
    }
    Ok(result["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

/// Tool calls the agent counted with outcome `ok` for the bench's tool
/// (`stoa_mcp_tool_calls_total`, incremented before the answer is released).
pub fn metered_ok(node: &SimNode) -> u64 {
    node.agent_metrics_text()
        .lines()
        .filter(|l| l.starts_with("stoa_mcp_tool_calls_total{"))
        .filter(|l| l.contains(&format!("tool=\"{TOOL}\"")) && l.contains("outcome=\"ok\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// `stoa usage -o json` over the node's ledger: ok calls of the bench's tool.
pub fn ledger_ok(node: &SimNode) -> Result<u64, String> {
    let cli = stoa_tests::bin_dir().join("stoa");
    let out = std::process::Command::new(&cli)
        .arg("usage")
        .arg("--ledger-dir")
        .arg(node.usage_dir())
        .args(["-o", "json"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", cli.display()))?;
    if !out.status.success() {
        return Err(format!("stoa usage failed: {}", out.stderr_str().trim()));
    }
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("stoa usage printed no JSON: {e}"))?;
    Ok(v["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter(|r| r["tool"] == TOOL && r["outcome"] == "ok")
                .filter_map(|r| r["calls"].as_u64())
                .sum()
        })
        .unwrap_or(0))
}

/// Starts the server (pinned to `cpus`), writes the MCP policy and checks both paths:
/// direct and through STOA answer the call with a result, a denied tool gets -32010
/// through STOA, and the agent metered the allowed call. `Err`: why the MCP row is
/// skipped.
pub fn setup(topo: &Topology, cpus: &[usize], work_dir: &Path) -> Result<McpBench, String> {
    let python = stoa_tests::mcp::peers_dir().join(".venv/bin/python");
    if !python.exists() {
        return Err(format!(
            "{} is missing: run `make setup` (it installs the MCP test peers)",
            python.display()
        ));
    }
    let node = &topo.node;
    let pod = node.add_pod("mcp");
    pod.add_service_ip(&MCP_IP.to_string());
    let server = procfs::with_affinity(cpus, || {
        std::panic::catch_unwind(AssertUnwindSafe(|| {
            pod.spawn_mcp_server("bench", MCP_PORT, "streamable-http", &SERVER_ARGS)
        }))
    })
    .map_err(|e| {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        format!("the MCP server did not start: {msg}")
    })?;

    let version = node.agent_snapshot_version();
    node.write_policy("bench-mcp.yaml", &policy_yaml(&topo.mode));
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.agent_snapshot_version() <= version {
        if Instant::now() >= deadline {
            node.remove_policy("bench-mcp.yaml");
            let log = topo
                .controller
                .stderr()
                .lines()
                .rev()
                .take(3)
                .collect::<Vec<_>>()
                .join(" | ");
            return Err(format!(
                "the agent applied no snapshot with the MCP contract; controller log: {log}"
            ));
        }
        std::thread::sleep(Duration::from_millis(25));
    }

    let body_file = work_dir.join("mcp-call.json");
    let denied_file = work_dir.join("mcp-call-denied.json");
    let write = |p: &Path, s: String| std::fs::write(p, s).map_err(|e| format!("{e}"));
    write(&body_file, call_body(TOOL, json!({"text": "hi"})))?;
    write(
        &denied_file,
        call_body(DENIED_TOOL, json!({"a": 1, "b": 2})),
    )?;
    let key = topo.key_header();
    let headers = call_headers(TOOL, &key);

    let (status, body, err) = post(&topo.plain, &headers, &body_file);
    let direct = result_text(status, &body).map_err(|e| format!("direct probe: {e} {err}"))?;
    let before = metered_ok(node);
    let (status, body, err) = post(&topo.client, &headers, &body_file);
    let stoa = result_text(status, &body)
        .map_err(|e| format!("stoa probe: {e} {err}\n{}", topo.agent.describe(20)))?;
    if direct != "hi" || stoa != "hi" {
        return Err(format!(
            "the echo answered {direct:?} direct and {stoa:?} through stoa, expected \"hi\""
        ));
    }
    let metered = metered_ok(node).saturating_sub(before);
    if metered != 1 {
        return Err(format!(
            "the call through stoa answered but the agent metered {metered} ok calls of {TOOL} (expected 1): not governed"
        ));
    }
    let (denied_status, body, err) =
        post(&topo.client, &call_headers(DENIED_TOOL, &key), &denied_file);
    let denied: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let code = denied["error"]["code"].as_i64();
    if code != Some(DENIED_CODE) {
        return Err(format!(
            "a call of {DENIED_TOOL} (not allowed) through stoa answered HTTP {denied_status} {body:.300} {err}, expected JSON-RPC error {DENIED_CODE}"
        ));
    }
    let (no_key_status, body, _) = post(&topo.client, &headers[..headers.len() - 1], &body_file);
    let no_key: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let probe = json!({
        "direct": {"status": 200, "text": direct},
        "stoa": {"status": 200, "text": stoa, "metered_ok": metered},
        "stoa_denied_tool": {
            "tool": DENIED_TOOL,
            "status": denied_status,
            "code": code,
            "message": denied["error"]["message"],
        },
        "stoa_without_key": {
            "status": no_key_status,
            "code": no_key["error"]["code"],
        },
    });
    Ok(McpBench {
        server,
        body_file,
        headers,
        probe,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_and_headers_agree() {
        let body: Value = serde_json::from_str(&call_body(TOOL, json!({"text": "hi"}))).unwrap();
        assert_eq!(body["method"], "tools/call");
        assert_eq!(body["params"]["name"], TOOL);
        assert_eq!(
            body["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"],
            PROTOCOL_VERSION
        );
        let headers = call_headers(TOOL, "x-api-key: k");
        assert!(headers.contains(&format!("Mcp-Name: {TOOL}")));
        assert!(headers.contains(&"x-api-key: k".to_string()));
    }

    #[test]
    fn policy_names_the_tool_and_the_subject() {
        let l7 = PolicyMode::L7 {
            secret_file: PathBuf::new(),
            key_hash: "hmac-sha256:00".into(),
        };
        let y = policy_yaml(&l7);
        assert!(y.contains("protocol: mcp") && y.contains("credentials: [apiKey]"));
        assert!(y.contains("tools: [echo]") && y.contains("tool: echo"));
        assert!(y.contains("{consumer: bench}"));
        let plain = policy_yaml(&PolicyMode::PassThrough { reason: "x".into() });
        assert!(
            plain.contains("credentials: [workload]")
                && plain.contains("serviceAccount: bench-client")
        );
    }
}
