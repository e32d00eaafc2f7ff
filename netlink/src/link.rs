use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, InfoVxlan,
    LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::Result;
use crate::mac::{mac_from_bytes, Mac};
use crate::netns::Netns;
use crate::socket::Handle;

/// A network interface as the kernel reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<Mac>,
    pub mtu: u32,
    /// The bridge (or other master) this link is a port of.
    pub master: Option<u32>,
    pub up: bool,
    pub promisc: bool,
    /// "bridge", "veth", "vxlan"…; `None` for a plain device.
    pub kind: Option<String>,
    /// For a veth: the peer's ifindex (in the peer's namespace).
    pub peer_index: Option<u32>,
    /// For a veth whose peer is in another namespace: that namespace's id.
    pub peer_netnsid: Option<i32>,
    pub vxlan: Option<VxlanInfo>,
}

/// The VXLAN parameters of a `vxlan` link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: u32,
    pub port: u16,
    pub local: Option<Ipv4Addr>,
    /// The underlay device the tunnel is bound to.
    pub link: Option<u32>,
    pub learning: bool,
}

/// What to create for a VXLAN device.
#[derive(Debug, Clone)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub local: Option<Ipv4Addr>,
    pub link: Option<u32>,
    pub mtu: Option<u32>,
    pub mac: Option<Mac>,
    pub learning: bool,
}

/// A veth pair whose second end is created directly in another namespace,
/// under its final name, so nothing is moved or renamed afterwards.
pub struct VethSpec<'a> {
    pub name: String,
    pub mtu: Option<u32>,
    pub mac: Option<Mac>,
    /// Makes the local end a port of this bridge at creation.
    pub master: Option<u32>,
    /// Brings the local end up at creation. (The peer stays down: a veth
    /// end cannot be up before its pair is complete, and the peer is
    /// configured in its namespace before it goes up.)
    pub up: bool,
    pub peer_name: String,
    pub peer_netns: &'a Netns,
    pub peer_mac: Option<Mac>,
}

/// A link named by index or by name: the kernel accepts either, so no
/// lookup is needed when only the name is known.
#[derive(Debug, Clone, Copy)]
pub enum LinkRef<'a> {
    Index(u32),
    Name(&'a str),
}

impl From<u32> for LinkRef<'_> {
    fn from(index: u32) -> Self {
        LinkRef::Index(index)
    }
}

impl<'a> From<&'a str> for LinkRef<'a> {
    fn from(name: &'a str) -> Self {
        LinkRef::Name(name)
    }
}

impl std::fmt::Display for LinkRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkRef::Index(i) => write!(f, "{i}"),
            LinkRef::Name(n) => f.write_str(n),
        }
    }
}

impl LinkRef<'_> {
    fn message(self) -> LinkMessage {
        let mut msg = LinkMessage::default();
        match self {
            LinkRef::Index(i) => msg.header.index = i,
            LinkRef::Name(n) => msg.attributes.push(LinkAttribute::IfName(n.to_string())),
        }
        msg
    }
}

