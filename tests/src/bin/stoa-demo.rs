//! `make demo`: one simulated node on this machine, the controller and the agent in
//! standalone mode with the policy in `examples/policy/`, and a client pod whose
//! REST calls are redirected through the node proxy and governed there: allowed,
//! denied, authenticated by API key, rate-limited — while traffic to an address no
//! contract names is left alone. Then the same agent pod acts as an AI agent: with
//! the official MCP Python SDK it lists the tools of an MCP server, calls an allowed
//! tool, a denied one, and runs into a per-tool quota; the usage ledger, audit records
//! and metrics show what was metered. Everything it creates is removed before it exits.
use std::{path::PathBuf, sync::Arc, time::Duration};

use serde_json::{json, Value};
use stoa_tests::{
    http::HttpReply,
    mcp::{Era, Target},
    Pod, SimNode, PROXY_IP, PROXY_PORT,
};

const GOVERNED: &str = "10.96.0.10";
const NOT_GOVERNED: &str = "10.96.0.11";
const MCP_SERVER: &str = "10.96.0.20";

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("stoa-demo: needs root (network namespaces, cgroups and eBPF)");
        std::process::exit(2);
    }
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let examples = examples.canonicalize().unwrap_or(examples);
    let policy = examples.join("policy");
    let secret = examples.join("secrets/api-key-secret");
    let partner_key = std::fs::read_to_string(examples.join("secrets/partner-portal.key"))
        .expect("examples/secrets/partner-portal.key");

    println!("STOA demo: one simulated node\n");
    // The example policy names the workload's cgroup `stoa.slice/billing-agent`.
    let node = Arc::new(SimNode::with_cgroup_parent("stoa.slice"));
    let on_signal = node.clone();
    // Ctrl-C must not leave namespaces, cgroups or processes behind.
    ctrlc::set_handler(move || {
        on_signal.cleanup();
        eprintln!("\ninterrupted: cleaned up");
        std::process::exit(130);
    })
    .expect("install the Ctrl-C handler");

    let client = node.add_pod("billing-agent");
    let orders = node.add_pod("orders");
    orders.add_service_ip(GOVERNED);
    orders.add_service_ip(NOT_GOVERNED);
    orders.spawn_backend("orders", "0.0.0.0:80");
    println!(
        "  pod billing-agent  {} in cgroup {} (Workload finance/billing-agent)",
        client.ip(),
        client.cgroup_rel()
    );
    println!(
        "  pod orders         {} serving {GOVERNED}:80 (ApiContract shop/orders-api) and {NOT_GOVERNED}:80",
        orders.ip()
    );
    let crm = node.add_pod("crm");
    crm.add_service_ip(MCP_SERVER);
    let crm_server = crm.spawn_mcp_server("crm", 8080, "streamable-http", &[]);
    println!(
        "  pod crm            {} serving MCP at {MCP_SERVER}:8080/mcp (ApiContract shop/crm-tools; FastMCP, Python SDK)",
        crm.ip()
    );
    node.start_controller(&policy);
    println!("  stoa-controller    policy from {}", policy.display());
    let audit_log = node.temp_dir().join("audit.jsonl");
    let agent = node.start_agent(&[
        "--api-key-secret-file",
        secret.to_str().expect("utf-8 path"),
        "--audit-log",
        audit_log.to_str().expect("utf-8 path"),
    ]);
    let version = node.wait_for_snapshot_above(0, Duration::from_secs(20));
    println!(
        "  stoa-agent         snapshot {version}; eBPF connect4 + sockops on the billing-agent cgroup; proxy on {PROXY_IP}:{PROXY_PORT}\n"
    );

    let url = format!("http://{GOVERNED}/orders");
    step(
        &client,
        "GET /orders as the billing-agent workload",
        &[&url],
        "allowed: AccessPolicy billing-agent-orders grants listOrders to this workload",
    );
    step(
        &client,
        "DELETE /orders/7 as the billing-agent workload",
        &["-X", "DELETE", &format!("{url}/7")],
        "denied: the same policy denies deleteOrder, and a deny wins",
    );
    step(
        &client,
        "POST /orders with the partner-portal API key",
        &[
            "-X",
            "POST",
            "-d",
            "item=42",
            "-H",
            &format!("x-api-key: {partner_key}"),
            &url,
        ],
        "allowed: the key's HMAC matches Consumer shop/partner-portal, which may createOrder",
    );
    step(
        &client,
        "GET /orders with a wrong API key",
        &["-H", "x-api-key: stoa_not_a_real_key", &url],
        "unauthenticated: no Consumer holds this key",
    );
    println!("billing-agent calls GET /orders until its quota (5 per minute) runs out:");
    let mut statuses = Vec::new();
    let limited = loop {
        let reply = client.http(&[&url]);
        statuses.push(reply.status.to_string());
        if reply.status == 429 || statuses.len() > 10 {
            break reply;
        }
    };
    println!("  statuses: {}", statuses.join(" "));
    show(
        &limited,
        "rate-limited: Quota billing-agent-list-orders is used up for now",
    );

    let direct = client.http(&[&format!("http://{NOT_GOVERNED}/health")]);
    println!("billing-agent → GET http://{NOT_GOVERNED}/health   (no contract names this address)");
    println!(
        "  {} from the backend, which saw the pod itself ({}) as its peer: NOT REDIRECTED, the proxy never saw it\n",
        direct.status,
        direct.json()["peer"].as_str().unwrap_or("?")
    );

    ai_agent(&node, &client, &crm_server, &audit_log);

    node.wait_for_agent_metric("stoa_datapath_redirects_total", 1.0, Duration::from_secs(5));
    println!("flows (the agent's access records):");
    for line in agent.stderr().lines().map(strip_ansi) {
        if line.contains(" access: request ") {
            println!("  {}", flow_line(&line));
        }
    }
    println!("\nagent metrics (Prometheus, /metrics):");
    for decision in ["forwarded", "denied", "unauthenticated", "rate_limited"] {
        let name = format!(
            "stoa_http_requests_total{{contract=\"shop/orders-api\",decision=\"{decision}\"}}"
        );
        println!("  {name} {}", node.agent_metric(&name));
    }
    for line in node.agent_metrics_text().lines() {
        if line.starts_with("stoa_mcp_tool_calls_total{") {
            println!("  {line}");
        }
    }
    println!(
        "  stoa_datapath_redirects_total {}",
        node.agent_metric("stoa_datapath_redirects_total")
    );
    node.cleanup();
    println!(
        "\ncleaned up: processes stopped, network namespaces, cgroups and pinned maps removed."
    );
}

