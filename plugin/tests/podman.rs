//! A real CNI client: podman (CNI backend, through libcni) runs a container
//! inside a node namespace with this plugin as its network.

mod common;

use common::*;
use harness::Podman;

#[test]
fn podman_container_gets_the_plugins_address_and_releases_it() {
    harness::require_root!();
    let node = Node::new();
    let pm = Podman::new(&node.cni(&node.conf("1.0.0")));
    let ip = pm.run_container("c1");
    assert_eq!(ip, "10.244.3.2");
    let store = node.dir.join("ipam").join(pm.network());
    assert!(store.join(&ip).exists(), "no reservation for {ip}");

    // The container's eth0 carries that address, and reaches the gateway.
    let addr = pm.busybox("c1", "ip -4 -o addr show eth0");
    assert!(addr.contains(&format!("inet {ip}/24")), "{addr}");
    let ping = pm.busybox("c1", "ping -c 1 -W 2 10.244.3.1");
    assert!(ping.contains("1 packets received"), "{ping}");
    assert_eq!(
        node.links().len(),
        3,
        "lo, cni0 and the host veth: {:?}",
        node.links()
    );

    // Removal runs DEL: address, veth and saved config go.
    pm.remove("c1");
    assert!(allocated_in(&store).is_empty(), "{ip} still reserved");
    assert_eq!(node.links(), ["lo", "cni0"]);
    assert!(node.saved_configs().is_empty());
}