impl Handle {
    /// The link called `name`, if any.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        let reply = self.get(RouteNetlinkMessage::GetLink(msg));
        Ok(reply
            .map_err(|e| e.context(format!("get link {name}")))?
            .and_then(parse_link))
    }

    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        let reply = self.get(RouteNetlinkMessage::GetLink(msg));
        Ok(reply
            .map_err(|e| e.context(format!("get link {index}")))?
            .and_then(parse_link))
    }

    pub fn links(&mut self) -> Result<Vec<Link>> {
        let replies = self.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?;
        Ok(replies.into_iter().filter_map(parse_link).collect())
    }

    /// A bridge given a MAC here keeps it: otherwise the kernel gives it
    /// the lowest MAC of its ports, which changes as ports come and go.
    pub fn add_bridge(&mut self, name: &str, mtu: Option<u32>, mac: Option<Mac>) -> Result<()> {
        let mut msg = new_link_msg(name, mtu, mac);
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.create_link(msg, name)
    }

    /// Creates the pair in one request: the local end here (a bridge port
    /// and up if the spec says so), the peer in its namespace.
    pub fn add_veth(&mut self, spec: &VethSpec) -> Result<()> {
        let mut peer = veth_end_msg(&spec.peer_name, spec.mtu, spec.peer_mac);
        peer.attributes
            .push(LinkAttribute::NetNsFd(spec.peer_netns.as_raw_fd()));
        let mut msg = veth_end_msg(&spec.name, spec.mtu, spec.mac);
        msg.attributes
            .extend(spec.master.map(LinkAttribute::Controller));
        if spec.up {
            msg.header.flags = LinkFlags::Up;
            msg.header.change_mask = LinkFlags::Up;
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.create_link(msg, &spec.name)
    }

    pub fn add_vxlan(&mut self, spec: &VxlanSpec) -> Result<()> {
        let mut data = vec![
            InfoVxlan::Id(spec.vni),
            InfoVxlan::Port(spec.port),
            InfoVxlan::Learning(spec.learning),
        ];
        data.extend(spec.local.map(InfoVxlan::Local));
        data.extend(spec.link.map(InfoVxlan::Link));
        let mut msg = new_link_msg(&spec.name, spec.mtu, spec.mac);
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(data)),
        ]));
        self.create_link(msg, &spec.name)
    }

    fn create_link(&mut self, msg: LinkMessage, name: &str) -> Result<()> {
        self.request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
            .map_err(|e| e.context(format!("create link {name}")))
    }

    /// Deleting one end of a veth removes both.
    pub fn del_link<'a>(&mut self, link: impl Into<LinkRef<'a>>) -> Result<()> {
        let link = link.into();
        self.request(RouteNetlinkMessage::DelLink(link.message()), 0)
            .map_err(|e| e.context(format!("delete link {link}")))
    }

    pub fn set_up(&mut self, index: u32) -> Result<()> {
        self.set_flag(index, LinkFlags::Up, true, "set link up")
    }

    pub fn set_promisc(&mut self, index: u32, on: bool) -> Result<()> {
        self.set_flag(index, LinkFlags::Promisc, on, "set promisc")
    }

    fn set_flag(&mut self, index: u32, flag: LinkFlags, on: bool, what: &str) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.change_mask = flag;
        if on {
            msg.header.flags = flag;
        }
        self.set_link(msg, what, index)
    }

    pub fn set_master(&mut self, index: u32, master: u32) -> Result<()> {
        self.set_attr(index, LinkAttribute::Controller(master), "set master")
    }

    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        self.set_attr(index, LinkAttribute::Mtu(mtu), "set mtu")
    }

    pub fn set_mac(&mut self, index: u32, mac: Mac) -> Result<()> {
        self.set_attr(index, LinkAttribute::Address(mac.to_vec()), "set mac")
    }

    /// Hairpin mode of a bridge port: lets a pod reach itself through a
    /// service address that the node NATs back to it.
    pub fn set_hairpin<'a>(&mut self, port: impl Into<LinkRef<'a>>, on: bool) -> Result<()> {
        let port = port.into();
        // A port's options are set as the bridge's "slave data" of the port.
        let data = InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(on)]);
        let info = vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(data),
        ];
        let mut msg = port.message();
        msg.attributes.push(LinkAttribute::LinkInfo(info));
        self.request(RouteNetlinkMessage::NewLink(msg), 0)
            .map_err(|e| e.context(format!("set hairpin on link {port}")))
    }

    fn set_attr(&mut self, index: u32, attr: LinkAttribute, what: &str) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(attr);
        self.set_link(msg, what, index)
    }

    fn set_link(&mut self, msg: LinkMessage, what: &str, index: u32) -> Result<()> {
        self.request(RouteNetlinkMessage::SetLink(msg), 0)
            .map_err(|e| e.context(format!("{what} on link {index}")))
    }
}

fn new_link_msg(name: &str, mtu: Option<u32>, mac: Option<Mac>) -> LinkMessage {
    let mut msg = LinkRef::Name(name).message();
    msg.attributes.extend(mtu.map(LinkAttribute::Mtu));
    msg.attributes
        .extend(mac.map(|m| LinkAttribute::Address(m.to_vec())));
    msg
}

/// One veth end. The queue counts are given explicitly: without them the
/// kernel allocates one queue per CPU and then cuts the device down to one
/// active queue, which waits for an RCU grace period per end (a pod's veth
/// uses a single queue either way).
fn veth_end_msg(name: &str, mtu: Option<u32>, mac: Option<Mac>) -> LinkMessage {
    let mut msg = new_link_msg(name, mtu, mac);
    msg.attributes.push(LinkAttribute::NumTxQueues(1));
    msg.attributes.push(LinkAttribute::NumRxQueues(1));
    msg
}

fn parse_link(reply: RouteNetlinkMessage) -> Option<Link> {
    let RouteNetlinkMessage::NewLink(msg) = reply else {
        return None;
    };
    if msg.header.interface_family != AddressFamily::Unspec {
        return None;
    }
    let mut link = Link {
        index: msg.header.index,
        up: msg.header.flags.contains(LinkFlags::Up),
        promisc: msg.header.flags.contains(LinkFlags::Promisc),
        ..Default::default()
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Address(a) => link.mac = mac_from_bytes(&a),
            LinkAttribute::Mtu(m) => link.mtu = m,
            LinkAttribute::Controller(m) => link.master = Some(m),
            LinkAttribute::Link(i) => link.peer_index = Some(i),
            LinkAttribute::LinkNetNsId(id) => link.peer_netnsid = Some(id),
            LinkAttribute::LinkInfo(infos) => parse_link_info(&mut link, infos),
            _ => {}
        }
    }
    Some(link)
}

fn parse_link_info(link: &mut Link, infos: Vec<LinkInfo>) {
    for info in infos {
        match info {
            LinkInfo::Kind(kind) => link.kind = Some(kind.to_string()),
            LinkInfo::Data(InfoData::Vxlan(data)) => link.vxlan = Some(parse_vxlan(data)),
            _ => {}
        }
    }
}

fn parse_vxlan(data: Vec<InfoVxlan>) -> VxlanInfo {
    let mut info = VxlanInfo::default();
    for item in data {
        match item {
            InfoVxlan::Id(v) => info.vni = v,
            InfoVxlan::Port(p) => info.port = p,
            InfoVxlan::Local(ip) => info.local = Some(ip),
            InfoVxlan::Link(l) => info.link = Some(l),
            InfoVxlan::Learning(l) => info.learning = l,
            _ => {}
        }
    }
    info
}
