//! flanneld against an etcd with authentication enabled: a user `flannel`
//! whose role may read and write the keys under flannel's prefix only.

mod common;

use std::time::Duration;

use common::*;
use harness::{try_wait_until, Cluster, ClusterOpts, Node};

const USER: &str = "flannel";
const PASSWORD: &str = "s3cret-Pw";

/// An etcd with authentication on and no node yet.
fn auth_cluster() -> Cluster {
    let c = Cluster::new(0, ClusterOpts::default());
    c.etcd().enable_auth(USER, PASSWORD, &format!("{PREFIX}/"));
    c
}

/// Two nodes log in, one with the flags and one through the environment,
/// take a lease each and program each other as peers.
#[test]
fn nodes_with_credentials_lease_and_program_peers() {
    harness::require_root!();
    let mut c = auth_cluster();
    c.add_node_with(&["--etcd-username", USER, "--etcd-password", PASSWORD]);
    let env = [
        ("FLANNELD_ETCD_USERNAME", USER),
        ("FLANNELD_ETCD_PASSWORD", PASSWORD),
    ];
    c.add_node_with_env(&[], &env);
    assert!(!c.node(1).flanneld_args().join(" ").contains(PASSWORD));
    assert_nodes_lease_and_program_each_other(&c);
}

/// Waits for `error` in the node's log, then checks that flanneld keeps
/// running without being ready, writes no subnet.env, and that the line
/// ends with `why`.
fn assert_refused(node: &mut Node, error: &str, why: &str) {
    node.wait_logged(error, 1, Duration::from_secs(10));
    let log = node.flanneld_log();
    let line = log.lines().find(|l| l.contains(error)).unwrap();
    assert!(line.ends_with(why), "the error does not say why:\n{log}");
    assert!(!log.contains(PASSWORD), "the password is logged:\n{log}");
    assert!(node.flanneld_running(), "flanneld gave up:\n{log}");
    assert_eq!(node.readyz(), Some(503), "{log}");
    assert!(!node.subnet_file().exists(), "subnet.env was written");
}

/// A wrong password, none, or a prefix the user may not access: flanneld
/// keeps running and retrying, is not ready, takes no lease and says why in
/// its log.
#[test]
fn refused_credentials_leave_flanneld_unready_and_say_why() {
    harness::require_root!();
    let mut c = auth_cluster();
    let wrong = format!("{PASSWORD}x");
    c.start_node(&["--etcd-username", USER, "--etcd-password", &wrong]);
    c.start_node(&[]);
    let other = ["--etcd-prefix", "/other/network"];
    c.start_node(
        &[
            &other[..],
            &["--etcd-username", USER, "--etcd-password", PASSWORD],
        ]
        .concat(),
    );
    let error = "cannot read /coreos.com/network/config: ";
    assert_refused(
        c.node_mut(0),
        error,
        "etcd refused user \"flannel\": authentication failed, wrong --etcd-username or --etcd-password",
    );
    assert_refused(
        c.node_mut(1),
        error,
        "etcd requires authentication: give --etcd-username and --etcd-password",
    );
    assert_refused(
        c.node_mut(2),
        "cannot read /other/network/config: ",
        "etcd denied user \"flannel\" access: permission denied, \
         its role needs readwrite on the keys under --etcd-prefix",
    );
    // Still refused a few retries later (it retries every second, logs the
    // error every 5 s), still not ready.
    let errors = [error, error, "cannot read /other/network/config: "];
    for (i, error) in errors.into_iter().enumerate() {
        c.node(i).wait_logged(error, 2, Duration::from_secs(15));
        let node = c.node_mut(i);
        assert!(node.flanneld_running(), "{}", node.flanneld_log());
        assert_eq!(node.readyz(), Some(503), "{}", node.flanneld_log());
    }
    assert_eq!(c.leases(), [], "a lease was taken");
}

/// etcd keeps tokens in memory: after a restart flanneld must log in again,
/// also to resume its watch, and still see peers added after.
#[test]
fn logs_in_again_after_etcd_restart_and_sees_peers_added_after() {
    harness::require_root!();
    let mut c = auth_cluster();
    c.add_node_with(&["--etcd-username", USER, "--etcd-password", PASSWORD]);
    c.etcd_mut().stop();
    c.etcd_mut().start();
    assert_new_peer_programmed_after_restart(&c, c.node(0));
}

/// Credentials are checked by etcd when it answers, not at start: flanneld
/// started while etcd is down waits for it, then logs in.
#[test]
fn starts_with_credentials_while_etcd_is_down() {
    harness::require_root!();
    let mut c = auth_cluster();
    c.etcd_mut().stop();
    let node = c.start_node(&["--etcd-username", USER, "--etcd-password", PASSWORD]);
    // Failed to reach etcd, and still at it 5 s later (when it says so again).
    let error = "cannot read /coreos.com/network/config: ";
    node.wait_logged(error, 2, Duration::from_secs(15));
    assert!(node.flanneld_running(), "{}", node.flanneld_log());
    assert_eq!(node.readyz(), Some(503), "{}", node.flanneld_log());
    c.etcd_mut().start();
    let node = c.node_mut(0);
    node.wait_ready();
    let lease = c.etcd().get(&lease_key(&c.node(0).subnet()));
    assert!(lease.is_some(), "{:?}", c.leases());
}

/// As with etcd's own client, credentials for an etcd without
/// authentication are not an error; once etcd enables it, flanneld logs in
/// with them (here: to take its deleted lease again).
#[test]
fn credentials_work_before_and_after_etcd_enables_auth() {
    harness::require_root!();
    let opts = ClusterOpts::default()
        .flanneld_arg("--etcd-username")
        .flanneld_arg(USER)
        .flanneld_arg("--etcd-password")
        .flanneld_arg(PASSWORD);
    let c = Cluster::new(1, opts);
    let node = c.node(0);
    let key = lease_key(&node.subnet());
    c.etcd().enable_auth(USER, PASSWORD, &format!("{PREFIX}/"));
    assert_eq!(c.etcd().delete(&key), 1);
    let retaken = try_wait_until(Duration::from_secs(10), || c.etcd().get(&key).is_some());
    assert!(
        retaken.is_some(),
        "lease not taken again:\n{}",
        node.flanneld_log()
    );
    let mac = link_mac(node, &node.vxlan_dev());
    let expected = lease_json(&node.ip().to_string(), 1, &mac);
    assert_eq!(c.etcd().get(&key), Some(expected));
}

/// A user without a password (or the reverse) is refused at start, before
/// anything changes.
#[test]
fn username_without_password_is_refused_at_start() {
    harness::require_root!();
    let mut c = Cluster::new(0, ClusterOpts::default());
    let node = c.start_node(&["--etcd-username", USER]);
    let exited = try_wait_until(Duration::from_secs(10), || !node.flanneld_running());
    assert!(exited.is_some(), "still running:\n{}", node.flanneld_log());
    assert_eq!(node.stop_flanneld().code(), Some(1));
    let log = node.flanneld_log();
    assert!(
        log.contains("--etcd-username and --etcd-password go together"),
        "{log}"
    );
    assert!(!node.subnet_file().exists(), "subnet.env was written");
    assert!(!node
        .netns()
        .exec(&["ip", "link", "show", "flannel.1"])
        .status
        .success());
    assert_eq!(c.leases(), [], "a lease was taken");
}
