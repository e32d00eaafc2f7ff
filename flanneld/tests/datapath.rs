//! Root tests: flanneld in a node namespace against a real etcd, checked
//! through etcd and `ip -j` / `bridge -j` the way a user would.

mod common;

use std::time::Duration;

use common::*;
use harness::{try_wait_until, wait_until, ClusterOpts, Node};

const PEER_SUBNET: &str = "10.244.200.0/24";
const PEER_MAC: &str = "02:aa:bb:cc:dd:01";
const PEER_IP: &str = "192.0.2.99";

/// The peer lease of `PEER_SUBNET` with this MAC and public IP has its
/// neighbour, FDB entry and route in `node`.
fn programmed(node: &Node, mac: &str, ip: &str) -> bool {
    peer_entries(node, PEER_SUBNET, mac, ip) == (true, true, true)
}

/// Waits up to `timeout` for the peer lease (`PEER_MAC`, `PEER_IP`) to be
/// programmed; panics naming `what` with the entries present and
/// flanneld's log.
fn assert_programmed_within(node: &Node, timeout: Duration, what: &str) {
    let done = try_wait_until(timeout, || programmed(node, PEER_MAC, PEER_IP));
    assert!(
        done.is_some(),
        "{what}: not all in place within {timeout:?}: {:?}\n{}",
        peer_entries(node, PEER_SUBNET, PEER_MAC, PEER_IP),
        node.flanneld_log()
    );
}

#[test]
fn lease_is_flannels_json_key_and_ttl() {
    harness::require_root!();
    let cluster = one_node(ClusterOpts::default());
    let node = cluster.node(0);
    let subnet = node.subnet();
    let (value, lease) = cluster
        .etcd()
        .get_with_lease(&lease_key(&subnet))
        .expect("lease key exists");
    let mac = link_mac(node, &node.vxlan_dev());
    assert_eq!(value, lease_json(&node.ip().to_string(), 1, &mac));
    assert_ne!(lease, 0, "the key is attached to an etcd lease");
    let ttl = cluster.etcd().lease_ttl(lease).expect("lease alive");
    assert!((86_000..=86_400).contains(&ttl), "TTL {ttl}");
    // The device: flannel.1, nolearning, port 8472, MTU 1500-50, .0/32.
    let link = &node.netns().ip_json(&["-d", "link", "show", "flannel.1"])[0];
    let vx = &link["linkinfo"]["info_data"];
    assert_eq!(
        (
            vx["id"].as_u64(),
            vx["port"].as_u64(),
            vx["learning"].as_bool()
        ),
        (Some(1), Some(8472), Some(false))
    );
    assert_eq!(vx["local"], node.ip().to_string());
    assert_eq!(link["mtu"], 1450);
    let addrs = node.netns().ip_json(&["-4", "addr", "show", "flannel.1"]);
    let gw = subnet.split('/').next().unwrap();
    assert_eq!(addrs[0]["addr_info"][0]["local"], gw);
    assert_eq!(addrs[0]["addr_info"][0]["prefixlen"], 32);
}

#[test]
fn peer_lease_programs_three_entries_and_removal_deletes_them() {
    harness::require_root!();
    let cluster = one_node(ClusterOpts::default());
    let node = cluster.node(0);
    let key = lease_key(PEER_SUBNET);
    cluster.etcd().put(&key, &lease_json(PEER_IP, 1, PEER_MAC));
    assert_programmed_within(node, Duration::from_secs(5), "peer lease");
    wait_until(
        Duration::from_secs(2),
        "flanneld_peers_programmed 1",
        || node.metric("flanneld_peers_programmed") == 1.0,
    );
    // The route goes through a nexthop object of flanneld's.
    let nh = route_nexthop(node, PEER_SUBNET).expect("route through a nexthop");
    assert_eq!(
        (&nh["gateway"], &nh["dev"], &nh["protocol"]),
        (
            &"10.244.200.0".into(),
            &"flannel.1".into(),
            &NEXTHOP_PROTO.into()
        ),
        "{nh}"
    );
    assert!(has_flag(&nh, "onlink"), "{nh}");

    // A new MAC and public IP replace the old entries.
    let (mac2, ip2) = ("02:aa:bb:cc:dd:02", "192.0.2.98");
    cluster.etcd().put(&key, &lease_json(ip2, 1, mac2));
    let moved = try_wait_until(Duration::from_secs(5), || {
        programmed(node, mac2, ip2) && !peer_entries(node, PEER_SUBNET, PEER_MAC, PEER_IP).1
    });
    assert!(
        moved.is_some(),
        "{:?}",
        node.netns()
            .bridge_json(&["fdb", "show", "dev", "flannel.1"])
    );

    cluster.etcd().delete(&key);
    let gone = try_wait_until(Duration::from_secs(5), || {
        peer_entries(node, PEER_SUBNET, mac2, ip2) == (false, false, false)
            && our_nexthops(node).is_empty()
    });
    assert!(
        gone.is_some(),
        "{:?}",
        peer_entries(node, PEER_SUBNET, mac2, ip2)
    );
}

