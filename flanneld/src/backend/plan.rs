//! The difference between the peers the leases ask for and what the kernel
//! has on the VXLAN device, as an ordered list of netlink operations.
//!
//! Whatever the reconciler ever programmed on the device is its to remove:
//! a route through the device with a gateway, or through one of our
//! nexthops, is ours wherever its destination (a forged lease of an older
//! version may have routed any prefix there), and goes when no peer wants
//! it; the kernel's own routes for the device (no gateway) stay. A plan
//! serves at most one peer per subnet, VTEP MAC and gateway, so applying
//! it leaves nothing for the next plan to undo.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

use flannel_netlink::{FdbEntry, Mac, Neighbour, Nexthop, Route};
use ipnet::{IpNet, Ipv4Net};

use super::nexthop::{self, RouteMode};
use super::Op;
use crate::lease::Peer;

/// What the leases ask for.
#[derive(Debug, Clone)]
pub struct Desired<'a> {
    pub index: u32,
    pub cluster: Ipv4Net,
    pub peers: &'a [Peer],
    pub mode: RouteMode,
}

/// What the kernel has (already filtered to the device for neigh/FDB).
#[derive(Debug, Clone, Default)]
pub struct Actual {
    pub neighs: Vec<Neighbour>,
    pub fdb: Vec<FdbEntry>,
    /// Main-table IPv4 routes.
    pub routes: Vec<Route>,
    /// Every nexthop of the namespace (none in plain mode).
    pub nexthops: Vec<Nexthop>,
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

/// What one peer needs besides its neighbour and FDB entry.
struct Want<'p> {
    peer: &'p Peer,
    /// Shared by peers with the same gateway (subnets that differ only in
    /// prefix length).
    nexthop: Option<Nexthop>,
    route: Route,
}

/// The nexthop (if this peer gets one) and route for `p`. An id held by a
/// nexthop that is not ours is left alone: that peer gets a plain route.
fn want<'p>(d: &Desired, p: &'p Peer, foreign: &HashSet<u32>) -> Want<'p> {
    let id = match d.mode {
        RouteMode::Nexthop => nexthop::id_for(d.cluster, gateway(p)),
        RouteMode::Plain => None,
    };
    let nh = id
        .filter(|id| !foreign.contains(id))
        .map(|id| nexthop::nexthop(id, gateway(p), d.index));
    let route = match &nh {
        Some(nh) => Route::new(IpNet::V4(p.subnet)).nhid(nh.id),
        None => peer_route(d.index, p),
    };
    Want {
        peer: p,
        nexthop: nh,
        route,
    }
}

/// One of the three things a peer needs on the device (its nexthop counts
/// as part of its route).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entry {
    Neigh,
    Fdb,
    Route,
}

/// The peers (by subnet) whose entry `op` writes: several when they share
/// a VTEP MAC or a gateway, none for the removal of something no peer
/// wants. A peer's entry is in place exactly when a plan has no operation
/// for it; `flanneld status` and the `peers_programmed` metric both count
/// through this.
pub fn affected(op: &Op, peers: &[Peer]) -> Vec<(Ipv4Net, Entry)> {
    let hit = |p: &Peer| match op {
        Op::ReplaceNeigh { ip, .. } => (*ip == gateway(p)).then_some(Entry::Neigh),
        Op::DelNeigh { ip } => (*ip == IpAddr::V4(gateway(p))).then_some(Entry::Neigh),
        Op::ReplaceFdb { mac, .. } | Op::DelFdb { mac, .. } => {
            (*mac == p.vtep_mac).then_some(Entry::Fdb)
        }
        Op::ReplaceNexthop(n) => {
            (n.gateway == Some(IpAddr::V4(gateway(p)))).then_some(Entry::Route)
        }
        Op::DelNexthop { .. } => None,
        Op::ReplaceRoute(r) | Op::DelRoute(r) => {
            (r.dst == IpNet::V4(p.subnet)).then_some(Entry::Route)
        }
    };
    peers
        .iter()
        .filter_map(|p| hit(p).map(|e| (p.subnet, e)))
        .collect()
}

/// Every (peer, entry) that some operation of `ops` writes.
pub fn pending(ops: &[Op], peers: &[Peer]) -> HashSet<(Ipv4Net, Entry)> {
    ops.iter().flat_map(|op| affected(op, peers)).collect()
}

