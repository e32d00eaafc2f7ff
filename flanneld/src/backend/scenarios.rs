//! Datapath scenarios: lease changes and changes made behind the daemon's
//! back, each followed by a reconcile pass. They run through [`reconcile`]
//! against the in-memory kernel ([`super::fake`], a unit test) and against
//! the real kernel in a fresh network namespace (a root test), which must
//! pass through the same states.
//!
//! A state is a normalised dump of what the device holds (the device
//! itself, neighbours, FDB entries, routes of the main table, nexthops),
//! with interfaces named rather than numbered. After every pass it must be
//! exactly what the peers ask for plus the entries of others the scenario
//! says are left alone, and a second pass must find nothing to do.

use std::net::{IpAddr, Ipv4Addr};

use flannel_netlink::{format_mac, Mac, Nexthop, Route};
use ipnet::{IpNet, Ipv4Net};
use subnet_env::SubnetEnv;

use super::device::device_name;
use super::nexthop::{self, RouteMode};
use super::plan::{gateway, peer_route};
use super::reconciler::{reconcile, Target};
use super::{Datapath, DeviceSpec};
use crate::lease::Peer;

pub const VNI: u32 = 1;
/// The name of the stand-in public interface.
pub const NIC: &str = "eth0";
/// Its address, with the prefix the root test gives it.
pub const LOCAL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
pub const LOCAL_PREFIX: u8 = 24;
pub const CLUSTER: &str = "10.244.0.0/16";
pub const OWN: &str = "10.244.1.0/24";
pub const MTU: u32 = 1450;
pub const DEVICE_MAC: Mac = [2, 0, 0, 0, 0, 1];
/// `proto kernel`: routes the kernel adds for addresses, not in dumps.
const PROTO_KERNEL: u8 = 2;
/// `proto boot`, what `ip route add` gives a route.
pub const PROTO_BOOT: u8 = 3;

/// Where the scenarios run: the index of the stand-in public interface.
#[derive(Debug, Clone, Copy)]
pub struct Env {
    pub nic: u32,
}

/// A device a change is made on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dev {
    /// `flannel.1`.
    Vxlan,
    Nic,
}

/// A route someone else adds (`ip route add`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraRoute {
    pub dst: Ipv4Net,
    pub via: Option<Ipv4Addr>,
    pub dev: Dev,
    pub onlink: bool,
    pub metric: Option<u32>,
    pub src: Option<Ipv4Addr>,
}

impl ExtraRoute {
    /// The route flannel installs towards `p` (what a node that ran
    /// flannel has).
    pub fn flannel(p: &Peer) -> Self {
        ExtraRoute {
            dst: p.subnet,
            via: Some(gateway(p)),
            dev: Dev::Vxlan,
            onlink: true,
            metric: None,
            src: None,
        }
    }
}

/// A change made behind the reconciler's back, as with `ip` or `bridge`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disturb {
    /// `ip route del SUBNET`.
    DelRoute(Ipv4Net),
    /// `ip neigh del IP dev flannel.1`.
    DelNeigh(Ipv4Addr),
    /// `bridge fdb del MAC dev flannel.1 self` (every destination).
    DelFdb(Mac),
    /// `ip nexthop flush protocol 241`.
    DelNexthops,
    /// `ip link del flannel.1`.
    DelDevice,
    /// `ip link set flannel.1 down`.
    SetDown,
    /// `ip link set flannel.1 mtu N`.
    SetMtu(u32),
    /// `ip addr add NET dev flannel.1`.
    AddAddr(Ipv4Net),
    /// `ip neigh replace IP lladdr MAC dev flannel.1 nud permanent|reachable`.
    AddNeigh {
        ip: Ipv4Addr,
        mac: Mac,
        permanent: bool,
    },
    /// A permanent entry as flannel writes it (NUD_PERMANENT), or a
    /// dynamic one (`bridge fdb add … self dynamic`).
    AddFdb {
        mac: Mac,
        dst: Ipv4Addr,
        permanent: bool,
    },
    AddRoute(ExtraRoute),
}

