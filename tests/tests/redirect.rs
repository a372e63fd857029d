//! Transparent redirect from a pod to the node proxy, end to end: real kernel
//! programs on the pod's cgroup, real sockets across network namespaces, the real
//! controller and agent binaries.
use std::time::Duration;

use stoa_tests::{OutputExt, Pod, ProcHandle, SimNode};

const ORDERS_IP: &str = "10.96.0.10";
const UNGOVERNED_IP: &str = "10.96.0.11";
const ECHO_IP: &str = "10.96.0.20";

fn workload_yaml(name: &str, pod: &Pod) -> String {
    format!(
        "apiVersion: gostoa.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: {name}\n  namespace: shop\nspec:\n  cgroup: {}\n  serviceAccount: {name}\n",
        pod.cgroup_rel()
    )
}

fn contract_yaml(name: &str, protocol: &str, address: &str) -> String {
    format!(
        "apiVersion: gostoa.dev/v1alpha1\nkind: ApiContract\nmetadata:\n  name: {name}\n  namespace: shop\nspec:\n  protocol: {protocol}\n  address: \"{address}\"\n"
    )
}

/// A node with a client pod (a listed workload) and a server pod that serves the
/// governed address 10.96.0.10:80, the ungoverned 10.96.0.11:80 and an echo on
/// 10.96.0.20:9000.
struct Scenario {
    node: SimNode,
    client: Pod,
    server: Pod,
    orders_backend: ProcHandle,
    agent: ProcHandle,
}

fn scenario(with_orders_contract: bool) -> Scenario {
    let node = SimNode::new();
    let client = node.add_pod("client");
    let server = node.add_pod("server");
    for ip in [ORDERS_IP, UNGOVERNED_IP, ECHO_IP] {
        server.add_service_ip(ip);
    }
    let orders_backend = server.spawn_backend("orders", "0.0.0.0:80");
    server.spawn_backend_with("echo", "0.0.0.0:9000", &["--mode", "tcp-echo"]);
    node.write_policy("workloads.yaml", &workload_yaml("client", &client));
    if with_orders_contract {
        node.write_policy(
            "orders.yaml",
            &contract_yaml("orders-api", "http", &format!("{ORDERS_IP}:80")),
        );
    }
    node.start_controller(&node.policy_dir());
    let agent = node.start_agent(&[]);
    let scenario = Scenario {
        node,
        client,
        server,
        orders_backend,
        agent,
    };
    scenario.wait_for_version_above(0);
    scenario
}

impl Scenario {
    fn metric(&self, prefix: &str) -> f64 {
        self.node.agent_metric(prefix)
    }

    fn applied_version(&self) -> u64 {
        self.node.agent_snapshot_version()
    }

    fn wait_for_version_above(&self, version: u64) -> u64 {
        self.node
            .wait_for_snapshot_above(version, Duration::from_secs(20))
    }

    /// The backend's JSON answer to a request from the client pod.
    fn get_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.client.curl(args);
        assert!(
            out.status.success(),
            "curl {args:?} failed: {}\n{}",
            out.stderr_str(),
            self.agent.describe(20)
        );
        serde_json::from_str(&out.stdout_str()).unwrap_or_else(|err| {
            panic!("backend answer is not JSON ({err}): {}", out.stdout_str())
        })
    }

    fn accepted(&self) -> f64 {
        self.metric("stoa_proxy_connections_total{verdict=\"accepted\"}")
    }
}

fn peer_ip(answer: &serde_json::Value) -> String {
    let peer = answer["peer"].as_str().expect("peer in answer");
    peer.rsplit_once(':').expect("ip:port").0.to_string()
}

#[test]
fn governed_http_service_is_served_through_the_proxy() {
    if !stoa_tests::require_root() {
        return;
    }
    let s = scenario(true);
    let answer = s.get_json(&[
        "-X",
        "PUT",
        "-d",
        "qty=2",
        &format!("http://{ORDERS_IP}/orders/42?expand=items"),
    ]);
    assert_eq!(answer["method"], "PUT");
    assert_eq!(answer["path"], "/orders/42?expand=items");
    assert_eq!(answer["body"], "qty=2");
    // The proxy, in the node netns, connects from the node side of the server's veth;
    // a direct connection would come from the client pod's own address.
    assert_eq!(peer_ip(&answer), s.server.gateway().to_string(), "{answer}");
    assert_ne!(peer_ip(&answer), s.client.ip().to_string());
    assert_eq!(s.accepted(), 1.0);
    s.node
        .wait_for_agent_metric("stoa_datapath_redirects_total", 1.0, Duration::from_secs(5));

    // Two requests on one keep-alive connection: one redirect, both served.
    let out = s.client.curl(&[
        &format!("http://{ORDERS_IP}/a"),
        &format!("http://{ORDERS_IP}/b"),
    ]);
    assert!(out.status.success(), "{}", out.stderr_str());
    let text = out.stdout_str();
    assert!(text.contains("\"/a\"") && text.contains("\"/b\""), "{text}");
    assert_eq!(s.accepted(), 2.0);
}

