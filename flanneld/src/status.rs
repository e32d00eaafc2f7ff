//! `flanneld status`: this node's lease, its peers and what is programmed
//! for each, and the local pods with their host veths: everything one
//! would otherwise piece together from etcdctl, `ip`, `bridge` and the
//! IPAM files.
//!
//! Exit status: 0 when every peer is fully programmed, 3 when something is
//! missing, 1 when etcd or the kernel cannot be read.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use flannel_netlink::Handle;
use ipnet::Ipv4Net;
use subnet_env::SubnetEnv;

use crate::backend::device::device_name;
use crate::backend::{nexthop, pending, plan, read_actual, Actual, Desired, Entry, KernelDatapath};
use crate::cli::Options;
use crate::config::NetworkConfig;
use crate::lease::etcd::EtcdStore;
use crate::lease::{
    config_key, format_mac, subnets_prefix, LeaseAttrs, LeaseStore, Own, Peer, PeerSet, Record,
    Rules, SkipReason,
};
use crate::reclaim::reservations;

/// Exit code when some peer entry is missing.
pub const EXIT_MISSING: u8 = 3;

/// Everything the report shows.
#[derive(Debug, Default)]
pub struct Report {
    pub own: Option<OwnInfo>,
    pub device: Option<String>,
    pub peers: Vec<PeerRow>,
    /// Leases not used, with why (a conflict names the lease that wins).
    pub skipped: Vec<(String, SkipReason)>,
    pub pods: Vec<PodRow>,
}

#[derive(Debug)]
pub struct OwnInfo {
    pub subnet: Ipv4Net,
    pub attrs: LeaseAttrs,
    /// `None`: a permanent reservation.
    pub remaining: Option<Duration>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct PeerRow {
    pub peer: Peer,
    pub neigh: bool,
    pub fdb: bool,
    pub route: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub struct PodRow {
    pub network: String,
    pub ip: String,
    pub container_id: String,
    pub ifname: String,
    pub host_veth: String,
    pub veth_present: bool,
}

pub fn run(opts: Options) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(gather(&opts))?;
    print!("{}", render(&report, SystemTime::now()));
    let broken = report.peers.iter().any(|p| !(p.neigh && p.fdb && p.route));
    Ok(if broken || report.own.is_none() {
        EXIT_MISSING
    } else {
        0
    })
}

async fn gather(opts: &Options) -> anyhow::Result<Report> {
    let store = EtcdStore::connect(&crate::daemon::etcd_options(opts)).await?;
    let key = config_key(&opts.etcd_prefix);
    let config = store
        .get(&key)
        .await?
        .with_context(|| format!("no network config at {key}"))?;
    let config = NetworkConfig::parse(&String::from_utf8_lossy(&config.value))?;
    let listing = store.list(&subnets_prefix(&opts.etcd_prefix)).await?;
    let own_record = find_own(opts, &listing.records)?;
    let mut h = Handle::new().context("cannot open a netlink socket")?;
    let mut report = Report::default();
    let mut own = None;
    if let Some((record, subnet)) = own_record {
        let (info, rules_own) = own_lease(&store, record, subnet).await?;
        (report.own, own) = (Some(info), Some(rules_own));
    }
    // The daemon's own judgement of the leases, conflicts included.
    let mut set = PeerSet::new(Rules::new(&config, own));
    set.reset(&listing.records);
    set.settle();
    report.skipped = (set.skipped())
        .map(|(k, why)| (k.to_owned(), why.clone()))
        .collect();
    let dev = h.link(&device_name(config.backend.vni))?;
    report.device = dev.as_ref().map(|l| {
        format!(
            "{} (index {}, {}, mtu {})",
            l.name,
            l.index,
            if l.up { "up" } else { "DOWN" },
            l.mtu
        )
    });
    report.peers = programmed(dev.map(|l| l.index), config.network, &set.peers())?;
    report.pods = pods(&mut h, &opts.ipam_dir)?;
    Ok(report)
}

/// Our lease as the report shows it, and as judging the peers needs it.
async fn own_lease(
    store: &EtcdStore,
    record: &Record,
    subnet: Ipv4Net,
) -> anyhow::Result<(OwnInfo, Own)> {
    let attrs: LeaseAttrs = serde_json::from_slice(&record.value)?;
    let own = Own {
        key: record.key.clone(),
        subnet,
        public_ip: attrs.public_ip,
        vtep_mac: attrs.vxlan_data().map(|d| d.vtep_mac).unwrap_or_default(),
    };
    let remaining = match record.lease {
        0 => None,
        id => Some(store.time_to_live(id).await?.unwrap_or_default()),
    };
    let info = OwnInfo {
        subnet,
        attrs,
        remaining,
    };
    Ok((info, own))
}

/// Our lease: the subnet of subnet.env, else the one carrying our public IP.
fn find_own<'a>(
    opts: &Options,
    records: &'a [Record],
) -> anyhow::Result<Option<(&'a Record, Ipv4Net)>> {
    let by_subnet = SubnetEnv::read(&opts.subnet_file)
        .ok()
        .map(|e| e.node_subnet());
    let public_ip = match (by_subnet, opts.public_ip) {
        (Some(_), _) => None,
        (None, Some(ip)) => Some(ip),
        (None, None) => {
            let mut h = Handle::new()?;
            Some(crate::iface::find(&mut h, &opts.iface)?.addr)
        }
    };
    Ok(records.iter().find_map(|r| {
        let subnet = crate::lease::subnet_from_key(&r.key)?;
        let attrs: LeaseAttrs = serde_json::from_slice(&r.value).ok()?;
        let mine = Some(subnet) == by_subnet || Some(attrs.public_ip) == public_ip;
        mine.then_some((r, subnet))
    }))
}

