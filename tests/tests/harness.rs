//! Self-test of the simulated node: routing, cgroup placement, isolation of parallel
//! nodes and cleanup (also on panic). Needs root; skips (or fails under CI=true) without.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use stoa_tests::{cgroup, OutputExt, SimNode};

/// What a node leaves on the machine, to check that it is gone afterwards.
struct Footprint {
    netns: Vec<PathBuf>,
    cgroups: Vec<PathBuf>,
    pin_path: PathBuf,
    temp_dir: PathBuf,
    pids: Vec<u32>,
}

impl Footprint {
    fn of(node: &SimNode, pods: &[&stoa_tests::Pod]) -> Self {
        let mut netns = vec![stoa_tests::netns::path(node.netns())];
        netns.extend(pods.iter().map(|p| stoa_tests::netns::path(p.netns())));
        let mut cgroups = vec![node.cgroup_path().to_path_buf()];
        cgroups.extend(pods.iter().map(|p| p.cgroup_path().to_path_buf()));
        Footprint {
            netns,
            cgroups,
            pin_path: node.pin_path().to_path_buf(),
            temp_dir: node.temp_dir().to_path_buf(),
            pids: node.processes().iter().map(|p| p.pid()).collect(),
        }
    }

    fn assert_present(&self) {
        for p in self.netns.iter().chain(&self.cgroups) {
            assert!(
                p.exists(),
                "{} should exist while the node lives",
                p.display()
            );
        }
        assert!(self.pin_path.exists() && self.temp_dir.exists());
    }

    fn assert_gone(&self) {
        for p in self
            .netns
            .iter()
            .chain(&self.cgroups)
            .chain([&self.pin_path, &self.temp_dir])
        {
            assert!(!p.exists(), "{} should be gone after drop", p.display());
        }
        for pid in &self.pids {
            assert!(!is_alive(*pid), "process {pid} should be gone after drop");
        }
    }
}

/// Whether `pid` runs; a zombie waiting for init to reap it (strays are re-parented
/// there) counts as gone.
fn is_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
    !matches!(state.and_then(|s| s.chars().next()), Some('Z' | 'X') | None)
}

/// One node: a client pod curls service 10.96.0.10:80, served by a backend pod through
/// the node's routing; the backend sees the client's pod address.
fn service_routing_on_a_fresh_node(tag: &str) {
    let node = SimNode::new();
    let client = node.add_pod("client");
    let server = node.add_pod("server");
    assert_eq!(client.ip().to_string(), "10.1.1.2");
    assert_eq!(server.ip().to_string(), "10.1.2.2");
    server.add_service_ip("10.96.0.10");
    server.spawn_backend(tag, "0.0.0.0:80");

    let out = client.curl(&["http://10.96.0.10:80/orders/42?tag=x"]);
    out.assert_success();
    let answer = out.json();
    assert_eq!(answer["backend"], tag, "{answer}");
    assert_eq!(answer["method"], "GET");
    assert_eq!(answer["path"], "/orders/42?tag=x");
    let peer: SocketAddr = answer["peer"].as_str().unwrap().parse().unwrap();
    assert_eq!(peer.ip().to_string(), "10.1.1.2", "{answer}");
    assert_eq!(answer["headers"]["host"], "10.96.0.10");
}

#[test]
fn two_nodes_at_once_route_service_traffic_between_pods() {
    if !stoa_tests::require_root() {
        return;
    }
    // Both nodes use the same addresses and interface names: only isolation lets both pass.
    std::thread::scope(|s| {
        let a = s.spawn(|| service_routing_on_a_fresh_node("orders-a"));
        let b = s.spawn(|| service_routing_on_a_fresh_node("orders-b"));
        a.join().expect("node a");
        b.join().expect("node b");
    });
}

