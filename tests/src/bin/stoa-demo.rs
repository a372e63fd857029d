//! `make demo`: one simulated node on this machine, the controller and the agent in
//! standalone mode with the policy in `examples/policy/`, and a client pod whose
//! traffic to a governed API is redirected through the node proxy while its other
//! traffic is left alone. Everything it creates is removed before it exits.
use std::{path::PathBuf, time::Duration};

use stoa_tests::{OutputExt, Pod, SimNode, PROXY_IP, PROXY_PORT};

const GOVERNED: &str = "10.96.0.10";
const NOT_GOVERNED: &str = "10.96.0.11";

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("stoa-demo: needs root (network namespaces, cgroups and eBPF)");
        std::process::exit(2);
    }
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/policy");
    let examples = examples.canonicalize().unwrap_or(examples);

    println!("STOA demo: one simulated node\n");
    // The example policy names the workload's cgroup `stoa.slice/billing-agent`.
    let node = std::sync::Arc::new(SimNode::with_cgroup_parent("stoa.slice"));
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
        "  pod billing-agent  {} in cgroup {}",
        client.ip(),
        client.cgroup_rel()
    );
    println!(
        "  pod orders         {} serving {GOVERNED}:80 and {NOT_GOVERNED}:80",
        orders.ip()
    );

    node.start_controller(&examples);
    println!("  stoa-controller    policy from {}", examples.display());
    node.start_agent(&[]);
    let version = node.wait_for_snapshot_above(0, Duration::from_secs(20));
    println!(
        "  stoa-agent         applied snapshot {version}; eBPF connect4 + sockops on the billing-agent cgroup; proxy on {PROXY_IP}:{PROXY_PORT}\n"
    );

    request(
        &node,
        &client,
        &orders,
        &format!("http://{GOVERNED}/orders?status=open"),
        "ApiContract shop/orders-api governs this address",
    );
    request(
        &node,
        &client,
        &orders,
        &format!("http://{NOT_GOVERNED}/health"),
        "no contract names this address",
    );

    node.wait_for_agent_metric("stoa_datapath_redirects_total", 1.0, Duration::from_secs(5));
    println!("agent metrics (Prometheus, /metrics):");
    for name in [
        "stoa_datapath_workload_connects_total",
        "stoa_datapath_redirects_total",
        "stoa_proxy_connections_total{verdict=\"accepted\"}",
        "stoa_proxy_http_requests_total{outcome=\"forwarded\"}",
    ] {
        println!("  {name} {}", node.agent_metric(name));
    }
    node.cleanup();
    println!(
        "\ncleaned up: processes stopped, network namespaces, cgroups and pinned maps removed."
    );
}

fn request(node: &SimNode, client: &Pod, orders: &Pod, url: &str, why: &str) {
    let accepted = r#"stoa_proxy_connections_total{verdict="accepted"}"#;
    let before = node.agent_metric(accepted);
    println!("billing-agent → GET {url}   ({why})");
    let out = client.curl(&["-w", "\n%{http_code}", url]);
    out.assert_success();
    let text = out.stdout_str();
    let (body, status) = text.rsplit_once('\n').unwrap_or((&text, "?"));
    let answer: serde_json::Value = serde_json::from_str(body).expect("backend JSON");
    let peer = answer["peer"].as_str().unwrap_or("?");
    let through_proxy = node.agent_metric(accepted) > before;
    println!(
        "  {status} from backend {}: it saw {} {} from {peer}",
        answer["backend"], answer["method"], answer["path"]
    );
    if through_proxy {
        println!(
            "  REDIRECTED: the kernel rewrote connect() to the node proxy, which looked up the\n  original destination and the caller's identity and forwarded the request; the\n  backend sees the node ({}) as its peer, not the pod ({}).\n",
            orders.gateway(),
            client.ip()
        );
    } else {
        println!(
            "  NOT REDIRECTED: the address is not governed, so the connection went straight\n  from the pod ({}) to the backend; the proxy never saw it.\n",
            client.ip()
        );
    }
}
