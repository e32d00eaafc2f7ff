//! ADD killed with SIGKILL at every step. `strace -f -e
//! inject=CALL:signal=SIGKILL:when=N` kills the plugin as it enters its
//! N-th CALL, for each N the ADD reaches and for every call that separates
//! two changes ADD makes (netlink requests, files created and written,
//! directories, the iptables child). What a runtime does after a failed
//! ADD (DEL, or GC) must then leave nothing behind, and the same container
//! must be attachable again.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::*;
use harness::Netns;
use serde_json::json;

/// The calls a kill is injected at: each one either makes a change or
/// comes right after one, so together they cut ADD between every two
/// changes it makes.
const KILL_AT: [&str; 10] = [
    "sendto",
    "openat",
    "write",
    "mkdir",
    "ftruncate",
    "flock",
    "clone",
    "clone3",
    "vfork",
    "wait4",
];

/// ifname of every attachment here.
const IFNAME: &str = "eth0";

/// One place to kill the plugin: on entering its `n`-th `syscall`.
#[derive(Debug, Clone, Copy)]
struct KillPoint {
    syscall: &'static str,
    n: usize,
}

/// A node whose subnet.env leaves masquerading to the plugin
/// (FLANNEL_IPMASQ=false), so ADD also runs iptables.
fn masq_node() -> Node {
    let node = Node::without_subnet_env();
    node.write_subnet_env(&SUBNET_ENV.replace("IPMASQ=true", "IPMASQ=false"));
    node
}

/// Runs ADD inside the node under strace: `inject` adds a kill, `trace`
/// records every call to that file (otherwise /dev/null).
fn traced_add(
    node: &Node,
    id: &str,
    pod: &Netns,
    inject: Option<KillPoint>,
    trace: &Path,
) -> Output {
    let mut cmd = Command::new("/usr/bin/nsenter");
    cmd.arg(format!("--net={}", node.ns.path().display()))
        .args(["/usr/bin/strace", "-f", "-o"])
        .arg(trace);
    if let Some(k) = inject {
        cmd.arg(format!(
            "--inject={}:signal=SIGKILL:when={}",
            k.syscall, k.n
        ));
    }
    cmd.arg(PLUGIN)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", pod.path())
        .env("CNI_IFNAME", IFNAME)
        .env("CNI_PATH", Path::new(PLUGIN).parent().unwrap());
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run strace");
    let conf = node.conf("1.1.0").to_string();
    // Killed before reading its config is one of the cases.
    let _ = child.stdin.take().unwrap().write_all(conf.as_bytes());
    child.wait_with_output().expect("wait for strace")
}

/// How often the plugin itself (the first process in the trace, not its
/// iptables child) made each call of [`KILL_AT`]. A call the kernel had
/// to restart (`= ? ERESTART…`, e.g. the ip_forward sysctl while another
/// process holds the rtnl lock) shows up twice but is made once: it is
/// counted once, so that every kill point exists in every run.
fn plugin_calls(trace: &str) -> BTreeMap<&'static str, usize> {
    let mut lines = trace.lines().filter_map(|l| l.split_once(' '));
    let (plugin, _) = lines.next().expect("empty trace");
    let mut counts = BTreeMap::new();
    for (_, call) in lines.filter(|(pid, _)| *pid == plugin) {
        let call = call.trim_start();
        // `name(…` enters a call; `<... name resumed>…` finishes one.
        let (name, entry) = match call.strip_prefix("<... ") {
            Some(rest) => (rest.split(' ').next().unwrap_or(""), false),
            None => (call.split('(').next().unwrap_or(""), true),
        };
        let Some(s) = KILL_AT.iter().find(|s| **s == name) else {
            continue;
        };
        let count = counts.entry(*s).or_insert(0usize);
        if entry {
            *count += 1;
        }
        if call.contains("= ? ERESTART") {
            *count -= 1;
        }
    }
    counts
}

/// Every kill point of a complete ADD on a fresh node, learnt from a
/// traced ADD that ran to the end.
fn kill_points() -> Vec<KillPoint> {
    let node = masq_node();
    let pod = Netns::new("flpk");
    let trace = node.dir.join("trace");
    let out = traced_add(&node, "probe", &pod, None, &trace);
    assert_success(&out);
    let counts = plugin_calls(&std::fs::read_to_string(&trace).unwrap());
    counts
        .iter()
        .flat_map(|(s, &c)| (1..=c).map(|n| KillPoint { syscall: s, n }))
        .collect()
}

/// ADD killed at `at` on a fresh node; returns the node, the pod and the
/// container ID. Panics unless the plugin died of SIGKILL.
fn killed_add(at: KillPoint) -> (Node, Netns, String) {
    let node = masq_node();
    let pod = Netns::new("flpk");
    let id = format!("crash-{}-{}", at.syscall, at.n);
    let out = traced_add(&node, &id, &pod, Some(at), Path::new("/dev/null"));
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "{at:?}: ADD was not killed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    (node, pod, id)
}