#[test]
fn pod_process_lands_in_pod_cgroup_and_netns() {
    if !stoa_tests::require_root() {
        return;
    }
    let node = SimNode::new();
    let pod = node.add_pod("app");
    assert_eq!(
        pod.cgroup_rel(),
        format!("stoa-test-{}/app", node.id()),
        "relative to the cgroup root"
    );
    assert_eq!(pod.cgroup_path(), cgroup::root().join(pod.cgroup_rel()));
    assert_eq!(pod.cgroup_id(), pod.cgroup_path().metadata().unwrap().ino());

    let netns_ino = |path: PathBuf| std::fs::metadata(path).unwrap().ino();
    let pod_ns = netns_ino(stoa_tests::netns::path(pod.netns()));
    let node_ns = netns_ino(stoa_tests::netns::path(node.netns()));

    let inside = pod.spawn("sleep", pod.command("sleep").arg("30"));
    let cgroup_file = std::fs::read_to_string(format!("/proc/{}/cgroup", inside.pid())).unwrap();
    assert!(
        cgroup_file
            .lines()
            .any(|l| l == format!("0::/{}", pod.cgroup_rel())),
        "{cgroup_file}"
    );
    assert_eq!(pod.cgroup_procs(), vec![inside.pid()]);
    assert_eq!(
        netns_ino(format!("/proc/{}/ns/net", inside.pid()).into()),
        pod_ns
    );

    let outside = pod.spawn("sleep-free", pod.command_no_cgroup("sleep").arg("30"));
    assert_ne!(
        cgroup::of_pid(outside.pid()).as_deref(),
        Some(pod.cgroup_rel())
    );
    assert_eq!(
        netns_ino(format!("/proc/{}/ns/net", outside.pid()).into()),
        pod_ns
    );

    let on_node = node.spawn("sleep-node", node.command("sleep").arg("30"));
    let node_cgroup = cgroup::of_pid(on_node.pid()).unwrap();
    assert!(!node_cgroup.starts_with(&format!("stoa-test-{}", node.id())));
    assert_eq!(
        netns_ino(format!("/proc/{}/ns/net", on_node.pid()).into()),
        node_ns
    );

    // The node netns forwards and carries the proxy address.
    let fwd = node.run(&["cat", "/proc/sys/net/ipv4/ip_forward"]);
    assert_eq!(fwd.assert_success().stdout_str().trim(), "1");
    let lo = node.run(&["ip", "-4", "addr", "show", "dev", "lo"]);
    assert!(
        lo.stdout_str().contains("169.254.42.1/32"),
        "{}",
        lo.stdout_str()
    );

    // A dropped guard stops its process.
    let pid = inside.pid();
    drop(inside);
    assert!(!is_alive(pid));
}

#[test]
fn backend_modes_http2_and_tcp_echo() {
    if !stoa_tests::require_root() {
        return;
    }
    let node = SimNode::new();
    let client = node.add_pod("client");
    let server = node.add_pod("server");
    server.add_service_ip("10.96.0.20");
    server.spawn_backend_with("h2", "0.0.0.0:8080", &["--http2"]);
    server.spawn_backend_with("echo", "0.0.0.0:9000", &["--mode", "tcp-echo"]);

    let out = client.curl(&[
        "--http2-prior-knowledge",
        "-X",
        "POST",
        "-d",
        "hello",
        "http://10.96.0.20:8080/status/201",
        "-w",
        "\n%{http_code}",
    ]);
    let text = out.assert_success().stdout_str();
    let (json, code) = text.trim().rsplit_once('\n').unwrap();
    assert_eq!(code, "201");
    let answer: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(answer["version"], "HTTP/2.0");
    assert_eq!(answer["method"], "POST");
    assert_eq!(answer["body"], "hello");

    let echoed = client.in_netns(|| {
        let mut s = TcpStream::connect("10.96.0.20:9000").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).unwrap();
        buf
    });
    assert_eq!(&echoed, b"ping");
}

#[test]
fn drop_removes_namespaces_cgroups_pins_and_processes() {
    if !stoa_tests::require_root() {
        return;
    }
    let node = SimNode::new();
    let pod = node.add_pod("client");
    pod.spawn("sleep", pod.command("sleep").arg("60")).detach();
    // Stands in for the agent's pins.
    std::fs::create_dir_all(node.pin_path().join("maps")).expect("bpffs is mounted");
    let policy = node.write_policy("a.yaml", "kind: Workload\n");
    assert_eq!(std::fs::read_to_string(policy).unwrap(), "kind: Workload\n");
    let footprint = Footprint::of(&node, &[&pod]);
    footprint.assert_present();
    drop(pod);
    drop(node);
    footprint.assert_gone();
}

#[test]
fn cleanup_also_happens_when_the_test_body_panics() {
    if !stoa_tests::require_root() {
        return;
    }
    let mut footprint = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let node = SimNode::new();
        let pod = node.add_pod("doomed");
        pod.spawn("sleep", pod.command("sleep").arg("60")).detach();
        std::fs::create_dir_all(node.pin_path()).expect("bpffs is mounted");
        footprint = Some(Footprint::of(&node, &[&pod]));
        panic!("test body fails while the node is alive");
    }));
    assert!(result.is_err());
    footprint.expect("footprint recorded").assert_gone();
}

#[test]
fn stray_grandchildren_in_a_pod_cgroup_do_not_block_cleanup() {
    if !stoa_tests::require_root() {
        return;
    }
    let node = SimNode::new();
    let pod = node.add_pod("forker");
    // The shell's background child outlives the shell, which is all the guard knows.
    let shell = pod.spawn(
        "sh",
        pod.command("sh").args(["-c", "sleep 60 & exec sleep 60"]),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while pod.cgroup_procs().len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let stray: Vec<u32> = pod
        .cgroup_procs()
        .into_iter()
        .filter(|p| *p != shell.pid())
        .collect();
    assert_eq!(stray.len(), 1, "{:?}", pod.cgroup_procs());
    shell.detach();
    let mut footprint = Footprint::of(&node, &[&pod]);
    footprint.pids.extend(stray);
    drop(pod);
    drop(node);
    footprint.assert_gone();
}
