//! Self-tests of the harness building blocks: namespaces, processes, etcd.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use harness::{sh, unique, wait_until, Etcd, Monitor, Netns, Proc, TempDir};

fn netns_listed(name: &str) -> bool {
    sh(&["ip", "netns", "list"])
        .split_whitespace()
        .any(|n| n == name)
}

#[test]
fn netns_is_created_with_lo_up_and_removed_with_its_processes() {
    harness::require_root!();
    let ns = Netns::new("hst");
    let name = ns.name().to_string();
    assert!(netns_listed(&name));
    assert!(ns.path().exists());
    let lo = ns.ip_json(&["link", "show", "lo"]);
    assert_eq!(lo[0]["operstate"], "UNKNOWN", "{lo}");
    assert!(lo[0]["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    // Only lo: the namespace is fresh.
    assert_eq!(ns.ip_json(&["link"]).as_array().unwrap().len(), 1);

    let sleeper = ns.cmd("sleep").arg("600").spawn().unwrap();
    let pid = sleeper.id() as i32;
    // `ip netns exec` enters the namespace, then execs sleep in place.
    wait_until(Duration::from_secs(5), "sleep inside the namespace", || {
        ns.pids() == vec![pid]
    });
    drop(ns);
    assert!(!netns_listed(&name));
    assert!(!Path::new("/run/netns").join(&name).exists());
    let mut sleeper = sleeper;
    assert_eq!(sleeper.wait().unwrap().signal(), Some(libc::SIGKILL));
}

#[test]
fn netns_exec_and_json_helpers_run_inside() {
    harness::require_root!();
    let ns = Netns::new("hst");
    let out = ns.exec(&["ip", "-j", "addr", "show", "lo"]);
    assert!(out.status.success());
    let addrs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(addrs[0]["addr_info"][0]["local"], "127.0.0.1");
    assert!(!ns.exec(&["false"]).status.success());
    // Empty output parses as an empty list.
    assert_eq!(
        ns.bridge_json(&["fdb", "show", "br", "lo"]),
        serde_json::json!([])
    );
    // A socket opened through run_in lives in the namespace: 127.0.0.1 there
    // is not the root namespace's.
    let listener = ns
        .run_in(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let ss = ns.sh(&["ss", "-Htln"]);
    assert!(ss.contains(&format!("127.0.0.1:{port}")), "{ss}");
}

#[test]
fn unique_names_fit_links() {
    harness::require_root!();
    let ns = Netns::new("hst");
    let a = unique("veth");
    assert!(a.len() <= 15);
    ns.sh(&[
        "ip",
        "link",
        "add",
        &a,
        "type",
        "veth",
        "peer",
        "name",
        &unique("vp"),
    ]);
    assert_eq!(ns.ip_json(&["link", "show", &a])[0]["ifname"], a.as_str());
}

#[test]
fn proc_captures_output_and_is_stopped_on_drop() {
    let mut p =
        Proc::spawn(Command::new("sh").args(["-c", "echo out; echo err >&2; exec sleep 600"]));
    let pid = p.pid();
    let log_dir = p.log_path().parent().unwrap().to_path_buf();
    wait_until(Duration::from_secs(5), "both lines in the log", || {
        let log = p.log();
        log.contains("out\n") && log.contains("err\n")
    });
    assert!(p.is_running());
    drop(p);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} still exists"
    );
    assert!(!log_dir.exists());
}

#[test]
fn proc_terminate_reports_exit_and_kill9_kills_stubborn() {
    let mut p = Proc::spawn(Command::new("sh").args(["-c", "exec sleep 600"]));
    assert_eq!(p.terminate().signal(), Some(libc::SIGTERM));
    assert!(!p.is_running());

    let mut stubborn = Proc::spawn(
        Command::new("sh").args(["-c", "trap '' TERM; echo ready; while :; do sleep 1; done"]),
    );
    wait_until(Duration::from_secs(5), "the trap to be set", || {
        stubborn.log().contains("ready")
    });
    assert_eq!(stubborn.kill9().signal(), Some(libc::SIGKILL));
}

#[test]
fn tempdir_is_removed_on_drop() {
    let dir = TempDir::new("hst");
    let path = dir.path().to_path_buf();
    std::fs::write(dir.join("f"), "x").unwrap();
    std::fs::create_dir(dir.join("sub")).unwrap();
    drop(dir);
    assert!(!path.exists());

    let mut kept = TempDir::new("hst");
    kept.keep();
    let path = kept.path().to_path_buf();
    drop(kept);
    assert!(path.is_dir(), "kept dir removed");
    std::fs::remove_dir(&path).unwrap();
}

#[test]
fn monitor_reports_changes_but_not_its_canary() {
    harness::require_root!();
    let ns = Netns::new("hst");
    let monitor = Monitor::start(&ns, &["link", "route"]);
    // The canary is gone, and nothing of it is reported.
    assert_eq!(ns.ip_json(&["link"]).as_array().unwrap().len(), 1);
    assert_eq!(monitor.lines(), Vec::<String>::new());

    let dummy = unique("hsd");
    ns.ip(&format!("link add {dummy} type bridge"));
    ns.ip(&format!("link del {dummy}"));
    wait_until(Duration::from_secs(5), "the dummy's deletion", || {
        monitor
            .lines()
            .iter()
            .any(|l| l.starts_with("Deleted") && l.contains(&dummy))
    });
}

#[test]
fn etcd_round_trips_values_leases_and_prefixes() {
    harness::require_root!();
    let ns = Netns::new("hse");
    let mut etcd = Etcd::start_in(&ns, "127.0.0.1");
    assert_eq!(etcd.endpoint(), "http://127.0.0.1:2379");
    assert_eq!(etcd.get("/t/missing"), None);

    etcd.put("/t/config", r#"{"Network":"10.244.0.0/16"}"#);
    assert_eq!(
        etcd.get("/t/config").as_deref(),
        Some(r#"{"Network":"10.244.0.0/16"}"#)
    );
    assert_eq!(etcd.get_with_lease("/t/config").unwrap().1, 0);

    let lease = etcd.put_with_lease("/t/subnets/10.244.3.0-24", "lease-a", 3600);
    assert!(lease != 0);
    let (value, got_lease) = etcd.get_with_lease("/t/subnets/10.244.3.0-24").unwrap();
    assert_eq!((value.as_str(), got_lease), ("lease-a", lease));
    let ttl = etcd.lease_ttl(lease).unwrap();
    assert!((3590..=3600).contains(&ttl), "{ttl}");
    etcd.put("/t/subnets/10.244.4.0-24", "b");
    etcd.put("/t/subnetsX", "outside the prefix");

    let listed = etcd.list("/t/subnets/");
    let keys: Vec<_> = listed.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["/t/subnets/10.244.3.0-24", "/t/subnets/10.244.4.0-24"]
    );

    assert_eq!(etcd.delete("/t/subnets/10.244.4.0-24"), 1);
    assert_eq!(etcd.delete("/t/subnets/10.244.4.0-24"), 0);
    assert_eq!(etcd.list("/t/subnets/").len(), 1);

    // A restart keeps the data.
    etcd.stop();
    assert!(etcd.try_range("/t/config", None).is_err());
    etcd.start();
    assert_eq!(
        etcd.get("/t/subnets/10.244.3.0-24").as_deref(),
        Some("lease-a")
    );
}

#[test]
fn etcd_lease_expiry_removes_the_key() {
    harness::require_root!();
    let ns = Netns::new("hse");
    let etcd = Etcd::start_in(&ns, "127.0.0.1");
    let lease = etcd.put_with_lease("/t/short", "v", 1);
    assert!(etcd.get("/t/short").is_some());
    wait_until(Duration::from_secs(10), "the 1 s lease to expire", || {
        etcd.get("/t/short").is_none()
    });
    assert_eq!(etcd.lease_ttl(lease), None);
}

#[test]
fn empty_cluster_has_underlay_etcd_and_externals_and_leaves_nothing() {
    harness::require_root!();
    let mut cluster = harness::Cluster::new(0, harness::ClusterOpts::default());
    let config = cluster.etcd().get("/coreos.com/network/config").unwrap();
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["Network"], "10.244.0.0/16");
    assert_eq!(config["Backend"]["VNI"], 1);
    assert_eq!(cluster.etcd().endpoint(), "http://192.0.2.1:2379");
    let underlay = cluster.underlay().name().to_string();
    let dir = cluster.dir().to_path_buf();

    let ext = cluster.add_external();
    assert_eq!(ext.ip.to_string(), "192.0.2.201");
    let addrs = ext.netns.ip_json(&["-4", "addr", "show", "eth0"]);
    assert_eq!(addrs[0]["addr_info"][0]["local"], "192.0.2.201");
    assert_eq!(addrs[0]["mtu"], 1500);
    // The external host reaches the underlay (etcd's address) over the bridge.
    assert!(ext.netns.ping("192.0.2.1"));
    let ext_name = ext.netns.name().to_string();
    // Ports joining the underlay bridge never change its (etcd's) MAC.
    cluster.add_external();
    let br = cluster.underlay().ip_json(&["link", "show", "br0"]);
    assert_eq!(br[0]["address"], "02:00:c0:00:02:01");
    drop(cluster);
    let after = sh(&["ip", "netns", "list"]);
    assert!(
        !after.contains(&underlay) && !after.contains(&ext_name),
        "{after}"
    );
    assert!(!dir.exists());
}

/// A pid no process has right now.
fn dead_pid() -> u32 {
    (4_000_000..4_194_304)
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .unwrap()
}

fn base36(mut n: u32) -> String {
    let mut s = Vec::new();
    while n > 0 {
        s.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize]);
        n /= 36;
    }
    while s.len() < 5 {
        s.push(b'0');
    }
    s.reverse();
    String::from_utf8(s).unwrap()
}

