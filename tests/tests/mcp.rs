//! MCP tool governance through the eBPF redirect on a simulated node: the official
//! SDK clients (Python `mcp`, TypeScript `@modelcontextprotocol/sdk`) run in pods and
//! call servers (Python FastMCP, `server-everything`) at their in-cluster address;
//! the node proxy decides, filters, limits, meters and audits.
use std::time::Duration;

use serde_json::{json, Value};
use stoa_keys::KeyDigest;
use stoa_tests::{
    issuer::{JwksServer, TestKey, ISSUER},
    mcp::{Era, McpServer, Target},
    OutputExt, Pod, ProcHandle, SimNode,
};

const MCP_URL: &str = "http://10.96.0.20:8080/mcp";
const SSE_URL: &str = "http://10.96.0.20:8080/sse";
const SECRET: &str = "node-secret-for-mcp-tests";
const PARTNER_KEY: &str = "stoa_partner_agent_key_0000000000000001";

/// Tools the assistant workload may call.
const ASSISTANT_TOOLS: [&str; 7] = [
    "add",
    "echo",
    "fail",
    "search_customers",
    "send_invoice",
    "slow_count",
    "whoami",
];

struct Mesh {
    node: SimNode,
    /// Workload ai/assistant: the tools above, never delete_customer.
    assistant: Pod,
    /// Workload other/intruder: no tools at all.
    intruder: Pod,
    agent: ProcHandle,
    servers: Vec<McpServer>,
    _server_pods: Vec<Pod>,
    audit_log: std::path::PathBuf,
}

fn workload(name: &str, namespace: &str, pod: &Pod) -> String {
    format!(
        "---\napiVersion: gostoa.dev/v1alpha1\nkind: Workload\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {{cgroup: {}, serviceAccount: {name}}}\n",
        pod.cgroup_rel()
    )
}

fn contract(backends: &str) -> String {
    format!(
        r#"---
apiVersion: gostoa.dev/v1alpha1
kind: ApiContract
metadata: {{name: crm-tools, namespace: shop}}
spec:
  protocol: mcp
  address: "10.96.0.20:8080"
{backends}  credentials: [workload, apiKey]
  maxRequestBodyBytes: 65536
  mcp: {{path: /mcp, ssePath: /sse, unlistedTools: deny}}
  tools:
    - {{name: echo}}
    - {{name: add}}
    - name: search_customers
      arguments:
        query: {{maxLength: 32, pattern: "[a-z ]+"}}
        region: {{allowedValues: [eu, us]}}
    - {{name: delete_customer}}
    - {{name: send_invoice, secretArguments: [api_token]}}
    - {{name: whoami}}
    - {{name: slow_count}}
    - {{name: fail}}
"#
    )
}

const ACCESS: &str = r#"---
apiVersion: gostoa.dev/v1alpha1
kind: AccessPolicy
metadata: {name: assistant-tools, namespace: shop}
spec:
  subjects:
    - workload: {namespace: ai, serviceAccount: assistant}
    - consumer: partner-agent
  allow:
    - {contract: crm-tools, tools: [echo, add, "search_*", send_invoice, whoami, slow_count, fail]}
  deny:
    - {contract: crm-tools, tools: ["delete_*"]}
---
apiVersion: gostoa.dev/v1alpha1
kind: Quota
metadata: {name: assistant-add, namespace: shop}
spec:
  subjects: [{workload: {namespace: ai}}]
  scope: {contract: crm-tools, tool: add}
  limit: {requests: 2, per: second}
"#;

fn consumer_yaml() -> String {
    let hash = KeyDigest::compute(SECRET.as_bytes(), PARTNER_KEY);
    format!(
        "---\napiVersion: gostoa.dev/v1alpha1\nkind: Consumer\nmetadata: {{name: partner-agent, namespace: shop}}\nspec:\n  apiKeys: [{{id: pa-1, hash: \"{hash}\"}}]\n"
    )
}