#[test]
fn tcp_service_bytes_are_spliced_through_the_proxy() {
    if !stoa_tests::require_root() {
        return;
    }
    let s = scenario(false);
    let version = s.applied_version();
    s.node.write_policy(
        "echo.yaml",
        &contract_yaml("echo", "tcp", &format!("{ECHO_IP}:9000")),
    );
    s.wait_for_version_above(version);
    let script = format!("exec 3<>/dev/tcp/{ECHO_IP}/9000; printf 'ping-stoa' >&3; head -c 9 <&3");
    let out = s.client.run(&["bash", "-c", &script]);
    assert!(out.status.success(), "{}", out.stderr_str());
    assert_eq!(out.stdout_str(), "ping-stoa");
    assert_eq!(s.accepted(), 1.0);
}

#[test]
fn destination_that_is_not_governed_is_not_redirected() {
    if !stoa_tests::require_root() {
        return;
    }
    let s = scenario(true);
    let answer = s.get_json(&[&format!("http://{UNGOVERNED_IP}/direct")]);
    assert_eq!(answer["path"], "/direct");
    assert_eq!(peer_ip(&answer), s.client.ip().to_string(), "{answer}");
    assert_eq!(
        s.accepted(),
        0.0,
        "the proxy must not see ungoverned traffic"
    );
    assert_eq!(s.metric("stoa_datapath_redirects_total"), 0.0);
}

#[test]
fn workload_that_is_not_listed_is_not_redirected() {
    if !stoa_tests::require_root() {
        return;
    }
    let s = scenario(true);
    // Same pod netns, but a process outside the listed cgroup.
    let out = s
        .client
        .curl_no_cgroup(&[&format!("http://{ORDERS_IP}/unlisted")]);
    assert!(out.status.success(), "{}", out.stderr_str());
    let answer: serde_json::Value = serde_json::from_str(&out.stdout_str()).unwrap();
    assert_eq!(peer_ip(&answer), s.client.ip().to_string(), "{answer}");
    // And a whole pod that no Workload lists.
    let other = s.node.add_pod("other");
    let out = other.curl(&[&format!("http://{ORDERS_IP}/other")]);
    assert!(out.status.success(), "{}", out.stderr_str());
    let answer: serde_json::Value = serde_json::from_str(&out.stdout_str()).unwrap();
    assert_eq!(peer_ip(&answer), other.ip().to_string(), "{answer}");
    assert_eq!(s.accepted(), 0.0);
}

#[test]
fn direct_connection_to_the_proxy_is_refused() {
    if !stoa_tests::require_root() {
        return;
    }
    let s = scenario(true);
    let proxy = format!(
        "http://{}:{}/orders",
        stoa_tests::PROXY_IP,
        stoa_tests::PROXY_PORT
    );
    let refused = || s.metric("stoa_proxy_connections_total{verdict=\"refused\"}");
    let refused_before = refused();
    // From the listed workload itself, and from the node: no redirect record either way.
    let from_pod = s.client.curl(&[&proxy]);
    assert!(
        !from_pod.status.success(),
        "proxy answered: {}",
        from_pod.stdout_str()
    );
    let from_node = s.node.curl(&[&proxy]);
    assert!(
        !from_node.status.success(),
        "proxy answered: {}",
        from_node.stdout_str()
    );
    assert_eq!(refused() - refused_before, 2.0);
    assert_eq!(s.accepted(), 0.0);
    assert!(
        !s.orders_backend.stdout().contains("/orders"),
        "a refused connection reached the backend"
    );
}

#[test]
fn contract_changes_take_effect_without_restarts() {
    if !stoa_tests::require_root() {
        return;
    }
    let s = scenario(false);
    let agent_pid = s.agent.pid();
    let url = format!("http://{ORDERS_IP}/orders");

    let answer = s.get_json(&[&url]);
    assert_eq!(
        peer_ip(&answer),
        s.client.ip().to_string(),
        "not governed yet"
    );

    let version = s.applied_version();
    s.node.write_policy(
        "orders.yaml",
        &contract_yaml("orders-api", "http", &format!("{ORDERS_IP}:80")),
    );
    let version = s.wait_for_version_above(version);
    let answer = s.get_json(&[&url]);
    assert_eq!(
        peer_ip(&answer),
        s.server.gateway().to_string(),
        "now governed"
    );

    // An invalid change is rejected by the controller; the last good policy stays.
    s.node.write_policy(
        "broken.yaml",
        "apiVersion: gostoa.dev/v1alpha1\nkind: ApiContract\nmetadata: {name: broken, namespace: shop}\nspec: {protocol: http, address: \"10.96.0.99\", colour: red}\n",
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        s.applied_version(),
        version,
        "an invalid folder must not produce a snapshot"
    );
    let answer = s.get_json(&[&url]);
    assert_eq!(
        peer_ip(&answer),
        s.server.gateway().to_string(),
        "still governed"
    );
    s.node.remove_policy("broken.yaml");

    s.node.remove_policy("orders.yaml");
    s.wait_for_version_above(version);
    let answer = s.get_json(&[&url]);
    assert_eq!(
        peer_ip(&answer),
        s.client.ip().to_string(),
        "no longer governed"
    );
    assert_eq!(s.agent.pid(), agent_pid);
    assert!(s.agent.is_running());
}

