//! A real CNI client: podman (CNI backend) runs containers on two nodes
//! through the plugin, and they ping each other across nodes.

use harness::{network_of, split_cidr, Cluster, ClusterOpts, Node, Podman};

fn ipam_file(node: &Node, ip: &str) -> bool {
    let dir = node.dir().join("ipam");
    std::fs::read_dir(&dir).is_ok_and(|nets| nets.flatten().any(|net| net.path().join(ip).exists()))
}

/// The address is inside the node's subnet and reserved in its IPAM store.
fn assert_allocated(node: &Node, ip: &str) {
    let (net, _) = split_cidr(&node.subnet()).unwrap();
    let subnet = node.subnet();
    assert_eq!(
        network_of(ip.parse().unwrap(), 24),
        net,
        "{ip} outside {subnet}"
    );
    assert!(ipam_file(node, ip), "no IPAM reservation for {ip}");
}

#[test]
fn podman_containers_on_two_nodes_ping_each_other() {
    harness::require_root!();
    let c = Cluster::new(2, ClusterOpts::default());
    let (pm1, pm2) = (Podman::new(c.node(0).cni()), Podman::new(c.node(1).cni()));
    let ip1 = pm1.run_container("c1");
    let ip2 = pm2.run_container("c2");
    assert_allocated(c.node(0), &ip1);
    assert_allocated(c.node(1), &ip2);
    // The container's eth0 carries the address podman reported.
    let addr = pm1.busybox("c1", "ip -4 -o addr show eth0");
    assert!(addr.contains(&format!("inet {ip1}/24")), "{addr}");

    for (pm, name, dst) in [(&pm1, "c1", &ip2), (&pm2, "c2", &ip1)] {
        let out = pm.busybox(name, &format!("ping -c 1 -W 2 {dst}"));
        assert!(out.contains("1 packets received"), "{name} -> {dst}: {out}");
    }

    // Removing the container runs DEL: the address is released.
    pm1.remove("c1");
    assert!(
        !ipam_file(c.node(0), &ip1),
        "{ip1} still reserved after podman rm"
    );
}