/// Removals first (route, nexthop, FDB, neighbour: the reverse of setup),
/// then for each peer neighbour → FDB → nexthop → route, so a route never
/// points at a gateway that cannot be resolved yet. A route that exists in
/// another form (a plain one where a nexthop is wanted) is replaced in
/// place, never deleted first.
pub fn plan(d: &Desired, a: &Actual) -> Vec<Op> {
    let peers = servable(d.peers);
    let d = &Desired {
        peers: &peers,
        ..d.clone()
    };
    let owned: HashMap<u32, &Nexthop> = a
        .nexthops
        .iter()
        .filter(|n| nexthop::is_ours(n))
        .map(|n| (n.id, n))
        .collect();
    let foreign: HashSet<u32> = a
        .nexthops
        .iter()
        .filter(|n| !nexthop::is_ours(n))
        .map(|n| n.id)
        .collect();
    let wants: Vec<Want> = d.peers.iter().map(|p| want(d, p, &foreign)).collect();
    let mut ops = stale_routes(d, a, &owned);
    ops.extend(stale_nexthops(&wants, &owned));
    ops.extend(stale_fdb(d, a));
    ops.extend(stale_neighs(d, a));
    ops.extend(additions(wants, a, &owned));
    ops
}

/// The peers one datapath can serve at once: of peers that would share a
/// subnet (one route), a VTEP MAC (one FDB entry) or a gateway (one
/// neighbour, one nexthop), the first. The lease layer resolves such
/// conflicts already (the older lease wins); this keeps a pass from
/// undoing the previous one, and the next, whatever it is given.
fn servable(peers: &[Peer]) -> Vec<Peer> {
    let (mut subnets, mut macs, mut gateways) = (HashSet::new(), HashSet::new(), HashSet::new());
    let mut out = Vec::with_capacity(peers.len());
    for p in peers {
        let taken = subnets.contains(&p.subnet)
            || macs.contains(&p.vtep_mac)
            || gateways.contains(&gateway(p));
        if !taken {
            subnets.insert(p.subnet);
            macs.insert(p.vtep_mac);
            gateways.insert(gateway(p));
            out.push(*p);
        }
    }
    out
}

/// Neighbours, then FDB entries, then nexthops, then routes that are
/// missing or wrong.
fn additions(wants: Vec<Want>, a: &Actual, owned: &HashMap<u32, &Nexthop>) -> Vec<Op> {
    let neighs: HashMap<IpAddr, &Neighbour> = a.neighs.iter().map(|n| (n.ip, n)).collect();
    let mut fdb: HashMap<Mac, Vec<&FdbEntry>> = HashMap::new();
    for f in &a.fdb {
        fdb.entry(f.mac).or_default().push(f);
    }
    let routes: HashMap<IpNet, &Route> = a
        .routes
        .iter()
        .filter(|r| has_default_metric(r))
        .map(|r| (r.dst, r))
        .collect();
    let (mut n_ops, mut f_ops, mut h_ops, mut r_ops) = (vec![], vec![], vec![], vec![]);
    let mut nexthops_done = HashSet::new();
    for w in wants {
        let (p, gw) = (w.peer, gateway(w.peer));
        let neigh_ok = neighs
            .get(&IpAddr::V4(gw))
            .is_some_and(|n| n.permanent && n.mac == Some(p.vtep_mac));
        if !neigh_ok {
            n_ops.push(Op::ReplaceNeigh {
                ip: gw,
                mac: p.vtep_mac,
            });
        }
        let have = fdb.get(&p.vtep_mac).map_or(&[][..], Vec::as_slice);
        f_ops.extend(fdb_ops(p, have));
        if let Some(nh) = w.nexthop.filter(|n| nexthops_done.insert(n.id)) {
            if !owned.get(&nh.id).is_some_and(|h| same_nexthop(h, &nh)) {
                h_ops.push(Op::ReplaceNexthop(nh));
            }
        }
        if !routes
            .get(&w.route.dst)
            .is_some_and(|r| same_route(r, &w.route))
        {
            r_ops.push(Op::ReplaceRoute(w.route));
        }
    }
    n_ops.extend(f_ops);
    n_ops.extend(h_ops);
    n_ops.extend(r_ops);
    n_ops
}

/// A route in the default position (no metric), the one `replace` targets.
fn has_default_metric(r: &Route) -> bool {
    r.metric.unwrap_or(0) == 0
}