#[derive(Debug, Clone)]
pub enum Step {
    /// Reconcile towards these peers.
    Reconcile(Vec<Peer>),
    Disturb(Disturb),
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    pub steps: Vec<Step>,
    /// Lines of others' entries (as [`state`] prints them) that every pass
    /// after they appear must leave alone; each must appear.
    pub kept: Vec<&'static str>,
}

/// The state after each step, one line per entry, sorted; the step's
/// description first.
pub type Trace = Vec<Vec<String>>;

/// A peer of the scenarios: subnet `10.244.N.0/24`, public IP
/// `192.0.2.(100+N)`, VTEP MAC `02:00:00:00:00:N`.
pub fn peer(n: u8) -> Peer {
    Peer {
        subnet: Ipv4Net::new(Ipv4Addr::new(10, 244, n, 0), 24).expect("valid"),
        public_ip: Ipv4Addr::new(192, 0, 2, 100 + n),
        vtep_mac: [2, 0, 0, 0, 0, n],
    }
}

fn peers(ns: &[u8]) -> Vec<Peer> {
    ns.iter().copied().map(peer).collect()
}

/// The datapath this node needs for `peers`.
pub fn target(env: &Env, peers: Vec<Peer>) -> Target {
    let cluster: Ipv4Net = CLUSTER.parse().expect("valid");
    let own: Ipv4Net = OWN.parse().expect("valid");
    Target {
        device: DeviceSpec {
            vni: VNI,
            port: 8472,
            link: env.nic,
            local: LOCAL,
            mtu: MTU,
            mac: DEVICE_MAC,
            subnet: own,
        },
        cluster,
        peers,
        subnet_env: SubnetEnv::for_lease(cluster, own, MTU, false),
        subnet_file: std::path::PathBuf::new(),
    }
}

/// Every scenario.
pub fn all() -> Vec<Scenario> {
    let mut v = lease_changes();
    v.extend(repairs());
    v.extend(others_entries());
    v
}

fn scenario(name: &'static str, steps: Vec<Step>) -> Scenario {
    Scenario {
        name,
        steps,
        kept: Vec::new(),
    }
}

fn lease_changes() -> Vec<Scenario> {
    use Step::Reconcile as R;
    let moved = Peer {
        public_ip: Ipv4Addr::new(192, 0, 2, 99),
        ..peer(2)
    };
    let new_mac = Peer {
        vtep_mac: [2, 0, 0, 0, 0, 0x99],
        ..peer(2)
    };
    vec![
        scenario("fresh device and peers", vec![R(peers(&[2, 3, 4]))]),
        scenario(
            "peer removed, then the last one",
            vec![R(peers(&[2, 3])), R(peers(&[2])), R(vec![])],
        ),
        scenario(
            "peer VTEP MAC changed",
            vec![R(peers(&[2, 3])), R(vec![new_mac, peer(3)])],
        ),
        scenario(
            "peer PublicIP changed",
            vec![R(peers(&[2, 3])), R(vec![moved, peer(3)])],
        ),
    ]
}

fn repairs() -> Vec<Scenario> {
    use Disturb as D;
    use Step::{Disturb as X, Reconcile as R};
    let two = || R(peers(&[2, 3]));
    vec![
        scenario(
            "entries deleted by someone else are restored",
            vec![
                two(),
                X(D::DelRoute(peer(2).subnet)),
                two(),
                X(D::DelNeigh(gateway(&peer(3)))),
                two(),
                X(D::DelFdb(peer(2).vtep_mac)),
                two(),
                X(D::DelNexthops),
                two(),
            ],
        ),
        scenario(
            "device deleted is recreated",
            vec![two(), X(D::DelDevice), two()],
        ),
        scenario(
            "device set down is brought back",
            vec![two(), X(D::SetDown), two()],
        ),
        scenario(
            "device MTU and address changed are set back",
            vec![
                two(),
                X(D::SetMtu(1400)),
                X(D::AddAddr("10.244.77.0/32".parse().expect("valid"))),
                two(),
            ],
        ),
    ]
}

fn others_entries() -> Vec<Scenario> {
    vec![
        flannels_entries(),
        rewritten_entries(),
        stale_entries(),
        unrelated_entries(),
        foreign_routes_through_the_device(),
    ]
}

