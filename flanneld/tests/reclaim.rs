//! Root tests of IP reclaim: pods whose namespace (and so their veth) is
//! destroyed without a CNI DEL, as after a runtime crash, lose their IP,
//! masquerade chain and saved config once the grace period has passed;
//! running pods and ADDs in progress keep theirs.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use harness::{try_wait_until, wait_until, Cluster, ClusterOpts, Node, Pod};
use node_state::host_veth_name;
use node_state::ipam::Store;
use node_state::reclaim::chain_name;

const GRACE: Duration = Duration::from_secs(2);
const NETWORK: &str = "cbr0";
const RECLAIMED: &str = "flanneld_ipam_reclaimed_total";

/// One node whose flanneld reclaims in the node's own stores after 2 s;
/// `subnet_len` sets the size of the node's pod range.
fn cluster(subnet_len: Option<u8>) -> Cluster {
    let mut opts = ClusterOpts::default();
    if let Some(len) = subnet_len {
        opts.config["SubnetLen"] = len.into();
    }
    let mut c = Cluster::new(0, opts);
    // The harness points flanneld at the node's own stores.
    let grace = format!("{}s", GRACE.as_secs());
    c.add_node_with(&["--ipam-reclaim-grace", &grace]);
    c
}

fn store_dir(node: &Node) -> PathBuf {
    node.dir().join("ipam").join(NETWORK)
}

/// What the node keeps for a pod: its IP's file, its saved config, its
/// masquerade chain.
#[derive(Debug, PartialEq, Eq)]
struct Kept {
    ip_file: bool,
    saved: bool,
    chain: bool,
}

fn kept(node: &Node, pod: &Pod) -> Kept {
    let nat = node.netns().sh(&["iptables-save", "-t", "nat"]);
    let chain = chain_name(NETWORK, pod.container_id());
    Kept {
        ip_file: store_dir(node).join(pod.ip().to_string()).exists(),
        saved: node.dir().join("flannel").join(pod.container_id()).exists(),
        chain: nat.contains(&format!(":{chain} ")) && nat.contains(&format!("-j {chain}")),
    }
}

const ALL: Kept = Kept {
    ip_file: true,
    saved: true,
    chain: true,
};
const NONE: Kept = Kept {
    ip_file: false,
    saved: false,
    chain: false,
};

