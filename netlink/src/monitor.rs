use netlink_packet_route::RouteNetlinkMessage;

use crate::error::{Error, Result};
use crate::raw::{Message, RTM_DELNEXTHOP, RTM_NEWNEXTHOP};
use crate::socket::{Handle, Received};

// rtnetlink multicast groups (linux/rtnetlink.h, enum rtnetlink_groups).
const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_NEIGH: u32 = 3;
const RTNLGRP_IPV4_ROUTE: u32 = 7;
const RTNLGRP_NEXTHOP: u32 = 32;

/// A change the kernel announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Link {
        index: u32,
        deleted: bool,
    },
    Route {
        deleted: bool,
    },
    /// Both ARP/NDP entries and FDB entries.
    Neigh {
        index: u32,
        deleted: bool,
    },
    /// A nexthop object. Deleting one also removes the IPv4 routes using
    /// it, and the kernel announces only the nexthop's deletion.
    Nexthop {
        deleted: bool,
    },
    /// The socket's queue overflowed: some events were lost, so anything
    /// may have changed.
    Overflow,
}

/// Receives link, IPv4 route, neighbour/FDB and nexthop notifications of
/// the namespace it was created in.
pub struct Monitor {
    handle: Handle,
}

impl Monitor {
    pub fn new() -> Result<Monitor> {
        let handle = Handle::new()?;
        for group in [RTNLGRP_LINK, RTNLGRP_NEIGH, RTNLGRP_IPV4_ROUTE] {
            handle.join_group(group)?;
        }
        // Kernels without nexthop objects (before 5.3) have no such group
        // and refuse to join it; they have no nexthops to watch either.
        let _ = handle.join_group(RTNLGRP_NEXTHOP);
        Ok(Monitor { handle })
    }

    /// Blocks until the kernel announces something; returns every event
    /// of that read.
    pub fn recv(&mut self) -> Result<Vec<Event>> {
        let mut events = Vec::new();
        let result = self.handle.receive_datagram(|reply| {
            if let Received::Message(msg) = reply {
                events.extend(event_of(msg));
            }
        });
        match result {
            Err(e) if e.errno() == Some(libc::ENOBUFS) => Ok(vec![Event::Overflow]),
            Err(e) => Err(e),
            Ok(()) => Ok(events),
        }
    }
}

impl Handle {
    pub(crate) fn join_group(&self, group: u32) -> Result<()> {
        self.socket()
            .add_membership(group)
            .map_err(Error::io("join netlink group"))
    }
}

fn event_of(msg: Message) -> Option<Event> {
    use RouteNetlinkMessage as M;
    let msg = match msg {
        Message::Route(m) => m,
        Message::Raw(raw) => {
            return match raw.kind {
                RTM_NEWNEXTHOP => Some(Event::Nexthop { deleted: false }),
                RTM_DELNEXTHOP => Some(Event::Nexthop { deleted: true }),
                _ => None,
            }
        }
    };
    Some(match msg {
        M::NewLink(l) => Event::Link {
            index: l.header.index,
            deleted: false,
        },
        M::DelLink(l) => Event::Link {
            index: l.header.index,
            deleted: true,
        },
        M::NewRoute(_) => Event::Route { deleted: false },
        M::DelRoute(_) => Event::Route { deleted: true },
        M::NewNeighbour(n) => Event::Neigh {
            index: n.header.ifindex,
            deleted: false,
        },
        M::DelNeighbour(n) => Event::Neigh {
            index: n.header.ifindex,
            deleted: true,
        },
        _ => return None,
    })
}
