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

#[test]
fn a_device_of_an_old_vni_from_our_address_is_removed_once() {
    let dir = tempdir();
    let mut k = FakeKernel::new();
    let old = DeviceSpec {
        vni: 7,
        ..target(&dir, vec![]).device
    };
    device::ensure(&mut k, &old).unwrap();
    let mut r = reconciler(k);
    r.target = Some(target(&dir, peers(1)));
    r.pass();
    let names: Vec<&str> = r.dp.links.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["flannel.1"]);
    // Made again by someone else (another daemon's network): left alone.
    device::ensure(&mut r.dp, &old).unwrap();
    r.pass();
    assert_eq!(r.dp.links.len(), 2);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A small deterministic generator (xorshift64*): a failure names its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }

    /// Up to 11 peers from small pools of subnets (/24s and /25s that share
    /// gateways), public IPs and VTEP MACs: collisions of every kind.
    fn peers(&mut self) -> Vec<Peer> {
        (0..self.below(12))
            .map(|_| {
                let third = 2 + self.below(6) as u8;
                let (fourth, len) = match self.below(4) {
                    0 => (0, 25),
                    1 => (128, 25),
                    _ => (0, 24),
                };
                Peer {
                    subnet: Ipv4Net::new(Ipv4Addr::new(10, 244, third, fourth), len).unwrap(),
                    public_ip: Ipv4Addr::new(192, 0, 2, 100 + self.below(5) as u8),
                    vtep_mac: [2, 0, 0, 0, 0, 1 + self.below(6) as u8],
                }
            })
            .collect()
    }
}

/// Reconciles towards `peers`, twice: the second pass must find nothing.
fn converges(k: &mut FakeKernel, t: &Target, mode: RouteMode, what: &str) {
    let first = reconcile(k, t, mode).unwrap();
    assert_eq!(first.failed, 0, "{what}: {:?}", t.peers);
    let second = reconcile(k, t, mode).unwrap();
    assert_eq!(second.ops, 0, "{what}: {:?}\n{:?}", t.peers, k.log);
}

#[test]
fn a_pass_never_undoes_the_previous_one_whatever_the_peers() {
    let dir = tempdir();
    for seed in 1..=400u64 {
        let mut rng = Rng(seed * 0x9e37_79b9_7f4a_7c15);
        let mode = [RouteMode::Nexthop, RouteMode::Plain][seed as usize % 2];
        let mut k = FakeKernel::new();
        for step in 0..6 {
            let t = target(&dir, rng.peers());
            converges(&mut k, &t, mode, &format!("seed {seed}, step {step}"));
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_peer_set_of_colliding_leases_converges_in_one_pass() {
    use crate::lease::{PeerSet, Record, Rules};
    let dir = tempdir();
    let config = crate::config::NetworkConfig::parse(
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    for seed in 1..=200u64 {
        let mut rng = Rng(seed * 0x9e37_79b9_7f4a_7c15);
        let mut set = PeerSet::new(Rules::new(&config, None));
        let mut k = FakeKernel::new();
        for step in 0..6 {
            let records: Vec<Record> = (rng.peers().iter().enumerate())
                .map(|(i, p)| Record {
                    key: format!(
                        "/p/subnets/{}-{}",
                        p.subnet.network(),
                        p.subnet.prefix_len()
                    ),
                    value: crate::lease::LeaseAttrs::vxlan(
                        p.public_ip,
                        crate::lease::VxlanData {
                            vni: 1,
                            vtep_mac: p.vtep_mac,
                        },
                    )
                    .to_json()
                    .into_bytes(),
                    lease: 0,
                    create_revision: rng.below(4) as i64 + i as i64,
                })
                .collect();
            set.reset(&records);
            set.settle();
            let t = target(&dir, set.peers());
            converges(
                &mut k,
                &t,
                RouteMode::Nexthop,
                &format!("seed {seed}, step {step}"),
            );
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
}
