//! The difference between the peers the leases ask for and what the kernel
//! has on the VXLAN device, as an ordered list of netlink operations.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

use flannel_netlink::{FdbEntry, Mac, Neighbour, Route};
use ipnet::{IpNet, Ipv4Net};

use super::Op;
use crate::lease::Peer;

/// What the leases ask for.
#[derive(Debug, Clone)]
pub struct Desired<'a> {
    pub index: u32,
    pub cluster: Ipv4Net,
    pub peers: &'a [Peer],
}

/// What the kernel has (already filtered to the device for neigh/FDB).
#[derive(Debug, Clone, Default)]
pub struct Actual {
    pub neighs: Vec<Neighbour>,
    pub fdb: Vec<FdbEntry>,
    /// Main-table IPv4 routes.
    pub routes: Vec<Route>,
}

/// The gateway of a peer's route: its subnet's network address, which is
/// also the address on the peer's VXLAN device.
pub fn gateway(peer: &Peer) -> Ipv4Addr {
    peer.subnet.network()
}

/// The route flannel installs towards a peer.
pub fn peer_route(index: u32, peer: &Peer) -> Route {
    Route::new(IpNet::V4(peer.subnet))
        .via(IpAddr::V4(gateway(peer)))
        .dev(index)
        .onlink()
}

/// Removals first (route, FDB, neighbour: the reverse of setup), then for
/// each peer neighbour → FDB → route, so a route never points at a
/// gateway that cannot be resolved yet.
pub fn plan(d: &Desired, a: &Actual) -> Vec<Op> {
    let mut ops = stale_routes(d, a);
    ops.extend(stale_fdb(d, a));
    ops.extend(stale_neighs(d, a));
    let neighs: HashMap<IpAddr, &Neighbour> = a.neighs.iter().map(|n| (n.ip, n)).collect();
    let mut fdb: HashMap<Mac, Vec<&FdbEntry>> = HashMap::new();
    for f in &a.fdb {
        fdb.entry(f.mac).or_default().push(f);
    }
    let routes: HashMap<IpNet, &Route> = a
        .routes
        .iter()
        .filter(|r| is_plain(r))
        .map(|r| (r.dst, r))
        .collect();
    let (mut n_ops, mut f_ops, mut r_ops) = (Vec::new(), Vec::new(), Vec::new());
    for p in d.peers {
        let gw = gateway(p);
        let neigh_ok = neighs
            .get(&IpAddr::V4(gw))
            .is_some_and(|n| n.permanent && n.mac == Some(p.vtep_mac));
        if !neigh_ok {
            n_ops.push(Op::ReplaceNeigh {
                ip: gw,
                mac: p.vtep_mac,
            });
        }
        f_ops.extend(fdb_ops(
            p,
            fdb.get(&p.vtep_mac).map_or(&[][..], Vec::as_slice),
        ));
        let want = peer_route(d.index, p);
        if !routes.get(&want.dst).is_some_and(|r| same_route(r, &want)) {
            r_ops.push(Op::ReplaceRoute(want));
        }
    }
    ops.extend(n_ops);
    ops.extend(f_ops);
    ops.extend(r_ops);
    ops
}

/// A route in the default position (no metric), the one `replace` targets.
fn is_plain(r: &Route) -> bool {
    r.metric.unwrap_or(0) == 0
}

fn same_route(have: &Route, want: &Route) -> bool {
    have.gateway == want.gateway && have.oif == want.oif && have.onlink && have.src.is_none()
}

