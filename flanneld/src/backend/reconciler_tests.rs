use std::net::Ipv4Addr;

use flannel_netlink::{Addr, Link, VxlanInfo};

use super::*;
use crate::backend::fake::FakeKernel;
use crate::backend::Op;

fn peers(n: u8) -> Vec<Peer> {
    (1..=n)
        .map(|i| Peer {
            subnet: format!("10.244.{}.0/24", i + 1).parse().unwrap(),
            public_ip: Ipv4Addr::new(192, 0, 2, 100 + i),
            vtep_mac: [2, 0, 0, 0, 1, i],
        })
        .collect()
}

fn target(dir: &std::path::Path, peers: Vec<Peer>) -> Target {
    let subnet: Ipv4Net = "10.244.1.0/24".parse().unwrap();
    let cluster: Ipv4Net = "10.244.0.0/16".parse().unwrap();
    Target {
        device: DeviceSpec {
            vni: 1,
            port: 8472,
            link: 2,
            local: Ipv4Addr::new(192, 0, 2, 11),
            mtu: 1450,
            mac: [2, 0, 0, 0, 0, 1],
            subnet,
        },
        cluster,
        peers,
        subnet_env: SubnetEnv::for_lease(cluster, subnet, 1450, false),
        subnet_file: dir.join("subnet.env"),
    }
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "flanneld-unit-{}-{}",
        std::process::id(),
        crate::util::random_u64()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn reconciler(k: FakeKernel) -> Reconciler<FakeKernel> {
    Reconciler::new(k, Arc::new(Shared::default()), Duration::from_secs(10))
}

#[test]
fn first_pass_builds_everything_in_one_batch_then_nothing() {
    let dir = tempdir();
    let mut r = reconciler(FakeKernel::new());
    r.target = Some(target(&dir, peers(50)));
    assert!(!r.shared.metrics.is_ready());
    r.pass();
    let k = &r.dp;
    // Neighbour, FDB entry, nexthop and route per peer.
    assert_eq!((k.created, k.round_trips, k.log.len()), (1, 1, 200));
    assert_eq!((k.nexthops.len(), k.routes.len()), (50, 50));
    assert!(k.routes.iter().all(|r| r.nhid.is_some()));
    let dev = &k.links[0];
    assert_eq!(
        (dev.name.as_str(), dev.mtu, dev.up, dev.mac),
        ("flannel.1", 1450, true, Some([2, 0, 0, 0, 0, 1]))
    );
    assert_eq!(
        k.addrs,
        vec![Addr {
            index: dev.index,
            net: "10.244.1.0/32".parse().unwrap()
        }]
    );
    assert!(r.shared.metrics.is_ready());
    assert_eq!(
        std::fs::read_to_string(dir.join("subnet.env")).unwrap(),
        target(&dir, vec![]).subnet_env.to_string()
    );
    assert_eq!(r.shared.metrics.peers_programmed.get(), 50);

    r.pass();
    assert_eq!(
        (r.dp.created, r.dp.round_trips, r.dp.log.len()),
        (1, 1, 200),
        "second pass changes nothing"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn compatible_device_is_kept_incompatible_recreated() {
    let dir = tempdir();
    let mut k = FakeKernel::new();
    let vx = VxlanInfo {
        vni: 1,
        port: 8472,
        local: Some(Ipv4Addr::new(192, 0, 2, 11)),
        link: Some(2),
        learning: false,
    };
    k.links.push(Link {
        index: 5,
        name: "flannel.1".into(),
        mtu: 1400,
        vxlan: Some(vx.clone()),
        ..Default::default()
    });
    k.addrs.push(Addr {
        index: 5,
        net: "10.244.77.0/32".parse().unwrap(),
    });
    let mut r = reconciler(k);
    r.target = Some(target(&dir, peers(1)));
    r.pass();
    assert_eq!(r.dp.created, 0);
    let dev = &r.dp.links[0];
    assert_eq!((dev.index, dev.mtu, dev.up), (5, 1450, true));
    assert_eq!(
        r.dp.addrs,
        vec![Addr {
            index: 5,
            net: "10.244.1.0/32".parse().unwrap()
        }],
        "old subnet's address removed"
    );

    let mut k = FakeKernel::new();
    k.links.push(Link {
        index: 5,
        name: "flannel.1".into(),
        vxlan: Some(VxlanInfo {
            learning: true,
            ..vx
        }),
        ..Default::default()
    });
    let mut r = reconciler(k);
    r.target = Some(target(&dir, peers(1)));
    r.pass();
    assert_eq!(r.dp.created, 1);
    assert_ne!(r.dp.links[0].index, 5);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn peer_changes_and_external_deletions_converge() {
    let dir = tempdir();
    let mut r = reconciler(FakeKernel::new());
    r.target = Some(target(&dir, peers(3)));
    r.pass();
    // Someone deletes a route and an FDB entry.
    r.dp.routes.remove(1);
    r.dp.fdb.remove(0);
    r.pass();
    assert_eq!(
        (r.dp.routes.len(), r.dp.fdb.len(), r.dp.neighs.len()),
        (3, 3, 3)
    );
    // A peer leaves: its three entries go.
    r.target = Some(target(&dir, peers(2)));
    r.pass();
    assert_eq!(
        (r.dp.routes.len(), r.dp.fdb.len(), r.dp.neighs.len()),
        (2, 2, 2)
    );
    // The device is deleted: rebuilt with everything.
    let index = r.dp.links[0].index;
    r.dp.del_link(index).unwrap();
    r.pass();
    assert_eq!((r.dp.created, r.dp.routes.len(), r.dp.fdb.len()), (2, 2, 2));
    assert_eq!(r.shared.device_index.load(Relaxed), r.dp.links[0].index);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A new reconciler (as after a restart) on the same kernel.
fn restarted(r: &mut Reconciler<FakeKernel>) -> Reconciler<FakeKernel> {
    let mut k = std::mem::take(&mut r.dp);
    k.log.clear();
    let mut next = reconciler(k);
    next.target = r.target.clone();
    next
}

#[test]
fn kernel_without_nexthops_gets_plain_routes_and_is_asked_once() {
    let dir = tempdir();
    let mut k = FakeKernel::new();
    k.no_nexthops = true;
    let mut r = reconciler(k);
    r.target = Some(target(&dir, peers(50)));
    r.pass();
    r.pass();
    let k = &r.dp;
    assert_eq!((k.log.len(), k.nexthop_dumps), (150, 1));
    assert!(k
        .routes
        .iter()
        .all(|x| x.nhid.is_none() && x.onlink && x.gateway == Some(x.dst.network())));
    assert_eq!(r.shared.metrics.peers_programmed.get(), 50);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn restart_changes_nothing_that_is_right() {
    let dir = tempdir();
    let mut r = reconciler(FakeKernel::new());
    r.target = Some(target(&dir, peers(20)));
    r.pass();
    let mut r = restarted(&mut r);
    r.pass();
    assert_eq!(r.dp.log, vec![]);
    // Nor when route dumps show only the nexthop id.
    r.dp.no_compat = true;
    let mut r = restarted(&mut r);
    r.pass();
    assert_eq!(r.dp.log, vec![]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn node_migrated_from_flannel_converges_without_a_gap() {
    let dir = tempdir();
    // flannel's state: neighbour, FDB entry and plain route per peer.
    let mut k = FakeKernel::new();
    k.no_nexthops = true;
    let mut r = reconciler(k);
    r.target = Some(target(&dir, peers(30)));
    r.pass();
    let before: Vec<_> = r.dp.routes.iter().map(|x| x.dst).collect();
    r.dp.no_nexthops = false;
    let mut r = restarted(&mut r);
    r.pass();
    let log = &r.dp.log;
    assert_eq!(log.len(), 60, "{log:?}");
    assert!(log[..30]
        .iter()
        .all(|op| matches!(op, Op::ReplaceNexthop(_))));
    assert!(log[30..].iter().all(|op| matches!(op, Op::ReplaceRoute(_))));
    // Every route was replaced in place: same destinations, same order,
    // nothing deleted in between.
    let after: Vec<_> = r.dp.routes.iter().map(|x| x.dst).collect();
    assert_eq!(before, after);
    assert!(r.dp.routes.iter().all(|x| x.nhid.is_some()));
    let dumped = r.dp.routes().unwrap();
    assert!(dumped
        .iter()
        .all(|x| x.gateway == Some(x.dst.network()) && x.onlink));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn deleted_nexthop_and_leaving_peer_converge() {
    let dir = tempdir();
    let mut r = reconciler(FakeKernel::new());
    r.target = Some(target(&dir, peers(3)));
    r.pass();
    // Someone deletes a nexthop: the kernel takes its route along.
    let id = r.dp.nexthops[1].id;
    r.dp.del_nexthop(id).unwrap();
    assert_eq!(r.dp.routes.len(), 2);
    r.dp.log.clear();
    r.pass();
    assert_eq!(r.dp.log.len(), 2, "{:?}", r.dp.log);
    assert_eq!((r.dp.nexthops.len(), r.dp.routes.len()), (3, 3));
    // A peer leaves: route, nexthop, FDB entry, neighbour, in that order.
    r.dp.log.clear();
    r.target = Some(target(&dir, peers(2)));
    r.pass();
    let kinds: Vec<_> =
        r.dp.log
            .iter()
            .map(|op| match op {
                Op::DelRoute(_) => "route",
                Op::DelNexthop { .. } => "nexthop",
                Op::DelFdb { .. } => "fdb",
                Op::DelNeigh { .. } => "neigh",
                _ => "other",
            })
            .collect();
    assert_eq!(kinds, ["route", "nexthop", "fdb", "neigh"]);
    assert_eq!((r.dp.nexthops.len(), r.dp.routes.len()), (2, 2));
    std::fs::remove_dir_all(dir).unwrap();
}