/// Nothing of any attachment is left on the node: no IP file, no saved
/// config, no veth (the bridge is node state and may stay), no
/// masquerade chain, nothing in the pod but `lo`.
fn assert_nothing_left(node: &Node, pod: &Netns, at: KillPoint) {
    assert_eq!(node.allocated(), [], "{at:?}: IP files left");
    let store_temps: Vec<String> = std::fs::read_dir(node.store())
        .map(|d| d.map(|e| e.unwrap().file_name().into_string().unwrap()))
        .into_iter()
        .flatten()
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert_eq!(store_temps, [] as [String; 0], "{at:?}: temp files left");
    assert_eq!(
        node.saved_configs(),
        [] as [String; 0],
        "{at:?}: saved configs left"
    );
    let links = node.links();
    assert!(
        links.iter().all(|l| l == "lo" || l == "cni0"),
        "{at:?}: links left on the node: {links:?}"
    );
    assert_eq!(link_names(pod), ["lo"], "{at:?}: pod links left");
    let nat = node.nat_rules();
    assert!(
        !nat.contains("CNI-"),
        "{at:?}: masquerade rules left:\n{nat}"
    );
}

/// ADD of the same container works again, and so does its DEL.
fn assert_add_works_again(node: &Node, pod: &Netns, id: &str, at: KillPoint) {
    let conf = node.conf("1.1.0");
    let out = node.call("ADD", id, Some(&pod.path()), IFNAME, &conf);
    assert!(
        out.status.success(),
        "{at:?}: ADD after the crash failed:\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let ip = result_ip(&ok_json(&out));
    assert_eq!(node.allocated(), [(ip, format!("{id}\r\n{IFNAME}"))]);
    assert!(node.nat_rules().contains("CNI-"), "{at:?}: no masquerade");
    node.del(id, Some(pod), &conf);
    assert_nothing_left(node, pod, at);
}

/// The steps of ADD a user can see done, in [`done_so_far`]'s order.
const STEPS: [&str; 8] = [
    "saved config",
    "IP temp file, not yet linked",
    "IP file",
    "bridge",
    "host veth",
    "pod address",
    "pod default route",
    "masquerade",
];

/// Which of [`STEPS`] a killed ADD had done, as a user would see it.
fn done_so_far(node: &Node, pod: &Netns, id: &str) -> Vec<&'static str> {
    let allocated = node.allocated();
    let links = node.links();
    let addrs = pod.ip_json(&["-4", "addr", "show"]).to_string();
    let done = [
        !node.saved_configs().is_empty(),
        node.store().join(".reserve.tmp").exists(),
        allocated.iter().any(|(_, owner)| !owner.is_empty()),
        links.iter().any(|l| l == "cni0"),
        links.contains(&node_state::host_veth_name(id, IFNAME)),
        addrs.contains("10.244.3."),
        pod_routes(pod).iter().any(|r| r.starts_with("default")),
        node.nat_rules().contains("CNI-"),
    ];
    STEPS
        .iter()
        .zip(done)
        .filter(|(_, d)| *d)
        .map(|(s, _)| *s)
        .collect()
}

/// Kills ADD at every kill point, each on a fresh node, runs `clean_up`
/// (the runtime's answer to the failed ADD), and checks that nothing is
/// left and that ADD works again. The kills must, together, have landed
/// after each step of ADD.
fn kill_everywhere_then(clean_up: impl Fn(&Node, &Netns, &str, KillPoint)) {
    let mut seen = BTreeSet::new();
    for at in kill_points() {
        let (node, pod, id) = killed_add(at);
        seen.extend(done_so_far(&node, &pod, &id));
        clean_up(&node, &pod, &id, at);
        assert_nothing_left(&node, &pod, at);
        assert_add_works_again(&node, &pod, &id, at);
    }
    let missed: Vec<_> = STEPS.iter().filter(|s| !seen.contains(*s)).collect();
    assert!(missed.is_empty(), "no kill landed after: {missed:?}");
}

/// DEL after every killed ADD releases everything ADD had done so far.
#[test]
fn del_after_add_killed_at_any_step_leaves_nothing() {
    harness::require_root!();
    kill_everywhere_then(|node, pod, id, _| node.del(id, Some(pod), &node.conf("1.1.0")));
}

/// GC with no valid attachment after every killed ADD releases everything
/// ADD had done so far, even what no allocation records.
#[test]
fn gc_after_add_killed_at_any_step_leaves_nothing() {
    harness::require_root!();
    kill_everywhere_then(|node, _, _, at| {
        let mut gc = node.conf("1.1.0");
        gc["cni.dev/valid-attachments"] = json!([]);
        let out = node.call("GC", "", None, "", &gc);
        assert!(
            out.status.success(),
            "{at:?}: GC failed:\nstdout: {}\nstderr: {}",
            text(&out.stdout),
            text(&out.stderr)
        );
    });
}
