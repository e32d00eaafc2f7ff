//! Root tests: whatever anyone who can write under the etcd prefix does
//! (a broken tool, another cluster's flanneld, an attacker), a node keeps
//! its subnet and its pods stay reachable. Each test makes the attack
//! against a real etcd with real nodes, then checks what a user would:
//! pings between pods on two nodes, the lease in etcd, subnet.env, and
//! the kernel's routes, neighbours and FDB entries.

mod common;

use std::time::Duration;

use common::*;
use harness::{try_wait_until, wait_until, Cluster, ClusterOpts, Monitor, Node};
use serde_json::Value;

const SECS_10: Duration = Duration::from_secs(10);

/// Two nodes with a pod each (`a` on node1, `b` on node2).
fn two_nodes_with_pods(opts: ClusterOpts) -> Cluster {
    let mut c = Cluster::new(2, opts);
    c.node_mut(0).add_pod("a");
    c.node_mut(1).add_pod("b");
    c
}

/// Pods `a` and `b` reach each other (within 10 s: the other node may
/// have dropped a peer whose lease was briefly forged).
fn pods_reach_each_other(c: &Cluster) {
    let (a, b) = (c.node(0).pod("a"), c.node(1).pod("b"));
    wait_until(SECS_10, "pod a pings pod b", || a.ping(b.ip()));
    assert!(b.ping(a.ip()), "pod b cannot ping pod a");
}

/// What `ip -j`/`bridge -j` show on `node`'s VXLAN device: the
/// destinations of routes through it, the neighbours' addresses, and
/// the FDB entries' MACs with a destination.
fn device_entries(node: &Node) -> (Vec<String>, Vec<String>, Vec<String>) {
    let (ns, dev) = (node.netns(), node.vxlan_dev());
    let field = |v: &Value, f: &str| {
        arr(v)
            .iter()
            .filter_map(|e| e[f].as_str().map(str::to_string))
            .collect::<Vec<_>>()
    };
    let routes = field(&ns.ip_json(&["route", "show", "dev", &dev]), "dst");
    let neighs = field(&ns.ip_json(&["neigh", "show", "dev", &dev]), "dst");
    let fdb = ns.bridge_json(&["fdb", "show", "dev", &dev]);
    let macs = arr(&fdb)
        .iter()
        .filter(|f| f["dst"].is_string())
        .filter_map(|f| f["mac"].as_str().map(str::to_string))
        .collect();
    (routes, neighs, macs)
}

/// `node`'s VXLAN device holds exactly the entries of `peers`.
fn device_holds_only(node: &Node, peers: &[&Node]) {
    let mut want_routes: Vec<String> = peers.iter().map(|p| p.subnet()).collect();
    let mut want_macs: Vec<String> = peers.iter().map(|p| link_mac(p, "flannel.1")).collect();
    let (mut routes, _, mut macs) = device_entries(node);
    for v in [&mut want_routes, &mut want_macs, &mut routes, &mut macs] {
        v.sort();
    }
    assert_eq!((routes, macs), (want_routes, want_macs), "{}", node.name());
}

/// `ip monitor` lines about `node`'s datapath (its VXLAN device, routes to
/// pod subnets).
fn datapath_events(monitor: &Monitor) -> Vec<String> {
    let lines = monitor.lines();
    lines
        .into_iter()
        .filter(|l| l.contains("flannel.1") || l.contains("10.244."))
        .collect()
}

/// A key for `subnet` that no node of a small cluster holds (nodes take
/// one of the first hundred).
fn spare(third: u8) -> String {
    format!("10.244.{third}.0/24")
}

#[test]
fn own_lease_overwritten_detached_or_deleted_is_written_back() {
    harness::require_root!();
    let opts = ClusterOpts::default().flanneld_arg("--resync-interval=1");
    let c = two_nodes_with_pods(opts);
    let (n1, n2) = (c.node(0), c.node(1));
    let key = lease_key(&n1.subnet());
    let (ours, lease) = c.etcd().get_with_lease(&key).unwrap();
    let theirs = c.etcd().get(&lease_key(&n2.subnet())).unwrap();
    let env = std::fs::read_to_string(n1.subnet_file()).unwrap();
    let monitor = Monitor::start(n1.netns(), &["link", "address", "route", "neigh"]);
    let back = || c.etcd().get_with_lease(&key) == Some((ours.clone(), lease));
    // Another node's value; ours without our etcd lease; no value at all.
    c.etcd().put(&key, &theirs);
    wait_until(SECS_10, "our lease written back", back);
    c.etcd().put(&key, &ours);
    wait_until(SECS_10, "our lease attached again", back);
    c.etcd().delete(&key);
    wait_until(SECS_10, "our lease re-created", back);
    n1.wait_reconcile_passes(1);

    assert_eq!(n1.metric("flanneld_lease_overwrites_total"), 3.0);
    assert_eq!(n1.metric("flanneld_lease_acquisitions_total"), 1.0);
    for line in [
        &format!("was overwritten (PublicIP {}, etcd lease 0)", n2.ip()),
        "was moved from our etcd lease",
        "was deleted while our etcd lease lives",
    ] {
        assert_eq!(n1.logged(line), 1, "{line}:\n{}", n1.flanneld_log());
    }
    assert_eq!(std::fs::read_to_string(n1.subnet_file()).unwrap(), env);
    let events = datapath_events(&monitor);
    assert!(events.is_empty(), "node1's datapath changed: {events:#?}");
    device_holds_only(n1, &[n2]);
    device_holds_only(n2, &[n1]);
    pods_reach_each_other(&c);
}

