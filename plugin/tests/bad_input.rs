//! Every refused ADD: the right code, the error JSON on stdout, a non-zero
//! exit, and nothing left behind (no link, no address, no file).

mod common;

use common::*;
use harness::Netns;
use serde_json::{json, Value};

/// Nothing of the failed ADD is left in the node, the pod or on disk.
fn assert_untouched(node: &Node, pod: &Netns, node_links: &[&str], pod_links: &[&str]) {
    assert_eq!(node.links(), node_links, "node links");
    assert_eq!(link_names(pod), pod_links, "pod links");
    assert!(node.allocated().is_empty(), "IPs: {:?}", node.allocated());
    assert!(
        node.saved_configs().is_empty(),
        "saved: {:?}",
        node.saved_configs()
    );
}

/// The CNI environment of an ADD of `id` into `pod` (no CNI_ARGS), for a
/// case to change or add to.
fn add_env(id: &str, pod: &Netns) -> Vec<(&'static str, String)> {
    vec![
        ("CNI_COMMAND", "ADD".to_string()),
        ("CNI_CONTAINERID", id.to_string()),
        ("CNI_NETNS", pod.path().display().to_string()),
        ("CNI_IFNAME", "eth0".into()),
        ("CNI_PATH", "/opt/cni/bin".into()),
    ]
}

/// The error document of an ADD of `id` into `pod` that must fail.
fn refused_add(node: &Node, id: &str, pod: &Netns, conf: &Value) -> Value {
    error_doc(&node.call("ADD", id, Some(&pod.path()), "eth0", conf))
}

#[test]
fn bad_environment_is_code_4() {
    harness::require_root!();
    let node = Node::new();
    let pod = Netns::new("flpe");
    let conf = node.conf("0.3.1").to_string();
    let not_netns = node.dir.join("plain-file");
    std::fs::write(&not_netns, "").unwrap();
    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("id with space", vec![("CNI_CONTAINERID", "a b".into())]),
        (
            "id starting with -",
            vec![("CNI_CONTAINERID", "-ab".into())],
        ),
        ("id with slash", vec![("CNI_CONTAINERID", "../ab".into())]),
        ("ifname with /", vec![("CNI_IFNAME", "eth/0".into())]),
        ("ifname with :", vec![("CNI_IFNAME", "eth:0".into())]),
        ("ifname with space", vec![("CNI_IFNAME", "eth 0".into())]),
        (
            "ifname too long",
            vec![("CNI_IFNAME", "abcdefghijklmnop".into())],
        ),
        ("ifname .", vec![("CNI_IFNAME", ".".into())]),
        ("ifname ..", vec![("CNI_IFNAME", "..".into())]),
        (
            "netns missing",
            vec![("CNI_NETNS", "/run/netns/does-not-exist-flpt".into())],
        ),
        (
            "netns not a namespace",
            vec![("CNI_NETNS", not_netns.display().to_string())],
        ),
        (
            "netns of the plugin itself",
            vec![("CNI_NETNS", node.ns.path().display().to_string())],
        ),
        ("no container id", vec![("CNI_CONTAINERID", String::new())]),
        ("no netns", vec![("CNI_NETNS", String::new())]),
        ("unknown CNI_ARGS", vec![("CNI_ARGS", "FOO=1".into())]),
        ("unknown command", vec![("CNI_COMMAND", "FROB".into())]),
    ];
    for (what, overrides) in cases {
        let mut env = add_env("good-id", &pod);
        for (k, v) in overrides {
            env.retain(|(key, _)| *key != k);
            env.push((k, v));
        }
        let out = node.exec_plugin(PLUGIN, &env, conf.as_bytes());
        let doc = error_doc(&out);
        assert_eq!(doc["code"], 4, "{what}: {doc}");
        assert_eq!(
            doc["cniVersion"], "0.3.1",
            "{what}: replies in the caller's version"
        );
        assert_untouched(&node, &pod, &["lo"], &["lo"]);
    }
}

