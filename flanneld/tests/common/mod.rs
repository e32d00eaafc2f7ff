//! Helpers for flanneld's root tests: one node of a harness cluster, and
//! what a user would look at on it (`ip -j`, `bridge -j`, etcd).

#![allow(dead_code)]

use std::process::Output;
use std::time::Duration;

use harness::{try_wait_until, Cluster, ClusterOpts, Node};
use serde_json::Value;

pub const PREFIX: &str = "/coreos.com/network";

/// A one-node cluster (etcd on the underlay, flanneld in `node1`).
pub fn one_node(opts: ClusterOpts) -> Cluster {
    Cluster::new(1, opts)
}

pub fn lease_key(subnet: &str) -> String {
    format!("{PREFIX}/subnets/{}", subnet.replace('/', "-"))
}

pub fn lease_json(public_ip: &str, vni: u32, mac: &str) -> String {
    format!(
        r#"{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":{vni},"VtepMAC":"{mac}"}}}}"#
    )
}

/// Whether `node` has the neighbour, FDB entry and route for a peer.
pub fn peer_entries(node: &Node, subnet: &str, mac: &str, public_ip: &str) -> (bool, bool, bool) {
    let dev = node.vxlan_dev();
    let gw = subnet.split('/').next().unwrap().to_string();
    let ns = node.netns();
    // Deleted (and not yet rebuilt): nothing is programmed.
    if !ns
        .exec(&["ip", "link", "show", "dev", &dev])
        .status
        .success()
    {
        return (false, false, false);
    }
    let neigh = ns.ip_json(&["neigh", "show", "dev", &dev]);
    let has_neigh = arr(&neigh)
        .iter()
        .any(|n| n["dst"] == gw.as_str() && n["lladdr"] == mac && has_state(n, "PERMANENT"));
    let fdb = ns.bridge_json(&["fdb", "show", "dev", &dev]);
    let has_fdb = arr(&fdb)
        .iter()
        .any(|f| f["mac"] == mac && f["dst"] == public_ip && has_flag(f, "self"));
    let routes = ns.ip_json(&["route", "show", subnet]);
    let has_route = arr(&routes).iter().any(|r| {
        r["dst"] == subnet
            && r["gateway"] == gw.as_str()
            && r["dev"] == dev.as_str()
            && has_flag(r, "onlink")
    });
    (has_neigh, has_fdb, has_route)
}

/// flanneld's nexthop protocol, as `ip -j nexthop` shows it.
pub const NEXTHOP_PROTO: &str = "241";

/// The nexthop the peer route to `subnet` goes through (`ip -j nexthop`
/// output of its `nhid`), `None` for a plain route or no route.
pub fn route_nexthop(node: &Node, subnet: &str) -> Option<Value> {
    let ns = node.netns();
    let routes = ns.ip_json(&["route", "show", subnet]);
    let id = routes[0]["nhid"].as_u64()?;
    let nh = ns.ip_json(&["nexthop", "show", "id", &id.to_string()]);
    Some(nh[0].clone())
}

/// flanneld's nexthops on the node's VXLAN device.
pub fn our_nexthops(node: &Node) -> Vec<Value> {
    let dev = node.vxlan_dev();
    let all = node.netns().ip_json(&["nexthop", "show", "dev", &dev]);
    arr(&all)
        .into_iter()
        .filter(|n| n["protocol"] == NEXTHOP_PROTO)
        .collect()
}

pub fn arr(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

fn has_state(n: &Value, state: &str) -> bool {
    arr(&n["state"]).iter().any(|s| s == state)
}

pub fn has_flag(v: &Value, flag: &str) -> bool {
    arr(&v["flags"]).iter().any(|s| s == flag)
}

/// The MAC of `dev` in the node.
pub fn link_mac(node: &Node, dev: &str) -> String {
    let links = node.netns().ip_json(&["link", "show", dev]);
    links[0]["address"].as_str().unwrap().to_string()
}

pub fn link_index(node: &Node, dev: &str) -> u64 {
    let links = node.netns().ip_json(&["link", "show", dev]);
    links[0]["ifindex"].as_u64().unwrap()
}

/// Every node's lease is flannel's JSON, and every node has the other
/// nodes' neighbour, FDB entry and route.
pub fn assert_nodes_lease_and_program_each_other(c: &Cluster) {
    assert_eq!(c.leases().len(), c.nodes().len(), "{:?}", c.leases());
    for node in c.nodes() {
        for peer in c.nodes().iter().filter(|p| p.name() != node.name()) {
            let mac = link_mac(peer, &peer.vxlan_dev());
            let lease = c.etcd().get(&lease_key(&peer.subnet()));
            let expected = lease_json(&peer.ip().to_string(), 1, &mac);
            assert_eq!(lease.as_deref(), Some(expected.as_str()));
            let entries = peer_entries(node, &peer.subnet(), &mac, &peer.ip().to_string());
            let route = format!("{} → {}", node.name(), peer.name());
            assert_eq!(entries, (true, true, true), "{route}");
        }
    }
}

/// A peer lease put now (after an etcd restart) is programmed on `node`
/// within 10 s, through a re-established watch.
pub fn assert_new_peer_programmed_after_restart(c: &Cluster, node: &Node) {
    let (subnet, mac, ip) = ("10.244.210.0/24", "02:aa:bb:cc:dd:10", "192.0.2.90");
    c.etcd().put(&lease_key(subnet), &lease_json(ip, 1, mac));
    let seen = try_wait_until(Duration::from_secs(10), || {
        peer_entries(node, subnet, mac, ip) == (true, true, true)
    });
    assert!(
        seen.is_some(),
        "peer added after the etcd restart not programmed:\n{}",
        node.flanneld_log()
    );
    assert!(node.metric("flanneld_watch_restarts_total") >= 1.0);
}

/// `flanneld status` run inside `node`, against its files and `etcd`.
pub fn status(node: &Node, etcd: &str) -> Output {
    let subnet_file = node.subnet_file().display().to_string();
    let ipam = node.dir().join("ipam").display().to_string();
    let mut cmd = node.netns().cmd(harness::bin_path("flanneld"));
    cmd.args([
        "status",
        "--etcd-endpoints",
        etcd,
        "--subnet-file",
        &subnet_file,
        "--ipam-dir",
        &ipam,
    ]);
    cmd.output().unwrap()
}
