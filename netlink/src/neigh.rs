use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::addr::family_of;
use crate::batch::{Batch, REPLACE};
use crate::error::Result;
use crate::mac::{format_mac, mac_from_bytes, Mac};
use crate::socket::Handle;

/// An ARP/NDP entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub index: u32,
    pub ip: IpAddr,
    pub mac: Option<Mac>,
    pub permanent: bool,
}

/// A forwarding-database entry of a bridge port or of a VXLAN device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbEntry {
    pub index: u32,
    pub mac: Mac,
    /// For VXLAN: the remote VTEP the MAC lives behind.
    pub dst: Option<IpAddr>,
    /// The bridge that learned it (entries in the bridge's own table).
    pub master: Option<u32>,
    pub permanent: bool,
}

impl Handle {
    /// Sets a permanent `ip → mac` entry on link `index`.
    pub fn replace_neigh(&mut self, index: u32, ip: IpAddr, mac: Mac) -> Result<()> {
        self.run_one(|b| b.replace_neigh(index, ip, mac))
    }

    pub fn del_neigh(&mut self, index: u32, ip: IpAddr) -> Result<()> {
        self.run_one(|b| b.del_neigh(index, ip))
    }

    /// IPv4 and IPv6 neighbours of one link, or of all.
    pub fn neighs(&mut self, index: Option<u32>) -> Result<Vec<Neighbour>> {
        let req = NeighbourMessage::default();
        let replies = self.dump(RouteNetlinkMessage::GetNeighbour(req))?;
        let all = replies.into_iter().filter_map(parse_neigh);
        Ok(all.filter(|n| index.is_none_or(|i| n.index == i)).collect())
    }

    /// Points `mac` at the VTEP `dst` on VXLAN device `index`, replacing
    /// whatever destination it had.
    pub fn replace_fdb(&mut self, index: u32, mac: Mac, dst: IpAddr) -> Result<()> {
        self.run_one(|b| b.replace_fdb(index, mac, dst))
    }

    /// Deletes the entry for `mac` (only the one towards `dst` when given).
    pub fn del_fdb(&mut self, index: u32, mac: Mac, dst: Option<IpAddr>) -> Result<()> {
        self.run_one(|b| b.del_fdb(index, mac, dst))
    }

    /// FDB entries of one device (or of every device and bridge).
    pub fn fdb(&mut self, index: Option<u32>) -> Result<Vec<FdbEntry>> {
        let mut req = NeighbourMessage::default();
        req.header.family = AddressFamily::Bridge;
        let replies = self.dump(RouteNetlinkMessage::GetNeighbour(req))?;
        let all = replies.into_iter().filter_map(parse_fdb);
        Ok(all.filter(|f| index.is_none_or(|i| f.index == i)).collect())
    }
}

impl Batch {
    pub fn replace_neigh(&mut self, index: u32, ip: IpAddr, mac: Mac) {
        let msg = RouteNetlinkMessage::NewNeighbour(neigh_msg(index, ip, Some(mac)));
        self.push(
            msg,
            REPLACE,
            format!("replace neighbour {ip} on link {index}"),
        );
    }

    pub fn del_neigh(&mut self, index: u32, ip: IpAddr) {
        let msg = RouteNetlinkMessage::DelNeighbour(neigh_msg(index, ip, None));
        self.push(msg, 0, format!("delete neighbour {ip} on link {index}"));
    }

    pub fn replace_fdb(&mut self, index: u32, mac: Mac, dst: IpAddr) {
        let msg = RouteNetlinkMessage::NewNeighbour(fdb_msg(index, mac, Some(dst)));
        let what = format!("replace fdb {} dst {dst} on link {index}", format_mac(&mac));
        self.push(msg, REPLACE, what);
    }

    pub fn del_fdb(&mut self, index: u32, mac: Mac, dst: Option<IpAddr>) {
        let msg = RouteNetlinkMessage::DelNeighbour(fdb_msg(index, mac, dst));
        self.push(
            msg,
            0,
            format!("delete fdb {} on link {index}", format_mac(&mac)),
        );
    }
}

fn neigh_msg(index: u32, ip: IpAddr, mac: Option<Mac>) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family_of(ip);
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.attributes
        .push(NeighbourAttribute::Destination(neigh_addr(ip)));
    msg.attributes
        .extend(mac.map(|m| NeighbourAttribute::LinkLayerAddress(m.to_vec())));
    msg
}

/// An FDB message for the device itself (NTF_SELF), not for a bridge
/// above it: that is where a VXLAN device keeps its remote VTEPs.
fn fdb_msg(index: u32, mac: Mac, dst: Option<IpAddr>) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.header.flags = NeighbourFlags::Own;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    msg.attributes
        .extend(dst.map(|ip| NeighbourAttribute::Destination(neigh_addr(ip))));
    msg
}

fn neigh_addr(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    }
}

fn parse_neigh(reply: RouteNetlinkMessage) -> Option<Neighbour> {
    let RouteNetlinkMessage::NewNeighbour(msg) = reply else {
        return None;
    };
    let family = msg.header.family;
    if family != AddressFamily::Inet && family != AddressFamily::Inet6 {
        return None;
    }
    let mut ip = None;
    let mut mac = None;
    for attr in msg.attributes {
        match attr {
            NeighbourAttribute::Destination(a) => ip = neigh_ip(a),
            NeighbourAttribute::LinkLayerAddress(m) => mac = mac_from_bytes(&m),
            _ => {}
        }
    }
    Some(Neighbour {
        index: msg.header.ifindex,
        ip: ip?,
        mac,
        permanent: msg.header.state == NeighbourState::Permanent,
    })
}

fn parse_fdb(reply: RouteNetlinkMessage) -> Option<FdbEntry> {
    let RouteNetlinkMessage::NewNeighbour(msg) = reply else {
        return None;
    };
    if msg.header.family != AddressFamily::Bridge {
        return None;
    }
    let mut mac = None;
    let mut dst = None;
    let mut master = None;
    for attr in msg.attributes {
        match attr {
            NeighbourAttribute::LinkLayerAddress(m) => mac = mac_from_bytes(&m),
            NeighbourAttribute::Destination(a) => dst = neigh_ip(a),
            NeighbourAttribute::Controller(m) => master = Some(m),
            _ => {}
        }
    }
    Some(FdbEntry {
        index: msg.header.ifindex,
        mac: mac?,
        dst,
        master,
        permanent: msg.header.state == NeighbourState::Permanent,
    })
}

/// In AF_BRIDGE dumps the destination arrives as raw bytes, not `Inet`.
fn neigh_ip(addr: NeighbourAddress) -> Option<IpAddr> {
    match addr {
        NeighbourAddress::Inet(a) => Some(a.into()),
        NeighbourAddress::Inet6(a) => Some(a.into()),
        NeighbourAddress::Other(b) => match b.len() {
            4 => Some(Ipv4Addr::from(<[u8; 4]>::try_from(b).ok()?).into()),
            16 => Some(Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?).into()),
            _ => None,
        },
        _ => None,
    }
}