#[test]
fn bad_config_is_code_1_6_or_7() {
    harness::require_root!();
    let node = Node::new();
    let pod = Netns::new("flpc");
    let good = node.conf("0.3.1");
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        f(&mut c);
        c.to_string()
    };
    let cases: Vec<(&str, String, u64)> = vec![
        ("not JSON", "{\"cniVersion\":".into(), 6),
        (
            "unsupported version",
            with(&|c| c["cniVersion"] = json!("9.9.9")),
            1,
        ),
        (
            "no version",
            with(&|c| {
                c.as_object_mut().unwrap().remove("cniVersion");
            }),
            1,
        ),
        (
            "no name",
            with(&|c| {
                c.as_object_mut().unwrap().remove("name");
            }),
            7,
        ),
        (
            "delegate with name",
            with(&|c| c["delegate"]["name"] = json!("x")),
            7,
        ),
        (
            "delegate with ipam",
            with(&|c| c["delegate"]["ipam"] = json!({})),
            7,
        ),
        (
            "delegate type ipvlan",
            with(&|c| c["delegate"]["type"] = json!("ipvlan")),
            7,
        ),
        (
            "mtu too small",
            with(&|c| c["delegate"]["mtu"] = json!(10)),
            7,
        ),
        (
            "mtu not a number",
            with(&|c| c["delegate"]["mtu"] = json!("big")),
            6,
        ),
        (
            "hairpin not a bool",
            with(&|c| c["delegate"]["hairpinMode"] = json!("yes")),
            6,
        ),
        (
            "bad bridge name",
            with(&|c| c["delegate"]["bridge"] = json!("br/0")),
            7,
        ),
        (
            "ipam type dhcp",
            with(&|c| c["ipam"]["type"] = json!("dhcp")),
            7,
        ),
        (
            "bad ipam route",
            with(&|c| c["ipam"]["routes"] = json!([{"dst": "nope"}])),
            6,
        ),
    ];
    for (what, stdin, code) in cases {
        let out = node.exec_plugin(PLUGIN, &add_env("good-id", &pod), stdin.as_bytes());
        let doc = error_doc(&out);
        assert_eq!(doc["code"], code, "{what}: {doc}");
        assert!(!doc["msg"].as_str().unwrap().is_empty());
        assert_untouched(&node, &pod, &["lo"], &["lo"]);
    }
}

/// flanneld has not written subnet.env yet: try again later.
#[test]
fn missing_subnet_env_is_try_again_later() {
    harness::require_root!();
    let node = Node::without_subnet_env();
    let pod = Netns::new("flpn");
    let doc = refused_add(&node, "early", &pod, &node.conf("0.3.1"));
    assert_eq!(doc["code"], 11, "{doc}");
    assert_msg_contains(&doc, "subnet.env");
    assert_untouched(&node, &pod, &["lo"], &["lo"]);
}

/// CNI_IFNAME already in the pod: refused, the pod's own link untouched.
#[test]
fn existing_ifname_is_refused() {
    harness::require_root!();
    let node = Node::new();
    let pod = Netns::new("flpi");
    pod.sh(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
    ]);
    let doc = refused_add(&node, "dup-if", &pod, &node.conf("0.3.1"));
    assert_eq!(doc["code"], 102, "{doc}");
    assert_msg_contains(&doc, "eth0");
    assert_untouched(&node, &pod, &["lo"], &["lo", "other0", "eth0"]);
}

/// A bridge with another address and ports attached is refused unless
/// forceAddress, naming the ports.
#[test]
fn bridge_with_other_address_needs_force_address() {
    harness::require_root!();
    let node = Node::new();
    let pod = Netns::new("flpf");
    node.ns.sh(&["ip", "link", "add", "cni0", "type", "bridge"]);
    node.ns
        .sh(&["ip", "addr", "add", "10.9.9.1/24", "dev", "cni0"]);
    node.ns.sh(&[
        "ip", "link", "add", "port0", "master", "cni0", "type", "veth", "peer", "name", "peer0",
    ]);
    let mut conf = node.conf("0.3.1");
    let doc = refused_add(&node, "force", &pod, &conf);
    assert_eq!(doc["code"], 103, "{doc}");
    assert_msg_contains(
        &doc,
        "already has an IP address different from 10.244.3.1/24, and ports attached: port0",
    );
    assert_untouched(&node, &pod, &["lo", "cni0", "peer0", "port0"], &["lo"]);
    let addrs = node.ns.ip_json(&["-4", "addr", "show", "cni0"]);
    assert_eq!(addrs[0]["addr_info"][0]["local"], "10.9.9.1");

    conf["delegate"]["forceAddress"] = json!(true);
    node.add("force", &pod, &conf);
    let addrs = node.ns.ip_json(&["-4", "addr", "show", "cni0"]);
    let locals: Vec<&Value> = addrs[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["local"])
        .collect();
    assert_eq!(locals, [&json!("10.244.3.1")]);
    node.del("force", Some(&pod), &conf);
}

