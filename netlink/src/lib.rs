//! A thin, blocking rtnetlink layer: one function per kernel operation.
//!
//! Both binaries are short-lived or single-threaded around the kernel, so a
//! plain blocking socket is all they need: no runtime, no background task,
//! one `sendmsg` per request (or per batch) and the replies read back in
//! order. A [`Handle`] owns one `NETLINK_ROUTE` socket; the socket stays in
//! the network namespace it was created in, so [`Handle::in_netns`] gives a
//! handle that drives another namespace from the calling thread.
//!
//! Operations map one-to-one to kernel requests (`add_route`,
//! `replace_neigh`, `del_link`, `replace_nexthop`…). Many requests can be queued in a [`Batch`]
//! and sent together, which is how the daemon programs thousands of peers
//! in a handful of round trips. [`Monitor`] receives the kernel's change
//! notifications.

mod addr;
mod batch;
mod error;
mod link;
mod monitor;
mod neigh;
mod netns;
mod nexthop;
mod route;
mod socket;

pub use addr::Addr;
pub use batch::Batch;
pub use error::{Error, Result};
pub use link::{Link, LinkRef, VethSpec, VxlanInfo, VxlanSpec};
pub use monitor::{Event, Monitor};
pub use neigh::{FdbEntry, Neighbour};
pub use netns::{Netns, NetnsGuard};
pub use nexthop::Nexthop;
pub use route::Route;
pub use socket::Handle;

/// The underlying message crate, for callers that need a type it defines.
pub use netlink_packet_route as packet;

/// A MAC address.
pub type Mac = [u8; 6];

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &Mac) -> String {
    let hex: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    hex.join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff` (case-insensitive).
pub fn parse_mac(text: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in mac.iter_mut() {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn mac_from_bytes(bytes: &[u8]) -> Option<Mac> {
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let mac = parse_mac("C6:d2:32:6f:8f:44").unwrap();
        assert_eq!(format_mac(&mac), "c6:d2:32:6f:8f:44");
        assert!(parse_mac("c6:d2:32:6f:8f").is_none());
        assert!(parse_mac("c6:d2:32:6f:8f:44:00").is_none());
        assert!(parse_mac("c6:d2:32:6f:8f:4").is_none());
    }
}
