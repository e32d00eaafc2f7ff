//! Root test of `flanneld status` on a node with a peer and a pod.

mod common;

use std::time::Duration;

use common::*;
use harness::ClusterOpts;

#[test]
fn status_shows_lease_peers_programming_and_pods() {
    harness::require_root!();
    let mut cluster = one_node(ClusterOpts::default());
    let (peer, mac, ip) = ("10.244.230.0/24", "02:aa:bb:cc:dd:30", "192.0.2.70");
    cluster
        .etcd()
        .put(&lease_key(peer), &lease_json(ip, 1, mac));
    let endpoint = cluster.etcd().endpoint();
    let node = cluster.node_mut(0);
    node.add_pod("p1");
    let node = cluster.node(0);
    harness::wait_until(Duration::from_secs(5), "the peer programmed", || {
        peer_entries(node, peer, mac, ip) == (true, true, true)
    });
    let out = status(node, &endpoint);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let own_mac = link_mac(node, "flannel.1");
    assert!(
        text.starts_with(&format!(
            "Lease:   {}  public IP {}  VTEP MAC {own_mac}\n",
            node.subnet(),
            node.ip()
        )),
        "{text}"
    );
    assert!(text.contains("Device:  flannel.1 (index"), "{text}");
    assert!(
        text.contains(&format!(
            "{peer:<20} {ip:<16} {mac:<18} ok       ok       ok\n"
        )),
        "{text}"
    );
    // The route goes through a nexthop; it is found even when the kernel
    // does not repeat the nexthop's gateway in route dumps.
    assert!(route_nexthop(node, peer).is_some());
    node.netns()
        .sh(&["sysctl", "-qw", "net.ipv4.nexthop_compat_mode=0"]);
    let out = status(node, &endpoint);
    let no_compat = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{no_compat}");
    assert!(
        no_compat.contains(&format!(
            "{peer:<20} {ip:<16} {mac:<18} ok       ok       ok\n"
        )),
        "{no_compat}"
    );
    node.netns()
        .sh(&["sysctl", "-qw", "net.ipv4.nexthop_compat_mode=1"]);

    let pod = node.pod("p1");
    let veth = node_state::host_veth_name(pod.container_id(), pod.ifname());
    let row = format!(
        "{:<16} {:<66} {:<10} {:<16} cbr0\n",
        pod.ip(),
        pod.container_id(),
        pod.ifname(),
        veth
    );
    assert!(text.contains(&row), "{row}\n{text}");
    // The host veth named there is the pod's peer, as the kernel says.
    let link = &node.netns().ip_json(&["link", "show", &veth])[0];
    let pod_link = &pod.netns().ip_json(&["link", "show", pod.ifname()])[0];
    assert_eq!(link["link_index"], pod_link["ifindex"]);

    // With flanneld stopped (nothing repairs it), a missing route is
    // reported, with exit status 3.
    cluster.node_mut(0).stop_flanneld();
    let node = cluster.node(0);
    node.netns().sh(&["ip", "route", "del", peer]);
    let out = status(node, &endpoint);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(
        text.contains(&format!(
            "{peer:<20} {ip:<16} {mac:<18} ok       ok       MISSING\n"
        )),
        "{text}"
    );
}