/// A node with the assistant and intruder pods and `replicas` MCP servers (each in
/// its own pod). One replica serves the address itself; several are the contract's
/// backends.
fn mesh(transport: &str, replicas: usize, server_args: &[&str]) -> Mesh {
    let node = SimNode::new();
    let assistant = node.add_pod("assistant");
    let intruder = node.add_pod("intruder");
    let mut servers = Vec::new();
    let mut server_pods = Vec::new();
    let mut backends = Vec::new();
    for i in 0..replicas {
        let name = ["a", "b", "c"][i];
        let pod = node.add_pod(&format!("mcp-{name}"));
        if replicas == 1 {
            pod.add_service_ip("10.96.0.20");
        } else {
            backends.push(format!("\"{}:8080\"", pod.ip()));
        }
        servers.push(pod.spawn_mcp_server(name, 8080, transport, server_args));
        server_pods.push(pod);
    }
    let backends = if backends.is_empty() {
        String::new()
    } else {
        format!("  backends: [{}]\n", backends.join(", "))
    };
    let policy = [
        workload("assistant", "ai", &assistant),
        workload("intruder", "other", &intruder),
        contract(&backends),
        ACCESS.to_string(),
        consumer_yaml(),
    ]
    .concat();
    let secret = node.temp_dir().join("api-key-secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let audit_log = node.temp_dir().join("audit.jsonl");
    let agent = govern(
        &node,
        "mcp.yaml",
        &policy,
        &[
            "--api-key-secret-file",
            secret.to_str().unwrap(),
            "--audit-log",
            audit_log.to_str().unwrap(),
        ],
    );
    Mesh {
        node,
        assistant,
        intruder,
        agent,
        servers,
        _server_pods: server_pods,
        audit_log,
    }
}

/// Writes the policy, starts the controller and the agent, and waits until the agent
/// enforces it.
fn govern(node: &SimNode, file: &str, policy: &str, agent_args: &[&str]) -> ProcHandle {
    node.write_policy(file, policy);
    node.start_controller(&node.policy_dir());
    let agent = node.start_agent(agent_args);
    node.wait_for_snapshot_above(0, Duration::from_secs(20));
    agent
}

fn tool_names(answer: &Value) -> Vec<String> {
    let mut names: Vec<String> = answer["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools in {answer}"))
        .iter()
        .map(|t| t.as_str().unwrap_or_default().to_string())
        .collect();
    names.sort();
    names
}

