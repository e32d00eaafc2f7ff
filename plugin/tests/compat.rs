//! Side by side with the reference plugins (Debian's containernetworking-
//! plugins in /usr/lib/cni): same result document, one shared IPAM store,
//! and state left by flannel + bridge taken over by our DEL.

mod common;

use common::*;
use harness::Netns;
use serde_json::{json, Value};

const BRIDGE: &str = "/usr/lib/cni/bridge";
const HOST_LOCAL: &str = "/usr/lib/cni/host-local";

fn reference_env(command: &str, id: &str, pod: &Netns) -> Vec<(&'static str, String)> {
    vec![
        ("CNI_COMMAND", command.to_string()),
        ("CNI_CONTAINERID", id.to_string()),
        ("CNI_NETNS", pod.path().display().to_string()),
        ("CNI_IFNAME", "eth0".into()),
        ("CNI_PATH", "/usr/lib/cni".into()),
    ]
}

/// MACs and the host veth name are random/derived: everything else must
/// be equal.
fn normalized(mut result: Value) -> Value {
    for iface in result["interfaces"].as_array_mut().unwrap() {
        iface["mac"] = json!("MAC");
        if iface["name"].as_str().unwrap().starts_with("veth") {
            iface["name"] = json!("VETH");
        }
    }
    result
}

/// The reference bridge + host-local, fed the delegate config flannel
/// would give it (which is what ADD saved), print the same document.
#[test]
fn result_equals_the_reference_bridge() {
    harness::require_root!();
    let ours = Node::new();
    let theirs = Node::new();
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0"] {
        let (p1, p2) = (Netns::new("flpr"), Netns::new("flpq"));
        let id = format!("cmp-{version}");
        let mine = ours.add(&id, &p1, &ours.conf(version));
        let delegate = std::fs::read(ours.data_dir().join(&id)).unwrap();
        let mut delegate: Value = serde_json::from_slice(&delegate).unwrap();
        delegate["ipam"]["dataDir"] = json!(theirs.dir.join("ipam"));
        let stdin = delegate.to_string();
        let out = theirs.exec_plugin(BRIDGE, &reference_env("ADD", &id, &p2), stdin.as_bytes());
        let reference = ok_json(&out);
        let sandbox = |r: &mut Value| r["interfaces"][2]["sandbox"] = json!("SANDBOX");
        let (mut mine, mut reference) = (normalized(mine), normalized(reference));
        sandbox(&mut mine);
        sandbox(&mut reference);
        assert_eq!(mine, reference, "version {version}");
        assert_eq!(pod_routes(&p1), pod_routes(&p2));
        let out = theirs.exec_plugin(BRIDGE, &reference_env("DEL", &id, &p2), stdin.as_bytes());
        assert_success(&out);
        ours.del(&id, Some(&p1), &ours.conf(version));
    }
}

/// One store, two allocators: each honours the other's reservations and
/// cursor, and each can release what the other wrote.
#[test]
fn ipam_store_is_shared_with_reference_host_local() {
    harness::require_root!();
    let node = Node::new();
    let conf = node.conf("0.3.1");
    let ipam = json!({
        "cniVersion": "0.3.1", "name": "cbr0",
        "ipam": {"type": "host-local", "dataDir": node.dir.join("ipam"),
                 "ranges": [[{"subnet": "10.244.3.0/24"}]]},
    })
    .to_string();
    let pods: Vec<Netns> = (0..4).map(|_| Netns::new("flph")).collect();
    let host_local = |command: &str, id: &str, pod: &Netns| {
        let out = node.exec_plugin(
            HOST_LOCAL,
            &reference_env(command, id, pod),
            ipam.as_bytes(),
        );
        if command == "ADD" {
            result_ip(&ok_json(&out)).to_string()
        } else {
            assert_success(&out);
            String::new()
        }
    };
    let ip = |r: Value| result_ip(&r).to_string();
    assert_eq!(ip(node.add("ours-1", &pods[0], &conf)), "10.244.3.2");
    assert_eq!(host_local("ADD", "theirs-1", &pods[1]), "10.244.3.3");
    assert_eq!(ip(node.add("ours-2", &pods[2], &conf)), "10.244.3.4");
    assert_eq!(host_local("ADD", "theirs-2", &pods[3]), "10.244.3.5");
    // Their file, read back by us; ours, released by them.
    let files = node.allocated();
    assert_eq!(
        files[1],
        ("10.244.3.3".parse().unwrap(), "theirs-1\r\neth0".into())
    );
    host_local("DEL", "ours-1", &pods[0]);
    assert!(!node
        .allocated()
        .iter()
        .any(|(ip, _)| ip.to_string() == "10.244.3.2"));
    node.del("theirs-1", None, &conf);
    let left: Vec<String> = node
        .allocated()
        .iter()
        .map(|(ip, _)| ip.to_string())
        .collect();
    assert_eq!(left, ["10.244.3.4", "10.244.3.5"]);
    // The cursor is shared: the next address follows the last one reserved.
    assert_eq!(host_local("ADD", "theirs-3", &pods[1]), "10.244.3.6");
    node.del("ours-1", Some(&pods[0]), &conf);
    node.del("ours-2", Some(&pods[2]), &conf);
    host_local("DEL", "theirs-2", &pods[3]);
    host_local("DEL", "theirs-3", &pods[1]);
    assert!(node.allocated().is_empty());
}

/// A pod added by flannel's plugin (saved delegate config, bridge's veth,
/// IP file and masquerade chain) is fully removed by our DEL.
#[test]
fn del_takes_over_what_flannel_and_bridge_left() {
    harness::require_root!();
    let node = Node::new();
    node.write_subnet_env(&SUBNET_ENV.replace("IPMASQ=true", "IPMASQ=false"));
    let pod = Netns::new("flpo");
    // flannel's plugin: the delegate config it saves, then bridge's ADD.
    let delegate = json!({
        "cniVersion": "0.3.1", "hairpinMode": true, "ipMasq": true,
        "ipam": {"dataDir": node.dir.join("ipam"), "ranges": [[{"subnet": "10.244.3.0/24"}]],
                 "routes": [{"dst": "10.244.0.0/16"}], "type": "host-local"},
        "isDefaultGateway": true, "isGateway": true, "mtu": 1450, "name": "cbr0", "type": "bridge",
    });
    std::fs::create_dir_all(node.data_dir()).unwrap();
    std::fs::write(node.data_dir().join("old-pod"), delegate.to_string()).unwrap();
    let out = node.exec_plugin(
        BRIDGE,
        &reference_env("ADD", "old-pod", &pod),
        delegate.to_string().as_bytes(),
    );
    let result = ok_json(&out);
    assert!(node.nat_rules().contains("id: \\\"old-pod\\\""));
    std::fs::remove_file(node.subnet_file()).unwrap();

    node.del("old-pod", Some(&pod), &node.conf("0.3.1"));
    assert_eq!(link_names(&pod), ["lo"]);
    assert!(node.allocated().is_empty(), "{result}");
    assert!(
        !node.nat_rules().contains("old-pod"),
        "{}",
        node.nat_rules()
    );
    assert!(node.saved_configs().is_empty());
}