/// A node that ran flannel: neighbour, FDB entry and plain route per peer.
fn flannels_entries() -> Scenario {
    use Step::{Disturb as X, Reconcile as R};
    let p = peer(2);
    scenario(
        "a node that ran flannel: its entries are taken over",
        vec![
            R(vec![]),
            X(Disturb::AddNeigh {
                ip: gateway(&p),
                mac: p.vtep_mac,
                permanent: true,
            }),
            X(Disturb::AddFdb {
                mac: p.vtep_mac,
                dst: p.public_ip,
                permanent: true,
            }),
            X(Disturb::AddRoute(ExtraRoute::flannel(&p))),
            R(vec![p]),
        ],
    )
}

/// Entries that look right but are not what the reconciler writes.
fn rewritten_entries() -> Scenario {
    use Step::{Disturb as X, Reconcile as R};
    let (p2, p3) = (peer(2), peer(3));
    let mut s = scenario(
        "near-right entries are rewritten",
        vec![
            R(vec![]),
            X(Disturb::AddNeigh {
                ip: gateway(&p2),
                mac: p2.vtep_mac,
                permanent: false,
            }),
            X(Disturb::AddFdb {
                mac: p2.vtep_mac,
                dst: p2.public_ip,
                permanent: false,
            }),
            X(Disturb::AddRoute(ExtraRoute {
                src: Some(OWN.parse::<Ipv4Net>().expect("valid").network()),
                ..ExtraRoute::flannel(&p2)
            })),
            X(Disturb::AddRoute(ExtraRoute {
                metric: Some(100),
                ..ExtraRoute::flannel(&p3)
            })),
            R(vec![p2, p3]),
        ],
    );
    // A route with a metric is another route: the peer gets its own next
    // to it, and that one stays.
    s.kept = vec!["route 10.244.3.0/24 via 10.244.3.0 dev flannel.1 onlink metric 100"];
    s
}

/// Entries of a peer that left while the daemon was not running.
fn stale_entries() -> Scenario {
    use Step::{Disturb as X, Reconcile as R};
    let gone = peer(9);
    scenario(
        "a departed peer's entries are removed",
        vec![
            R(peers(&[2])),
            X(Disturb::AddNeigh {
                ip: gateway(&gone),
                mac: gone.vtep_mac,
                permanent: true,
            }),
            X(Disturb::AddFdb {
                mac: gone.vtep_mac,
                dst: gone.public_ip,
                permanent: true,
            }),
            X(Disturb::AddRoute(ExtraRoute::flannel(&gone))),
            R(peers(&[2])),
        ],
    )
}

/// Entries that are not flannel's: other routes on the device and on the
/// public interface, a dynamic neighbour.
fn unrelated_entries() -> Scenario {
    use Step::{Disturb as X, Reconcile as R};
    let route = |dst: &str, via: Option<&str>, dev| ExtraRoute {
        dst: dst.parse().expect("valid"),
        via: via.map(|v| v.parse().expect("valid")),
        dev,
        onlink: dev == Dev::Vxlan,
        metric: None,
        src: None,
    };
    let mut s = scenario(
        "unrelated routes and neighbours are left alone",
        vec![
            R(peers(&[2])),
            X(Disturb::AddRoute(route(
                "198.51.100.0/24",
                Some("192.0.2.1"),
                Dev::Nic,
            ))),
            X(Disturb::AddRoute(route("10.244.50.0/24", None, Dev::Nic))),
            X(Disturb::AddNeigh {
                ip: Ipv4Addr::new(10, 244, 9, 9),
                mac: [2, 0, 0, 0, 9, 9],
                permanent: false,
            }),
            R(peers(&[2, 3])),
        ],
    );
    s.kept = vec![
        "route 198.51.100.0/24 via 192.0.2.1 dev eth0",
        "route 10.244.50.0/24 dev eth0",
        "neigh 10.244.9.9 lladdr 02:00:00:00:09:09",
    ];
    s
}

