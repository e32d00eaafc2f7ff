//! ADD and DEL as kubelet runs them: real namespaces, real packets.

mod common;

use std::collections::HashSet;

use common::*;
use harness::Netns;
use serde_json::{json, Value};

/// kube-flannel's config, unchanged: the pod is wired, reaches the gateway
/// and the other pod, and the result is the reference's shape.
#[test]
fn add_wires_pods_that_reach_the_gateway_and_each_other() {
    harness::require_root!();
    let node = Node::new();
    let conf = node.conf("0.3.1");
    let (a, b) = (Netns::new("flpa"), Netns::new("flpb"));
    let ra = node.add("pod-a", &a, &conf);
    let rb = node.add("pod-b", &b, &conf);
    assert_eq!(result_ip(&ra).to_string(), "10.244.3.2");
    assert_eq!(result_ip(&rb).to_string(), "10.244.3.3");

    assert_result_describes_live_state(&node, &a, "pod-a", &ra);
    assert!(ping(&a, "10.244.3.1"), "pod a cannot reach the gateway");
    assert!(ping(&a, "10.244.3.3"), "pod a cannot reach pod b");
    assert!(ping(&b, "10.244.3.2"), "pod b cannot reach pod a");
    assert_eq!(
        pod_routes(&a),
        [
            "10.244.0.0/16 via 10.244.3.1 dev eth0",
            "10.244.3.0/24 dev eth0",
            "default via 10.244.3.1 dev eth0"
        ]
    );
    let forward = node.ns.sh(&["cat", "/proc/sys/net/ipv4/ip_forward"]);
    assert_eq!(forward.trim(), "1");

    node.del("pod-a", Some(&a), &conf);
    node.del("pod-b", Some(&b), &conf);
    assert_no_pods_left(&node);
}

/// Every pod is gone: no reserved IP, no saved config, and of the links
/// only `lo` and the bridge (node state, which stays).
fn assert_no_pods_left(node: &Node) {
    assert_eq!(node.links(), ["lo", "cni0"], "the bridge stays, veths go");
    assert!(node.allocated().is_empty(), "IPs: {:?}", node.allocated());
    assert!(
        node.saved_configs().is_empty(),
        "saved: {:?}",
        node.saved_configs()
    );
}

/// Interfaces, IPs and routes of the result match what `ip` shows.
fn assert_result_describes_live_state(node: &Node, pod: &Netns, id: &str, result: &Value) {
    let host_veth = node_state::host_veth_name(id, "eth0");
    let bridge = &node.ns.ip_json(&["link", "show", "cni0"])[0];
    let veth = &node.ns.ip_json(&["-d", "link", "show", &host_veth])[0];
    let eth0 = &pod.ip_json(&["link", "show", "eth0"])[0];
    let expected = json!({
        "cniVersion": "0.3.1",
        "interfaces": [
            {"name": "cni0", "mac": bridge["address"]},
            {"name": host_veth, "mac": veth["address"]},
            {"name": "eth0", "mac": eth0["address"], "sandbox": pod.path()},
        ],
        "ips": [{"version": "4", "interface": 2, "address": "10.244.3.2/24", "gateway": "10.244.3.1"}],
        "routes": [{"dst": "10.244.0.0/16"}, {"dst": "0.0.0.0/0", "gw": "10.244.3.1"}],
        "dns": {},
    });
    assert_eq!(result, &expected);
    assert_eq!(veth["master"], "cni0");
    assert_eq!(veth["mtu"], 1450);
    assert_eq!(eth0["mtu"], 1450);
    assert_eq!(bridge["mtu"], 1450);
    assert_eq!(veth["linkinfo"]["info_slave_data"]["hairpin"], true);
    let addrs = node.ns.ip_json(&["-4", "addr", "show", "cni0"]);
    let info = &addrs[0]["addr_info"][0];
    assert_eq!(
        (info["local"].as_str(), info["prefixlen"].as_u64()),
        (Some("10.244.3.1"), Some(24))
    );
    assert_eq!(info["broadcast"], "10.244.3.255");
    let file = ("10.244.3.2".parse().unwrap(), format!("{id}\r\neth0"));
    assert_eq!(node.allocated()[0], file);
}