#[test]
fn sigterm_detaches_and_traffic_flows_directly() {
    if !stoa_tests::require_root() {
        return;
    }
    let s = scenario(true);
    let url = format!("http://{ORDERS_IP}/orders");
    assert_eq!(
        peer_ip(&s.get_json(&[&url])),
        s.server.gateway().to_string()
    );
    let status = s.agent.terminate(Duration::from_secs(5));
    assert!(
        status.success(),
        "agent exit: {status:?}\n{}",
        s.agent.describe(20)
    );
    assert!(
        s.agent.stderr().contains("detached"),
        "{}",
        s.agent.describe(20)
    );
    assert_eq!(peer_ip(&s.get_json(&[&url])), s.client.ip().to_string());
}

#[test]
fn agent_started_before_the_controller_retries_and_then_applies() {
    if !stoa_tests::require_root() {
        return;
    }
    let node = SimNode::new();
    let client = node.add_pod("client");
    let server = node.add_pod("server");
    server.add_service_ip(ORDERS_IP);
    server.spawn_backend("orders", "0.0.0.0:80");
    node.write_policy("workloads.yaml", &workload_yaml("client", &client));
    node.write_policy(
        "orders.yaml",
        &contract_yaml("orders-api", "http", &format!("{ORDERS_IP}:80")),
    );
    let agent = node.start_agent(&[]);
    assert!(
        agent.wait_for_output("controller unreachable", Duration::from_secs(10)),
        "{}",
        agent.describe(20)
    );
    assert!(
        agent.stderr().contains("retrying in"),
        "{}",
        agent.describe(20)
    );
    node.start_controller(&node.policy_dir());
    node.wait_for_snapshot_above(0, Duration::from_secs(20));
    let out = client.curl(&[&format!("http://{ORDERS_IP}/late")]);
    let answer = out.assert_success().json();
    assert_eq!(peer_ip(&answer), server.gateway().to_string(), "{answer}");
}

#[test]
fn snapshot_the_agent_cannot_apply_is_rejected_and_the_previous_state_kept() {
    if !stoa_tests::require_root() {
        return;
    }
    let s = scenario(true);
    let version = s.applied_version();
    // Valid for the controller, but the cgroup does not exist on this node.
    let parent = s
        .client
        .cgroup_rel()
        .rsplit_once('/')
        .unwrap()
        .0
        .to_string();
    s.node.write_policy(
        "ghost.yaml",
        &format!(
            "apiVersion: gostoa.dev/v1alpha1\nkind: Workload\nmetadata: {{name: ghost, namespace: shop}}\nspec: {{cgroup: {parent}/ghost}}\n"
        ),
    );
    assert!(
        s.agent
            .wait_for_output("cannot apply snapshot", Duration::from_secs(10)),
        "{}",
        s.agent.describe(20)
    );
    assert!(
        s.agent.stderr().contains("ghost"),
        "{}",
        s.agent.describe(20)
    );
    assert_eq!(s.metric("stoa_agent_snapshot_rejections_total"), 1.0);
    assert_eq!(s.applied_version(), version);
    let answer = s.get_json(&[&format!("http://{ORDERS_IP}/still")]);
    assert_eq!(peer_ip(&answer), s.server.gateway().to_string(), "{answer}");
}

fn pinned_links(node: &SimNode) -> usize {
    std::fs::read_dir(node.pin_path().join("links"))
        .map(|entries| entries.count())
        .unwrap_or(0)
}

#[test]
fn a_crashed_agent_keeps_enforcing_and_its_successor_takes_over() {
    if !stoa_tests::require_root() {
        return;
    }
    let s = scenario(true);
    let url = |path: &str| format!("http://{ORDERS_IP}{path}");
    assert_eq!(
        peer_ip(&s.get_json(&[&url("/before")])),
        s.server.gateway().to_string()
    );
    assert_eq!(
        pinned_links(&s.node),
        2,
        "connect4 + sockops for the client cgroup"
    );

    s.agent.kill();
    // The pinned programs still redirect: with no proxy the connection is refused
    // instead of reaching the backend ungoverned.
    let out = s.client.curl(&[&url("/while-down")]);
    assert!(!out.status.success(), "{}", out.stdout_str());
    assert!(!s.orders_backend.stdout().contains("/while-down"));
    assert_eq!(pinned_links(&s.node), 2);

    let successor = s.node.start_agent(&[]);
    s.node.wait_for_snapshot_above(0, Duration::from_secs(20));
    assert!(
        successor.stderr().contains("still attached"),
        "{}",
        successor.describe(20)
    );
    assert_eq!(
        peer_ip(&s.get_json(&[&url("/after")])),
        s.server.gateway().to_string()
    );
    assert_eq!(pinned_links(&s.node), 2, "replaced, not duplicated");

    let status = successor.terminate(Duration::from_secs(5));
    assert!(status.success());
    assert_eq!(pinned_links(&s.node), 0);
    assert_eq!(
        peer_ip(&s.get_json(&[&url("/gone")])),
        s.client.ip().to_string()
    );
}
