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
        .flanneld_arg("--iptables-resync=1")
        .flanneld_arg("--firewall=iptables");
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

/// `nft list table ip flannel-ipv4`, `None` when the table is absent.
fn nft_table(node: &Node) -> Option<String> {
    let out = node
        .netns()
        .exec(&["nft", "list", "table", "ip", "flannel-ipv4"]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The rule lines of `chain` in nft's listing of our table (comments off).
fn nft_chain(table: &str, chain: &str) -> Vec<String> {
    let start = format!("chain {chain} {{");
    table
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != start)
        .skip(2) // the header and the hook line
        .take_while(|l| *l != "}")
        .map(|l| l.split(" comment ").next().unwrap_or(l).to_owned())
        .collect()
}

fn expected_nft_masq(subnet: &str) -> Vec<String> {
    let n = "10.244.0.0/16";
    vec![
        "meta mark & 0x00004000 == 0x00004000 return".to_string(),
        format!("ip saddr {subnet} ip daddr {n} return"),
        format!("ip saddr {n} ip daddr {subnet} return"),
        format!("ip saddr != {n} ip daddr {subnet} return"),
        format!("ip saddr {n} ip daddr != 224.0.0.0/4 masquerade fully-random"),
        format!("ip saddr != {n} ip daddr {n} masquerade fully-random"),
    ]
}

fn nft_rules_in_place(node: &Node) -> bool {
    nft_table(node).is_some_and(|t| {
        nft_chain(&t, "postrtg") == expected_nft_masq(&node.subnet())
            && nft_chain(&t, "forward")
                == [
                    "ip saddr 10.244.0.0/16 accept",
                    "ip daddr 10.244.0.0/16 accept",
                ]
    })
}

fn assert_nft_rules_within(node: &Node, timeout: Duration) {
    let done = try_wait_until(timeout, || nft_rules_in_place(node));
    assert!(done.is_some(), "{:?}", nft_table(node));
}

fn no_iptables_chains(node: &Node) -> bool {
    let s = save(node);
    !s.contains("FLANNEL-POSTRTG") && !s.contains("FLANNEL-FWD")
}

#[test]
fn nftables_holds_flannels_table_restored_within_a_second_others_untouched() {
    harness::require_root!();
    // Auto: this machine's iptables is nft's shim, and a fresh node has
    // no rule that needs iptables.
    let opts = ClusterOpts::default().flanneld_arg("--ip-masq");
    let cluster = one_node(opts);
    let node = cluster.node(0);
    assert_nft_rules_within(node, Duration::from_secs(5));
    assert!(node.flanneld_log().contains("firewall: Nftables"));
    assert!(no_iptables_chains(node), "{}", save(node));
    let table = nft_table(node).unwrap();
    assert!(table.contains("type nat hook postrouting priority srcnat; policy accept;"));
    assert!(table.contains("type filter hook forward priority filter; policy accept;"));

    // Someone else's table stays; ours is back within a second of a flush,
    // a deleted rule or a deleted table.
    let ns = node.netns();
    ns.sh(&["nft", "add", "table", "ip", "other"]);
    ns.sh(&["nft", "add", "chain", "ip", "other", "c"]);
    ns.sh(&[
        "nft",
        "add",
        "rule",
        "ip",
        "other",
        "c",
        "ip",
        "saddr",
        "10.9.9.0/24",
        "accept",
    ]);
    for disturb in [
        &["nft", "flush", "table", "ip", "flannel-ipv4"][..],
        &["nft", "flush", "chain", "ip", "flannel-ipv4", "postrtg"],
        &["nft", "delete", "table", "ip", "flannel-ipv4"],
    ] {
        ns.sh(disturb);
        assert!(!nft_rules_in_place(node));
        assert_nft_rules_within(node, Duration::from_millis(1800));
    }
    let other = ns.sh(&["nft", "list", "table", "ip", "other"]);
    assert!(other.contains("ip saddr 10.9.9.0/24 accept"), "{other}");
}

#[test]
fn switching_firewalls_leaves_no_stale_rule() {
    harness::require_root!();
    let opts = ClusterOpts::default()
        .flanneld_arg("--ip-masq")
        .flanneld_arg("--firewall=iptables");
    let mut cluster = one_node(opts);
    assert_rules_in_place_within(cluster.node(0), Duration::from_secs(5));
    assert_eq!(nft_table(cluster.node(0)), None);

    let node = cluster.node_mut(0);
    node.set_flanneld_flag("--firewall", "nftables");
    node.restart_flanneld();
    assert_nft_rules_within(node, Duration::from_secs(5));
    assert!(no_iptables_chains(node), "{}", save(node));

    node.set_flanneld_flag("--firewall", "iptables");
    node.restart_flanneld();
    assert_rules_in_place_within(node, Duration::from_secs(5));
    assert_eq!(nft_table(node), None);
}

/// A directory for PATH holding only `tools` (links to the real ones) and
/// `ip`, which the harness runs flanneld through.
fn path_with(dir: &std::path::Path, tools: &[&str]) -> String {
    for tool in tools.iter().chain(&["ip"]) {
        let real = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
            .iter()
            .map(|d| std::path::Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("no {tool} on this machine"));
        std::os::unix::fs::symlink(real, dir.join(tool)).unwrap();
    }
    dir.display().to_string()
}

#[test]
fn a_node_without_iptables_commands_uses_nftables() {
    harness::require_root!();
    let bin = harness::TempDir::new("fl-path");
    let path = path_with(bin.path(), &["nft"]);
    let opts = ClusterOpts::default().flanneld_arg("--ip-masq");
    let mut cluster = harness::Cluster::new(0, opts);
    cluster.add_node_with_env(&[], &[("PATH", &path)]);
    let node = cluster.node(0);
    assert_nft_rules_within(node, Duration::from_secs(5));
    let log = node.flanneld_log();
    assert!(
        log.contains("firewall: Nftables (no iptables-restore/iptables-save)"),
        "{log}"
    );
}

#[test]
fn nftables_asked_for_without_nft_is_refused_at_start() {
    harness::require_root!();
    let bin = harness::TempDir::new("fl-path");
    let path = path_with(bin.path(), &["iptables-restore", "iptables-save"]);
    let opts = ClusterOpts::default().flanneld_arg("--ip-masq");
    let mut cluster = harness::Cluster::new(0, opts);
    let node = cluster.start_node_with_env(&["--firewall=nftables"], &[("PATH", &path)]);
    wait_until(Duration::from_secs(10), "flanneld exits", || {
        !node.flanneld_running()
    });
    let status = node.stop_flanneld();
    assert_eq!(status.code(), Some(1));
    let log = node.flanneld_log();
    assert!(
        log.contains("--firewall=nftables: `nft` is not in PATH (install nftables)"),
        "{log}"
    );
    assert!(
        !node.subnet_file().exists(),
        "nothing done before the check"
    );
}