/// The FDB for a peer's MAC must be exactly one entry towards its PublicIP.
fn fdb_ops(p: &Peer, have: &[&FdbEntry]) -> Vec<Op> {
    let want = IpAddr::V4(p.public_ip);
    let good = have.iter().any(|f| f.permanent && f.dst == Some(want));
    let mut ops: Vec<Op> = have
        .iter()
        .filter(|f| f.dst != Some(want) || !f.permanent)
        .map(|f| Op::DelFdb {
            mac: f.mac,
            dst: f.dst,
        })
        .collect();
    if !good {
        ops.insert(
            0,
            Op::ReplaceFdb {
                mac: p.vtep_mac,
                dst: p.public_ip,
            },
        );
        // `replace` rewrites the entry's first destination in place; the
        // others were queued for deletion above, the rewritten one must stay.
        if let Some(first) = have.first() {
            ops.retain(|op| {
                *op != Op::DelFdb {
                    mac: first.mac,
                    dst: first.dst,
                }
            });
        }
    }
    ops
}

/// Our routes are the ones on the device with a gateway inside the cluster
/// network; any such route to a subnet that is no longer a peer goes.
fn stale_routes(d: &Desired, a: &Actual) -> Vec<Op> {
    let wanted: HashSet<IpNet> = d.peers.iter().map(|p| IpNet::V4(p.subnet)).collect();
    a.routes
        .iter()
        .filter(|r| r.oif == Some(d.index) && r.gateway.is_some())
        .filter(|r| matches!(r.dst, IpNet::V4(n) if d.cluster.contains(&n)))
        .filter(|r| !wanted.contains(&r.dst))
        .map(|r| Op::DelRoute(r.clone()))
        .collect()
}

fn stale_fdb(d: &Desired, a: &Actual) -> Vec<Op> {
    let wanted: HashSet<Mac> = d.peers.iter().map(|p| p.vtep_mac).collect();
    a.fdb
        .iter()
        .filter(|f| f.permanent && f.master.is_none() && !wanted.contains(&f.mac))
        .map(|f| Op::DelFdb {
            mac: f.mac,
            dst: f.dst,
        })
        .collect()
}

