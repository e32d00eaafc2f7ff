use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::addr::family_of;
use crate::batch::{Batch, REPLACE};
use crate::error::Result;
use crate::socket::Handle;

/// The main routing table.
pub const MAIN_TABLE: u32 = RouteHeader::RT_TABLE_MAIN as u32;

/// A unicast route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    /// Trust the gateway to be on `oif` without a covering subnet route
    /// (how VXLAN routes point at a peer's `.0` address).
    pub onlink: bool,
    pub table: u32,
    /// Preferred source address (RTA_PREFSRC).
    pub src: Option<IpAddr>,
    pub metric: Option<u32>,
    /// Who installed it: 2 kernel, 3 boot (the default for ours), 4 static.
    pub protocol: u8,
    /// 0 universe, 253 link, 254 host. Universe on a gateway-less route
    /// with a device is sent as link.
    pub scope: u8,
    /// The nexthop object the route uses (RTA_NH_ID). When set, the
    /// nexthop holds gateway, device and onlink: those fields are not sent.
    /// Dumps still fill them in from the nexthop (the kernel's default
    /// `nexthop_compat_mode`), as `ip route` shows them.
    pub nhid: Option<u32>,
}

impl Route {
    /// A route to `dst` in the main table, scope chosen when it is sent.
    pub fn new(dst: IpNet) -> Route {
        Route {
            dst: dst.trunc(),
            gateway: None,
            oif: None,
            onlink: false,
            table: MAIN_TABLE,
            src: None,
            metric: None,
            protocol: u8::from(RouteProtocol::Boot),
            scope: u8::from(RouteScope::Universe),
            nhid: None,
        }
    }

    pub fn via(mut self, gateway: IpAddr) -> Route {
        self.gateway = Some(gateway);
        self
    }

    pub fn dev(mut self, oif: u32) -> Route {
        self.oif = Some(oif);
        self
    }

    pub fn onlink(mut self) -> Route {
        self.onlink = true;
        self
    }

    /// Through nexthop object `id` instead of a gateway of its own.
    pub fn nhid(mut self, id: u32) -> Route {
        self.nhid = Some(id);
        self
    }
}

impl Handle {
    /// Adds the route; fails with EEXIST when one to `dst` exists already.
    pub fn add_route(&mut self, route: &Route) -> Result<()> {
        self.run_one(|b| b.add_route(route))
    }

    /// Adds the route or replaces the one to the same `dst` (idempotent).
    pub fn replace_route(&mut self, route: &Route) -> Result<()> {
        self.run_one(|b| b.replace_route(route))
    }

    pub fn del_route(&mut self, route: &Route) -> Result<()> {
        self.run_one(|b| b.del_route(route))
    }

    /// Unicast routes of one family in the main table.
    pub fn routes(&mut self, ipv6: bool) -> Result<Vec<Route>> {
        let mut req = RouteMessage::default();
        req.header.address_family = if ipv6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let replies = self.dump(RouteNetlinkMessage::GetRoute(req))?;
        let routes = replies.into_iter().filter_map(parse_route);
        Ok(routes.filter(|r| r.table == MAIN_TABLE).collect())
    }
}

impl Batch {
    pub fn add_route(&mut self, route: &Route) {
        let msg = RouteNetlinkMessage::NewRoute(route_msg(route));
        let what = format!("add route {}", describe(route));
        self.push(msg, NLM_F_CREATE | NLM_F_EXCL, what);
    }

    pub fn replace_route(&mut self, route: &Route) {
        let msg = RouteNetlinkMessage::NewRoute(route_msg(route));
        self.push(msg, REPLACE, format!("replace route {}", describe(route)));
    }

    pub fn del_route(&mut self, route: &Route) {
        let msg = RouteNetlinkMessage::DelRoute(route_msg(route));
        self.push(msg, 0, format!("delete route {}", describe(route)));
    }
}

fn describe(route: &Route) -> String {
    let mut text = route.dst.to_string();
    if let Some(id) = route.nhid {
        return text + &format!(" nhid {id}");
    }
    if let Some(gw) = route.gateway {
        text += &format!(" via {gw}");
    }
    if let Some(oif) = route.oif {
        text += &format!(" dev {oif}");
    }
    text
}

fn route_msg(route: &Route) -> RouteMessage {
    let mut msg = RouteMessage::default();
    let h = &mut msg.header;
    h.address_family = family_of(route.dst.addr());
    h.destination_prefix_length = route.dst.prefix_len();
    h.table = u8::try_from(route.table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    h.protocol = RouteProtocol::from(route.protocol);
    h.scope = RouteScope::from(route.scope);
    // A route straight onto a link, with no gateway, has link scope, as
    // `ip route` gives it: the destination is then on-link.
    let direct = route.gateway.is_none() && route.oif.is_some() && route.nhid.is_none();
    if direct && h.scope == RouteScope::Universe {
        h.scope = RouteScope::Link;
    }
    h.kind = RouteType::Unicast;
    let attrs = &mut msg.attributes;
    if route.dst.prefix_len() > 0 {
        attrs.push(RouteAttribute::Destination(route.dst.addr().into()));
    }
    if let Some(id) = route.nhid {
        // The kernel refuses a gateway or device next to a nexthop id, and
        // a delete naming them would not match the route.
        attrs.push(RouteAttribute::NhId(id));
    } else {
        if route.onlink {
            h.flags = RouteFlags::Onlink;
        }
        attrs.extend(route.gateway.map(|g| RouteAttribute::Gateway(g.into())));
        attrs.extend(route.oif.map(RouteAttribute::Oif));
    }
    attrs.extend(route.src.map(|s| RouteAttribute::PrefSource(s.into())));
    attrs.extend(route.metric.map(RouteAttribute::Priority));
    if route.table > 255 {
        attrs.push(RouteAttribute::Table(route.table));
    }
    msg
}

fn parse_route(reply: RouteNetlinkMessage) -> Option<Route> {
    let RouteNetlinkMessage::NewRoute(msg) = reply else {
        return None;
    };
    let h = &msg.header;
    if h.kind != RouteType::Unicast {
        return None;
    }
    let ipv6 = h.address_family == AddressFamily::Inet6;
    let zero: IpAddr = if ipv6 {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    };
    let mut route = Route::new(IpNet::new(zero, 0).ok()?);
    route.table = u32::from(h.table);
    route.protocol = u8::from(h.protocol);
    route.scope = u8::from(h.scope);
    route.onlink = h.flags.contains(RouteFlags::Onlink);
    let prefix = h.destination_prefix_length;
    for attr in msg.attributes {
        match attr {
            RouteAttribute::Destination(a) => route.dst = IpNet::new(ip_of(a)?, prefix).ok()?,
            RouteAttribute::Gateway(a) => route.gateway = ip_of(a),
            RouteAttribute::Oif(i) => route.oif = Some(i),
            RouteAttribute::PrefSource(a) => route.src = ip_of(a),
            RouteAttribute::Priority(m) => route.metric = Some(m),
            RouteAttribute::Table(t) => route.table = t,
            RouteAttribute::NhId(id) => route.nhid = Some(id),
            _ => {}
        }
    }
    Some(route)
}

fn ip_of(addr: RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(a) => Some(a.into()),
        RouteAddress::Inet6(a) => Some(a.into()),
        _ => None,
    }
}
