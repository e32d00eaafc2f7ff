//! Nodes joining and leaving a running cluster.

use std::time::{Duration, Instant};

use serde_json::Value;

use harness::{try_wait_until, Cluster, ClusterOpts, Node, Pod};

/// Pings `ip` from `pod` until answered or `deadline`; true when answered.
fn ping_until(pod: &Pod, ip: std::net::Ipv4Addr, deadline: Instant) -> bool {
    let ip = ip.to_string();
    let ping = || pod.exec(&["ping", "-n", "-q", "-c", "1", "-W", "0.2", &ip]);
    let timeout = deadline.saturating_duration_since(Instant::now());
    try_wait_until(timeout, || ping().status.success()).is_some()
}

#[test]
fn a_node_joining_later_is_reachable_from_all_pods_within_2s() {
    harness::require_root!();
    let mut c = Cluster::new(3, ClusterOpts::default());
    for i in 0..3 {
        for p in ["a", "b"] {
            c.node_mut(i).add_pod(&format!("n{}{p}", i + 1));
        }
    }
    let node4 = c.start_node(&[]);
    node4.wait_ready();
    // The clock runs from the moment node4 is ready to host pods.
    let ready = Instant::now();
    let target = node4.add_pod("n4a").ip();
    let deadline = ready + Duration::from_secs(2);
    let pods = c.pods();
    let results: Vec<(String, bool, Duration)> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .filter(|p| p.node() != "node4")
            .map(|p| {
                s.spawn(move || {
                    (
                        p.name().to_string(),
                        ping_until(p, target, deadline),
                        ready.elapsed(),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results.len(), 6);
    let slowest = results.iter().map(|r| r.2).max().unwrap();
    eprintln!("node4's pod reachable from every pod {slowest:?} after node4 was ready");
    let late: Vec<_> = results.iter().filter(|(_, ok, _)| !ok).collect();
    assert!(
        late.is_empty(),
        "not reachable within 2 s of node4 being ready: {results:?}"
    );
    // And the new node's pod reaches every old pod.
    let n4a = c.node(3).pod("n4a");
    for pod in c.pods().iter().filter(|p| p.node() != "node4") {
        assert!(n4a.ping(pod.ip()), "n4a -> {}", pod.name());
    }
}

/// The peer entries `node` has for a remote node: (route, fdb, neighbour).
fn peer_entries(node: &Node, subnet: &str, mac: &str) -> (bool, bool, bool) {
    let dev = node.vxlan_dev();
    let gw = subnet.split('/').next().unwrap();
    let route = node.route_dsts().iter().any(|d| d == subnet);
    let fdb = node.netns().bridge_json(&["fdb", "show", "dev", &dev]);
    let fdb = fdb.as_array().unwrap().iter().any(|e| e["mac"] == mac);
    let neigh = node.netns().ip_json(&["neigh", "show", "dev", &dev]);
    let neigh = neigh.as_array().unwrap().iter().any(|e| e["dst"] == gw);
    (route, fdb, neigh)
}

#[test]
fn graceful_leave_removes_the_node_everywhere_and_frees_its_subnet() {
    harness::require_root!();
    let opts = ClusterOpts::default().flanneld_arg("--graceful-leave");
    let mut c = Cluster::new(3, opts);
    let leaving = c.node(2);
    let subnet = leaving.subnet();
    let key = format!("{}/subnets/{}", c.etcd_prefix(), subnet.replace('/', "-"));
    let lease: Value = serde_json::from_str(&c.etcd().get(&key).expect("lease in etcd")).unwrap();
    let mac = lease["BackendData"]["VtepMAC"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(lease["PublicIP"], leaving.ip().to_string());
    let dev_mac = leaving
        .netns()
        .ip_json(&["link", "show", &leaving.vxlan_dev()]);
    assert_eq!(dev_mac[0]["address"], mac.as_str());
    for node in &c.nodes()[..2] {
        assert_eq!(
            peer_entries(node, &subnet, &mac),
            (true, true, true),
            "{}",
            node.name()
        );
    }

    let status = c.node_mut(2).stop_flanneld();
    assert!(status.success(), "flanneld exited with {status}");
    assert_eq!(c.etcd().get(&key), None, "lease still in etcd");
    let deadline = Instant::now() + Duration::from_secs(5);
    for node in &c.nodes()[..2] {
        let mut now = None;
        let left = deadline.saturating_duration_since(Instant::now());
        let gone = try_wait_until(left, || {
            now = Some(peer_entries(node, &subnet, &mac));
            now == Some((false, false, false))
        });
        assert!(
            gone.is_some(),
            "{} still has (route, fdb, neigh) = {now:?}",
            node.name()
        );
    }
    // The two remaining nodes still reach each other.
    c.wait_converged();
    let leases = c.leases();
    assert_eq!(leases.len(), 2, "{leases:?}");

    // Both leaving at the same moment: both subnets are freed.
    c.nodes().iter().for_each(Node::signal_flanneld);
    for node in &mut c.nodes_mut()[..2] {
        let status = node.stop_flanneld();
        assert!(
            status.success(),
            "{}: flanneld exited with {status}",
            node.name()
        );
    }
    assert_eq!(c.leases(), Vec::new());
}