/// Dumps show a nexthop route's gateway and device too (compat mode), so
/// the nexthop id is what tells the two forms apart.
fn same_route(have: &Route, want: &Route) -> bool {
    let target = match want.nhid {
        Some(id) => have.nhid == Some(id),
        None => {
            have.nhid.is_none()
                && have.gateway == want.gateway
                && have.oif == want.oif
                && have.onlink
        }
    };
    target && have.src.is_none()
}

fn same_nexthop(have: &Nexthop, want: &Nexthop) -> bool {
    have.gateway == want.gateway && have.oif == want.oif && have.onlink
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

/// `proto kernel`: a route the kernel made for an address.
const PROTO_KERNEL: u8 = 2;

/// Our routes are the ones through the device with a gateway, or through
/// one of our nexthops, wherever they lead; any such route to a subnet
/// that is no longer a peer goes. The kernel's own routes for the device
/// have no gateway (scope link) and are never touched.
fn stale_routes(d: &Desired, a: &Actual, owned: &HashMap<u32, &Nexthop>) -> Vec<Op> {
    let wanted: HashSet<IpNet> = d.peers.iter().map(|p| IpNet::V4(p.subnet)).collect();
    let ours = |r: &Route| {
        let through_device = r.oif == Some(d.index) && r.gateway.is_some();
        let through_ours = r.nhid.is_some_and(|id| owned.contains_key(&id));
        (through_device || through_ours) && r.protocol != PROTO_KERNEL
    };
    a.routes
        .iter()
        .filter(|r| ours(r) && !wanted.contains(&r.dst))
        .map(|r| Op::DelRoute(r.clone()))
        .collect()
}

/// Our nexthops that no peer uses any more. Deleting one would take the
/// routes using it along, so it goes only after they have.
fn stale_nexthops(wants: &[Want], owned: &HashMap<u32, &Nexthop>) -> Vec<Op> {
    let wanted: HashSet<u32> = wants
        .iter()
        .filter_map(|w| w.nexthop.as_ref().map(|n| n.id))
        .collect();
    let mut stale: Vec<u32> = owned
        .keys()
        .copied()
        .filter(|id| !wanted.contains(id))
        .collect();
    stale.sort_unstable();
    stale.into_iter().map(|id| Op::DelNexthop { id }).collect()
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

    /// Plain routes, as on a kernel without nexthop objects.
    fn desired(peers: &[Peer]) -> Desired<'_> {
        Desired {
            index: DEV,
            cluster: "10.244.0.0/16".parse().unwrap(),
            peers,
            mode: RouteMode::Plain,
        }
    }

    fn desired_nh(peers: &[Peer]) -> Desired<'_> {
        Desired {
            mode: RouteMode::Nexthop,
            ..desired(peers)
        }
    }

    fn nh_id(p: &Peer) -> u32 {
        nexthop::id_for("10.244.0.0/16".parse().unwrap(), gateway(p)).unwrap()
    }

    fn nh_of(p: &Peer) -> Nexthop {
        nexthop::nexthop(nh_id(p), gateway(p), DEV)
    }

    /// A route through the peer's nexthop as a dump shows it (compat mode:
    /// gateway, device and onlink filled in from the nexthop).
    fn nh_route_dumped(p: &Peer) -> Route {
        let mut r = peer_route(DEV, p);
        r.nhid = Some(nh_id(p));
        r
    }

    /// The kernel state after a nexthop-mode plan ran on an empty device.
    fn programmed_nh(peers: &[Peer]) -> Actual {
        let mut a = programmed(peers);
        a.routes = peers.iter().map(nh_route_dumped).collect();
        a.nexthops = peers.iter().map(nh_of).collect();
        a
    }

    fn kind(op: &Op) -> &'static str {
        match op {
            Op::ReplaceNeigh { .. } => "neigh",
            Op::ReplaceFdb { .. } => "fdb",
            Op::ReplaceNexthop(_) => "nexthop",
            Op::ReplaceRoute(_) => "route",
            Op::DelNeigh { .. } => "-neigh",
            Op::DelFdb { .. } => "-fdb",
            Op::DelNexthop { .. } => "-nexthop",
            Op::DelRoute(_) => "-route",
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

    /// A route through the device with a gateway to `dst`, as an older
    /// version programmed forged leases.
    fn hijack(dst: &str) -> Route {
        Route::new(dst.parse().unwrap())
            .via("10.244.2.0".parse().unwrap())
            .dev(DEV)
            .onlink()
    }

    #[test]
    fn our_routes_go_wherever_they_lead_and_the_kernels_stay() {
        let peers = [peer(2, 2, 12)];
        let mut actual = programmed(&peers);
        let hijacked = [
            "8.8.8.0/24",
            "128.0.0.0/1",
            "10.244.1.128/25",
            "10.99.0.0/16",
        ];
        actual.routes.extend(hijacked.iter().map(|d| hijack(d)));
        // The kernel's route for an address, and a route into the device
        // without a gateway: not ours.
        let mut kernel = Route::new("10.244.77.0/24".parse().unwrap()).dev(DEV);
        kernel.protocol = 2;
        actual.routes.push(kernel);
        actual
            .routes
            .push(Route::new("10.98.0.0/16".parse().unwrap()).dev(DEV));
        let ops = plan(&desired(&peers), &actual);
        let gone: Vec<Op> = hijacked.iter().map(|d| Op::DelRoute(hijack(d))).collect();
        assert_eq!(ops, gone);
        // Through one of our nexthops, even outside the network.
        let mut actual = programmed_nh(&peers);
        actual
            .routes
            .push(Route::new("9.9.9.0/24".parse().unwrap()).nhid(nh_id(&peers[0])));
        let ops = plan(&desired_nh(&peers), &actual);
        assert_eq!(
            ops,
            [Op::DelRoute(
                Route::new("9.9.9.0/24".parse().unwrap()).nhid(nh_id(&peers[0]))
            )]
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

    #[test]
    fn nexthop_mode_adds_neigh_fdb_nexthop_then_route() {
        let peers = [peer(2, 2, 12), peer(3, 3, 13)];
        let ops = plan(&desired_nh(&peers), &Actual::default());
        let kinds: Vec<&str> = ops.iter().map(kind).collect();
        assert_eq!(
            kinds,
            ["neigh", "neigh", "fdb", "fdb", "nexthop", "nexthop", "route", "route"]
        );
        let id = nexthop::ID_BASE + 2 * 256;
        let want_nh = Nexthop::new(id)
            .via("10.244.2.0".parse().unwrap())
            .dev(DEV)
            .onlink()
            .protocol(nexthop::PROTOCOL);
        assert_eq!(ops[4], Op::ReplaceNexthop(want_nh));
        let want_route = Route::new("10.244.2.0/24".parse().unwrap()).nhid(id);
        assert_eq!(ops[6], Op::ReplaceRoute(want_route));
    }

    #[test]
    fn nexthop_state_needs_nothing_with_or_without_compat_dumps() {
        let peers = [peer(2, 2, 12), peer(3, 3, 13)];
        let mut actual = programmed_nh(&peers);
        // Others' nexthops stay: outside our range with our protocol, and
        // inside it with another protocol.
        let gw = "10.244.9.0".parse().unwrap();
        actual.nexthops.push(nexthop::nexthop(5, gw, DEV));
        let theirs = nexthop::nexthop(nexthop::ID_BASE + 9 * 256, gw, DEV).protocol(3);
        actual.nexthops.push(theirs);
        assert_eq!(plan(&desired_nh(&peers), &actual), vec![]);
        // net.ipv4.nexthop_compat_mode=0: dumps show only the id.
        for r in &mut actual.routes {
            (r.gateway, r.oif, r.onlink) = (None, None, false);
        }
        assert_eq!(plan(&desired_nh(&peers), &actual), vec![]);
    }

    #[test]
    fn plain_routes_are_replaced_in_place_by_nexthop_routes() {
        // A node that ran flannel: neighbour, FDB entry and plain route.
        let peers = [peer(2, 2, 12), peer(3, 3, 13)];
        let ops = plan(&desired_nh(&peers), &programmed(&peers));
        let kinds: Vec<&str> = ops.iter().map(kind).collect();
        assert_eq!(kinds, ["nexthop", "nexthop", "route", "route"]);
        assert_eq!(
            ops[2],
            Op::ReplaceRoute(Route::new(IpNet::V4(peers[0].subnet)).nhid(nh_id(&peers[0])))
        );
    }

    #[test]
    fn removed_peer_loses_route_nexthop_fdb_neighbour_in_that_order() {
        let peers = [peer(2, 2, 12), peer(3, 3, 13)];
        let actual = programmed_nh(&peers);
        let ops = plan(&desired_nh(&peers[..1]), &actual);
        assert_eq!(
            ops,
            vec![
                Op::DelRoute(nh_route_dumped(&peers[1])),
                Op::DelNexthop {
                    id: nh_id(&peers[1])
                },
                Op::DelFdb {
                    mac: [2, 0, 0, 0, 0, 3],
                    dst: Some("192.0.2.13".parse().unwrap())
                },
                Op::DelNeigh {
                    ip: "10.244.3.0".parse().unwrap()
                },
            ]
        );
        // Leftover nexthops of ours with no route are removed too; a
        // route through one of ours is recognised even without compat.
        let mut actual = programmed_nh(&peers);
        actual.routes[1].gateway = None;
        actual.routes[1].oif = None;
        actual.nexthops.push(nh_of(&peer(7, 7, 17)));
        let ops = plan(&desired_nh(&peers[..1]), &actual);
        let kinds: Vec<&str> = ops.iter().map(kind).collect();
        assert_eq!(kinds, ["-route", "-nexthop", "-nexthop", "-fdb", "-neigh"]);
    }

    #[test]
    fn new_mac_or_public_ip_leaves_nexthop_and_route_alone() {
        let old = [peer(2, 2, 12)];
        let actual = programmed_nh(&old);
        let ops = plan(&desired_nh(&[peer(2, 9, 12)]), &actual);
        let kinds: Vec<&str> = ops.iter().map(kind).collect();
        assert_eq!(kinds, ["-fdb", "neigh", "fdb"]);
        let ops = plan(&desired_nh(&[peer(2, 2, 99)]), &actual);
        assert_eq!(
            ops,
            vec![Op::ReplaceFdb {
                mac: [2, 0, 0, 0, 0, 2],
                dst: "192.0.2.99".parse().unwrap()
            }]
        );
    }

    #[test]
    fn altered_or_deleted_nexthop_is_restored() {
        let peers = [peer(2, 2, 12), peer(3, 3, 13)];
        let mut actual = programmed_nh(&peers);
        // Someone points ours elsewhere: replaced in place, the route stays.
        actual.nexthops[0].gateway = Some("10.244.99.0".parse().unwrap());
        actual.nexthops[0].onlink = false;
        // Someone deletes the other (the kernel takes its route along).
        actual.nexthops.remove(1);
        actual.routes.remove(1);
        let ops = plan(&desired_nh(&peers), &actual);
        assert_eq!(
            ops,
            vec![
                Op::ReplaceNexthop(nh_of(&peers[0])),
                Op::ReplaceNexthop(nh_of(&peers[1])),
                Op::ReplaceRoute(Route::new(IpNet::V4(peers[1].subnet)).nhid(nh_id(&peers[1]))),
            ]
        );
    }

    #[test]
    fn id_taken_by_someone_else_means_a_plain_route() {
        let peers = [peer(2, 2, 12)];
        let theirs = nexthop::nexthop(nh_id(&peers[0]), "10.1.1.1".parse().unwrap(), 3).protocol(4);
        let mut actual = programmed(&peers);
        actual.nexthops.push(theirs);
        // The plain route in place is right: nothing to do, theirs untouched.
        assert_eq!(plan(&desired_nh(&peers), &actual), vec![]);
        actual.routes.clear();
        assert_eq!(
            plan(&desired_nh(&peers), &actual),
            vec![Op::ReplaceRoute(peer_route(DEV, &peers[0]))]
        );
    }

    #[test]
    fn of_peers_sharing_a_gateway_or_mac_only_the_first_is_served() {
        let mut half = peer(2, 5, 15);
        half.subnet = "10.244.2.0/25".parse().unwrap();
        let twin = peer(4, 2, 14);
        let peers = [peer(2, 2, 12), half, twin, peer(3, 3, 13)];
        let ops = plan(&desired_nh(&peers), &Actual::default());
        let routes: Vec<String> = ops
            .iter()
            .filter_map(|o| match o {
                Op::ReplaceRoute(r) => Some(r.dst.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(routes, ["10.244.2.0/24", "10.244.3.0/24"]);
        let kinds: Vec<&str> = ops.iter().map(kind).collect();
        assert_eq!(
            kinds,
            ["neigh", "neigh", "fdb", "fdb", "nexthop", "nexthop", "route", "route"]
        );
        // Applied, it is what the next plan finds right.
        let served = [peer(2, 2, 12), peer(3, 3, 13)];
        assert_eq!(plan(&desired_nh(&peers), &programmed_nh(&served)), vec![]);
    }
}
