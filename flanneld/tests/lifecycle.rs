//! Root tests of flanneld's life: etcd going away, restarts, shutdown,
//! readiness and metrics.

mod common;

use std::time::Duration;

use common::*;
use harness::{try_wait_until, wait_until, ClusterOpts, Monitor};

#[test]
fn survives_etcd_restart_and_sees_peers_added_after() {
    harness::require_root!();
    let mut cluster = one_node(ClusterOpts::default());
    let broken = "lease watch broken";
    let before = cluster.node(0).logged(broken);
    cluster.etcd_mut().stop();
    // The watch breaks, then two reconnects fail.
    let timeout = Duration::from_secs(10);
    cluster.node(0).wait_logged(broken, before + 3, timeout);
    assert!(
        cluster.node_mut(0).flanneld_running(),
        "flanneld must not exit when etcd goes away"
    );
    cluster.etcd_mut().start();
    let node = cluster.node(0);
    assert_new_peer_programmed_after_restart(&cluster, node);
    // Our own lease is still there.
    assert!(cluster.etcd().get(&lease_key(&node.subnet())).is_some());
}

/// Kernel events about the datapath, as `ip monitor` prints them.
fn datapath_events(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.contains("flannel.1") || l.contains("10.244."))
        .cloned()
        .collect()
}

#[test]
fn restart_keeps_the_subnet_and_touches_nothing() {
    harness::require_root!();
    // A full reconcile pass every second: after the restart, two passes
    // that could have changed something are waited for.
    let mut cluster = one_node(ClusterOpts::default().flanneld_arg("--resync-interval=1"));
    cluster.etcd().put(
        &lease_key("10.244.220.0/24"),
        &lease_json("192.0.2.80", 1, "02:aa:bb:cc:dd:20"),
    );
    let node = cluster.node(0);
    wait_until(Duration::from_secs(5), "the peer's route", || {
        peer_entries(node, "10.244.220.0/24", "02:aa:bb:cc:dd:20", "192.0.2.80").2
    });
    let subnet = node.subnet();
    let (index, mac) = (link_index(node, "flannel.1"), link_mac(node, "flannel.1"));
    let key = lease_key(&subnet);
    let before = cluster.etcd().get_with_lease(&key).unwrap();
    let monitor = Monitor::start(node.netns(), &["link", "address", "route", "neigh"]);

    let node = cluster.node_mut(0);
    node.stop_flanneld();
    node.start_flanneld();
    node.wait_ready();
    node.wait_reconcile_passes(2);

    let node = cluster.node(0);
    assert_eq!(node.subnet(), subnet);
    assert_eq!(
        (link_index(node, "flannel.1"), link_mac(node, "flannel.1")),
        (index, mac)
    );
    assert_eq!(
        cluster.etcd().get_with_lease(&key).unwrap(),
        before,
        "lease kept as is (same value, same etcd lease)"
    );
    let events = datapath_events(&monitor.lines());
    assert!(
        events.is_empty(),
        "a restart changed the datapath: {events:#?}"
    );
}

