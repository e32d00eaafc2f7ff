//! The kernel side of an attachment: bridge, veth pair, pod address and
//! routes, all through the netlink crate.
//!
//! Checks come first ([`inspect_bridge`]), so a call that is going to be
//! refused is refused before anything changes. The host veth name is
//! derived from the attachment ([`node_state::host_veth_name`]), so DEL,
//! GC and flanneld's status find it without the pod's namespace. MACs are
//! chosen here ([`node_state::random_mac`]), so nothing is read back.

use std::net::{IpAddr, Ipv4Addr};

use flannel_netlink::{Handle, Link, Mac, Netns, Route as KRoute, VethSpec};
use ipnet::{IpNet, Ipv4Net};
use node_state::random_mac;

use crate::config::BridgeConf;
use crate::error::{Error, Result};
use crate::spec::Route;

/// The loopback device's index, the same in every network namespace.
const LO_INDEX: u32 = 1;

/// What ADD has to do to the bridge, decided before any change.
pub struct BridgePlan {
    /// The bridge as it is, `None` when it has to be created.
    pub existing: Option<Link>,
    /// IPv4 addresses to remove first (other addresses, `forceAddress`).
    pub stale: Vec<IpNet>,
    /// Whether the gateway address must be added.
    pub add_gateway: bool,
}

/// The gateway address as the bridge carries it, e.g. 10.244.3.1/24.
pub fn gateway_v4(conf: &BridgeConf) -> Ipv4Net {
    Ipv4Net::new(conf.gateway(), conf.subnet.prefix_len()).expect("prefix of a net")
}

pub fn gateway_net(conf: &BridgeConf) -> IpNet {
    IpNet::V4(gateway_v4(conf))
}

/// Looks at the bridge and refuses what the bridge plugin refuses: a link
/// of that name that is not a bridge, or (as gateway) another IPv4 address
/// on it without `forceAddress` while pods are attached. A bridge without
/// ports that still holds the gateway of the node's previous subnet (the
/// subnet changed, e.g. after the node's lease was lost) serves nobody at
/// that address: it is re-addressed, where flannel would fail every ADD
/// until someone deletes the bridge by hand.
pub fn inspect_bridge(host: &mut Handle, conf: &BridgeConf) -> Result<BridgePlan> {
    let existing = host.link(&conf.bridge)?;
    let Some(link) = existing.as_ref() else {
        return Ok(BridgePlan {
            existing,
            stale: Vec::new(),
            add_gateway: conf.is_gateway,
        });
    };
    if link.kind.as_deref() != Some("bridge") {
        return Err(Error::NotABridge {
            bridge: conf.bridge.clone(),
        });
    }
    let want = gateway_net(conf);
    let mut plan = BridgePlan {
        existing: existing.clone(),
        stale: Vec::new(),
        add_gateway: false,
    };
    if !conf.is_gateway {
        return Ok(plan);
    }
    let v4: Vec<IpNet> = host
        .addrs(Some(link.index))?
        .into_iter()
        .map(|a| a.net)
        .filter(|n| matches!(n, IpNet::V4(_)))
        .collect();
    plan.add_gateway = !v4.contains(&want);
    plan.stale = v4.into_iter().filter(|n| *n != want).collect();
    if !plan.stale.is_empty() && !conf.force_address {
        let ports = ports_of(host, link.index)?;
        if !ports.is_empty() {
            return Err(Error::BridgeAddress {
                bridge: conf.bridge.clone(),
                want: want.to_string(),
                ports: ports.join(", "),
            });
        }
    }
    Ok(plan)
}

/// The names of the links attached to the bridge at `index`.
fn ports_of(host: &mut Handle, index: u32) -> Result<Vec<String>> {
    let links = host.links()?;
    Ok(links
        .into_iter()
        .filter(|l| l.master == Some(index))
        .map(|l| l.name)
        .collect())
}

/// Creates or fixes the bridge as planned; returns it (index and MAC).
pub fn apply_bridge(host: &mut Handle, conf: &BridgeConf, plan: BridgePlan) -> Result<Link> {
    let link = match plan.existing {
        Some(link) => link,
        None => create_bridge(host, conf)?,
    };
    for net in plan.stale {
        match host.del_addr(link.index, net) {
            Err(e) if !e.is_not_found() => return Err(e.into()),
            _ => {}
        }
    }
    if plan.add_gateway {
        host.add_addr(link.index, gateway_v4(conf).into())?;
    }
    if !link.up {
        host.set_up(link.index)?;
    }
    if conf.promisc && !link.promisc {
        host.set_promisc(link.index, true)?;
    }
    refuse_router_advertisements(&conf.bridge)?;
    Ok(link)
}

/// The node must not take IPv6 routes or addresses from router
/// advertisements a pod sends (CVE-2020-10749): `accept_ra=0` on the
/// bridge and on every host veth, as the reference bridge plugin does
/// since 0.8.6. A node without IPv6 has nothing to turn off.
pub fn refuse_router_advertisements(ifname: &str) -> Result<()> {
    write_sysctl(
        &format!("/proc/sys/net/ipv6/conf/{ifname}/accept_ra"),
        "0",
        true,
    )
}

