//! `--ip-masq`: traffic leaving the cluster network carries the node's
//! address; traffic between pods keeps pod addresses.

use std::net::IpAddr;

use harness::{udp_source_seen, Cluster, ClusterOpts};

#[test]
fn ip_masq_hides_pods_from_the_outside_only_with_iptables() {
    harness::require_root!();
    ip_masq_hides_pods_from_the_outside_only("iptables");
}

#[test]
fn ip_masq_hides_pods_from_the_outside_only_with_nftables() {
    harness::require_root!();
    ip_masq_hides_pods_from_the_outside_only("nftables");
}

fn ip_masq_hides_pods_from_the_outside_only(firewall: &str) {
    let opts = ClusterOpts::default()
        .flanneld_arg("--ip-masq")
        .flanneld_arg(&format!("--firewall={firewall}"));
    let mut c = Cluster::new(2, opts);
    assert!(c.node(0).subnet_env().ipmasq);
    c.node_mut(0).add_pod("a");
    c.node_mut(1).add_pod("b");
    c.add_external();
    let ext = &c.externals()[0];
    let (ext_ns, ext_ip) = (&ext.netns, ext.ip);
    let (a, b) = (c.node(0).pod("a"), c.node(1).pod("b"));

    // Outside: the external host sees node1's public address, and replies
    // find their way back to the pod.
    let seen = udp_source_seen(a.netns(), ext_ns, ext_ip, 9999);
    assert_eq!(seen, Some(IpAddr::V4(c.node(0).ip())));
    assert!(a.ping(ext_ip), "pod cannot reach the external host");

    // Inside the cluster network: pod addresses are kept, both ways.
    assert_eq!(
        udp_source_seen(a.netns(), b.netns(), b.ip(), 9998),
        Some(IpAddr::V4(a.ip()))
    );
    assert_eq!(
        udp_source_seen(b.netns(), a.netns(), a.ip(), 9997),
        Some(IpAddr::V4(b.ip()))
    );
}

/// Brings up one node with pod `a` and an external host; returns the source
/// address the external host sees for a datagram from the pod.
fn source_seen_outside(opts: ClusterOpts) -> (IpAddr, Cluster) {
    let mut c = Cluster::new(1, opts);
    c.node_mut(0).add_pod("a");
    c.add_external();
    let ext = &c.externals()[0];
    let a = c.node(0).pod("a");
    let seen = udp_source_seen(a.netns(), &ext.netns, ext.ip, 9999).expect("datagram arrived");
    (seen, c)
}

#[test]
fn without_ip_masq_the_plugin_masquerades_each_pod() {
    harness::require_root!();
    // flannel's rule: the bridge masquerades when flanneld does not
    // (delegate ipMasq = !FLANNEL_IPMASQ).
    let (seen, c) = source_seen_outside(ClusterOpts::default());
    assert!(!c.node(0).subnet_env().ipmasq);
    assert_eq!(seen, IpAddr::V4(c.node(0).ip()));
}

#[test]
fn with_no_masquerade_at_all_pod_addresses_leave_the_node() {
    harness::require_root!();
    // The contrast that shows the rewriting above is masquerading at work.
    let mut opts = ClusterOpts::default();
    opts.cni_conf["delegate"]["ipMasq"] = false.into();
    let (seen, c) = source_seen_outside(opts);
    assert_eq!(seen, IpAddr::V4(c.node(0).pod("a").ip()));
}
