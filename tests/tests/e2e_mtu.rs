//! The pod MTU leaves room for the VXLAN header: full-size packets cross,
//! oversized don't-fragment packets fail loudly at the sender.

use std::process::Output;

use harness::{Cluster, ClusterOpts, Pod};

/// ICMP echo + IPv4 header bytes on top of ping's payload size.
const HEADERS: u32 = 28;
/// What VXLAN over IPv4 adds to every packet.
const VXLAN_OVERHEAD: u32 = 50;

/// One don't-fragment ping with `payload` bytes of data.
fn df_ping(from: &Pod, to: &Pod, payload: u32) -> Output {
    let (size, dst) = (payload.to_string(), to.ip().to_string());
    from.exec(&[
        "ping", "-n", "-c", "1", "-W", "2", "-M", "do", "-s", &size, &dst,
    ])
}

fn text(out: &Output) -> String {
    let (o, e) = (&out.stdout, &out.stderr);
    format!(
        "{}{}",
        String::from_utf8_lossy(o),
        String::from_utf8_lossy(e)
    )
}

/// Two nodes on an underlay of `underlay_mtu`, pods `a` and `b`; checks the
/// MTU everywhere and returns the cluster for more pings.
fn cluster_with_mtu(underlay_mtu: u32) -> (Cluster, u32) {
    let opts = ClusterOpts {
        underlay_mtu,
        ..ClusterOpts::default()
    };
    let mut c = Cluster::new(2, opts);
    let mtu = underlay_mtu - VXLAN_OVERHEAD;
    assert_eq!(c.node(0).subnet_env().mtu, mtu);
    c.node_mut(0).add_pod("a");
    c.node_mut(1).add_pod("b");
    let node = c.node(0);
    let vx = node.netns().ip_json(&["link", "show", &node.vxlan_dev()]);
    assert_eq!(vx[0]["mtu"], mtu);
    let link = node.pod("a").netns().ip_json(&["link", "show", "eth0"]);
    assert_eq!(link[0]["mtu"], mtu);
    (c, mtu)
}

#[test]
fn full_size_packets_cross_and_oversized_fail_at_the_sender() {
    harness::require_root!();
    let (c, mtu) = cluster_with_mtu(1500);
    assert_eq!(mtu, 1450);
    let (a, b) = (c.node(0).pod("a"), c.node(1).pod("b"));
    // 1400-byte packets, a 1400-byte payload, and exactly the MTU all cross.
    for payload in [1400 - HEADERS, 1400, mtu - HEADERS] {
        let out = df_ping(a, b, payload);
        assert!(out.status.success(), "payload {payload}: {}", text(&out));
    }
    // One byte more is refused by the sender's own stack.
    let out = df_ping(a, b, mtu - HEADERS + 1);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("message too long"), "{}", text(&out));
    assert!(text(&out).contains("mtu=1450"), "{}", text(&out));
}

#[test]
fn a_jumbo_underlay_gives_jumbo_pods() {
    harness::require_root!();
    let (c, mtu) = cluster_with_mtu(9000);
    assert_eq!(mtu, 8950);
    let (a, b) = (c.node(0).pod("a"), c.node(1).pod("b"));
    let out = df_ping(a, b, mtu - HEADERS);
    assert!(out.status.success(), "{}", text(&out));
    let out = df_ping(a, b, mtu - HEADERS + 1);
    assert!(text(&out).contains("message too long"), "{}", text(&out));
}