/// Each peer's row: an entry is ok when the reconciler's plan, built from
/// the same peers and the same kernel dumps, has nothing to do for it
/// (without the device, nothing is in place).
fn programmed(dev: Option<u32>, cluster: Ipv4Net, peers: &[Peer]) -> anyhow::Result<Vec<PeerRow>> {
    let handle = Handle::new().context("cannot open a netlink socket")?;
    let mut dp = KernelDatapath::new(handle);
    let mode = nexthop::probe(&mut dp)?;
    let actual = match dev {
        Some(index) => read_actual(&mut dp, index, mode)?,
        None => Actual::default(),
    };
    let desired = Desired {
        index: dev.unwrap_or(0),
        cluster,
        peers,
        mode,
    };
    Ok(rows(&desired, &actual))
}

/// The rows for `d.peers` against the kernel state `a`.
fn rows(d: &Desired, a: &Actual) -> Vec<PeerRow> {
    let todo = pending(&plan(d, a), d.peers);
    let ok = |p: &Peer, e: Entry| !todo.contains(&(p.subnet, e));
    d.peers
        .iter()
        .map(|p| PeerRow {
            peer: *p,
            neigh: ok(p, Entry::Neigh),
            fdb: ok(p, Entry::Fdb),
            route: ok(p, Entry::Route),
        })
        .collect()
}

/// Pods from every host-local store under `dir` (one directory per network).
fn pods(h: &mut Handle, dir: &Path) -> anyhow::Result<Vec<PodRow>> {
    let links: HashSet<String> = h.links()?.into_iter().map(|l| l.name).collect();
    let rows = reservations(dir)?.into_iter().map(|r| {
        let host_veth = r.host_veth();
        PodRow {
            network: r.network,
            ip: r.ip.to_string(),
            veth_present: links.contains(&host_veth),
            host_veth,
            container_id: r.container_id,
            ifname: r.ifname,
        }
    });
    let mut rows: Vec<PodRow> = rows.collect();
    rows.sort_by(|a, b| (&a.network, &a.ip).cmp(&(&b.network, &b.ip)));
    Ok(rows)
}

fn ok(b: bool) -> &'static str {
    if b {
        "ok"
    } else {
        "MISSING"
    }
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}h{:02}m", s / 3600, s / 60 % 60)
}