/// Routes through the device with a gateway to prefixes no valid lease
/// names (what forged leases made an older version program: a public
/// prefix, half the Internet, part of our own subnet, a prefix beside the
/// network): ours, removed wherever they lead. A route into the device
/// without a gateway (the kind the kernel makes for an address, or an
/// administrator with `ip route add … dev flannel.1`) stays.
fn foreign_routes_through_the_device() -> Scenario {
    use Step::{Disturb as X, Reconcile as R};
    let via_peer = |dst: &str| {
        X(Disturb::AddRoute(ExtraRoute {
            dst: dst.parse().expect("valid"),
            ..ExtraRoute::flannel(&peer(2))
        }))
    };
    let mut s = scenario(
        "routes through the device anywhere are removed",
        vec![
            R(peers(&[2])),
            via_peer("8.8.8.0/24"),
            via_peer("128.0.0.0/1"),
            via_peer("10.244.1.128/25"),
            via_peer("10.99.0.0/16"),
            X(Disturb::AddRoute(ExtraRoute {
                dst: "10.98.0.0/16".parse().expect("valid"),
                via: None,
                dev: Dev::Vxlan,
                onlink: false,
                metric: None,
                src: None,
            })),
            R(peers(&[2])),
        ],
    );
    s.kept = vec!["route 10.98.0.0/16 dev flannel.1"];
    s
}

/// Runs `s` on `dp`, with `disturb` making the changes of others, and
/// checks every pass (see the module doc). Returns the state after each
/// step, or what went wrong.
pub fn run<D: Datapath>(
    s: &Scenario,
    dp: &mut D,
    env: &Env,
    mode: RouteMode,
    disturb: &mut dyn FnMut(&mut D, &Disturb),
) -> Result<Trace, String> {
    let mut trace = Trace::new();
    let mut kept: Vec<&str> = Vec::new();
    for (i, step) in s.steps.iter().enumerate() {
        let mut lines = match step {
            Step::Disturb(d) => {
                disturb(dp, d);
                vec![format!("{i}: {d:?}")]
            }
            Step::Reconcile(peers) => {
                let t = target(env, peers.clone());
                let ops = pass(dp, &t, mode, s, i)?;
                vec![format!("{i}: reconcile {} peers: {ops} ops", peers.len())]
            }
        };
        let now = state(dp).map_err(|e| format!("{}: step {i}: dump: {e}", s.name))?;
        if let Step::Disturb(_) = step {
            for l in &s.kept {
                if now.iter().any(|n| n == l) && !kept.contains(l) {
                    kept.push(l);
                }
            }
        }
        if let Step::Reconcile(peers) = step {
            let want = expected(peers, mode, &kept);
            if now != want {
                return Err(format!(
                    "{}: step {i}: state after the pass\n{now:#?}\nwanted\n{want:#?}",
                    s.name
                ));
            }
        }
        lines.extend(now);
        trace.push(lines);
    }
    match s.kept.iter().find(|l| !kept.contains(l)) {
        Some(l) => Err(format!("{}: never there: {l}", s.name)),
        None => Ok(trace),
    }
}

/// One pass that must succeed, then a second that must do nothing.
/// Returns the first one's operation count.
fn pass<D: Datapath>(
    dp: &mut D,
    t: &Target,
    mode: RouteMode,
    s: &Scenario,
    i: usize,
) -> Result<usize, String> {
    let fail = |what: &str, e: String| format!("{}: step {i}: {what}: {e}", s.name);
    let first = reconcile(dp, t, mode).map_err(|e| fail("pass", e.to_string()))?;
    if first.failed > 0 {
        return Err(fail("pass", format!("{} operations failed", first.failed)));
    }
    let second = reconcile(dp, t, mode).map_err(|e| fail("second pass", e.to_string()))?;
    if second.ops > 0 {
        return Err(fail("second pass", format!("{} operations", second.ops)));
    }
    Ok(first.ops)
}

