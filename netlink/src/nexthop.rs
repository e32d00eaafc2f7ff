//! Nexthop objects (Linux 5.3+, `ip nexthop`): a gateway and device kept
//! once in the kernel, which routes point at by id (`RTA_NH_ID`). Routes
//! that each carry their own gateway get slower to insert as their number
//! on one device grows; routes naming a nexthop do not.
//!
//! netlink-packet-route has no nexthop messages, so they are encoded here:
//! `struct nhmsg` followed by `NHA_*` attributes (linux/nexthop.h).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_route::route::RouteProtocol;

use crate::batch::{Batch, REPLACE};
use crate::error::{Error, Result};
use crate::raw::{attrs, push_attr, RawMessage, RTM_DELNEXTHOP, RTM_GETNEXTHOP, RTM_NEWNEXTHOP};
use crate::socket::Handle;

const NHA_ID: u16 = 1;
const NHA_OIF: u16 = 5;
const NHA_GATEWAY: u16 = 6;
/// The gateway is on the device even without a covering subnet route.
const RTNH_F_ONLINK: u32 = 4;
/// `struct nhmsg`: family, scope, protocol, reserved (u8 each), flags (u32).
const NHMSG_LEN: usize = 8;
const AF_INET: u8 = libc::AF_INET as u8;
const AF_INET6: u8 = libc::AF_INET6 as u8;

/// A single (non-group) nexthop: gateway and/or device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nexthop {
    /// Non-zero; unique in the namespace.
    pub id: u32,
    /// Also sets the family; without one the nexthop is IPv4.
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub onlink: bool,
    /// Who installed it, as for routes: lets an owner tell its nexthops
    /// from everyone else's in a dump. 3 (boot) by default.
    pub protocol: u8,
}

impl Nexthop {
    pub fn new(id: u32) -> Nexthop {
        Nexthop {
            id,
            gateway: None,
            oif: None,
            onlink: false,
            protocol: u8::from(RouteProtocol::Boot),
        }
    }

    pub fn via(mut self, gateway: IpAddr) -> Nexthop {
        self.gateway = Some(gateway);
        self
    }

    pub fn dev(mut self, oif: u32) -> Nexthop {
        self.oif = Some(oif);
        self
    }

    pub fn onlink(mut self) -> Nexthop {
        self.onlink = true;
        self
    }

    pub fn protocol(mut self, protocol: u8) -> Nexthop {
        self.protocol = protocol;
        self
    }
}

impl Handle {
    /// Creates nexthop `nh.id` or replaces it in place: routes using it
    /// follow the new gateway/device without being touched.
    pub fn replace_nexthop(&mut self, nh: &Nexthop) -> Result<()> {
        self.run_one(|b| b.replace_nexthop(nh))
    }

    /// Deletes nexthop `id`; the kernel removes the routes using it too.
    pub fn del_nexthop(&mut self, id: u32) -> Result<()> {
        self.run_one(|b| b.del_nexthop(id))
    }

    /// Every single nexthop of the namespace (groups, blackholes and FDB
    /// nexthops are listed with no gateway). Fails with EOPNOTSUPP on a
    /// kernel without nexthop objects.
    pub fn nexthops(&mut self) -> Result<Vec<Nexthop>> {
        let req = RawMessage {
            kind: RTM_GETNEXTHOP,
            payload: nhmsg(0, 0, 0),
        };
        let replies = self.dump_raw(req).map_err(|e| e.context("dump nexthops"))?;
        let mut all = Vec::with_capacity(replies.len());
        for raw in replies.iter().filter(|r| r.kind == RTM_NEWNEXTHOP) {
            all.push(parse_nexthop(&raw.payload)?);
        }
        Ok(all)
    }
}

impl Batch {
    pub fn replace_nexthop(&mut self, nh: &Nexthop) {
        let mut what = format!("replace nexthop {}", nh.id);
        if let Some(gw) = nh.gateway {
            what += &format!(" via {gw}");
        }
        if let Some(oif) = nh.oif {
            what += &format!(" dev {oif}");
        }
        self.push(new_nexthop_msg(nh), REPLACE, what);
    }

    pub fn del_nexthop(&mut self, id: u32) {
        self.push(del_nexthop_msg(id), 0, format!("delete nexthop {id}"));
    }
}