#[test]
fn a_planted_lease_with_our_public_ip_does_not_move_us() {
    harness::require_root!();
    let mut c = one_node(ClusterOpts::default().flanneld_arg("--resync-interval=1"));
    let node = c.node(0);
    let (subnet, ip) = (node.subnet(), node.ip().to_string());
    let key = lease_key(&subnet);
    let before = c.etcd().get_with_lease(&key).unwrap();
    let planted_key = lease_key(&spare(250));
    let planted = lease_json(&ip, 1, "02:aa:bb:cc:dd:50");
    c.etcd().put(&planted_key, &planted);
    let skip = format!("skipping lease {planted_key}: PublicIP {ip} is this node's own");
    node.wait_logged(&skip, 1, SECS_10);

    c.node_mut(0).restart_flanneld();
    let node = c.node(0);
    node.wait_reconcile_passes(1);
    assert_eq!(node.subnet(), subnet);
    assert_eq!(c.etcd().get_with_lease(&key).unwrap(), before, "kept as is");
    assert_eq!(
        c.etcd().get_with_lease(&planted_key).unwrap(),
        (planted, 0),
        "left alone"
    );
    let not_ours = format!("lease {planted_key} also carries our PublicIP {ip}: not ours");
    assert_eq!(node.logged(&not_ours), 1, "{}", node.flanneld_log());
    assert_eq!(node.logged(&skip), 2, "once per run");
    device_holds_only(node, &[]);
}

/// Leases no node may have: outside the network, the whole network, a
/// piece of node1's subnet or one of its pods, an alias of its key, and
/// values a tunnel cannot go to or that are not vxlan leases.
fn bad_leases(n1: &Node, pod: &str) -> Vec<(String, String)> {
    let (own, ip, mac) = (n1.subnet(), n1.ip().to_string(), link_mac(n1, "flannel.1"));
    let good = |n: u8| lease_json("192.0.2.90", 1, &format!("02:aa:00:00:00:{n:02x}"));
    let at = |s: &str| format!("{PREFIX}/subnets/{s}");
    let half = own.replace("/24", "-25");
    let mut bad = vec![
        (at("8.8.8.0-24"), good(1)),
        (at("128.0.0.0-1"), good(2)),
        (at("10.244.0.0-16"), good(3)),
        (at(&half), good(4)),
        (at(&format!("{pod}-32")), good(5)),
        (at(&format!("{}&fc00::-64", own.replace('/', "-"))), good(6)),
    ];
    let values = [
        lease_json("127.0.0.1", 1, "02:aa:00:00:00:07"),
        lease_json("0.0.0.0", 1, "02:aa:00:00:00:08"),
        lease_json("224.0.0.5", 1, "02:aa:00:00:00:09"),
        lease_json("255.255.255.255", 1, "02:aa:00:00:00:0a"),
        lease_json(&ip, 1, "02:aa:00:00:00:0b"),
        lease_json("192.0.2.90", 1, "00:00:00:00:00:00"),
        lease_json("192.0.2.90", 1, "01:00:5e:00:00:01"),
        lease_json("192.0.2.90", 1, &mac),
        "[1,2,3]".to_string(),
        r#"{"PublicIP":"192.0.2.90","BackendType":"host-gw"}"#.to_string(),
    ];
    for (i, v) in values.into_iter().enumerate() {
        bad.push((lease_key(&spare(240 + i as u8)), v));
    }
    bad
}

