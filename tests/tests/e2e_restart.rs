//! Restarting flanneld changes nothing that is already right: pings crossing
//! the node all get answered.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::Duration;

use harness::{wait_until, Cluster, ClusterOpts, Kv, Monitor, Node, Proc};

/// Full reconcile passes every second: what could undo the datapath runs
/// often, and the checks that nothing changed wait for two passes.
fn opts() -> ClusterOpts {
    ClusterOpts::default().flanneld_arg("--resync-interval=1")
}

/// "N packets transmitted, M received" from ping's summary.
fn counts(log: &str) -> Option<(u32, u32)> {
    let line = log.lines().find(|l| l.contains("packets transmitted"))?;
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    Some((nums[0], nums[1]))
}

/// Starts `count` pings, 10 ms apart, from pod "a" on node 1 to pod "b" on
/// node 2, and returns once the first is answered.
fn start_pings(c: &Cluster, count: u32) -> Proc {
    let target = c.node(1).pod("b").ip().to_string();
    let mut cmd: Command = c.node(0).pod("a").cmd("ping");
    let count = count.to_string();
    cmd.args(["-n", "-i", "0.01", "-c", &count, "-W", "1", &target]);
    let ping = Proc::spawn(&mut cmd);
    wait_until(Duration::from_secs(5), "the first ping answered", || {
        ping.log().contains(" bytes from ")
    });
    ping
}

/// Waits for the pings to end and checks every one was answered.
fn assert_all_answered(ping: &mut Proc, count: u32) {
    let status = ping
        .wait_timeout(Duration::from_secs(30))
        .expect("ping finished");
    let log = ping.log();
    assert_eq!(counts(&log), Some((count, count)), "{log}");
    assert!(status.success(), "{log}");
}

/// Nothing was torn down and rebuilt: once every flanneld made two more
/// reconcile passes, the same devices as `devices`, and no entry deleted
/// while the monitors watched.
fn assert_datapath_untouched(c: &Cluster, devices: &[(u64, String)], monitors: &[Monitor]) {
    c.nodes().iter().for_each(|n| n.wait_reconcile_passes(2));
    let after: Vec<_> = c.nodes().iter().map(vxlan_identity).collect();
    assert_eq!(devices, after);
    for (node, monitor) in c.nodes().iter().zip(monitors) {
        let deleted = deletions(&monitor.lines(), &node.vxlan_dev());
        assert!(deleted.is_empty(), "{}: {deleted:?}", node.name());
    }
}

#[test]
fn flanneld_restart_loses_no_ping() {
    harness::require_root!();
    let mut c = Cluster::new(2, opts());
    c.node_mut(0).add_pod("a");
    c.node_mut(1).add_pod("b");
    // 300 pings, 10 ms apart (seconds in all): longer than both restarts.
    let mut ping = start_pings(&c, 300);

    // Watch the datapath of both nodes while flanneld restarts.
    let monitors: Vec<Monitor> = c.nodes().iter().map(watch_datapath).collect();
    let devices: Vec<_> = c.nodes().iter().map(vxlan_identity).collect();
    c.node_mut(1).restart_flanneld();
    c.node_mut(0).restart_flanneld();
    assert!(
        ping.is_running(),
        "restarts outlasted the ping run: {}",
        ping.log()
    );

    assert_all_answered(&mut ping, 300);
    c.wait_converged();
    assert_datapath_untouched(&c, &devices, &monitors);
}