/// The billing agent as an AI agent: one MCP session through the redirect.
fn ai_agent(
    node: &SimNode,
    client: &Pod,
    server: &stoa_tests::mcp::McpServer,
    audit_log: &std::path::Path,
) {
    let url = format!("http://{MCP_SERVER}:8080/mcp");
    println!(
        "billing-agent as an AI agent: one MCP session (Python SDK, Streamable HTTP) with {url}"
    );
    let search = |query: &str| json!({"op": "call", "name": "search_customers", "arguments": {"query": query, "region": "eu"}});
    let ops = json!([
        {"op": "list"},
        search("acme"),
        {"op": "call", "name": "delete_customer", "arguments": {"customer_id": "c-42"}},
        search("globex"),
        search("initech"),
        search("umbrella"),
    ]);
    let what = [
        "tools/list",
        "tools/call search_customers {query: acme}",
        "tools/call delete_customer {customer_id: c-42}",
        "tools/call search_customers {query: globex}",
        "tools/call search_customers {query: initech}",
        "tools/call search_customers {query: umbrella}",
    ];
    let answers = client.mcp_script(&Target::streamable(&url, Era::Legacy), &ops);
    for (what, answer) in what.iter().zip(&answers) {
        println!("  → {what}");
        println!("    {}", describe_answer(answer));
    }
    let executed: Vec<String> = server
        .calls()
        .iter()
        .map(|c| c["tool"].as_str().unwrap_or("?").to_string())
        .collect();
    println!(
        "  the MCP server executed: {} (the denied and rate-limited calls never reached it)\n",
        executed.join(", ")
    );

    println!("usage ledger (stoa usage --since 24h):");
    let usage = node.run(&[
        stoa_tests::bin_path("stoa").to_str().expect("utf-8 path"),
        "usage",
        "--ledger-dir",
        node.usage_dir().to_str().expect("utf-8 path"),
        "--since",
        "24h",
    ]);
    for line in String::from_utf8_lossy(&usage.stdout).lines() {
        println!("  {line}");
    }
    println!("\naudit records ({}):", audit_log.display());
    for line in std::fs::read_to_string(audit_log)
        .unwrap_or_default()
        .lines()
    {
        let record: Value = serde_json::from_str(line).unwrap_or_default();
        println!(
            "  {} {} {} outcome={} args={}{}",
            record["caller"].as_str().unwrap_or("?"),
            record["tool"].as_str().unwrap_or("?"),
            record["decision"].as_str().unwrap_or("?"),
            record["outcome"].as_str().unwrap_or("-"),
            record["arguments"],
            record["reason"]
                .as_str()
                .map(|r| format!(" reason=\"{r}\""))
                .unwrap_or_default()
        );
    }
    println!();
}