#[test]
fn entries_deleted_by_hand_come_back_within_a_second() {
    harness::require_root!();
    let cluster = one_node(ClusterOpts::default());
    let node = cluster.node(0);
    cluster
        .etcd()
        .put(&lease_key(PEER_SUBNET), &lease_json(PEER_IP, 1, PEER_MAC));
    assert_programmed_within(node, Duration::from_secs(5), "peer lease");
    let ns = node.netns();
    let cases: [(&str, Vec<&str>); 4] = [
        ("route", vec!["ip", "route", "del", PEER_SUBNET]),
        // The kernel deletes the route with it, silently.
        (
            "nexthop",
            vec!["ip", "nexthop", "flush", "protocol", NEXTHOP_PROTO],
        ),
        (
            "neighbour",
            vec!["ip", "neigh", "del", "10.244.200.0", "dev", "flannel.1"],
        ),
        (
            "fdb",
            vec![
                "bridge",
                "fdb",
                "del",
                PEER_MAC,
                "dev",
                "flannel.1",
                "dst",
                PEER_IP,
                "self",
            ],
        ),
    ];
    for (what, cmd) in cases {
        ns.sh(&cmd);
        assert_programmed_within(
            node,
            Duration::from_secs(1),
            &format!("{what} deleted by hand"),
        );
    }
    // The whole device.
    ns.sh(&["ip", "link", "del", "flannel.1"]);
    let back = try_wait_until(Duration::from_secs(2), || {
        ns.exec(&["ip", "link", "show", "dev", "flannel.1"])
            .status
            .success()
            && programmed(node, PEER_MAC, PEER_IP)
    });
    assert!(
        back.is_some(),
        "device not rebuilt: {}",
        node.flanneld_log()
    );
}

#[test]
fn malformed_and_foreign_leases_are_skipped() {
    harness::require_root!();
    let cluster = one_node(ClusterOpts::default());
    let node = cluster.node(0);
    let etcd = cluster.etcd();
    etcd.put(&lease_key("10.244.201.0/24"), "{not json");
    etcd.put(
        &lease_key("10.244.202.0/24"),
        &lease_json("192.0.2.97", 7, "02:aa:bb:cc:dd:07"),
    );
    etcd.put(
        &format!("{PREFIX}/subnets/garbage"),
        &lease_json("192.0.2.96", 1, "02:aa:bb:cc:dd:06"),
    );
    etcd.put(&lease_key(PEER_SUBNET), &lease_json(PEER_IP, 1, PEER_MAC));
    assert_programmed_within(node, Duration::from_secs(5), "the good lease");
    let routes = node.netns().ip_json(&["route", "show", "dev", "flannel.1"]);
    assert_eq!(
        arr(&routes).len(),
        1,
        "only the good lease is routed: {routes}"
    );
    let log = node.flanneld_log();
    assert!(
        log.contains("skipping lease /coreos.com/network/subnets/10.244.201.0-24: malformed lease"),
        "{log}"
    );
    assert!(log.contains("10.244.202.0-24: lease is for VNI 7"), "{log}");
    assert!(node.metric("flanneld_leases_skipped_total") >= 3.0);
    assert_eq!(node.readyz(), Some(200));
}

#[test]
fn hundreds_of_leases_in_transactions_are_all_programmed() {
    harness::require_root!();
    // Room for 400 peers of /24 (the node takes one of 10.240.1-100.0/24).
    let cluster = one_node(ClusterOpts::default().network("10.240.0.0/12"));
    let node = cluster.node(0);
    // 4 transactions of 100 puts: each arrives as one watch response
    // carrying 100 events at one revision.
    for t in 0..4u32 {
        let puts: Vec<(String, String)> = (0..100u32)
            .map(|i| {
                let n = t * 100 + i;
                let first = u32::from(std::net::Ipv4Addr::new(10, 244, 1, 0));
                let subnet = std::net::Ipv4Addr::from(first + n * 256);
                let key = format!("{PREFIX}/subnets/{subnet}-24");
                let value = lease_json(
                    &format!("198.18.{}.{}", n / 200, n % 200 + 1),
                    1,
                    &format!("02:00:00:01:{:02x}:{:02x}", n >> 8, n & 255),
                );
                (key, value)
            })
            .collect();
        cluster.etcd().put_all(&puts);
    }
    let count = || arr(&node.netns().ip_json(&["route", "show", "dev", "flannel.1"])).len();
    let all = try_wait_until(Duration::from_secs(10), || count() >= 399);
    assert!(all.is_some(), "{} routes", count());
    wait_until(
        Duration::from_secs(2),
        "flanneld_peers_programmed 399",
        || node.metric("flanneld_peers_programmed") >= 399.0,
    );
}