#[test]
fn sweep_removes_leftovers_of_dead_runs_only() {
    harness::require_root!();
    let stale = format!("fl-n{}0", base36(dead_pid()));
    sh(&["ip", "netns", "add", &stale]);
    let stale_dir = std::env::temp_dir().join(format!("fl-c{}0", base36(dead_pid())));
    std::fs::create_dir_all(stale_dir.join("node1")).unwrap();
    let live = Netns::new("fl-n");
    let live_dir = TempDir::new("fl-c");

    harness::sweep_stale();
    let list = sh(&["ip", "netns", "list"]);
    let names: Vec<&str> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let leftover = names.contains(&stale.as_str());
    if leftover {
        let _ = Command::new("ip").args(["netns", "del", &stale]).status();
    }
    assert!(!leftover, "stale {stale} kept");
    assert!(!stale_dir.exists());
    assert!(names.contains(&live.name()), "live namespace swept");
    assert!(live_dir.path().exists(), "live dir swept");
}

#[test]
fn kept_cluster_record_round_trips() {
    let dir = TempDir::new("hst");
    let kept = harness::KeptCluster {
        netns: vec!["fl-p0abcd0".into(), "fl-u0abcd1".into()],
        dirs: vec!["/tmp/fl-c0abcd2".into()],
    };
    kept.save(&dir.join("sub/state")).unwrap();
    assert_eq!(
        harness::KeptCluster::load(&dir.join("sub/state")).unwrap(),
        kept
    );
    std::fs::write(dir.join("bad"), "junk\n").unwrap();
    assert!(harness::KeptCluster::load(&dir.join("bad")).is_err());
}

#[test]
fn children_die_with_the_thread_that_spawned_them() {
    // A Proc never dropped (as when the test process is killed outright).
    let pid = std::thread::spawn(|| {
        let p = Proc::spawn(Command::new("sleep").arg("600"));
        let pid = p.pid();
        std::mem::forget(p);
        pid
    })
    .join()
    .unwrap();
    let mut status = 0;
    // SAFETY: waitpid on our own child; blocks until the kernel killed it.
    let reaped = unsafe { libc::waitpid(pid as i32, &mut status, 0) };
    assert_eq!(reaped, pid as i32);
    assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL);
}