fn describe_answer(answer: &Value) -> String {
    if let Some(tools) = answer["tools"].as_array() {
        let names: Vec<&str> = tools.iter().filter_map(Value::as_str).collect();
        return format!(
            "{} tools visible: {} (delete_customer and unlisted tools are filtered out)",
            names.len(),
            names.join(", ")
        );
    }
    if answer["ok"] == true {
        let text = answer["text"].as_str().unwrap_or("");
        return format!("ok: {}", text.lines().next().unwrap_or(""));
    }
    let error = &answer["error"];
    format!(
        "JSON-RPC error {}: {}",
        error["code"],
        error["message"].as_str().unwrap_or("?")
    )
}

fn step(client: &Pod, what: &str, args: &[&str], why: &str) {
    println!("billing-agent → {what}");
    let reply = client.http(args);
    show(&reply, why);
}

fn show(reply: &HttpReply, why: &str) {
    let mut detail = String::new();
    if reply.status < 300 {
        let seen = reply.json();
        detail = format!(
            "; the backend saw {} {} from the node proxy, caller {}",
            seen["method"].as_str().unwrap_or("?"),
            seen["path"].as_str().unwrap_or("?"),
            ["x-stoa-consumer", "x-stoa-workload"]
                .iter()
                .find_map(|h| seen["headers"][h].as_str())
                .unwrap_or("?")
        );
    } else if let Ok(problem) = serde_json::from_str::<serde_json::Value>(&reply.body) {
        detail = format!(": {}", problem["detail"].as_str().unwrap_or(""));
    }
    println!("  {}{detail}", reply.status);
    for header in ["ratelimit", "retry-after", "www-authenticate"] {
        if let Some(value) = reply.header(header) {
            println!("  {header}: {value}");
        }
    }
    println!("  → {why}\n");
}

/// The interesting fields of one access record, without timestamps and colours.
fn flow_line(line: &str) -> String {
    let fields = line.split(" request ").nth(1).unwrap_or(line);
    fields
        .split_whitespace()
        .filter(|kv| {
            [
                "src.workload=",
                "consumer=",
                "operation=",
                "method=",
                "path=",
                "status=",
                "decision=",
                "mcp.method=",
                "mcp.tool=",
            ]
            .iter()
            .any(|k| kv.starts_with(k))
        })
        .filter(|kv| !kv.ends_with("=\"\""))
        .collect::<Vec<_>>()
        .join(" ")
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
