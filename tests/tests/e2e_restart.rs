//! Restarting flanneld changes nothing that is already right: pings crossing
//! the node all get answered.

use std::process::Command;
use std::time::Duration;

use harness::{Cluster, ClusterOpts, Node, Proc};

/// "N packets transmitted, M received" from ping's summary.
fn counts(log: &str) -> Option<(u32, u32)> {
    let line = log.lines().find(|l| l.contains("packets transmitted"))?;
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    Some((nums[0], nums[1]))
}

#[test]
fn flanneld_restart_loses_no_ping() {
    let mut c = Cluster::new(2, ClusterOpts::default());
    c.node_mut(0).add_pod("a");
    c.node_mut(1).add_pod("b");
    let target = c.node(1).pod("b").ip().to_string();
    // 300 pings, 10 ms apart (seconds in all): longer than both restarts.
    let mut cmd: Command = c.node(0).pod("a").cmd("ping");
    cmd.args(["-n", "-i", "0.01", "-c", "300", "-W", "1", &target]);
    let mut ping = Proc::spawn(&mut cmd);
    std::thread::sleep(Duration::from_millis(300));

    // Watch the datapath of both nodes while flanneld restarts.
    let monitors: Vec<Proc> = c.nodes().iter().map(watch_datapath).collect();
    let devices: Vec<_> = c.nodes().iter().map(vxlan_identity).collect();
    c.node_mut(1).restart_flanneld();
    c.node_mut(0).restart_flanneld();
    assert!(
        ping.is_running(),
        "restarts outlasted the ping run: {}",
        ping.log()
    );

    let status = ping
        .wait_timeout(Duration::from_secs(30))
        .expect("ping finished");
    let log = ping.log();
    assert_eq!(counts(&log), Some((300, 300)), "{log}");
    assert!(status.success(), "{log}");
    c.wait_converged();

    // Nothing was torn down and rebuilt: same device, no entry deleted.
    let after: Vec<_> = c.nodes().iter().map(vxlan_identity).collect();
    assert_eq!(devices, after);
    for (node, monitor) in c.nodes().iter().zip(&monitors) {
        let deleted = deletions(&monitor.log(), &node.vxlan_dev());
        assert!(deleted.is_empty(), "{}: {deleted:?}", node.name());
    }
}

/// `ip monitor` of the routes and neighbours on the node's VXLAN device and
/// `bridge monitor fdb` (which cannot filter by device), into one log.
fn watch_datapath(node: &Node) -> Proc {
    let dev = node.vxlan_dev();
    let script = format!(
        "ip monitor route dev {dev} & ip monitor neigh dev {dev} & bridge monitor fdb & wait"
    );
    let mut cmd = node.netns().cmd("sh");
    cmd.args(["-c", &script]);
    let p = Proc::spawn(&mut cmd);
    // Give the monitors time to subscribe before anything happens.
    std::thread::sleep(Duration::from_millis(100));
    p
}

/// Deletions the monitor saw on the VXLAN device (route and neighbour lines
/// are already filtered by device; FDB lines name it).
fn deletions(log: &str, dev: &str) -> Vec<String> {
    let fdb_dev = format!("dev {dev} ");
    log.lines()
        .filter(|l| l.starts_with("Deleted"))
        .filter(|l| !l.contains(" dev ") || l.contains(&fdb_dev))
        .map(str::to_string)
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
