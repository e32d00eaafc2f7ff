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
//!
//! Modules depend one way only: `raw` (message framing and attributes),
//! `mac`, `netns` and `error` at the bottom; `socket` (the [`Handle`]:
//! send, receive, dump) on them; `batch` on `socket`; and one module per
//! kind of object (`addr`, `link`, `neigh`, `route`, `nexthop`, `monitor`)
//! on top, each adding its operations to [`Handle`] and [`Batch`].

mod addr;
mod batch;
mod error;
mod link;
mod mac;
mod monitor;
mod neigh;
mod netns;
mod nexthop;
mod raw;
mod route;
mod socket;

pub use addr::Addr;
pub use batch::Batch;
pub use error::{Error, Result};
pub use link::{Link, LinkRef, VethSpec, VxlanInfo, VxlanSpec};
pub use mac::{format_mac, parse_mac, Mac};
pub use monitor::{Event, Monitor};
pub use neigh::{FdbEntry, Neighbour};
pub use netns::{Netns, NetnsGuard};
pub use nexthop::Nexthop;
pub use route::Route;
pub use socket::Handle;

/// The underlying message crate, for callers that need a type it defines.
pub use netlink_packet_route as packet;
