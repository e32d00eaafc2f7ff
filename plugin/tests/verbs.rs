//! CHECK, STATUS and GC.

mod common;

use common::*;
use harness::Netns;
use serde_json::{json, Value};

fn with_prev(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}

/// CHECK passes on a fresh pod and names what a tamperer changed.
#[test]
fn check_passes_then_reports_tampering() {
    harness::require_root!();
    let node = Node::new();
    let conf = node.conf("1.0.0");
    let pod = Netns::new("flpk");
    let result = node.add("chk", &pod, &conf);
    let check = |c: &Value| node.call("CHECK", "chk", Some(&pod.path()), "eth0", c);
    // CHECK with `prev` as the recorded result.
    let check_prev = |prev: &Value| check(&with_prev(&conf, prev));
    let out = check_prev(&result);
    assert_success(&out);
    assert!(out.stdout.is_empty());

    pod.sh(&["ip", "route", "del", "10.244.0.0/16"]);
    let doc = error_doc(&check_prev(&result));
    assert_eq!(doc["code"], 106, "{doc}");
    assert_msg_contains(&doc, "route 10.244.0.0/16 via 10.244.3.1 is missing");

    pod.ip("route add 10.244.0.0/16 via 10.244.3.1 dev eth0");
    assert_success(&check_prev(&result));
    let veth = node_state::host_veth_name("chk", "eth0");
    node.ns.sh(&["ip", "link", "set", &veth, "nomaster"]);
    assert_msg_contains(&error_doc(&check_prev(&result)), "is not on bridge cni0");

    // A MAC other than the recorded one, and no prevResult at all.
    let mut other = result.clone();
    other["interfaces"][2]["mac"] = json!("02:00:00:00:00:01");
    let doc = error_doc(&check_prev(&other));
    assert_msg_contains(&doc, "expected 02:00:00:00:00:01");
    assert_eq!(error_code(&check(&conf)), 7);
    // CHECK does not exist before 0.4.0.
    assert_eq!(
        error_code(&check(&with_prev(&node.conf("0.3.1"), &result))),
        1
    );
    node.del("chk", Some(&pod), &conf);
}

/// STATUS is 50 until subnet.env exists, then succeeds silently.
#[test]
fn status_follows_subnet_env() {
    harness::require_root!();
    let node = Node::without_subnet_env();
    let conf = node.conf("1.1.0");
    let status = || node.call("STATUS", "", None, "", &conf);
    let doc = error_doc(&status());
    assert_eq!(doc["code"], 50, "{doc}");
    assert_eq!(doc["cniVersion"], "1.1.0");
    node.write_subnet_env("garbage\n");
    assert_eq!(error_code(&status()), 50);
    node.write_subnet_env(SUBNET_ENV);
    let out = status();
    assert_success(&out);
    assert!(out.stdout.is_empty());
    // STATUS came with 1.1.0.
    let out = node.call("STATUS", "", None, "", &node.conf("1.0.0"));
    assert_eq!(error_code(&out), 1);
}

/// GC releases every attachment not listed as valid: IP, veth, saved config.
#[test]
fn gc_keeps_only_valid_attachments() {
    harness::require_root!();
    let node = Node::new();
    let conf = node.conf("1.1.0");
    let pods: Vec<Netns> = (0..3).map(|_| Netns::new("flpz")).collect();
    let results: Vec<Value> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| node.add(&format!("gc{i}"), p, &conf))
        .collect();
    // A leftover the reference wrote (\n, as Debian's host-local 1.1.1 may).
    std::fs::write(node.store().join("10.244.3.200"), "ghost\neth0").unwrap();

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "gc1", "ifname": "eth0"}]);
    let out = node.call("GC", "", None, "", &gc);
    assert_success(&out);
    assert!(out.stdout.is_empty());

    let kept_ip = result_ip(&results[1]);
    assert_eq!(node.allocated(), [(kept_ip, "gc1\r\neth0".to_string())]);
    assert_eq!(node.saved_configs(), ["gc1"]);
    assert_eq!(link_names(&pods[0]), ["lo"], "released pod keeps no veth");
    assert_eq!(link_names(&pods[2]), ["lo"]);
    assert!(ping(&pods[1], "10.244.3.1"), "the valid pod still works");

    // cni.dev/attachments (older libcni) is read too; an empty list
    // releases everything.
    let mut gc = conf.clone();
    gc["cni.dev/attachments"] = json!([]);
    assert_success(&node.call("GC", "", None, "", &gc));
    assert!(node.allocated().is_empty());
    assert_eq!(node.links(), ["lo", "cni0"]);
    // Without the list GC refuses rather than releasing everything.
    assert_eq!(error_code(&node.call("GC", "", None, "", &conf)), 7);
}
