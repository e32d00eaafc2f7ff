//! `flanneld status`: this node's lease, its peers and what is programmed
//! for each, and the local pods with their host veths: everything one
//! would otherwise piece together from etcdctl, `ip`, `bridge` and the
//! IPAM files.
//!
//! Exit status: 0 when every peer is fully programmed, 3 when something is
//! missing, 1 when etcd or the kernel cannot be read.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use flannel_netlink::{Handle, Nexthop, Route};
use ipnet::{IpNet, Ipv4Net};
use node_state::host_veth_name;
use node_state::ipam::Store;
use subnet_env::SubnetEnv;

use crate::backend::device::device_name;
use crate::backend::nexthop;
use crate::backend::plan::gateway;
use crate::cli::Options;
use crate::config::NetworkConfig;
use crate::lease::etcd::EtcdStore;
use crate::lease::{
    config_key, format_mac, subnets_prefix, LeaseAttrs, LeaseStore, Peer, PeerSet, Record,
};

/// Exit code when some peer entry is missing.
pub const EXIT_MISSING: u8 = 3;

/// Everything the report shows.
#[derive(Debug, Default)]
pub struct Report {
    pub own: Option<OwnInfo>,
    pub device: Option<String>,
    pub peers: Vec<PeerRow>,
    pub skipped: Vec<(String, String)>,
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
    let mut set = PeerSet::new(config.backend.vni);
    if let Some((record, subnet)) = own_record {
        set.set_own(subnet);
        let attrs: LeaseAttrs = serde_json::from_slice(&record.value)?;
        let remaining = match record.lease {
            0 => None,
            id => Some(store.time_to_live(id).await?.unwrap_or_default()),
        };
        report.own = Some(OwnInfo {
            subnet,
            attrs,
            remaining,
        });
    }
    report.skipped = set
        .reset(&listing.records)
        .into_iter()
        .map(|(k, why)| (k, why.to_string()))
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
    report.peers = programmed(&mut h, dev.map(|l| l.index), &set.peers())?;
    report.pods = pods(&mut h, &opts.ipam_dir)?;
    Ok(report)
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

fn programmed(h: &mut Handle, dev: Option<u32>, peers: &[Peer]) -> anyhow::Result<Vec<PeerRow>> {
    let Some(index) = dev else {
        return Ok(peers
            .iter()
            .map(|p| PeerRow {
                peer: *p,
                neigh: false,
                fdb: false,
                route: false,
            })
            .collect());
    };
    let neighs = h.neighs(Some(index))?;
    let fdb = h.fdb(Some(index))?;
    let routes = h.routes(false)?;
    let nexthops: HashMap<u32, Nexthop> = match h.nexthops() {
        Ok(all) => all.into_iter().map(|n| (n.id, n)).collect(),
        Err(e) if nexthop::unsupported(&e) => HashMap::new(),
        Err(e) => return Err(e.into()),
    };
    Ok(peers
        .iter()
        .map(|p| PeerRow {
            peer: *p,
            neigh: neighs.iter().any(|n| {
                n.ip == IpAddr::V4(gateway(p)) && n.mac == Some(p.vtep_mac) && n.permanent
            }),
            fdb: fdb
                .iter()
                .any(|f| f.mac == p.vtep_mac && f.dst == Some(IpAddr::V4(p.public_ip))),
            route: routes
                .iter()
                .any(|r| r.dst == IpNet::V4(p.subnet) && reaches(r, p, index, &nexthops)),
        })
        .collect())
}

/// The route sends to the peer's gateway on the device: by its own
/// gateway, or through its nexthop (whose gateway dumps may not repeat
/// when the kernel's nexthop compat mode is off).
fn reaches(r: &Route, p: &Peer, index: u32, nexthops: &HashMap<u32, Nexthop>) -> bool {
    let want = Some(IpAddr::V4(gateway(p)));
    match r.nhid {
        Some(id) => nexthops
            .get(&id)
            .is_some_and(|n| n.gateway == want && n.oif == Some(index)),
        None => r.gateway == want && r.oif == Some(index),
    }
}

/// Pods from every host-local store under `dir` (one directory per network).
fn pods(h: &mut Handle, dir: &Path) -> anyhow::Result<Vec<PodRow>> {
    let links: HashSet<String> = h.links()?.into_iter().map(|l| l.name).collect();
    let mut rows = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(rows);
    };
    for entry in entries.flatten().filter(|e| e.path().is_dir()) {
        let network = entry.file_name().to_string_lossy().into_owned();
        let Ok(store) = Store::open(entry.path()) else {
            continue;
        };
        for a in store.allocations()? {
            let host_veth = host_veth_name(&a.container_id, &a.ifname);
            rows.push(PodRow {
                network: network.clone(),
                ip: a.ip.to_string(),
                veth_present: links.contains(&host_veth),
                host_veth,
                container_id: a.container_id,
                ifname: a.ifname,
            });
        }
    }
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
        out += &format!("skipped {key}: {why}\n");
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
            skipped: vec![("/p/subnets/x".into(), "key does not name a subnet".into())],
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
        assert!(text.contains("skipped /p/subnets/x: key does not name a subnet"));
        assert!(text.contains("10.244.1.2       abc"), "{text}");
        assert!(text.contains("veth0011aabb     cbr0\n"), "{text}");
    }
}
