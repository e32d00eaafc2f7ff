//! Peer routes through kernel nexthop objects.
//!
//! Instead of flannel's `route <subnet> via <peer .0> dev flannel.N onlink`,
//! each peer gets `nexthop id N via <peer .0> dev flannel.N onlink` and
//! `route <subnet> nhid N`. Packets take the same path (same gateway, same
//! device, same neighbour entry), so peers running flannel see no
//! difference, but the kernel inserts such routes much faster once there
//! are many: plain routes get slower per route as their number on the
//! device grows, routes naming a nexthop do not (10 000 peers: ~0.1 s
//! instead of ~1.3 s, see `flanneld/BENCH.md`).
//!
//! Nexthop ids live in one namespace-wide space shared with every other
//! program, so flanneld manages only nexthops that carry both an id in
//! [`ID_BASE`]`..`[`ID_BASE`]` + `[`ID_COUNT`] and protocol [`PROTOCOL`].
//! The id is the peer gateway's offset in the cluster network, so it is
//! the same on every pass and after a restart. A peer whose id is taken by
//! someone else's nexthop, or lies beyond the range (a cluster network
//! wider than /8), gets a plain route.
//!
//! Kernels without nexthop objects (before 5.3) get plain routes
//! throughout: [`probe`] decides once, at start.

use std::net::{IpAddr, Ipv4Addr};

use flannel_netlink::{Error, Nexthop, Result};
use ipnet::Ipv4Net;

use super::Datapath;

/// First nexthop id of flanneld's range.
pub const ID_BASE: u32 = 0xF100_0000;
/// Ids in the range: enough for every address of a /8 cluster network.
pub const ID_COUNT: u32 = 1 << 24;
/// `nh_protocol` of flanneld's nexthops (unassigned in iproute2's
/// `rt_protos`); `ip nexthop` shows it as `proto 241`.
pub const PROTOCOL: u8 = 241;

/// How peer routes are built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMode {
    /// A nexthop object per peer and a route naming it.
    Nexthop,
    /// flannel's `via … onlink` routes, for kernels without nexthops.
    Plain,
}

/// Asks the kernel for its nexthops: a kernel that does not know the
/// request (EOPNOTSUPP before 5.3) or refuses it (EINVAL) gets plain
/// routes. Any other error is a failure to retry.
pub fn probe<D: Datapath>(dp: &mut D) -> Result<RouteMode> {
    match dp.nexthops() {
        Ok(_) => Ok(RouteMode::Nexthop),
        Err(e) if unsupported(&e) => Ok(RouteMode::Plain),
        Err(e) => Err(e),
    }
}

/// The kernel has no nexthop objects.
pub fn unsupported(e: &Error) -> bool {
    matches!(e.errno(), Some(libc::EOPNOTSUPP | libc::EINVAL))
}

/// The id of the nexthop towards `gateway`, if it falls in the range.
pub fn id_for(cluster: Ipv4Net, gateway: Ipv4Addr) -> Option<u32> {
    if !cluster.contains(&gateway) {
        return None;
    }
    let offset = u32::from(gateway) - u32::from(cluster.network());
    (offset < ID_COUNT).then(|| ID_BASE + offset)
}

/// flanneld's nexthop towards `gateway` on device `index`.
pub fn nexthop(id: u32, gateway: Ipv4Addr, index: u32) -> Nexthop {
    Nexthop::new(id)
        .via(IpAddr::V4(gateway))
        .dev(index)
        .onlink()
        .protocol(PROTOCOL)
}

/// Whether flanneld manages this nexthop: its range and its protocol.
pub fn is_ours(nh: &Nexthop) -> bool {
    nh.protocol == PROTOCOL && (ID_BASE..ID_BASE + ID_COUNT).contains(&nh.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_the_gateway_offset_in_the_range() {
        let cluster: Ipv4Net = "10.244.0.0/16".parse().unwrap();
        let id = |gw: &str| id_for(cluster, gw.parse().unwrap());
        assert_eq!(id("10.244.0.0"), Some(ID_BASE));
        assert_eq!(id("10.244.3.0"), Some(ID_BASE + 3 * 256));
        assert_eq!(id("10.244.3.128"), Some(ID_BASE + 3 * 256 + 128));
        assert_eq!(id("10.245.0.0"), None, "outside the cluster network");
        let wide: Ipv4Net = "10.0.0.0/7".parse().unwrap();
        assert_eq!(
            id_for(wide, "10.255.255.0".parse().unwrap()),
            Some(ID_BASE + 0xFF_FF00)
        );
        assert_eq!(
            id_for(wide, "11.0.0.0".parse().unwrap()),
            None,
            "beyond the range"
        );
    }

    #[test]
    fn ours_needs_both_range_and_protocol() {
        let gw = "10.244.3.0".parse().unwrap();
        assert!(is_ours(&nexthop(ID_BASE + 768, gw, 7)));
        assert!(!is_ours(&nexthop(ID_BASE - 1, gw, 7)));
        assert!(!is_ours(&nexthop(ID_BASE + ID_COUNT, gw, 7)));
        assert!(!is_ours(&nexthop(ID_BASE + 768, gw, 7).protocol(3)));
    }
}
