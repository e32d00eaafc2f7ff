//! Choosing the public interface (flannel's `--iface` / default route).

use std::net::{IpAddr, Ipv4Addr};

use flannel_netlink::{Handle, Link};
use ipnet::IpNet;

#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    #[error(transparent)]
    Netlink(#[from] flannel_netlink::Error),
    #[error("no interface matches {0:?}")]
    NoMatch(String),
    #[error("interface {0} has no IPv4 address")]
    NoAddress(String),
    #[error("no default route to find the public interface: pass --iface")]
    NoDefaultRoute,
}

/// The interface the tunnel runs over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtIface {
    pub index: u32,
    pub name: String,
    pub addr: Ipv4Addr,
    pub mtu: u32,
}

/// The first of `wanted` (names or IPv4 addresses) that exists, or the
/// interface of the default route when `wanted` is empty.
pub fn find(h: &mut Handle, wanted: &[String]) -> Result<ExtIface, IfaceError> {
    if wanted.is_empty() {
        let route = h
            .routes(false)?
            .into_iter()
            .find(|r| r.dst.prefix_len() == 0 && r.oif.is_some())
            .ok_or(IfaceError::NoDefaultRoute)?;
        let link = h
            .link_by_index(route.oif.unwrap_or(0))?
            .ok_or(IfaceError::NoDefaultRoute)?;
        return with_address(h, link, None);
    }
    for w in wanted {
        match find_one(h, w) {
            Ok(found) => return Ok(found),
            Err(e) => crate::info!("interface {w:?} not usable: {e}"),
        }
    }
    Err(IfaceError::NoMatch(wanted.join(",")))
}

fn find_one(h: &mut Handle, wanted: &str) -> Result<ExtIface, IfaceError> {
    if let Ok(ip) = wanted.parse::<Ipv4Addr>() {
        let addr = h
            .addrs(None)?
            .into_iter()
            .find(|a| a.net.addr() == IpAddr::V4(ip))
            .ok_or_else(|| IfaceError::NoMatch(wanted.into()))?;
        let link = h
            .link_by_index(addr.index)?
            .ok_or_else(|| IfaceError::NoMatch(wanted.into()))?;
        return with_address(h, link, Some(ip));
    }
    let link = h
        .link(wanted)?
        .ok_or_else(|| IfaceError::NoMatch(wanted.into()))?;
    with_address(h, link, None)
}

fn with_address(h: &mut Handle, link: Link, ip: Option<Ipv4Addr>) -> Result<ExtIface, IfaceError> {
    let addr = match ip {
        Some(ip) => ip,
        None => h
            .addrs(Some(link.index))?
            .into_iter()
            .find_map(|a| match a.net {
                IpNet::V4(n) => Some(n.addr()),
                IpNet::V6(_) => None,
            })
            .ok_or_else(|| IfaceError::NoAddress(link.name.clone()))?,
    };
    Ok(ExtIface {
        index: link.index,
        name: link.name,
        addr,
        mtu: link.mtu,
    })
}