/// flanneld killed outright on both nodes while pods ping across them: the
/// datapath lives in the kernel, so every ping is answered while both are
/// dead; restarted, each keeps its subnet and its lease, untouched (same
/// key, value, etcd lease and revision: no second lease, no event for the
/// peers), and nothing in the datapath is deleted.
#[test]
fn flanneld_killed_keeps_datapath_subnet_and_lease() {
    harness::require_root!();
    let mut c = Cluster::new(2, opts());
    c.node_mut(0).add_pod("a");
    c.node_mut(1).add_pod("b");
    // 600 pings, 10 ms apart (6 s): longer than 2 s dead plus both restarts.
    let mut ping = start_pings(&c, 600);

    let leases = lease_records(&c);
    assert_eq!(leases.len(), 2, "{leases:?}");
    let subnet_envs: Vec<String> = c.nodes().iter().map(subnet_env_text).collect();
    let monitors: Vec<Monitor> = c.nodes().iter().map(watch_datapath).collect();
    let devices: Vec<_> = c.nodes().iter().map(vxlan_identity).collect();
    for node in c.nodes_mut() {
        let status = node.kill_flanneld();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{}", node.name());
    }
    // Both ways, while no flanneld runs (2 s in all).
    let target = c.node(1).pod("b").ip().to_string();
    let a_ip = c.node(0).pod("a").ip().to_string();
    for (pod, to) in [(c.node(0).pod("a"), &target), (c.node(1).pod("b"), &a_ip)] {
        let out = pod.exec(&["ping", "-n", "-i", "0.01", "-c", "100", "-W", "1", to]);
        let log = String::from_utf8_lossy(&out.stdout);
        assert_eq!(counts(&log), Some((100, 100)), "without flanneld: {log}");
    }
    for node in c.nodes_mut() {
        node.start_flanneld();
    }
    c.nodes_mut().iter_mut().for_each(Node::wait_ready);
    assert!(
        ping.is_running(),
        "the restarts outlasted the ping run: {}",
        ping.log()
    );

    assert_all_answered(&mut ping, 600);
    c.wait_converged();

    assert_eq!(lease_records(&c), leases, "the leases changed");
    let after: Vec<String> = c.nodes().iter().map(subnet_env_text).collect();
    assert_eq!(after, subnet_envs, "subnet.env changed");
    assert_datapath_untouched(&c, &devices, &monitors);
}

/// A node whose datapath flannel programmed (plain `via … onlink` routes,
/// no nexthop objects) gets flanneld: every route is replaced in place by
/// one through a nexthop, and pings crossing the node all get answered.
#[test]
fn node_with_flannels_plain_routes_converges_without_losing_a_ping() {
    harness::require_root!();
    let mut c = Cluster::new(2, opts());
    c.node_mut(0).add_pod("a");
    c.node_mut(1).add_pod("b");
    c.node_mut(0).stop_flanneld();
    let node = c.node(0);
    let dev = node.vxlan_dev();
    let peer_subnet = c.node(1).subnet();
    // What flannel leaves: the same route, plain.
    let gw = peer_subnet.split('/').next().unwrap();
    let ns = node.netns();
    ns.sh(&[
        "ip",
        "route",
        "replace",
        &peer_subnet,
        "via",
        gw,
        "dev",
        &dev,
        "onlink",
    ]);
    ns.sh(&["ip", "nexthop", "flush", "dev", &dev]);
    assert!(ns.ip_json(&["route", "show", &peer_subnet])[0]["nhid"].is_null());

    let mut ping = start_pings(&c, 300);
    let monitor = watch_datapath(c.node(0));
    c.node_mut(0).start_flanneld();
    c.node_mut(0).wait_ready();
    let node = c.node(0);
    let nhid = || node.netns().ip_json(&["route", "show", &peer_subnet])[0]["nhid"].as_u64();
    wait_until(
        Duration::from_secs(5),
        "the route through a nexthop",
        || nhid().is_some(),
    );
    assert!(ping.is_running(), "flanneld start outlasted the ping run");

    assert_all_answered(&mut ping, 300);
    node.wait_reconcile_passes(2);
    let deleted = deletions(&monitor.lines(), &dev);
    assert!(deleted.is_empty(), "{deleted:?}");
}

/// Every lease key with its value, etcd lease and last modification.
fn lease_records(c: &Cluster) -> Vec<Kv> {
    c.leases()
        .iter()
        .flat_map(|(key, _)| c.etcd().try_range(key, None).expect("etcd answers"))
        .collect()
}

fn subnet_env_text(node: &Node) -> String {
    std::fs::read_to_string(node.subnet_file()).expect("subnet.env")
}

/// The node's routes, neighbours and FDB entries, watched from now on.
fn watch_datapath(node: &Node) -> Monitor {
    Monitor::start(node.netns(), &["route", "neigh"])
}

/// Deletions the monitor saw on the VXLAN device: lines naming it (`dev
/// DEV`), and to be safe lines naming no device at all.
fn deletions(lines: &[String], dev: &str) -> Vec<String> {
    let on_dev = |l: &str| {
        let words: Vec<&str> = l.split_whitespace().collect();
        !words.contains(&"dev") || words.windows(2).any(|w| w == ["dev", dev])
    };
    lines
        .iter()
        .filter(|l| l.starts_with("Deleted") && on_dev(l))
        .cloned()
        .collect()
}

/// The VXLAN device's index and MAC: both change if it is recreated.
fn vxlan_identity(node: &Node) -> (u64, String) {
    let link = node.netns().ip_json(&["link", "show", &node.vxlan_dev()]);
    (
        link[0]["ifindex"].as_u64().unwrap(),
        link[0]["address"].as_str().unwrap().to_string(),
    )
}
