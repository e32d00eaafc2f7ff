//! Pods on three nodes talk to each other, to nodes, and share their
//! namespace's address between processes.

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use harness::{network_of, ping_matrix, split_cidr, wait_until, Cluster, ClusterOpts, Proc};

/// Three nodes with pods `n1a n1b n2a n2b n3a n3b`.
fn cluster_3x2() -> Cluster {
    let mut c = Cluster::new(3, ClusterOpts::default());
    for i in 0..3 {
        for p in ["a", "b"] {
            c.node_mut(i).add_pod(&format!("n{}{p}", i + 1));
        }
    }
    c
}

#[test]
fn full_ping_matrix_across_three_nodes() {
    harness::require_root!();
    let c = cluster_3x2();
    // Every node leased its own /24 of the network; every pod is in it.
    let subnets: HashSet<String> = c.nodes().iter().map(|n| n.subnet()).collect();
    assert_eq!(subnets.len(), 3, "{subnets:?}");
    for node in c.nodes() {
        let (net, len) = split_cidr(&node.subnet()).unwrap();
        assert_eq!(len, 24);
        assert_eq!(network_of(net, 16).to_string(), "10.244.0.0");
        for pod in node.pods() {
            assert_eq!(network_of(pod.ip(), 24), net, "{} {}", pod.name(), pod.ip());
        }
    }
    let pods = c.pods();
    let ips: HashSet<_> = pods.iter().map(|p| p.ip()).collect();
    assert_eq!(ips.len(), 6);

    let matrix = ping_matrix(&pods);
    assert_eq!(matrix.len(), 30);
    let failed: Vec<_> = matrix.iter().filter(|r| !r.ok).collect();
    assert!(failed.is_empty(), "unanswered pings: {failed:#?}");
}

#[test]
fn nodes_reach_pods_on_every_node() {
    harness::require_root!();
    let c = cluster_3x2();
    let mut failed = Vec::new();
    for node in c.nodes() {
        for pod in c.pods() {
            if !node.ping(pod.ip()) {
                failed.push(format!("{} -> {} ({})", node.name(), pod.name(), pod.ip()));
            }
        }
    }
    assert!(failed.is_empty(), "unanswered: {failed:?}");
}

/// Starts `busybox nc` answering `pong` to every connection on `port`.
fn pong_server(pod: &harness::Pod, port: &str) -> Proc {
    let mut cmd = pod.cmd("busybox");
    // -ll: keep listening, a fresh `echo pong` per connection.
    cmd.args(["nc", "-ll", "-p", port, "-e", "busybox", "echo", "pong"]);
    Proc::spawn(&mut cmd)
}

/// Connects from the pod's namespace; returns what the server sent.
fn fetch(pod: &harness::Pod, ip: &str, port: &str) -> String {
    let out = pod.exec(&["busybox", "nc", "-w", "2", ip, port]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn two_processes_in_one_pod_share_its_address() {
    harness::require_root!();
    let mut c = Cluster::new(2, ClusterOpts::default());
    c.node_mut(0).add_pod("web");
    c.node_mut(1).add_pod("client");
    let web = c.node(0).pod("web");
    let ip = web.ip().to_string();
    let mut server = pong_server(web, "7000");

    // The server process lives in the pod's namespace.
    let ns_of =
        |path: String| std::fs::metadata(path).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    let pod_ns = ns_of(web.netns().path().display().to_string()).unwrap();
    // `ip netns exec` execs busybox in place; its namespace is the pod's.
    wait_until(
        Duration::from_secs(5),
        "the server in the pod netns",
        || {
            assert!(server.is_running(), "server exited: {}", server.log());
            ns_of(format!("/proc/{}/ns/net", server.pid())).ok() == Some(pod_ns)
        },
    );

    // A second process in the same pod reaches the first on the pod's IP and
    // on localhost; a pod on another node reaches it on the pod's IP.
    wait_until(Duration::from_secs(5), "the server to answer", || {
        fetch(web, &ip, "7000") == "pong"
    });
    assert_eq!(fetch(web, "127.0.0.1", "7000"), "pong");
    assert_eq!(fetch(c.node(1).pod("client"), &ip, "7000"), "pong");
    // Both processes see one eth0 carrying the pod's address.
    let addrs = web.netns().ip_json(&["-4", "addr", "show", "eth0"]);
    assert_eq!(addrs[0]["addr_info"][0]["local"], ip.as_str());
    let via_pid = Command::new("nsenter")
        .arg(format!("--net=/proc/{}/ns/net", server.pid()))
        .args(["ip", "-4", "-o", "addr", "show", "eth0"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&via_pid.stdout).contains(&format!("inet {ip}/24")));
    assert!(server.is_running());
}
