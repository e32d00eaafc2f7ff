use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::Result;
use crate::socket::Handle;

/// An address on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addr {
    pub index: u32,
    /// Address with the prefix length of its subnet.
    pub net: IpNet,
}

impl Handle {
    /// Adds (or refreshes) `net` on link `index`; an IPv4 address gets its
    /// subnet's broadcast address too, as `ip addr add … brd +` and the
    /// reference plugins give it.
    pub fn add_addr(&mut self, index: u32, net: IpNet) -> Result<()> {
        let msg = addr_msg(index, net);
        self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map_err(|e| e.context(format!("add address {net} to link {index}")))
    }

    pub fn del_addr(&mut self, index: u32, net: IpNet) -> Result<()> {
        let msg = addr_msg(index, net);
        self.request(RouteNetlinkMessage::DelAddress(msg), 0)
            .map_err(|e| e.context(format!("delete address {net} from link {index}")))
    }

    /// Addresses of one link (`Some(index)`) or of all links.
    pub fn addrs(&mut self, index: Option<u32>) -> Result<Vec<Addr>> {
        let replies = self.dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))?;
        let all = replies.into_iter().filter_map(parse_addr);
        Ok(all.filter(|a| index.is_none_or(|i| a.index == i)).collect())
    }
}

fn addr_msg(index: u32, net: IpNet) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = family_of(net.addr());
    msg.header.prefix_len = net.prefix_len();
    msg.header.index = index;
    // IFA_LOCAL is the address itself; IFA_ADDRESS the peer (same unless
    // point-to-point). iproute2 sets both; the kernel needs LOCAL for IPv4.
    msg.attributes.push(AddressAttribute::Local(net.addr()));
    msg.attributes.push(AddressAttribute::Address(net.addr()));
    if let IpNet::V4(v4) = net {
        if v4.prefix_len() < 31 {
            msg.attributes
                .push(AddressAttribute::Broadcast(v4.broadcast()));
        }
    }
    msg
}

pub(crate) fn family_of(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn parse_addr(reply: RouteNetlinkMessage) -> Option<Addr> {
    let RouteNetlinkMessage::NewAddress(msg) = reply else {
        return None;
    };
    let mut local = None;
    let mut address = None;
    for attr in msg.attributes {
        match attr {
            AddressAttribute::Local(ip) => local = Some(ip),
            AddressAttribute::Address(ip) => address = Some(ip),
            _ => {}
        }
    }
    let ip = local.or(address)?;
    let net = IpNet::new(ip, msg.header.prefix_len).ok()?;
    Some(Addr {
        index: msg.header.index,
        net,
    })
}