/// Every version is answered in its own format.
#[test]
fn result_is_written_in_the_callers_version() {
    harness::require_root!();
    let node = Node::new();
    for (i, version) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
        .iter()
        .enumerate()
    {
        let pod = Netns::new("flpv");
        let id = format!("v{i}");
        let result = node.add(&id, &pod, &node.conf(version));
        assert_eq!(result["cniVersion"], *version);
        let has_version = result["ips"][0].get("version").is_some();
        assert_eq!(has_version, version.starts_with("0."), "{result}");
        node.del(&id, Some(&pod), &node.conf(version));
    }
    let out = node.exec_plugin(PLUGIN, &[("CNI_COMMAND", "VERSION".into())], b"");
    assert_eq!(
        ok_json(&out),
        json!({"cniVersion": "1.1.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );
}

/// DEL is idempotent, and works without the namespace (gone or not given).
#[test]
fn del_twice_and_without_netns_releases_everything() {
    harness::require_root!();
    let node = Node::new();
    let conf = node.conf("0.3.1");
    let pod = Netns::new("flpd");
    node.add("twice", &pod, &conf);
    node.del("twice", Some(&pod), &conf);
    node.del("twice", Some(&pod), &conf);
    assert!(node.allocated().is_empty());

    // CNI_NETNS not given while the namespace still exists: the host end
    // is found by its derived name.
    node.add("nonetns", &pod, &conf);
    node.del("nonetns", None, &conf);
    assert_eq!(link_names(&pod), ["lo"]);
    assert_eq!(node.links(), ["lo", "cni0"]);

    // The namespace is gone (the pod end and its pair went with it).
    let gone = Netns::new("flpg");
    node.add("gone", &gone, &conf);
    let path = gone.path();
    drop(gone);
    let out = node.call("DEL", "gone", Some(&path), "eth0", &conf);
    assert_success(&out);
    node.del("gone", None, &conf);
    assert_no_pods_left(&node);
}

/// DEL reads back the config ADD saved: subnet.env may be gone by then.
#[test]
fn del_works_from_the_saved_config_without_subnet_env() {
    harness::require_root!();
    let node = Node::new();
    let conf = node.conf("0.3.1");
    let pod = Netns::new("flps");
    node.add("saved", &pod, &conf);
    let saved = std::fs::read_to_string(node.data_dir().join("saved")).unwrap();
    let saved: Value = serde_json::from_str(&saved).unwrap();
    assert_eq!(saved["type"], "bridge");
    assert_eq!(
        saved["ipam"]["ranges"],
        json!([[{"subnet": "10.244.3.0/24"}]])
    );
    std::fs::remove_file(node.subnet_file()).unwrap();
    node.del("saved", None, &conf);
    assert!(node.allocated().is_empty());
    assert_eq!(link_names(&pod), ["lo"]);
    assert!(node.saved_configs().is_empty());
}

/// 32 ADDs at once get 32 distinct addresses; 32 DELs leave nothing.
#[test]
fn parallel_adds_and_dels() {
    harness::require_root!();
    let node = Node::new();
    let conf = node.conf("0.3.1");
    let pods: Vec<Netns> = (0..32).map(|_| Netns::new("flpp")).collect();
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                let (node, conf) = (&node, &conf);
                s.spawn(move || node.add(&format!("par{i}"), pod, conf))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ips: HashSet<_> = results.iter().map(result_ip).collect();
    assert_eq!(ips.len(), 32, "addresses were handed out twice");
    assert_eq!(node.allocated().len(), 32);
    assert_eq!(node.links().len(), 2 + 32);
    assert!(ping(&pods[0], result_ip(&results[31])));

    std::thread::scope(|s| {
        for (i, pod) in pods.iter().enumerate() {
            let (node, conf) = (&node, &conf);
            s.spawn(move || node.del(&format!("par{i}"), Some(pod), conf));
        }
    });
    assert_no_pods_left(&node);
}

/// ipMasq (FLANNEL_IPMASQ=false): the pod's masquerade chain comes with
/// ADD and goes with DEL, even without the namespace.
#[test]
fn masquerade_rules_follow_the_pod() {
    harness::require_root!();
    let node = Node::new();
    node.write_subnet_env(&SUBNET_ENV.replace("IPMASQ=true", "IPMASQ=false"));
    let conf = node.conf("0.3.1");
    let pod = Netns::new("flpm");
    node.add("masq1", &pod, &conf);
    let chain = "CNI-".to_string() + &chain_hash("cbr0masq1");
    let rules = node.nat_rules();
    let comment = r#"--comment "name: \"cbr0\" id: \"masq1\"""#;
    let expected = [
        format!("-A POSTROUTING -s 10.244.3.2/32 -m comment {comment} -j {chain}"),
        format!("-A {chain} -d 10.244.3.0/24 -m comment {comment} -j ACCEPT"),
        format!("-A {chain} ! -d 224.0.0.0/4 -m comment {comment} -j MASQUERADE"),
    ];
    for rule in &expected {
        assert!(
            rules.lines().any(|l| l == rule),
            "missing {rule} in\n{rules}"
        );
    }
    drop(pod);
    node.del("masq1", None, &conf);
    let rules = node.nat_rules();
    assert!(!rules.contains(&chain), "left behind:\n{rules}");
    assert!(node.allocated().is_empty());
}

/// The chain name as the reference computes it (sha512 of name + ID).
fn chain_hash(input: &str) -> String {
    let out = harness::sh(&["sh", "-c", &format!("printf %s '{input}' | sha512sum")]);
    out[..24].to_string()
}
