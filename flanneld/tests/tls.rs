//! flanneld against an etcd that serves clients over TLS only and requires
//! a client certificate signed by its CA.

mod common;

use std::time::Duration;

use common::*;
use harness::{Cluster, ClusterOpts, Pki, TempDir, UNDERLAY_IP};

/// A cluster and the PKI its etcd uses; fields drop in order, the cluster
/// before the certificates' directory.
struct TlsCluster {
    c: Cluster,
    pki: Pki,
    _dir: TempDir,
}

/// An etcd over TLS with no node yet; every node will get `--etcd-cafile`,
/// the client certificate is up to each node.
fn tls_cluster() -> TlsCluster {
    let dir = TempDir::new("fltls");
    let pki = Pki::generate(dir.path(), &[&UNDERLAY_IP.to_string(), "127.0.0.1"]);
    let opts = ClusterOpts {
        etcd_tls: Some((&pki).into()),
        ..ClusterOpts::default()
    }
    .flanneld_arg("--etcd-cafile")
    .flanneld_arg(&pki.ca.display().to_string());
    TlsCluster {
        c: Cluster::new(0, opts),
        pki,
        _dir: dir,
    }
}

fn client_cert_args(pki: &Pki) -> [String; 4] {
    [
        "--etcd-certfile".into(),
        pki.client_cert.display().to_string(),
        "--etcd-keyfile".into(),
        pki.client_key.display().to_string(),
    ]
}

/// With the CA and a client certificate, two nodes take a lease each over
/// `https://` and program each other as peers.
#[test]
fn nodes_lease_and_program_peers_over_tls() {
    harness::require_root!();
    let mut t = tls_cluster();
    let args = client_cert_args(&t.pki);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    t.c.add_node_with(&args);
    t.c.add_node_with(&args);
    let c = &t.c;
    let endpoint = format!("https://{UNDERLAY_IP}:2379");
    let flags = c.node(0).flanneld_args().join(" ");
    assert!(
        flags.contains(&format!("--etcd-endpoints {endpoint}")),
        "{flags}"
    );
    assert_nodes_lease_and_program_each_other(c);
}

/// With the CA but no client certificate, etcd refuses the connection:
/// flanneld keeps running and retrying, is not ready, takes no lease and
/// says why in its log.
#[test]
fn without_client_certificate_flanneld_is_not_ready_and_says_why() {
    harness::require_root!();
    let mut t = tls_cluster();
    let c = &mut t.c;
    let node = c.start_node(&[]);
    let error = "cannot read /coreos.com/network/config: ";
    // It keeps trying (every second) and failing: logged again 5 s later.
    node.wait_logged(error, 2, Duration::from_secs(15));
    let log = node.flanneld_log();
    let line = log.lines().find(|l| l.contains(error)).unwrap();
    let why = "(no client certificate was given: if etcd requires one (--client-cert-auth), \
               give --etcd-certfile and --etcd-keyfile)";
    assert!(line.ends_with(why), "the error does not say why:\n{log}");
    assert!(node.flanneld_running(), "flanneld gave up:\n{log}");
    assert_eq!(node.readyz(), Some(503), "{log}");
    assert!(!node.subnet_file().exists(), "subnet.env was written");
    assert_eq!(c.leases(), [], "a lease was taken");
    assert!(c
        .etcd()
        .log()
        .contains("client didn't provide a certificate"));
}