/// What the device holds, normalised: see the module doc.
pub fn state<D: Datapath>(dp: &mut D) -> flannel_netlink::Result<Vec<String>> {
    let name = device_name(VNI);
    let mut lines = Vec::new();
    let dev = dp.link(&name)?;
    if let Some(link) = &dev {
        let addrs = dp.addrs(link.index)?;
        let v4: Vec<String> = addrs
            .iter()
            .filter(|a| a.net.addr().is_ipv4())
            .map(|a| a.net.to_string())
            .collect();
        lines.push(link_line(
            link.mtu,
            link.up,
            link.mac.unwrap_or_default(),
            &v4,
        ));
        for n in dp.neighs(link.index)?.iter().filter(|n| n.ip.is_ipv4()) {
            lines.push(neigh_line(n.ip, n.mac, n.permanent));
        }
        for f in dp.fdb(link.index)? {
            lines.push(fdb_line(f.mac, f.dst, f.permanent));
        }
    }
    let routes = dp.routes()?;
    let nexthops = match dp.nexthops() {
        Ok(n) => n,
        Err(e) if nexthop::unsupported(&e) => Vec::new(),
        Err(e) => return Err(e),
    };
    let mut names = Names {
        dp,
        dev: dev.map(|l| (l.index, name)),
    };
    for r in routes.iter().filter(|r| r.protocol != PROTO_KERNEL) {
        let line = route_line(r, &mut |i| names.of(i));
        lines.push(line);
    }
    for n in &nexthops {
        let line = nexthop_line(n, &mut |i| names.of(i));
        lines.push(line);
    }
    lines.sort();
    Ok(lines)
}

/// Interface names by index, for lines that do not depend on numbering.
struct Names<'a, D> {
    dp: &'a mut D,
    dev: Option<(u32, String)>,
}

impl<D: Datapath> Names<'_, D> {
    fn of(&mut self, index: u32) -> String {
        if let Some((i, name)) = &self.dev {
            if *i == index {
                return name.clone();
            }
        }
        match self.dp.link_by_index(index) {
            Ok(Some(l)) => l.name,
            _ => format!("#{index}"),
        }
    }
}

/// The state `peers` ask for, with `kept`.
pub fn expected(peers: &[Peer], mode: RouteMode, kept: &[&str]) -> Vec<String> {
    let own: Ipv4Net = OWN.parse().expect("valid");
    let cluster: Ipv4Net = CLUSTER.parse().expect("valid");
    let address = Ipv4Net::new(own.network(), 32).expect("valid");
    let mut lines = vec![link_line(MTU, true, DEVICE_MAC, &[address.to_string()])];
    // Index 1 stands for the device in what the lines are built from.
    let mut names = |_| device_name(VNI);
    for p in peers {
        let gw = IpAddr::V4(gateway(p));
        lines.push(neigh_line(gw, Some(p.vtep_mac), true));
        lines.push(fdb_line(p.vtep_mac, Some(p.public_ip.into()), true));
        let mut route = peer_route(1, p);
        if mode == RouteMode::Nexthop {
            let id = nexthop::id_for(cluster, gateway(p)).expect("in range");
            lines.push(nexthop_line(
                &nexthop::nexthop(id, gateway(p), 1),
                &mut names,
            ));
            route.nhid = Some(id);
        }
        lines.push(route_line(&route, &mut names));
    }
    lines.extend(kept.iter().map(|l| l.to_string()));
    lines.sort();
    lines
}

fn link_line(mtu: u32, up: bool, mac: Mac, addrs: &[String]) -> String {
    format!(
        "link {} mtu {mtu} {} mac {} addr {}",
        device_name(VNI),
        if up { "up" } else { "down" },
        format_mac(&mac),
        addrs.join(",")
    )
}

fn neigh_line(ip: IpAddr, mac: Option<Mac>, permanent: bool) -> String {
    let mut line = format!("neigh {ip}");
    if let Some(mac) = mac {
        line += &format!(" lladdr {}", format_mac(&mac));
    }
    if permanent {
        line += " permanent";
    }
    line
}

fn fdb_line(mac: Mac, dst: Option<IpAddr>, permanent: bool) -> String {
    let mut line = format!("fdb {}", format_mac(&mac));
    if let Some(dst) = dst {
        line += &format!(" dst {dst}");
    }
    if permanent {
        line += " permanent";
    }
    line
}