fn error_code(answer: &Value) -> i64 {
    answer["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("not a JSON-RPC error: {answer}"))
}

fn usage_json(node: &SimNode) -> Value {
    let out = node.run(&[
        stoa_tests::bin_path("stoa").to_str().unwrap(),
        "usage",
        "--ledger-dir",
        node.usage_dir().to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert!(out.status.success(), "stoa usage: {}", out.stderr_str());
    serde_json::from_slice(&out.stdout).expect("stoa usage prints JSON")
}

/// Calls by (tool, outcome) from `stoa usage`.
fn usage_calls(node: &SimNode, tool: &str, outcome: &str) -> u64 {
    usage_json(node)["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["tool"] == tool && r["outcome"] == outcome)
        .map(|r| r["calls"].as_u64().unwrap())
        .sum()
}

#[test]
fn tools_list_shows_only_allowed_tools_in_both_eras_on_every_page() {
    if !stoa_tests::require_root() {
        return;
    }
    // Pages of three: the filter must act on every page, not just the first.
    let mesh = mesh("streamable-http", 1, &["--page-size", "3"]);
    for era in [Era::Modern, Era::Legacy] {
        let answer = mesh
            .assistant
            .mcp_one(&Target::streamable(MCP_URL, era), &["list"]);
        assert_eq!(
            tool_names(&answer),
            ASSISTANT_TOOLS,
            "{era:?}: {answer}\n{}",
            mesh.agent.describe(30)
        );
    }
    // A caller allowed nothing sees nothing, unlisted tools (tool_01…) included.
    let answer = mesh
        .intruder
        .mcp_one(&Target::streamable(MCP_URL, Era::Legacy), &["list"]);
    assert_eq!(tool_names(&answer), Vec::<String>::new(), "{answer}");
}

#[test]
fn allowed_call_succeeds_and_denied_call_never_reaches_the_server() {
    if !stoa_tests::require_root() {
        return;
    }
    let mesh = mesh("streamable-http", 1, &[]);
    let server = &mesh.servers[0];
    for era in [Era::Modern, Era::Legacy] {
        let target = Target::streamable(MCP_URL, era);
        let ok = mesh
            .assistant
            .mcp_one(&target, &["call", "echo", r#"{"text": "hello"}"#]);
        assert_eq!(ok["ok"], true, "{era:?}: {ok}\n{}", mesh.agent.describe(30));
        assert!(ok["text"].as_str().unwrap().contains("hello"), "{ok}");

        let denied = mesh.assistant.mcp_one(
            &target,
            &["call", "delete_customer", r#"{"customer_id": "c-1"}"#],
        );
        assert_eq!(error_code(&denied), -32010, "{era:?}: {denied}");
        let message = denied["error"]["message"].as_str().unwrap();
        assert!(message.contains("delete_customer"), "{message}");
        assert!(
            message.contains("assistant-tools"),
            "names the policy: {message}"
        );
        assert_eq!(denied["error"]["data"]["tool"], "delete_customer");
    }
    let intruder = mesh.intruder.mcp_one(
        &Target::streamable(MCP_URL, Era::Modern),
        &["call", "echo", r#"{"text": "x"}"#],
    );
    assert_eq!(error_code(&intruder), -32010, "{intruder}");

    // Another path the server may accept is no way around the decision.
    for path in ["/mcp/", "/other"] {
        let reply = mesh.assistant.http(&[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "--data-binary",
            r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"delete_customer","arguments":{"customer_id":"c-2"}}}"#,
            &format!("http://10.96.0.20:8080{path}"),
        ]);
        assert_eq!(error_code(&reply.json()), -32010, "{path}: {reply:?}");
    }

    assert!(server.saw_tool("echo"), "{:?}", server.calls());
    assert!(
        !server.saw_tool("delete_customer"),
        "a denied call reached the server: {:?}",
        server.calls()
    );
    assert_eq!(server.calls().len(), 2, "{:?}", server.calls());
}

#[test]
fn argument_constraints_are_enforced_before_the_server() {
    if !stoa_tests::require_root() {
        return;
    }
    let mesh = mesh("streamable-http", 1, &[]);
    let target = Target::streamable(MCP_URL, Era::Modern);
    let ok = mesh.assistant.mcp_one(
        &target,
        &[
            "call",
            "search_customers",
            r#"{"query": "acme corp", "region": "us"}"#,
        ],
    );
    assert_eq!(ok["ok"], true, "{ok}");
    for (arguments, reason) in [
        (r#"{"query": "acme", "region": "apac"}"#, "one of eu, us"),
        (r#"{"query": "acme; drop table"}"#, "pattern"),
        (
            r#"{"query": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}"#,
            "at most 32",
        ),
    ] {
        let refused = mesh
            .assistant
            .mcp_one(&target, &["call", "search_customers", arguments]);
        assert_eq!(error_code(&refused), -32011, "{arguments}: {refused}");
        let message = refused["error"]["message"].as_str().unwrap();
        assert!(message.contains(reason), "{message}");
    }
    let calls = mesh.servers[0].calls();
    assert_eq!(calls.len(), 1, "only the valid call arrives: {calls:?}");
}

#[test]
fn per_tool_quota_is_exceeded_then_recovers() {
    if !stoa_tests::require_root() {
        return;
    }
    let mesh = mesh("streamable-http", 1, &[]);
    let add = json!({"op": "call", "name": "add", "arguments": {"a": 2, "b": 3}});
    let echo = json!({"op": "call", "name": "echo", "arguments": {"text": "still fine"}});
    let answers = mesh.assistant.mcp_script(
        &Target::streamable(MCP_URL, Era::Legacy),
        &json!([add, add, add, echo, {"op": "sleep", "seconds": 1.2}, add]),
    );
    assert_eq!(answers.len(), 6, "{answers:#?}");
    assert_eq!(answers[0]["ok"], true, "{answers:#?}");
    assert_eq!(answers[1]["ok"], true, "{answers:#?}");
    let limited = &answers[2];
    assert_eq!(error_code(limited), -32012, "{limited}");
    let retry_after = limited["error"]["data"]["retryAfterSeconds"]
        .as_u64()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{limited}");
    assert!(limited["error"]["message"]
        .as_str()
        .unwrap()
        .contains("retry after"));
    // The quota is per tool: another tool is unaffected.
    assert_eq!(answers[3]["ok"], true, "{answers:#?}");
    // Recovered after the window.
    assert_eq!(answers[5]["ok"], true, "{answers:#?}");

    // On the wire: HTTP 429 with Retry-After and the JSON-RPC error in the body. curl
    // starts fast enough to use up the two-per-second budget.
    let body = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
        "params": {"name": "add", "arguments": {"a": 1, "b": 1}}});
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let reply = mesh.assistant.http(&[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-H",
            "accept: application/json, text/event-stream",
            "--data-binary",
            &body.to_string(),
            MCP_URL,
        ]);
        statuses.push(reply.status);
        if reply.status == 429 {
            assert!(reply.header("retry-after").is_some(), "{reply:?}");
            let answer = reply.json();
            assert_eq!(answer["id"], 9);
            assert_eq!(error_code(&answer), -32012);
        }
    }
    assert!(statuses.contains(&429), "{statuses:?}");
}

#[test]
fn streamed_sse_tool_result_arrives_intact() {
    if !stoa_tests::require_root() {
        return;
    }
    let mesh = mesh("streamable-http", 1, &[]);
    // Legacy streamable sessions answer tools/call over SSE, with progress events first.
    let answer = mesh.assistant.mcp_one(
        &Target::streamable(MCP_URL, Era::Legacy),
        &["call", "slow_count", r#"{"n": 5, "delay_ms": 100}"#],
    );
    assert_eq!(answer["ok"], true, "{answer}\n{}", mesh.agent.describe(30));
    let text = answer["text"].as_str().unwrap();
    for i in 0..5 {
        assert!(text.contains(&format!("line {i}")), "{text:.200}");
    }
    assert!(
        text.len() > 64 * 1024,
        "the 64 KiB payload arrived whole: {}",
        text.len()
    );
    let expected_direct = mesh.assistant.mcp_one(
        &Target::streamable(MCP_URL, Era::Legacy),
        &["call", "slow_count", r#"{"n": 5, "delay_ms": 1}"#],
    );
    assert_eq!(
        answer["text"], expected_direct["text"],
        "identical payloads"
    );
}

#[test]
fn legacy_http_sse_transport_is_governed() {
    if !stoa_tests::require_root() {
        return;
    }
    let mesh = mesh("sse", 1, &[]);
    let target = Target::sse(SSE_URL);
    let answers = mesh.assistant.mcp_script(
        &target,
        &json!([
            {"op": "list"},
            {"op": "call", "name": "echo", "arguments": {"text": "over sse"}},
            {"op": "call", "name": "delete_customer", "arguments": {"customer_id": "c-9"}},
            {"op": "call", "name": "echo", "arguments": {"text": "still open"}},
        ]),
    );
    assert_eq!(
        answers.len(),
        4,
        "{answers:#?}\n{}",
        mesh.agent.describe(30)
    );
    assert_eq!(tool_names(&answers[0]), ASSISTANT_TOOLS, "{answers:#?}");
    assert_eq!(answers[1]["ok"], true, "{answers:#?}");
    // STOA's answer travels on the session's event stream.
    assert_eq!(error_code(&answers[2]), -32010, "{answers:#?}");
    assert_eq!(answers[3]["ok"], true, "{answers:#?}");
    assert!(!mesh.servers[0].saw_tool("delete_customer"));
}

#[test]
fn sessions_stay_on_the_replica_that_created_them() {
    if !stoa_tests::require_root() {
        return;
    }
    let mesh = mesh("streamable-http", 2, &[]);
    let whoami = json!({"op": "call", "name": "whoami", "arguments": {}});
    let mut replicas_seen = Vec::new();
    for _ in 0..2 {
        let answers = mesh.assistant.mcp_script(
            &Target::streamable(MCP_URL, Era::Legacy),
            &json!([whoami, whoami, whoami, whoami]),
        );
        assert_eq!(answers.len(), 4, "{answers:#?}");
        let names: Vec<&str> = answers
            .iter()
            .map(|a| {
                assert_eq!(a["ok"], true, "{a}\n{}", mesh.agent.describe(30));
                a["text"].as_str().unwrap()
            })
            .collect();
        assert!(
            names.iter().all(|n| *n == names[0]),
            "one session, one replica: {names:?}"
        );
        replicas_seen.push(names[0].to_string());
    }
    // Sessions are balanced: the second one started on the other replica.
    replicas_seen.sort();
    replicas_seen.dedup();
    assert_eq!(replicas_seen.len(), 2, "{replicas_seen:?}");
    for server in &mesh.servers {
        assert_eq!(
            server.calls().len(),
            4,
            "each replica served one whole session"
        );
    }
}

#[test]
fn modern_header_body_mismatch_is_rejected() {
    if !stoa_tests::require_root() {
        return;
    }
    // search_customers.region is annotated x-mcp-header: Region, so 2026-07-28 calls
    // carry it as Mcp-Param-Region too.
    let mesh = mesh("streamable-http", 1, &["--param-header"]);
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientCapabilities": {}});
    let raw = |body: &Value, headers: &[&str]| {
        let mut args = vec!["raw", "--body"];
        let body = body.to_string();
        args.push(&body);
        args.extend(["--header", "MCP-Protocol-Version: 2026-07-28"]);
        args.extend(["--header", "Mcp-Method: tools/call"]);
        for header in headers {
            args.extend(["--header", header]);
        }
        let reply = mesh
            .assistant
            .mcp_one(&Target::streamable(MCP_URL, Era::Modern), &args);
        let answer: Value = serde_json::from_str(reply["body"].as_str().unwrap())
            .unwrap_or_else(|e| panic!("{e}: {reply}"));
        (reply["status"].as_u64().unwrap(), answer)
    };

    // Mcp-Name claims a harmless tool; the body calls another.
    let delete = json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
        "params": {"name": "delete_customer", "arguments": {"customer_id": "c-1"}, "_meta": meta}});
    let (status, answer) = raw(&delete, &["Mcp-Name: echo"]);
    assert_eq!(status, 400, "{answer}");
    assert_eq!(error_code(&answer), -32020, "{answer}");
    assert_eq!(answer["id"], 4);
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Mcp-Name"));

    // Once STOA has seen the tool's schema (a 2026-07-28 listing), Mcp-Param-* headers
    // are checked against the arguments as well.
    let listed = mesh
        .assistant
        .mcp_one(&Target::streamable(MCP_URL, Era::Modern), &["list"]);
    assert!(tool_names(&listed).contains(&"search_customers".to_string()));
    let search = json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
        "params": {"name": "search_customers", "arguments": {"query": "acme", "region": "eu"},
            "_meta": meta}});
    let (status, answer) = raw(
        &search,
        &["Mcp-Name: search_customers", "Mcp-Param-Region: us"],
    );
    assert_eq!(status, 400, "{answer}");
    assert_eq!(error_code(&answer), -32020, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("mcp-param-region"),
        "{answer}"
    );
    let (status, answer) = raw(&search, &["Mcp-Name: search_customers"]);
    assert_eq!((status, error_code(&answer)), (400, -32020), "{answer}");
    assert!(
        mesh.servers[0].calls().is_empty(),
        "{:?}",
        mesh.servers[0].calls()
    );

    // Headers that agree pass, and the SDK's own requests carry them right.
    let (status, answer) = raw(
        &search,
        &["Mcp-Name: search_customers", "Mcp-Param-Region: eu"],
    );
    assert_eq!(status, 200, "{answer}");
    assert!(answer["result"].is_object(), "{answer}");
    let ok = mesh.assistant.mcp_one(
        &Target::streamable(MCP_URL, Era::Modern),
        &[
            "call",
            "search_customers",
            r#"{"query": "acme", "region": "us"}"#,
        ],
    );
    assert_eq!(ok["ok"], true, "{ok}");
}

#[test]
fn usage_totals_equal_the_calls_made_also_after_an_agent_restart() {
    if !stoa_tests::require_root() {
        return;
    }
    let mut mesh = mesh("streamable-http", 1, &[]);
    let target = Target::streamable(MCP_URL, Era::Legacy);
    let call = |name: &str, args: Value| json!({"op": "call", "name": name, "arguments": args});
    let answers = mesh.assistant.mcp_script(
        &target,
        &json!([
            call("echo", json!({"text": "1"})),
            call("echo", json!({"text": "2"})),
            call("fail", json!({})),
            call("delete_customer", json!({"customer_id": "c"})),
            call("add", json!({"a": 1, "b": 1})),
            call("add", json!({"a": 1, "b": 1})),
            call("add", json!({"a": 1, "b": 1})),
        ]),
    );
    assert_eq!(answers.len(), 7, "{answers:#?}");
    assert_eq!(answers[2]["isError"], true, "{answers:#?}");
    assert_eq!(usage_calls(&mesh.node, "echo", "ok"), 2);
    assert_eq!(usage_calls(&mesh.node, "fail", "tool_error"), 1);
    assert_eq!(usage_calls(&mesh.node, "delete_customer", "denied"), 1);
    assert_eq!(usage_calls(&mesh.node, "add", "ok"), 2);
    assert_eq!(usage_calls(&mesh.node, "add", "rate_limited"), 1);
    assert_eq!(usage_json(&mesh.node)["total_calls"], 7);
    let metrics = mesh.node.agent_metrics_text();
    for (tool, outcome, calls) in [
        ("echo", "ok", 2),
        ("fail", "tool_error", 1),
        ("delete_customer", "denied", 1),
        ("add", "rate_limited", 1),
    ] {
        let sample = format!(
            "stoa_mcp_tool_calls_total{{contract=\"shop/crm-tools\",tool=\"{tool}\",caller=\"ai/assistant\",outcome=\"{outcome}\"}} {calls}"
        );
        assert!(
            metrics.contains(&sample),
            "{sample} missing from:\n{metrics}"
        );
    }
    assert!(metrics.contains("stoa_mcp_tool_call_duration_seconds"));

    // kill -9: every call answered before it is in the ledger.
    mesh.agent.kill();
    mesh.agent = mesh.node.start_agent(&[
        "--api-key-secret-file",
        mesh.node
            .temp_dir()
            .join("api-key-secret")
            .to_str()
            .unwrap(),
    ]);
    mesh.node
        .wait_for_snapshot_above(0, Duration::from_secs(20));
    let answer = mesh
        .assistant
        .mcp_one(&target, &["call", "echo", r#"{"text": "3"}"#]);
    assert_eq!(answer["ok"], true, "{answer}\n{}", mesh.agent.describe(30));
    assert_eq!(usage_calls(&mesh.node, "echo", "ok"), 3);
    assert_eq!(usage_json(&mesh.node)["total_calls"], 8);

    // Filters of `stoa usage`.
    let out = mesh.node.run(&[
        stoa_tests::bin_path("stoa").to_str().unwrap(),
        "usage",
        "--ledger-dir",
        mesh.node.usage_dir().to_str().unwrap(),
        "--since",
        "1h",
        "--tool",
        "add",
    ]);
    let table = out.stdout_str();
    assert!(
        table.contains("rate_limited") && !table.contains("echo"),
        "{table}"
    );
}

#[test]
fn audit_records_every_decision_and_hold_no_secret() {
    if !stoa_tests::require_root() {
        return;
    }
    let mesh = mesh("streamable-http", 1, &[]);
    let token = "sk_live_51HxQkVt4ZaBCdEf9876543210";
    let target = Target::streamable(MCP_URL, Era::Modern)
        .header(&format!("x-api-key: {PARTNER_KEY}"))
        .header("traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    let answer = mesh.assistant.mcp_one(
        &target,
        &[
            "call",
            "send_invoice",
            &json!({"customer_id": "c-7", "api_token": token}).to_string(),
        ],
    );
    assert_eq!(answer["ok"], true, "{answer}\n{}", mesh.agent.describe(30));
    let denied = mesh.assistant.mcp_one(
        &target,
        &[
            "call",
            "delete_customer",
            r#"{"customer_id": "c-8", "note": "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"}"#,
        ],
    );
    assert_eq!(error_code(&denied), -32010, "{denied}");

    let audit = std::fs::read_to_string(&mesh.audit_log).expect("audit log written");
    assert!(!audit.contains(token), "{audit}");
    assert!(!audit.contains(PARTNER_KEY), "{audit}");
    assert!(!audit.contains("eyJhbGciOiJSUzI1NiJ9"), "{audit}");
    let records: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(records.len(), 2, "{audit}");
    let invoice = &records[0];
    assert_eq!(invoice["tool"], "send_invoice");
    assert_eq!(invoice["decision"], "allow");
    assert_eq!(invoice["outcome"], "ok");
    assert_eq!(invoice["consumer"], "shop/partner-agent");
    assert_eq!(invoice["key_id"], "pa-1");
    assert_eq!(invoice["contract"], "shop/crm-tools");
    assert_eq!(invoice["arguments"]["customer_id"], "c-7");
    assert_eq!(invoice["arguments"]["api_token"], "[REDACTED]");
    assert_eq!(invoice["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    let delete = &records[1];
    assert_eq!(delete["decision"], "deny");
    assert_eq!(delete["outcome"], "denied");
    assert!(delete["reason"]
        .as_str()
        .unwrap()
        .contains("assistant-tools"));
    assert_eq!(delete["arguments"]["note"], "[REDACTED]");
}

#[test]
fn malformed_json_rpc_gets_a_parse_error_and_the_proxy_keeps_serving() {
    if !stoa_tests::require_root() {
        return;
    }
    let mesh = mesh("streamable-http", 1, &[]);
    let target = Target::streamable(MCP_URL, Era::Legacy);
    let reply = mesh.assistant.mcp_one(
        &target,
        &["raw", "--body", "{\"jsonrpc\": \"2.0\", \"id\": 1, "],
    );
    assert_eq!(reply["status"], 400, "{reply}");
    let answer: Value = serde_json::from_str(reply["body"].as_str().unwrap()).unwrap();
    assert_eq!(error_code(&answer), -32700, "{answer}");
    assert_eq!(answer["id"], Value::Null);

    let reply = mesh
        .assistant
        .mcp_one(&target, &["raw", "--body", r#"{"id": 1, "method": 5}"#]);
    assert_eq!(reply["status"], 400, "{reply}");
    let answer: Value = serde_json::from_str(reply["body"].as_str().unwrap()).unwrap();
    assert_eq!(error_code(&answer), -32600, "{answer}");

    // Over the contract's 64 KiB body limit: refused with a clear error.
    let big = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "x".repeat(70_000)}}});
    let reply = mesh
        .assistant
        .mcp_one(&target, &["raw", "--body", &big.to_string()]);
    assert_eq!(reply["status"], 413, "{reply}");
    assert!(reply["body"].as_str().unwrap().contains("65536"), "{reply}");

    let ok = mesh
        .assistant
        .mcp_one(&target, &["call", "echo", r#"{"text": "after garbage"}"#]);
    assert_eq!(ok["ok"], true, "{ok}");
    assert!(mesh.agent.is_running());
}

#[test]
fn typescript_sdk_client_and_server_everything() {
    if !stoa_tests::require_root() {
        return;
    }
    let node = SimNode::new();
    let assistant = node.add_pod("assistant");
    let server = node.add_pod("everything");
    server.add_service_ip("10.96.0.30");
    let _everything = server.spawn_server_everything(3001);
    let policy = format!(
        r#"{}---
apiVersion: gostoa.dev/v1alpha1
kind: ApiContract
metadata: {{name: everything, namespace: shop}}
spec:
  protocol: mcp
  address: "10.96.0.30:3001"
  mcp: {{unlistedTools: allow}}
---
apiVersion: gostoa.dev/v1alpha1
kind: AccessPolicy
metadata: {{name: everything-echo, namespace: shop}}
spec:
  subjects: [{{workload: {{namespace: ai}}}}]
  allow: [{{contract: everything, tools: [echo, "get-*"]}}]
"#,
        workload("assistant", "ai", &assistant)
    );
    let agent = govern(&node, "everything.yaml", &policy, &[]);
    let target = Target::streamable("http://10.96.0.30:3001/mcp", Era::Legacy);

    let listed = assistant.mcp_node(&target, &["list"]);
    let names = tool_names(&listed[0]);
    assert!(
        names.contains(&"echo".to_string()),
        "{names:?}\n{}",
        agent.describe(30)
    );
    assert!(
        names.iter().all(|n| n == "echo" || n.starts_with("get-")),
        "{names:?}"
    );
    let ok = assistant.mcp_node(&target, &["call", "echo", r#"{"message": "from node"}"#]);
    assert_eq!(ok[0]["ok"], true, "{ok:?}");
    assert!(ok[0]["text"].as_str().unwrap().contains("from node"));
    let denied = assistant.mcp_node(&target, &["call", "trigger-long-running-operation", "{}"]);
    assert_eq!(error_code(&denied[0]), -32010, "{denied:?}");
}

#[test]
fn oauth_resource_server_challenges_checks_audience_and_never_forwards_the_token() {
    if !stoa_tests::require_root() {
        return;
    }
    let node = SimNode::new();
    let assistant = node.add_pod("assistant");
    let server_pod = node.add_pod("mcp");
    server_pod.add_service_ip("10.96.0.20");
    let server = server_pod.spawn_mcp_server("a", 8080, "streamable-http", &[]);
    let key = TestKey::load("rs256-a.pem", "key-a");
    let jwks = JwksServer::start(&node, "127.0.0.1:8089", &[&key]);
    let policy = format!(
        r#"{workload}---
apiVersion: gostoa.dev/v1alpha1
kind: ApiContract
metadata: {{name: crm-tools, namespace: shop}}
spec:
  protocol: mcp
  address: "10.96.0.20:8080"
  credentials: [jwt]
  jwt: {{issuer: "{ISSUER}", audiences: ["{MCP_URL}"], jwksUri: "{jwks}"}}
  mcp:
    oauth: {{resource: "{MCP_URL}", authorizationServers: ["{ISSUER}"], scopesSupported: [tools]}}
  tools: [{{name: echo}}, {{name: request_headers}}]
---
apiVersion: gostoa.dev/v1alpha1
kind: AccessPolicy
metadata: {{name: ops-tools, namespace: shop}}
spec:
  subjects: [{{jwt: {{claims: {{sub: alice}}}}}}]
  allow: [{{contract: crm-tools}}]
"#,
        workload = workload("assistant", "ai", &assistant),
        jwks = jwks.uri(),
    );
    let agent = govern(&node, "oauth.yaml", &policy, &[]);

    // No token: 401 and where to find the authorization server (RFC 9728).
    let reply = assistant.http(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "--data-binary",
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
        MCP_URL,
    ]);
    assert_eq!(reply.status, 401, "{reply:?}\n{}", agent.describe(20));
    let challenge = reply.header("www-authenticate").unwrap_or_default();
    let metadata_url = "http://10.96.0.20:8080/.well-known/oauth-protected-resource/mcp";
    assert!(
        challenge.contains(&format!("resource_metadata=\"{metadata_url}\"")),
        "{challenge}"
    );
    let metadata = assistant.http(&[metadata_url]);
    assert_eq!(metadata.status, 200, "{metadata:?}");
    let metadata = metadata.json();
    assert_eq!(metadata["resource"], MCP_URL);
    assert_eq!(metadata["authorization_servers"], json!([ISSUER]));
    assert_eq!(metadata["scopes_supported"], json!(["tools"]));

    // A token for this resource works, and the server never sees it.
    let token = key.token("alice", MCP_URL, 300, json!({}));
    let target =
        Target::streamable(MCP_URL, Era::Legacy).header(&format!("Authorization: Bearer {token}"));
    let answer = assistant.mcp_one(&target, &["call", "request_headers", "{}"]);
    assert_eq!(answer["ok"], true, "{answer}\n{}", agent.describe(20));
    let seen: Value = serde_json::from_str(answer["text"].as_str().unwrap()).unwrap();
    assert!(
        seen.get("authorization").is_none(),
        "token forwarded: {seen}"
    );
    assert!(!answer["text"].as_str().unwrap().contains(&token));
    assert_eq!(seen["x-stoa-subject"], "alice", "{seen}");

    // A token for another audience is refused before the server.
    let other = key.token("alice", "https://other.example/mcp", 300, json!({}));
    let target =
        Target::streamable(MCP_URL, Era::Legacy).header(&format!("Authorization: Bearer {other}"));
    let refused = assistant.mcp(&target, &["call", "echo", r#"{"text": "x"}"#]);
    assert_eq!(refused[0]["ok"], false, "{refused:?}");
    assert_eq!(server.calls().len(), 1, "{:?}", server.calls());
}

#[test]
fn a_closed_client_stream_cancels_a_stateless_call_but_not_a_session_call() {
    if !stoa_tests::require_root() {
        return;
    }
    let mesh = mesh("streamable-http", 1, &[]);
    let accept = "accept: application/json, text/event-stream";
    // Eight progress events 250 ms apart: the answer streams for two seconds, and the
    // client gives up after one.
    let slow_call = |meta: Value| {
        json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
            "name": "slow_count", "arguments": {"n": 8, "delay_ms": 250}, "_meta": meta}})
        .to_string()
    };
    let impatient = |headers: &[String], body: &str| {
        let mut args = vec!["-sS", "--max-time", "1", "-X", "POST"];
        for header in headers {
            args.extend(["-H", header.as_str()]);
        }
        args.extend(["-H", "content-type: application/json", "-H", accept]);
        args.extend(["--data-binary", body, MCP_URL]);
        let out = mesh.assistant.curl(&args);
        assert_eq!(
            out.status.code(),
            Some(28),
            "curl timed out: {}",
            out.stderr_str()
        );
    };

    // 2026-07-28, stateless: the upstream request is cancelled with its client, so the
    // invocation never completes and is not metered.
    let modern = slow_call(json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "progressToken": "p-1"}));
    impatient(
        &[
            "mcp-protocol-version: 2026-07-28".into(),
            "mcp-method: tools/call".into(),
            "mcp-name: slow_count".into(),
        ],
        &modern,
    );
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(usage_calls(&mesh.node, "slow_count", "ok"), 0);
    // Not metered, but the allow decision is on the audit record.
    let audit = std::fs::read_to_string(&mesh.audit_log).unwrap_or_default();
    let record: Value = serde_json::from_str(audit.lines().next().unwrap_or("{}")).unwrap();
    assert_eq!(record["tool"], "slow_count", "{audit}");
    assert_eq!(record["decision"], "allow", "{audit}");
    assert_eq!(record["outcome"], Value::Null, "{audit}");
    assert!(
        record["reason"].as_str().unwrap().contains("cancelled"),
        "{audit}"
    );

    // A session's call goes on upstream (the client could resume its stream) and is
    // metered when it completes.
    let init = mesh.assistant.http(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-H",
        accept,
        "--data-binary",
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"curl","version":"1"}}}"#,
        MCP_URL,
    ]);
    let session = init
        .header("mcp-session-id")
        .unwrap_or_else(|| panic!("no session: {init:?}"))
        .to_string();
    let session_headers = [
        format!("mcp-session-id: {session}"),
        "mcp-protocol-version: 2025-11-25".to_string(),
    ];
    let initialized = mesh.assistant.http(&[
        "-X",
        "POST",
        "-H",
        &session_headers[0],
        "-H",
        &session_headers[1],
        "-H",
        "content-type: application/json",
        "-H",
        accept,
        "--data-binary",
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        MCP_URL,
    ]);
    assert_eq!(initialized.status, 202, "{initialized:?}");
    impatient(
        &session_headers,
        &slow_call(json!({"progressToken": "p-2"})),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while usage_calls(&mesh.node, "slow_count", "ok") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the session's call was not completed: {}",
            mesh.agent.describe(20)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(mesh.servers[0].calls().len(), 2);
}