fn new_nexthop_msg(nh: &Nexthop) -> RawMessage {
    let family = match nh.gateway {
        Some(IpAddr::V6(_)) => AF_INET6,
        _ => AF_INET,
    };
    let flags = if nh.onlink { RTNH_F_ONLINK } else { 0 };
    let mut payload = nhmsg(family, nh.protocol, flags);
    push_attr(&mut payload, NHA_ID, &nh.id.to_ne_bytes());
    if let Some(oif) = nh.oif {
        push_attr(&mut payload, NHA_OIF, &oif.to_ne_bytes());
    }
    match nh.gateway {
        Some(IpAddr::V4(a)) => push_attr(&mut payload, NHA_GATEWAY, &a.octets()),
        Some(IpAddr::V6(a)) => push_attr(&mut payload, NHA_GATEWAY, &a.octets()),
        None => {}
    }
    RawMessage {
        kind: RTM_NEWNEXTHOP,
        payload,
    }
}

/// The kernel wants only the id (and a zero header) to delete.
fn del_nexthop_msg(id: u32) -> RawMessage {
    let mut payload = nhmsg(0, 0, 0);
    push_attr(&mut payload, NHA_ID, &id.to_ne_bytes());
    RawMessage {
        kind: RTM_DELNEXTHOP,
        payload,
    }
}

fn nhmsg(family: u8, protocol: u8, flags: u32) -> Vec<u8> {
    let mut msg = Vec::with_capacity(64);
    // Scope and the reserved byte must be zero.
    msg.extend_from_slice(&[family, 0, protocol, 0]);
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg
}

fn parse_nexthop(payload: &[u8]) -> Result<Nexthop> {
    let bad = |msg: &str| Error::Decode {
        op: "dump nexthops",
        msg: msg.into(),
    };
    let header = payload.get(..NHMSG_LEN).ok_or_else(|| bad("short nhmsg"))?;
    let flags = u32::from_ne_bytes(header[4..8].try_into().expect("4 bytes"));
    let mut nh = Nexthop::new(0).protocol(header[2]);
    nh.onlink = flags & RTNH_F_ONLINK != 0;
    for attr in attrs(&payload[NHMSG_LEN..]) {
        let (kind, value) = attr.map_err(|_| bad("truncated attribute"))?;
        match kind {
            NHA_ID => nh.id = u32_of(value).ok_or_else(|| bad("bad NHA_ID"))?,
            NHA_OIF => nh.oif = Some(u32_of(value).ok_or_else(|| bad("bad NHA_OIF"))?),
            NHA_GATEWAY => nh.gateway = Some(ip_of(value).ok_or_else(|| bad("bad NHA_GATEWAY"))?),
            _ => {}
        }
    }
    Ok(nh)
}

fn u32_of(value: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(value.try_into().ok()?))
}

fn ip_of(value: &[u8]) -> Option<IpAddr> {
    match value.len() {
        4 => Some(Ipv4Addr::from(<[u8; 4]>::try_from(value).ok()?).into()),
        16 => Some(Ipv6Addr::from(<[u8; 16]>::try_from(value).ok()?).into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_parses_a_gateway_nexthop() {
        let nh = Nexthop::new(4_043_309_824)
            .via("10.244.3.0".parse().unwrap())
            .dev(7)
            .onlink()
            .protocol(241);
        let msg = new_nexthop_msg(&nh);
        assert_eq!(msg.kind, RTM_NEWNEXTHOP);
        // nhmsg, then NHA_ID, NHA_OIF, NHA_GATEWAY (8 bytes each).
        assert_eq!(msg.payload.len(), 8 + 3 * 8);
        assert_eq!(&msg.payload[..4], &[AF_INET, 0, 241, 0]);
        assert_eq!(u32::from_ne_bytes(msg.payload[4..8].try_into().unwrap()), 4);
        assert_eq!(&msg.payload[28..32], &[10, 244, 3, 0]);
        assert_eq!(parse_nexthop(&msg.payload).unwrap(), nh);
    }

    #[test]
    fn delete_carries_only_the_id() {
        let msg = del_nexthop_msg(9);
        assert_eq!(msg.kind, RTM_DELNEXTHOP);
        let mut want = vec![0u8; 8];
        want.extend_from_slice(&8u16.to_ne_bytes());
        want.extend_from_slice(&NHA_ID.to_ne_bytes());
        want.extend_from_slice(&9u32.to_ne_bytes());
        assert_eq!(msg.payload, want);
    }

    #[test]
    fn truncated_attributes_are_an_error_not_a_panic() {
        let mut payload = nhmsg(AF_INET, 3, 0);
        payload.extend_from_slice(&12u16.to_ne_bytes());
        payload.extend_from_slice(&NHA_GATEWAY.to_ne_bytes());
        payload.extend_from_slice(&[10, 0]);
        assert!(parse_nexthop(&payload).is_err());
        assert!(parse_nexthop(&[2, 0, 3]).is_err());
    }
}