#[test]
fn leases_that_do_not_fit_the_network_or_are_invalid_never_reach_the_kernel() {
    harness::require_root!();
    let opts = ClusterOpts::default().flanneld_arg("--resync-interval=1");
    let mut c = two_nodes_with_pods(opts);
    let bad = bad_leases(c.node(0), &c.node(0).pod("a").ip().to_string());
    // All in one transaction: one watch response.
    c.etcd().put_all(&bad);
    let n1 = c.node(0);
    for (key, _) in &bad {
        n1.wait_logged(&format!("skipping lease {key}: "), 1, SECS_10);
    }
    n1.wait_reconcile_passes(2);
    device_holds_only(n1, &[c.node(1)]);
    assert_eq!(n1.metric("flanneld_skipped_leases"), bad.len() as f64);
    pods_reach_each_other(&c);

    // A watch broken and reopened replays what it had: nothing new is
    // logged, nothing new counted. A peer added after etcd is back proves
    // the watch reopened.
    c.etcd_mut().stop();
    c.etcd_mut().start();
    let n1 = c.node(0);
    assert_new_peer_programmed_after_restart(&c, n1);
    n1.wait_reconcile_passes(1);
    for (key, _) in &bad {
        assert_eq!(n1.logged(&format!("skipping lease {key}: ")), 1, "{key}");
    }
    assert_eq!(n1.metric("flanneld_leases_skipped_total"), bad.len() as f64);
}

#[test]
fn routes_left_through_the_device_by_forged_leases_are_removed() {
    harness::require_root!();
    let opts = ClusterOpts::default().flanneld_arg("--resync-interval=1");
    let c = two_nodes_with_pods(opts);
    let (n1, n2) = (c.node(0), c.node(1));
    let gw = n2.subnet().replace("/24", "");
    // What an older version programmed for forged leases: a public
    // prefix, half the Internet, a piece of our own subnet.
    let own_half = n1.subnet().replace(".0/24", ".128/25");
    let hijacks = ["8.8.8.0/24", "128.0.0.0/1", own_half.as_str()];
    for dst in hijacks {
        n1.netns()
            .ip(&format!("route add {dst} via {gw} dev flannel.1 onlink"));
    }
    // Into the device without a gateway: an administrator's, not ours.
    n1.netns().ip("route add 10.98.0.0/16 dev flannel.1");
    wait_until(SECS_10, "the hijacking routes removed", || {
        let (routes, _, _) = device_entries(n1);
        hijacks.iter().all(|h| !routes.iter().any(|r| r == h))
    });
    n1.wait_reconcile_passes(2);
    let (mut routes, _, _) = device_entries(n1);
    routes.sort();
    let mut want = vec!["10.98.0.0/16".to_string(), n2.subnet()];
    want.sort();
    assert_eq!(routes, want);
    pods_reach_each_other(&c);
}