/// A route through a nexthop is its id: whether dumps repeat the
/// nexthop's gateway and device depends on a sysctl, and its line says it.
fn route_line(r: &Route, name: &mut dyn FnMut(u32) -> String) -> String {
    let mut line = format!("route {}", r.dst);
    if let Some(id) = r.nhid {
        line += &format!(" nhid {id}");
        return line;
    }
    if let Some(gw) = r.gateway {
        line += &format!(" via {gw}");
    }
    if let Some(oif) = r.oif {
        line += &format!(" dev {}", name(oif));
    }
    if r.onlink {
        line += " onlink";
    }
    if let Some(m) = r.metric.filter(|m| *m != 0) {
        line += &format!(" metric {m}");
    }
    if let Some(src) = r.src {
        line += &format!(" src {src}");
    }
    line
}

fn nexthop_line(n: &Nexthop, name: &mut dyn FnMut(u32) -> String) -> String {
    let mut line = format!("nexthop {}", n.id);
    if let Some(gw) = n.gateway {
        line += &format!(" via {gw}");
    }
    if let Some(oif) = n.oif {
        line += &format!(" dev {}", name(oif));
    }
    if n.onlink {
        line += " onlink";
    }
    line + &format!(" proto {}", n.protocol)
}

/// The route `r` asks for, as `ip route add` would send it.
pub fn extra_route(r: &ExtraRoute, dev: u32, nic: u32) -> Route {
    let mut route = Route::new(IpNet::V4(r.dst));
    route.gateway = r.via.map(IpAddr::V4);
    route.oif = Some(match r.dev {
        Dev::Vxlan => dev,
        Dev::Nic => nic,
    });
    route.onlink = r.onlink;
    route.metric = r.metric;
    route.src = r.src.map(IpAddr::V4);
    route.protocol = PROTO_BOOT;
    route
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::fake::FakeKernel;

    fn run_fake(s: &Scenario, mode: RouteMode, no_compat: bool) -> Result<Trace, String> {
        let env = Env { nic: 2 };
        let mut k = FakeKernel::with_nic(NIC, env.nic);
        k.no_compat = no_compat;
        run(s, &mut k, &env, mode, &mut |k, d| k.disturb(d, env.nic))
    }

    #[test]
    fn every_scenario_converges_on_the_fake_kernel() {
        for s in all() {
            for mode in [RouteMode::Nexthop, RouteMode::Plain] {
                let trace = run_fake(&s, mode, false).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(trace.len(), s.steps.len());
            }
            // Route dumps that show only the nexthop id change nothing.
            run_fake(&s, RouteMode::Nexthop, true).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn failed_operations_and_wrong_states_are_reported() {
        let env = Env { nic: 2 };
        let fake = || FakeKernel::with_nic(NIC, env.nic);
        let mut disturb = |k: &mut FakeKernel, d: &Disturb| k.disturb(d, env.nic);
        // A permanent neighbour said to be kept is removed by the pass.
        let gone = peer(9);
        let mut s = scenario(
            "broken",
            vec![
                Step::Reconcile(peers(&[2])),
                Step::Disturb(Disturb::AddNeigh {
                    ip: gateway(&gone),
                    mac: gone.vtep_mac,
                    permanent: true,
                }),
                Step::Reconcile(peers(&[2])),
            ],
        );
        s.kept = vec!["neigh 10.244.9.0 lladdr 02:00:00:00:00:09 permanent"];
        let err = run(&s, &mut fake(), &env, RouteMode::Plain, &mut disturb).unwrap_err();
        assert!(
            err.starts_with("broken: step 2: state after the pass"),
            "{err}"
        );
        // A kept entry that never appears.
        s.kept = vec!["route 10.9.9.0/24 dev eth0"];
        s.steps.truncate(1);
        let err = run(&s, &mut fake(), &env, RouteMode::Plain, &mut disturb).unwrap_err();
        assert_eq!(err, "broken: never there: route 10.9.9.0/24 dev eth0");
        // Nexthops asked of a kernel without them.
        let mut k = fake();
        k.no_nexthops = true;
        let err = run(&s, &mut k, &env, RouteMode::Nexthop, &mut disturb).unwrap_err();
        assert!(
            err.starts_with("broken: step 0: pass: dump nexthops"),
            "{err}"
        );
    }
}