fn stale_neighs(d: &Desired, a: &Actual) -> Vec<Op> {
    let wanted: HashSet<IpAddr> = d.peers.iter().map(|p| IpAddr::V4(gateway(p))).collect();
    a.neighs
        .iter()
        .filter(|n| n.permanent && !wanted.contains(&n.ip))
        .map(|n| Op::DelNeigh { ip: n.ip })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: u32 = 7;

    fn peer(n: u8, mac_last: u8, public: u8) -> Peer {
        Peer {
            subnet: format!("10.244.{n}.0/24").parse().unwrap(),
            public_ip: Ipv4Addr::new(192, 0, 2, public),
            vtep_mac: [2, 0, 0, 0, 0, mac_last],
        }
    }

    /// The kernel state after `ops` ran on an empty device.
    fn programmed(peers: &[Peer]) -> Actual {
        let mut a = Actual::default();
        for p in peers {
            a.neighs.push(Neighbour {
                index: DEV,
                ip: gateway(p).into(),
                mac: Some(p.vtep_mac),
                permanent: true,
            });
            a.fdb.push(FdbEntry {
                index: DEV,
                mac: p.vtep_mac,
                dst: Some(p.public_ip.into()),
                master: None,
                permanent: true,
            });
            a.routes.push(peer_route(DEV, p));
        }
        a
    }

    fn desired(peers: &[Peer]) -> Desired<'_> {
        Desired {
            index: DEV,
            cluster: "10.244.0.0/16".parse().unwrap(),
            peers,
        }
    }

    #[test]
    fn empty_device_gets_neigh_then_fdb_then_route() {
        let peers = [peer(2, 2, 12), peer(3, 3, 13)];
        let ops = plan(&desired(&peers), &Actual::default());
        let kinds: Vec<&str> = ops
            .iter()
            .map(|o| match o {
                Op::ReplaceNeigh { .. } => "neigh",
                Op::ReplaceFdb { .. } => "fdb",
                Op::ReplaceRoute(_) => "route",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, ["neigh", "neigh", "fdb", "fdb", "route", "route"]);
        assert_eq!(
            ops[0],
            Op::ReplaceNeigh {
                ip: "10.244.2.0".parse().unwrap(),
                mac: [2, 0, 0, 0, 0, 2]
            }
        );
        assert_eq!(
            ops[2],
            Op::ReplaceFdb {
                mac: [2, 0, 0, 0, 0, 2],
                dst: "192.0.2.12".parse().unwrap()
            }
        );
        let Op::ReplaceRoute(r) = &ops[4] else {
            panic!()
        };
        assert_eq!(
            (r.dst.to_string(), r.gateway, r.oif, r.onlink),
            (
                "10.244.2.0/24".into(),
                Some("10.244.2.0".parse().unwrap()),
                Some(DEV),
                true
            )
        );
    }

    #[test]
    fn correct_state_needs_nothing() {
        let peers = [peer(2, 2, 12), peer(3, 3, 13)];
        let mut actual = programmed(&peers);
        // Things that are not ours stay: a route elsewhere, a non-permanent
        // neighbour, a bridge FDB entry.
        actual.routes.push(
            Route::new("0.0.0.0/0".parse().unwrap())
                .via("192.0.2.1".parse().unwrap())
                .dev(2),
        );
        actual.neighs.push(Neighbour {
            index: DEV,
            ip: "10.244.9.9".parse().unwrap(),
            mac: None,
            permanent: false,
        });
        assert_eq!(plan(&desired(&peers), &actual), vec![]);
    }

    #[test]
    fn removed_peer_loses_all_three_entries() {
        let peers = [peer(2, 2, 12), peer(3, 3, 13)];
        let actual = programmed(&peers);
        let ops = plan(&desired(&peers[..1]), &actual);
        assert_eq!(
            ops,
            vec![
                Op::DelRoute(peer_route(DEV, &peers[1])),
                Op::DelFdb {
                    mac: [2, 0, 0, 0, 0, 3],
                    dst: Some("192.0.2.13".parse().unwrap())
                },
                Op::DelNeigh {
                    ip: "10.244.3.0".parse().unwrap()
                },
            ]
        );
    }

    #[test]
    fn changed_mac_or_public_ip_replaces_old_entries() {
        let old = [peer(2, 2, 12)];
        let actual = programmed(&old);
        // New MAC: neighbour replaced, new FDB entry, old MAC's entry deleted.
        let new_mac = [peer(2, 9, 12)];
        let ops = plan(&desired(&new_mac), &actual);
        assert_eq!(
            ops,
            vec![
                Op::DelFdb {
                    mac: [2, 0, 0, 0, 0, 2],
                    dst: Some("192.0.2.12".parse().unwrap())
                },
                Op::ReplaceNeigh {
                    ip: "10.244.2.0".parse().unwrap(),
                    mac: [2, 0, 0, 0, 0, 9]
                },
                Op::ReplaceFdb {
                    mac: [2, 0, 0, 0, 0, 9],
                    dst: "192.0.2.12".parse().unwrap()
                },
            ]
        );
        // New PublicIP: only the FDB destination changes.
        let moved = [peer(2, 2, 99)];
        let ops = plan(&desired(&moved), &actual);
        assert_eq!(
            ops,
            vec![Op::ReplaceFdb {
                mac: [2, 0, 0, 0, 0, 2],
                dst: "192.0.2.99".parse().unwrap()
            }]
        );
    }

    #[test]
    fn deleted_or_altered_entries_are_restored() {
        let peers = [peer(2, 2, 12), peer(3, 3, 13)];
        let mut actual = programmed(&peers);
        actual.routes.remove(0);
        actual.neighs[1].permanent = false;
        let ops = plan(&desired(&peers), &actual);
        assert_eq!(
            ops,
            vec![
                Op::ReplaceNeigh {
                    ip: "10.244.3.0".parse().unwrap(),
                    mac: [2, 0, 0, 0, 0, 3]
                },
                Op::ReplaceRoute(peer_route(DEV, &peers[0])),
            ]
        );
    }
}