/// Destroys the pod's namespace without DEL (the kernel takes its veth
/// pair with it), as when a runtime crashes or a node reboots.
fn crash(pod: &Pod) {
    let st = Command::new("ip")
        .args(["netns", "del", pod.netns().name()])
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn a_pod_gone_without_del_loses_its_ip_chain_and_saved_config_a_running_one_keeps_them() {
    harness::require_root!();
    let mut c = cluster(None);
    let node = c.node_mut(0);
    node.add_pod("live");
    node.add_pod("crashed");
    let node = c.node(0);
    let (live, crashed) = (node.pod("live"), node.pod("crashed"));
    assert_eq!(kept(node, live), ALL);
    assert_eq!(kept(node, crashed), ALL);
    let start = Instant::now();
    crash(crashed);
    // Counted once the IP is released.
    wait_until(
        Duration::from_secs(15),
        "the crashed pod's IP reclaimed",
        || node.metric(RECLAIMED) == 1.0,
    );
    let took = start.elapsed();
    assert!(
        took >= GRACE,
        "reclaimed after {took:?}, before the grace period"
    );
    assert_eq!(kept(node, crashed), NONE);
    let line = format!(
        "reclaimed IP {} of container {:?} (eth0, network cbr0): host veth {} absent for",
        crashed.ip(),
        crashed.container_id(),
        host_veth_name(crashed.container_id(), "eth0"),
    );
    node.wait_logged(&line, 1, Duration::from_secs(5));
    // Several grace periods later the running pod has all it had, and
    // still reaches its gateway.
    std::thread::sleep(GRACE * 3);
    assert_eq!(kept(node, live), ALL);
    assert_eq!(node.metric(RECLAIMED), 1.0);
    let gateway = node
        .subnet_env()
        .subnet
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    assert!(live.ping(&gateway));
    // The runtime's late DEL of the crashed pod finds nothing and succeeds.
    let out = c.node_mut(0).del_pod("crashed");
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn an_add_in_progress_is_left_alone_and_the_check_is_made_under_the_lock() {
    harness::require_root!();
    let mut c = cluster(None);
    c.node_mut(0).add_pod("first");
    let node = c.node(0);
    let store = Store::open(store_dir(node)).unwrap();
    let subnet = node.subnet();
    let prefix = subnet.rsplit_once('.').unwrap().0.to_owned();

    // An ADD reserves its IP under the lock and creates the veth after.
    let (ip, id) = (format!("{prefix}.50"), "adding");
    let file = store.dir().join(&ip);
    let veth = host_veth_name(id, "eth0");
    {
        let _lock = store.lock().unwrap();
        std::fs::write(&file, format!("{id}\r\neth0")).unwrap();
    }
    std::thread::sleep(GRACE / 2);
    add_veth(node, &veth);
    std::thread::sleep(GRACE * 3);
    assert!(file.exists(), "an ADD's IP was reclaimed");

    // A reservation whose veth is gone longer than the grace period, with
    // the store locked (by an ADD, say) when flanneld comes to reclaim it.
    // The veth is back by the time the lock is released: flanneld looks
    // again under the lock and leaves it.
    let (ip2, id2) = (format!("{prefix}.51"), "relocked");
    let file2 = store.dir().join(&ip2);
    std::fs::write(&file2, format!("{id2}\r\neth0")).unwrap();
    std::thread::sleep(GRACE / 2);
    let lock = store.lock().unwrap();
    std::thread::sleep(GRACE * 2);
    assert!(file2.exists(), "removed while the store was locked");
    add_veth(node, &host_veth_name(id2, "eth0"));
    drop(lock);
    std::thread::sleep(GRACE * 2);
    assert!(file2.exists(), "reclaimed although its veth is back");
    assert_eq!(node.metric(RECLAIMED), 0.0);

    // Once the ADD's veth goes for good, so does its IP.
    node.netns().sh(&["ip", "link", "del", &veth]);
    wait_until(Duration::from_secs(15), "the IP reclaimed", || {
        node.metric(RECLAIMED) == 1.0
    });
    assert!(!file.exists() && file2.exists());
    assert!(store
        .dir()
        .join(node.pod("first").ip().to_string())
        .exists());
}

/// A veth pair in the node named as the plugin names a pod's host end
/// (its peer stays in the node: only the name matters here).
fn add_veth(node: &Node, name: &str) {
    let peer = harness::unique("rp");
    node.netns().sh(&[
        "ip", "link", "add", name, "type", "veth", "peer", "name", &peer,
    ]);
}

#[test]
fn a_range_exhausted_by_crashed_pods_is_usable_again() {
    harness::require_root!();
    // A /29 per node: .2 to .6, five pods.
    let mut c = cluster(Some(29));
    let node = c.node_mut(0);
    for i in 0..5 {
        node.add_pod(&format!("p{i}"));
    }
    let out = node.try_add_pod("one-too-many").unwrap_err();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("no IP addresses available in range set"),
        "{stdout}"
    );
    let node = c.node(0);
    for i in 0..3 {
        crash(node.pod(&format!("p{i}")));
    }
    wait_until(Duration::from_secs(20), "three IPs reclaimed", || {
        node.metric(RECLAIMED) == 3.0
    });
    let node = c.node_mut(0);
    for i in 0..3 {
        node.add_pod(&format!("new{i}"));
    }
    assert!(node.try_add_pod("one-too-many").is_err());
    let node = c.node(0);
    let live: Vec<&Pod> = ["p3", "p4", "new0", "new1", "new2"]
        .iter()
        .map(|n| node.pod(n))
        .collect();
    for pod in &live {
        assert_eq!(kept(node, pod), ALL, "{}", pod.name());
    }
    // Each new pod reaches the others: the reclaimed addresses are theirs alone.
    let seen = try_wait_until(Duration::from_secs(5), || live[2].ping(live[0].ip()));
    assert!(seen.is_some());
    assert!(live[4].ping(live[3].ip()));
}