#[test]
fn graceful_leave_releases_the_lease_and_plain_stop_keeps_it() {
    harness::require_root!();
    let mut cluster = one_node(ClusterOpts::default().flanneld_arg("--graceful-leave"));
    let subnet = cluster.node(0).subnet();
    let key = lease_key(&subnet);
    cluster.node_mut(0).restart_flanneld();
    cluster.node_mut(0).wait_ready();
    assert_eq!(
        cluster.node(0).subnet(),
        subnet,
        "a restart takes the same subnet back"
    );
    let status = cluster.node_mut(0).stop_flanneld();
    assert!(status.success(), "{status:?}");
    assert_eq!(cluster.etcd().get(&key), None, "lease released on shutdown");
    // The datapath stays: pods keep working while the daemon is down.
    assert!(!cluster
        .node(0)
        .netns()
        .ip_json(&["link", "show", "flannel.1"])
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn deleted_own_lease_is_written_back_with_the_same_etcd_lease() {
    harness::require_root!();
    let cluster = one_node(ClusterOpts::default());
    let node = cluster.node(0);
    let key = lease_key(&node.subnet());
    let before = cluster.etcd().get_with_lease(&key).unwrap();
    cluster.etcd().delete(&key);
    let back = try_wait_until(Duration::from_secs(5), || {
        cluster.etcd().get(&key).is_some()
    });
    assert!(back.is_some(), "{}", node.flanneld_log());
    let line = "was deleted while our etcd lease lives: writing it back";
    assert_eq!(node.logged(line), 1, "{}", node.flanneld_log());
    let mac = link_mac(node, "flannel.1");
    let value = lease_json(&node.ip().to_string(), 1, &mac);
    assert_eq!(
        cluster.etcd().get_with_lease(&key).unwrap(),
        (value, before.1),
        "our value, attached to our etcd lease"
    );
    assert_eq!(node.metric("flanneld_lease_acquisitions_total"), 1.0);
    assert_eq!(node.metric("flanneld_lease_overwrites_total"), 1.0);
}

#[test]
fn readyz_waits_for_the_datapath_and_metrics_answer() {
    harness::require_root!();
    let mut cluster = one_node(ClusterOpts::default());
    {
        let node = cluster.node(0);
        assert_eq!(node.readyz(), Some(200));
        assert_eq!(node.http_get("/healthz").unwrap().status, 200);
        let m = node.http_get("/metrics").unwrap();
        assert_eq!(m.status, 200);
        for name in [
            "flanneld_ready 1",
            "flanneld_peers 0",
            "flanneld_reconcile_runs_total",
            "flanneld_reconcile_errors_total 0",
            "flanneld_lease_expiry_timestamp_seconds",
            "flanneld_watch_restarts_total 0",
        ] {
            assert!(m.body.contains(name), "{name} missing:\n{}", m.body);
        }
        let expiry = node.metric("flanneld_lease_expiry_timestamp_seconds");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            (expiry - now - 86_400.0).abs() < 120.0,
            "expiry {expiry} now {now}"
        );
    }
    // Without a network config, flanneld waits: alive, not ready, no subnet.env.
    let node = cluster.start_node(&["--etcd-prefix", "/nowhere/network"]);
    let waiting = try_wait_until(Duration::from_secs(5), || node.readyz() == Some(503));
    assert!(
        waiting.is_some(),
        "{:?}\n{}",
        node.readyz(),
        node.flanneld_log()
    );
    // Still waiting when it says so again (it looks every second, says so
    // every 5 s).
    let wait_line = "waiting for the network config at /nowhere/network/config";
    node.wait_logged(wait_line, 2, Duration::from_secs(15));
    assert_eq!(node.readyz(), Some(503));
    assert!(!node.subnet_file().exists());
}

/// The current etcd revision, through the JSON gateway.
fn revision(cluster: &harness::Cluster) -> i64 {
    let reply = cluster
        .etcd()
        .call("/v3/kv/range", serde_json::json!({"key": "YQ=="}))
        .unwrap();
    reply["header"]["revision"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn watch_behind_compaction_relists_and_converges() {
    harness::require_root!();
    let mut cluster = one_node(ClusterOpts::default());
    let stale = ("10.244.240.0/24", "02:aa:bb:cc:dd:40", "192.0.2.60");
    cluster
        .etcd()
        .put(&lease_key(stale.0), &lease_json(stale.2, 1, stale.1));
    let node = cluster.node(0);
    wait_until(Duration::from_secs(5), "the stale peer programmed", || {
        peer_entries(node, stale.0, stale.1, stale.2) == (true, true, true)
    });
    // Freeze flanneld and restart etcd (its watch stream breaks), then
    // change leases and compact history, so the watch must resume from a
    // compacted revision.
    let pid = node.netns().pids()[0];
    // SAFETY: kill(2) on a process of our own test namespace.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    cluster.etcd_mut().stop();
    cluster.etcd_mut().start();
    cluster.etcd().delete(&lease_key(stale.0));
    let fresh = ("10.244.241.0/24", "02:aa:bb:cc:dd:41", "192.0.2.61");
    cluster
        .etcd()
        .put(&lease_key(fresh.0), &lease_json(fresh.2, 1, fresh.1));
    let rev = revision(&cluster);
    cluster
        .etcd()
        .call(
            "/v3/kv/compaction",
            serde_json::json!({"revision": rev.to_string(), "physical": true}),
        )
        .unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let node = cluster.node(0);
    let converged = try_wait_until(Duration::from_secs(10), || {
        peer_entries(node, fresh.0, fresh.1, fresh.2) == (true, true, true)
            && peer_entries(node, stale.0, stale.1, stale.2) == (false, false, false)
    });
    assert!(converged.is_some(), "{}", node.flanneld_log());
    assert!(
        node.flanneld_log().contains("fell behind etcd compaction"),
        "{}",
        node.flanneld_log()
    );
}

#[test]
fn invalid_config_is_reported_by_field_and_waited_on() {
    harness::require_root!();
    let mut cluster = one_node(ClusterOpts::default());
    let bad = r#"{"Network":"10.9.0.0/16","SubnetLen":40,"Backend":{"Type":"vxlan"}}"#;
    cluster.etcd().put("/bad/network/config", bad);
    let node = cluster.start_node(&["--etcd-prefix", "/bad/network"]);
    let logged = try_wait_until(Duration::from_secs(5), || {
        node.flanneld_log().contains(
            "invalid config at /bad/network/config: network config: SubnetLen: 40 is too long",
        )
    });
    assert!(logged.is_some(), "{}", node.flanneld_log());
    assert!(node.flanneld_running());
    assert_eq!(node.readyz(), Some(503));
    // Fixed in etcd: picked up without a restart.
    let good = r#"{"Network":"10.9.0.0/16","SubnetLen":26,"Backend":{"Type":"vxlan"}}"#;
    cluster.etcd().put("/bad/network/config", good);
    let node = cluster.node_mut(1);
    node.wait_ready();
    assert!(node.subnet().ends_with("/26"), "{}", node.subnet());
}

#[test]
fn lease_is_renewed_before_it_expires() {
    harness::require_root!();
    // A margin of 1439 minutes makes the first renewal due one minute
    // after the lease is taken (TTL 24 h).
    let opts = ClusterOpts::default().flanneld_arg("--subnet-lease-renew-margin=1439");
    let cluster = one_node(opts);
    let node = cluster.node(0);
    let key = lease_key(&node.subnet());
    let (_, lease) = cluster.etcd().get_with_lease(&key).unwrap();
    let before = node.metric("flanneld_lease_expiry_timestamp_seconds");
    // Run down far enough that a renewal shows.
    let mut ttl_before = 0;
    wait_until(
        Duration::from_secs(30),
        "the lease's TTL to run down 5 s",
        || {
            ttl_before = cluster.etcd().lease_ttl(lease).unwrap();
            ttl_before <= 86_395
        },
    );
    let renewed = try_wait_until(Duration::from_secs(60), || {
        node.metric("flanneld_lease_renewals_total") >= 1.0
    });
    assert!(renewed.is_some(), "{}", node.flanneld_log());
    let ttl_after = cluster.etcd().lease_ttl(lease).unwrap();
    assert!(ttl_after > ttl_before, "TTL {ttl_before} -> {ttl_after}");
    assert!(node.metric("flanneld_lease_expiry_timestamp_seconds") > before);
    assert_eq!(
        cluster.etcd().get_with_lease(&key).unwrap().1,
        lease,
        "same etcd lease, refreshed"
    );
    assert!(node.flanneld_log().contains("renewed until"));
}