/// An exhausted range names itself; the failed ADD leaves nothing.
#[test]
fn exhausted_range_is_a_clear_error() {
    harness::require_root!();
    let node = Node::new();
    node.write_subnet_env(&SUBNET_ENV.replace("10.244.3.1/24", "10.244.3.1/30"));
    let conf = node.conf("0.3.1");
    let (a, b) = (Netns::new("flpx"), Netns::new("flpy"));
    let first = node.add("first", &a, &conf);
    assert_eq!(result_ip(&first).to_string(), "10.244.3.2");
    let doc = refused_add(&node, "second", &b, &conf);
    assert_eq!(doc["code"], 101, "{doc}");
    assert_eq!(
        doc["msg"],
        "no IP addresses available in range set: 10.244.3.1-10.244.3.2"
    );
    assert_eq!(link_names(&b), ["lo"]);
    let veth = node_state::host_veth_name("second", "eth0");
    assert!(!node.links().contains(&veth));
    assert_eq!(node.allocated().len(), 1);
    assert_eq!(node.saved_configs(), ["first"]);
    node.del("first", Some(&a), &conf);
}

/// A failure after the veth and the IP exist (here: no iptables to apply
/// the masquerade with) rolls everything back.
#[test]
fn failure_after_changes_rolls_back() {
    harness::require_root!();
    let node = Node::new();
    node.write_subnet_env(&SUBNET_ENV.replace("IPMASQ=true", "IPMASQ=false"));
    let pod = Netns::new("flpr");
    let mut env = add_env("rollback", &pod);
    env.push(("PATH", "/nonexistent".into()));
    let conf = node.conf("0.3.1").to_string();
    let out = node.exec_plugin(PLUGIN, &env, conf.as_bytes());
    let doc = error_doc(&out);
    assert_eq!(doc["code"], 107, "{doc}");
    assert_msg_contains(&doc, "iptables-restore");
    // The bridge is shared node state and stays; the pod's part is gone.
    assert_untouched(&node, &pod, &["lo", "cni0"], &["lo"]);
}

/// CNI_ARGS IP= asks for an address; a taken one is refused (code 108).
#[test]
fn requested_address_is_honoured_or_refused() {
    harness::require_root!();
    let node = Node::new();
    let (a, b) = (Netns::new("flpu"), Netns::new("flpw"));
    let conf = node.conf("1.0.0").to_string();
    let add = |id: &str, pod: &Netns| {
        let mut env = add_env(id, pod);
        let args = "IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.244.3.77";
        env.push(("CNI_ARGS", args.into()));
        node.exec_plugin(PLUGIN, &env, conf.as_bytes())
    };
    let result = ok_json(&add("want77", &a));
    assert_eq!(result_ip(&result).to_string(), "10.244.3.77");
    let doc = error_doc(&add("also77", &b));
    assert_eq!(doc["code"], 108, "{doc}");
    assert_eq!(link_names(&b), ["lo"]);
    assert_eq!(node.allocated().len(), 1);
    node.del("want77", Some(&a), &node.conf("1.0.0"));
}

/// The derived host veth name already taken: refused, and what ADD did up
/// to that point (saved config, IP) is undone; the other link stays.
#[test]
fn taken_host_veth_name_is_refused() {
    harness::require_root!();
    let node = Node::new();
    let pod = Netns::new("flpt");
    let name = node_state::host_veth_name("clash", "eth0");
    node.ns.sh(&[
        "ip", "link", "add", &name, "type", "veth", "peer", "name", "clash1",
    ]);
    let doc = refused_add(&node, "clash", &pod, &node.conf("0.3.1"));
    assert_eq!(doc["code"], 104, "{doc}");
    assert_msg_contains(&doc, &name);
    let mut links = node.links();
    links.sort();
    let mut expected = vec!["clash1".to_string(), "cni0".into(), "lo".into(), name];
    expected.sort();
    assert_eq!(links, expected);
    assert_untouched_files(&node, &pod);
}

fn assert_untouched_files(node: &Node, pod: &Netns) {
    assert_eq!(link_names(pod), ["lo"]);
    assert!(node.allocated().is_empty(), "IPs: {:?}", node.allocated());
    assert!(
        node.saved_configs().is_empty(),
        "saved: {:?}",
        node.saved_configs()
    );
}
