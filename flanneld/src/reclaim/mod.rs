//! Reclaiming the IPs of pods that are gone without a CNI DEL.
//!
//! Design note: containerd and CRI-O never send CNI GC, so when DEL never
//! comes (the runtime crashed, the node rebooted and the pod namespaces
//! went with it) an IP stays reserved in the host-local store until the
//! range is exhausted ("no IP addresses available in range set"). The
//! kernel destroys a veth pair with the namespace holding one end, so a
//! reservation whose host veth (named from the attachment alone,
//! [`node_state::host_veth_name`]) has been absent for longer than a grace
//! period belongs to a pod that is gone.
//!
//! - ADD reserves the IP under the store's lock and creates the veth just
//!   after: the grace period (60 s by default) covers that window, and the
//!   last check and the removal happen under the same lock, so an ADD in
//!   progress, or an IP released and handed to a new pod meanwhile, is
//!   never touched.
//! - Pods attached by flannel + bridge + host-local before a migration
//!   have randomly named host veths: a reservation of theirs looks absent.
//!   So while any bridge port with its peer in another namespace is named
//!   after no reservation, nothing is reclaimed (and it is logged): such a
//!   port may be the pod of any absent-looking reservation.
//! - With the IP go what the plugin's DEL would remove: the pod's
//!   masquerade chain and its saved delegate config
//!   ([`node_state::reclaim::remove_leftovers`]).
//!
//! [`decide`] is the whole policy, a pure function of the reservations,
//! the links, the time and when each reservation was first seen absent;
//! [`executor`] reads the stores and the links, runs it periodically on
//! its own thread and carries out its decisions. When each reservation was
//! first seen absent is kept in memory only: a restart of flanneld starts
//! the grace period again, which errs on the safe side.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use flannel_netlink::Link;
use node_state::host_veth_name;
use node_state::ipam::{IpamError, Store};

pub mod executor;
#[cfg(test)]
mod tests;

pub use executor::{spawn, Reclaimer, Settings};

/// One IP reserved in a host-local store.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reservation {
    /// The store's directory name: the CNI network name.
    pub network: String,
    pub ip: Ipv4Addr,
    /// Empty when the file has no owner (an ADD killed before writing it).
    pub container_id: String,
    pub ifname: String,
}

impl Reservation {
    /// The name the plugin gives this attachment's host veth.
    pub fn host_veth(&self) -> String {
        host_veth_name(&self.container_id, &self.ifname)
    }
}

/// Every reservation in every store under `dir` (one directory per
/// network), ordered by network and IP; none when `dir` does not exist.
pub fn reservations(dir: &Path) -> Result<Vec<Reservation>, IpamError> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(out);
    };
    for entry in entries.flatten().filter(|e| e.path().is_dir()) {
        let network = entry.file_name().to_string_lossy().into_owned();
        // Gone since it was listed: nothing in it.
        let Ok(store) = Store::open(entry.path()) else {
            continue;
        };
        out.extend(store.allocations()?.into_iter().map(|a| Reservation {
            network: network.clone(),
            ip: a.ip,
            container_id: a.container_id,
            ifname: a.ifname,
        }));
    }
    out.sort_by(|a, b| (&a.network, a.ip).cmp(&(&b.network, b.ip)));
    Ok(out)
}

/// What the links of the node's namespace tell.
#[derive(Debug, Clone, Default)]
pub struct Links {
    /// The name of every link.
    pub names: HashSet<String>,
    /// Host ends of pods: veths that are ports of a bridge (or another
    /// master) with their peer in another namespace.
    pub pod_veths: Vec<String>,
}

impl Links {
    pub fn new(links: &[Link]) -> Links {
        let is_pod_veth = |l: &&Link| {
            l.kind.as_deref() == Some("veth") && l.master.is_some() && l.peer_netnsid.is_some()
        };
        Links {
            names: links.iter().map(|l| l.name.clone()).collect(),
            pod_veths: links
                .iter()
                .filter(is_pod_veth)
                .map(|l| l.name.clone())
                .collect(),
        }
    }
}

/// A reservation to reclaim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub reservation: Reservation,
    /// How long its host veth has been seen absent.
    pub absent_for: Duration,
}

/// What one pass decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decision {
    pub reclaim: Vec<Candidate>,
    /// When each reservation whose veth is absent was first seen so: the
    /// map for the next pass (present and vanished ones are forgotten).
    pub absent_since: HashMap<Reservation, Instant>,
    /// Pod veths named after no reservation; while there are any,
    /// nothing is reclaimed.
    pub unknown_veths: Vec<String>,
}

/// The reservations whose host veth has been absent for longer than
/// `grace` as of `now`, given when each was first seen absent.
pub fn decide(
    reservations: &[Reservation],
    links: &Links,
    now: Instant,
    grace: Duration,
    absent_since: &HashMap<Reservation, Instant>,
) -> Decision {
    let expected: HashSet<String> = reservations.iter().map(Reservation::host_veth).collect();
    let mut decision = Decision {
        unknown_veths: (links.pod_veths.iter())
            .filter(|name| !expected.contains(*name))
            .cloned()
            .collect(),
        ..Decision::default()
    };
    for r in reservations {
        if links.names.contains(&r.host_veth()) {
            continue;
        }
        let since = absent_since.get(r).copied().unwrap_or(now);
        decision.absent_since.insert(r.clone(), since);
        let absent_for = now.saturating_duration_since(since);
        if absent_for > grace && decision.unknown_veths.is_empty() {
            decision.reclaim.push(Candidate {
                reservation: r.clone(),
                absent_for,
            });
        }
    }
    decision
}