#[test]
fn colliding_leases_neither_spin_the_reconciler_nor_cut_a_real_peer() {
    harness::require_root!();
    let c = two_nodes_with_pods(ClusterOpts::default());
    let (n1, n2) = (c.node(0), c.node(1));
    let (mac2, ip2) = (link_mac(n2, "flannel.1"), n2.ip().to_string());
    let key2 = lease_key(&n2.subnet());
    // Newer leases with node2's VTEP MAC: one with another PublicIP, one
    // with node2's PublicIP and MAC both.
    let twins = [
        (lease_key(&spare(250)), lease_json("192.0.2.90", 1, &mac2)),
        (lease_key(&spare(251)), lease_json(&ip2, 1, &mac2)),
    ];
    for (key, value) in &twins {
        c.etcd().put(key, value);
    }
    let conflict = format!("has the same VTEP MAC as {key2}, which is older and wins");
    n1.wait_logged(&conflict, 2, SECS_10);
    let runs = n1.metric("flanneld_reconcile_runs_total");
    // 30 pings over 3 s: every one answered while the passes are counted.
    let (a, b) = (n1.pod("a"), n2.pod("b"));
    let out = a.exec(&[
        "ping",
        "-n",
        "-q",
        "-c",
        "30",
        "-i",
        "0.1",
        "-W",
        "1",
        &b.ip().to_string(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("30 packets transmitted, 30 received"),
        "{text}"
    );
    let passes = n1.metric("flanneld_reconcile_runs_total") - runs;
    assert!(passes <= 5.0, "{passes} reconcile passes in 3 s");
    assert_eq!(n1.metric("flanneld_lease_conflicts_total"), 2.0);
    assert_eq!(n1.logged(&conflict), 2, "once each");
    device_holds_only(n1, &[n2]);

    let out = status(n1, &c.etcd().endpoint());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for (key, _) in &twins {
        assert!(
            text.contains(&format!("conflict {key}: {conflict}\n")),
            "{text}"
        );
    }
}

#[test]
fn more_than_4_mib_under_the_prefix_does_not_stop_a_node() {
    harness::require_root!();
    let mut c = one_node(ClusterOpts::default());
    let junk = "x".repeat(1 << 20);
    for i in 0..6 {
        c.etcd().put(&format!("{PREFIX}/subnets/junk-{i}"), &junk);
    }
    // A lease padded past 64 KiB, and three valid ones.
    let padded_key = lease_key(&spare(250));
    let padded = lease_json("192.0.2.91", 1, "02:aa:bb:cc:dd:91") + &" ".repeat(70 << 10);
    c.etcd().put(&padded_key, &padded);
    let peers: Vec<(String, String, String)> = (0..3u8)
        .map(|i| {
            let (mac, ip) = (
                format!("02:aa:bb:cc:dd:{:02x}", 0x80 + i),
                format!("192.0.2.{}", 80 + i),
            );
            (spare(240 + i), mac, ip)
        })
        .collect();
    for (subnet, mac, ip) in &peers {
        c.etcd().put(&lease_key(subnet), &lease_json(ip, 1, mac));
    }
    // A node started now lists more than 6 MiB; node1 saw it come.
    c.add_node();
    for node in c.nodes() {
        for (subnet, mac, ip) in &peers {
            wait_until(
                SECS_10,
                &format!("{} programs {subnet}", node.name()),
                || peer_entries(node, subnet, mac, ip) == (true, true, true),
            );
        }
        let (routes, _, _) = device_entries(node);
        assert_eq!(routes.len(), 4, "{}: {routes:?}", node.name());
        let too_large = format!("skipping lease {padded_key}: value of");
        assert_eq!(node.logged(&too_large), 1, "{}", node.flanneld_log());
    }
}

#[test]
fn a_wiped_etcd_gets_our_leases_back_with_the_same_subnets() {
    harness::require_root!();
    let mut c = two_nodes_with_pods(ClusterOpts::default());
    let leases: Vec<(String, String)> = c
        .nodes()
        .iter()
        .map(|n| {
            let key = lease_key(&n.subnet());
            (key.clone(), c.etcd().get(&key).unwrap())
        })
        .collect();
    c.etcd_mut().stop();
    c.etcd_mut().start_wiped();
    let config = c.opts().config.to_string();
    c.etcd().put(&format!("{PREFIX}/config"), &config);
    for (key, value) in &leases {
        let back = try_wait_until(Duration::from_secs(30), || {
            c.etcd().get(key).as_ref() == Some(value)
        });
        assert!(
            back.is_some(),
            "{key} not back:\n{}",
            c.node(0).flanneld_log()
        );
    }
    for n in c.nodes() {
        assert_eq!(n.metric("flanneld_lease_acquisitions_total"), 2.0);
        assert_eq!(n.readyz(), Some(200));
    }
    // A node joining the new etcd is programmed everywhere, and its pods
    // reach the others'.
    c.add_node().add_pod("c");
    let (a, pc) = (c.node(0).pod("a"), c.node(2).pod("c"));
    wait_until(SECS_10, "pod a pings pod c", || a.ping(pc.ip()));
    pods_reach_each_other(&c);
}

#[test]
fn config_changes_are_reported_not_applied_and_an_old_vni_device_goes() {
    harness::require_root!();
    let mut c = one_node(ClusterOpts::default().flanneld_arg("--resync-interval=1"));
    let node = c.node(0);
    node.signal_flanneld_with(libc::SIGHUP);
    node.wait_logged("SIGHUP ignored", 1, SECS_10);
    let key = format!("{PREFIX}/config");
    let vni2 = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":2,"Port":4789}}"#;
    c.etcd().put(&key, vni2);
    let change = format!(
        "network config {key} changed: Backend.VNI 1 -> 2, Backend.Port 8472 -> 4789; \
         flanneld keeps the datapath of the config it started with; \
         restart flanneld on every node to apply it"
    );
    node.wait_logged(&change, 1, SECS_10);
    node.wait_reconcile_passes(1);
    assert_eq!(node.metric("flanneld_config_changes_total"), 1.0);
    assert!(has_link(node, "flannel.1") && !has_link(node, "flannel.2"));
    assert_eq!(node.readyz(), Some(200), "SIGHUP did not stop it");

    c.node_mut(0).restart_flanneld();
    let node = c.node(0);
    wait_until(SECS_10, "flannel.2 made, flannel.1 removed", || {
        has_link(node, "flannel.2") && !has_link(node, "flannel.1")
    });
    assert_eq!(
        node.logged("removing flannel.1: a device of another VNI"),
        1
    );
}

fn has_link(node: &Node, dev: &str) -> bool {
    let out = node.netns().exec(&["ip", "link", "show", "dev", dev]);
    out.status.success()
}