/// The text printed by `flanneld status`.
pub fn render(r: &Report, now: SystemTime) -> String {
    let mut out = String::new();
    match &r.own {
        Some(o) => {
            let vx = o.attrs.vxlan_data().ok();
            let expiry = match o.remaining {
                None => "never (reservation)".to_owned(),
                Some(d) => format!("{} (in {})", crate::log::timestamp(now + d), human(d)),
            };
            out += &format!(
                "Lease:   {}  public IP {}  VTEP MAC {}\n",
                o.subnet,
                o.attrs.public_ip,
                vx.map_or("?".into(), |v| format_mac(&v.vtep_mac))
            );
            out += &format!("Expires: {expiry}\n");
        }
        None => out += "Lease:   none found for this node\n",
    }
    out += &format!("Device:  {}\n", r.device.as_deref().unwrap_or("MISSING"));
    out += &format!(
        "\nPEERS ({})\n{:<20} {:<16} {:<18} {:<8} {:<8} {}\n",
        r.peers.len(),
        "SUBNET",
        "PUBLIC IP",
        "VTEP MAC",
        "NEIGH",
        "FDB",
        "ROUTE"
    );
    for p in &r.peers {
        out += &format!(
            "{:<20} {:<16} {:<18} {:<8} {:<8} {}\n",
            p.peer.subnet.to_string(),
            p.peer.public_ip.to_string(),
            format_mac(&p.peer.vtep_mac),
            ok(p.neigh),
            ok(p.fdb),
            ok(p.route)
        );
    }
    for (key, why) in &r.skipped {
        let what = match why {
            SkipReason::Conflict { .. } => "conflict",
            _ => "skipped",
        };
        out += &format!("{what} {key}: {why}\n");
    }
    out += &format!(
        "\nPODS ({})\n{:<16} {:<66} {:<10} {:<16} {}\n",
        r.pods.len(),
        "IP",
        "CONTAINER ID",
        "IFNAME",
        "HOST VETH",
        "NETWORK"
    );
    for p in &r.pods {
        let veth = if p.veth_present {
            p.host_veth.clone()
        } else {
            format!("{} (MISSING)", p.host_veth)
        };
        out += &format!(
            "{:<16} {:<66} {:<10} {:<16} {}\n",
            p.ip, p.container_id, p.ifname, veth, p.network
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::VxlanData;

    use crate::backend::nexthop::RouteMode;
    use crate::backend::plan::peer_route;
    use flannel_netlink::{FdbEntry, Neighbour, Route};

    const DEV: u32 = 7;

    fn peer(n: u8) -> Peer {
        Peer {
            subnet: format!("10.244.{n}.0/24").parse().unwrap(),
            public_ip: format!("192.0.2.{n}").parse().unwrap(),
            vtep_mac: [2, 0, 0, 0, 0, n],
        }
    }

    fn desired(peers: &[Peer], mode: RouteMode) -> Desired<'_> {
        Desired {
            index: DEV,
            cluster: "10.244.0.0/16".parse().unwrap(),
            peers,
            mode,
        }
    }

    fn nh_id(p: &Peer) -> u32 {
        nexthop::id_for("10.244.0.0/16".parse().unwrap(), p.subnet.network()).unwrap()
    }

    /// Neighbour, FDB entry, nexthop and route of `p`, as the reconciler
    /// leaves them (route dumps show the nexthop's gateway and device).
    fn programmed(a: &mut Actual, p: &Peer) {
        let gw = p.subnet.network();
        a.neighs.push(Neighbour {
            index: DEV,
            ip: gw.into(),
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
        a.nexthops.push(nexthop::nexthop(nh_id(p), gw, DEV));
        let mut route = peer_route(DEV, p);
        route.nhid = Some(nh_id(p));
        a.routes.push(route);
    }

    fn flags(rows: &[PeerRow]) -> Vec<(bool, bool, bool)> {
        rows.iter().map(|r| (r.neigh, r.fdb, r.route)).collect()
    }

    #[test]
    fn an_entry_is_ok_only_when_the_reconciler_would_leave_it() {
        let peers: Vec<Peer> = (2..=8).map(peer).collect();
        let mut a = Actual::default();
        peers.iter().for_each(|p| programmed(&mut a, p));
        // Peer 2 is right. Each of the others has an entry that looks
        // right (right MAC, right destination, right gateway) but that the
        // next pass rewrites.
        a.neighs[1].permanent = false;
        a.fdb[2].permanent = false;
        a.fdb.push(FdbEntry {
            dst: Some("198.51.100.4".parse().unwrap()),
            ..a.fdb[2].clone()
        });
        a.fdb[2].permanent = true;
        a.fdb[3].permanent = false;
        a.routes[4].src = Some("10.244.1.0".parse().unwrap());
        a.routes[5].metric = Some(100);
        a.nexthops[6].onlink = false;
        let found = rows(&desired(&peers, RouteMode::Nexthop), &a);
        let (ok, bad) = (true, false);
        assert_eq!(
            flags(&found),
            [
                (ok, ok, ok),
                (bad, ok, ok),
                (ok, bad, ok),
                (ok, bad, ok),
                (ok, ok, bad),
                (ok, ok, bad),
                (ok, ok, bad),
            ]
        );
    }

    #[test]
    fn a_plain_route_is_ok_only_where_the_kernel_has_no_nexthops() {
        let peers = [peer(2)];
        let mut a = Actual::default();
        programmed(&mut a, &peers[0]);
        a.nexthops.clear();
        a.routes = vec![peer_route(DEV, &peers[0])];
        let nexthop_mode = rows(&desired(&peers, RouteMode::Nexthop), &a);
        assert_eq!(flags(&nexthop_mode), [(true, true, false)]);
        let plain_mode = rows(&desired(&peers, RouteMode::Plain), &a);
        assert_eq!(flags(&plain_mode), [(true, true, true)]);
    }

    #[test]
    fn without_the_device_nothing_is_in_place() {
        let peers = [peer(2), peer(3)];
        let none = rows(&desired(&peers, RouteMode::Nexthop), &Actual::default());
        assert_eq!(flags(&none), [(false, false, false); 2]);
        // Someone else's route to a peer's subnet is not ours.
        let mut a = Actual::default();
        a.routes.push(
            Route::new("10.244.2.0/24".parse().unwrap())
                .via("192.0.2.1".parse().unwrap())
                .dev(3),
        );
        let theirs = rows(&desired(&peers[..1], RouteMode::Plain), &a);
        assert_eq!(flags(&theirs), [(false, false, false)]);
    }

    #[test]
    fn renders_lease_peers_and_pods() {
        let peer = Peer {
            subnet: "10.244.2.0/24".parse().unwrap(),
            public_ip: "192.0.2.12".parse().unwrap(),
            vtep_mac: [2, 0, 0, 0, 0, 2],
        };
        let report = Report {
            own: Some(OwnInfo {
                subnet: "10.244.1.0/24".parse().unwrap(),
                attrs: LeaseAttrs::vxlan(
                    "192.0.2.11".parse().unwrap(),
                    VxlanData {
                        vni: 1,
                        vtep_mac: [2, 0, 0, 0, 0, 1],
                    },
                ),
                remaining: Some(Duration::from_secs(23 * 3600 + 59 * 60)),
            }),
            device: Some("flannel.1 (index 5, up, mtu 1450)".into()),
            peers: vec![PeerRow {
                peer,
                neigh: true,
                fdb: false,
                route: true,
            }],
            skipped: vec![
                ("/p/subnets/x".into(), SkipReason::BadKey),
                (
                    "/p/subnets/10.244.3.0-24".into(),
                    SkipReason::Conflict {
                        winner: "/p/subnets/10.244.2.0-24".into(),
                        clash: crate::lease::Clash::VtepMac,
                    },
                ),
            ],
            pods: vec![PodRow {
                network: "cbr0".into(),
                ip: "10.244.1.2".into(),
                container_id: "abc".into(),
                ifname: "eth0".into(),
                host_veth: "veth0011aabb".into(),
                veth_present: true,
            }],
        };
        let text = render(&report, SystemTime::UNIX_EPOCH);
        assert!(text.starts_with("Lease:   10.244.1.0/24  public IP 192.0.2.11  VTEP MAC 02:00:00:00:00:01\nExpires: 1970-01-01T23:59:00.000Z (in 23h59m)\n"), "{text}");
        assert!(
            text.contains(
                "10.244.2.0/24        192.0.2.12       02:00:00:00:00:02  ok       MISSING  ok\n"
            ),
            "{text}"
        );
        assert!(text.contains("skipped /p/subnets/x: key does not name a subnet\n"));
        assert!(
            text.contains(
                "conflict /p/subnets/10.244.3.0-24: has the same VTEP MAC as \
                 /p/subnets/10.244.2.0-24, which is older and wins\n"
            ),
            "{text}"
        );
        assert!(text.contains("10.244.1.2       abc"), "{text}");
        assert!(text.contains("veth0011aabb     cbr0\n"), "{text}");
    }
}