/// Announces the pod's new address to its neighbours when the link comes
/// up (gratuitous ARP), as the reference does; `/proc/sys/net` belongs to
/// the namespace the opening thread is in, so this enters the pod's.
pub fn set_arp_notify(pod_ns: &Netns, ifname: &str) -> Result<()> {
    let _inside = flannel_netlink::NetnsGuard::enter(pod_ns)?;
    write_sysctl(
        &format!("/proc/sys/net/ipv4/conf/{ifname}/arp_notify"),
        "1",
        false,
    )
}

/// Writes one sysctl of the calling thread's namespace; a missing file is
/// fine when `optional` (that protocol is disabled).
fn write_sysctl(path: &str, value: &str, optional: bool) -> Result<()> {
    match std::fs::write(path, value) {
        Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        result => result.map_err(|source| Error::Io {
            what: format!("set {path}"),
            source,
        }),
    }
}

/// Creates the bridge, tolerating a concurrent ADD that created it first.
fn create_bridge(host: &mut Handle, conf: &BridgeConf) -> Result<Link> {
    // A bridge takes the lowest MAC of its ports unless its MAC was set
    // explicitly: give it one at creation, so it does not change as pods
    // come and go (and no crash can leave it unpinned).
    let created = match host.add_bridge(&conf.bridge, Some(conf.mtu), Some(random_mac()?)) {
        Err(e) if !e.is_exists() => return Err(e.into()),
        result => result.is_ok(),
    };
    let mut link = host.link(&conf.bridge)?.ok_or_else(|| Error::NotABridge {
        bridge: conf.bridge.clone(),
    })?;
    // Created meanwhile by someone else (another ADD, or an older plugin):
    // pin the MAC it has now.
    if let (false, Some(mac)) = (created, link.mac) {
        host.set_mac(link.index, mac)?;
    }
    link.up = false;
    Ok(link)
}

/// The two ends of a freshly made veth pair.
pub struct Veth {
    pub host_name: String,
    pub host_mac: Mac,
    pub pod_index: u32,
    pub pod_mac: Mac,
}

/// Creates the pair: host end up on the bridge, pod end created directly in
/// the pod's namespace under its final name, both with the bridge's MTU.
pub fn create_veth(
    host: &mut Handle,
    pod: &mut Handle,
    pod_ns: &Netns,
    conf: &BridgeConf,
    bridge: u32,
    names: (&str, &str),
) -> Result<Veth> {
    let (host_name, ifname) = names;
    let (host_mac, pod_mac) = (random_mac()?, random_mac()?);
    let spec = VethSpec {
        name: host_name.to_string(),
        mtu: Some(conf.mtu),
        mac: Some(host_mac),
        master: Some(bridge),
        up: true,
        peer_name: ifname.to_string(),
        peer_netns: pod_ns,
        peer_mac: Some(pod_mac),
    };
    match host.add_veth(&spec) {
        Err(e) if e.is_exists() => return Err(Error::HostVethExists(host_name.to_string())),
        other => other?,
    }
    // Before the pod end is up, so no advertisement can come first.
    refuse_router_advertisements(host_name)?;
    let pod_link = pod
        .link(ifname)?
        .ok_or_else(|| Error::IfnameExists(ifname.to_string()))?;
    Ok(Veth {
        host_name: host_name.to_string(),
        host_mac,
        pod_index: pod_link.index,
        pod_mac,
    })
}

/// Hairpin lets a pod reach itself through a service address.
pub fn set_hairpin(host: &mut Handle, conf: &BridgeConf, host_name: &str) -> Result<()> {
    if conf.hairpin {
        host.set_hairpin(host_name, true)?;
    }
    Ok(())
}

/// Address, link and `lo` up, and routes inside the pod (routes in one
/// batch, after the link is up: a route needs its device up).
pub fn configure_pod(
    pod: &mut Handle,
    index: u32,
    addr: Ipv4Net,
    gateway: Ipv4Addr,
    routes: &[Route],
) -> Result<()> {
    pod.add_addr(index, addr.into())?;
    pod.set_up(index)?;
    pod.set_up(LO_INDEX)?;
    let mut batch = flannel_netlink::Batch::new();
    for r in routes {
        let gw = r.gw.unwrap_or(IpAddr::V4(gateway));
        batch.add_route(&KRoute::new(r.dst).via(gw).dev(index));
    }
    for result in pod.run(batch) {
        result?;
    }
    Ok(())
}

/// Lets the node forward between the bridge and the rest (the plugin runs
/// in the node's namespace, and this setting is per namespace).
pub fn enable_ip_forward() -> Result<()> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read(PATH).is_ok_and(|v| v.first() == Some(&b'1')) {
        return Ok(());
    }
    std::fs::write(PATH, b"1").map_err(|source| Error::Io {
        what: format!("enable {PATH}"),
        source,
    })
}
