//! Root test of the masquerade/forward rules (flannel's chains), read back
//! with `iptables-save` inside the node.

mod common;

use std::time::Duration;

use common::*;
use harness::{try_wait_until, wait_until, ClusterOpts, Netns, Node};

fn save(node: &Node) -> String {
    node.netns().sh(&["iptables-save"])
}

/// The `-A CHAIN` lines of `chain`, in order.
fn chain(save: &str, chain: &str) -> Vec<String> {
    let prefix = format!("-A {chain} ");
    save.lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

fn expected_masq(subnet: &str) -> Vec<String> {
    let c = "-m comment --comment \"flanneld masq\"";
    let n = "10.244.0.0/16";
    vec![
        format!("-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {c} -j RETURN"),
        format!("-A FLANNEL-POSTRTG -s {subnet} -d {n} {c} -j RETURN"),
        format!("-A FLANNEL-POSTRTG -s {n} -d {subnet} {c} -j RETURN"),
        format!("-A FLANNEL-POSTRTG ! -s {n} -d {subnet} {c} -j RETURN"),
        format!("-A FLANNEL-POSTRTG -s {n} ! -d 224.0.0.0/4 {c} -j MASQUERADE --random-fully"),
        format!("-A FLANNEL-POSTRTG ! -s {n} -d {n} {c} -j MASQUERADE --random-fully"),
    ]
}

const MASQ_JUMP: &str = "-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG";
const FWD_JUMP: &str = "-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD";

fn rules_in_place(node: &Node) -> bool {
    let s = save(node);
    chain(&s, "FLANNEL-POSTRTG") == expected_masq(&node.subnet())
        && chain(&s, "POSTROUTING")
            .iter()
            .filter(|l| *l == MASQ_JUMP)
            .count()
            == 1
        && chain(&s, "FLANNEL-FWD").len() == 2
        && chain(&s, "FORWARD")
            .iter()
            .filter(|l| *l == FWD_JUMP)
            .count()
            == 1
}

/// Waits up to `timeout` for all of flanneld's rules; panics with the
/// ruleset when they are not in place.
fn assert_rules_in_place_within(node: &Node, timeout: Duration) {
    let done = try_wait_until(timeout, || rules_in_place(node));
    assert!(done.is_some(), "{}", save(node));
}

/// Runs `iptables -t TABLE RULE` in `ns`, `rule` written as `iptables-save`
/// prints it (split on spaces, a `"..."` is one argument).
fn iptables(ns: &Netns, table: &str, rule: &str) {
    let mut args = vec!["iptables", "-t", table];
    for (i, part) in rule.split('"').enumerate() {
        if i % 2 == 1 {
            args.push(part);
        } else {
            args.extend(part.split_whitespace());
        }
    }
    ns.sh(&args);
}

#[test]
fn masquerade_rules_are_flannels_kept_and_old_ones_replaced() {
    harness::require_root!();
    let opts = ClusterOpts::default()
        .flanneld_arg("--ip-masq")
        .flanneld_arg("--iptables-resync=1");
    let mut cluster = one_node(opts);
    let node = cluster.node(0);
    assert_rules_in_place_within(node, Duration::from_secs(5));
    assert_eq!(
        chain(&save(node), "FLANNEL-FWD"),
        [
            "-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT",
            "-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT"
        ]
    );
    assert!(node.subnet_env().ipmasq);
    // Resyncs every second change nothing that is right: two more of them.
    let syncs = || node.metric("flanneld_firewall_syncs_total");
    let two_more = syncs() + 2.0;
    wait_until(Duration::from_secs(10), "two more firewall resyncs", || {
        syncs() >= two_more
    });
    assert_eq!(
        node.flanneld_log()
            .matches("firewall rules updated")
            .count(),
        1,
        "{}",
        node.flanneld_log()
    );

    // Someone else's rules, a stale rule for another subnet in our chain,
    // a duplicate jump: ours are fixed, theirs stay.
    let node = cluster.node_mut(0);
    node.stop_flanneld();
    let ns = node.netns();
    iptables(ns, "nat", "-A POSTROUTING -s 10.9.9.0/24 -j MASQUERADE");
    iptables(ns, "nat", "-A FLANNEL-POSTRTG -s 10.244.99.0/24 -j RETURN");
    iptables(ns, "nat", MASQ_JUMP); // a second, duplicate jump
    iptables(
        ns,
        "filter",
        "-D FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT",
    );
    node.start_flanneld();
    node.wait_ready();
    let node = cluster.node(0);
    assert_rules_in_place_within(node, Duration::from_secs(5));
    let s = save(node);
    assert!(!s.contains("10.244.99.0/24"), "{s}");
    assert!(
        chain(&s, "POSTROUTING")
            .contains(&"-A POSTROUTING -s 10.9.9.0/24 -j MASQUERADE".to_string()),
        "{s}"
    );

    // Deleted by hand: back at the next resync.
    node.netns()
        .sh(&["iptables", "-t", "nat", "-F", "FLANNEL-POSTRTG"]);
    assert_rules_in_place_within(node, Duration::from_secs(3));
}
