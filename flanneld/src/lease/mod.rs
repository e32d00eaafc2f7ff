//! Subnet leases in flannel's etcd schema.
//!
//! A lease is the key `<prefix>/subnets/10.244.3.0-24` holding
//! `{"PublicIP":"192.0.2.11","PublicIPv6":null,"BackendType":"vxlan",
//! "BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}`, attached to an
//! etcd lease of 24 h (a key without an etcd lease is a permanent
//! reservation). The byte layout matches what flannel's Go code marshals, so
//! both daemons can share one cluster.
//!
//! Nothing read from etcd is trusted: [`PeerSet`] judges every lease
//! against the network config and our own lease before it can become a
//! peer, [`acquire`] never takes over a lease that merely carries our
//! PublicIP when the subnet we had is still ours, and the store lists in
//! pages so no amount of data under the prefix stops a node.

mod attrs;
pub mod etcd;
mod manager;
#[cfg(test)]
pub mod memory;
mod peers;
mod store;

pub use attrs::{format_mac, parse_mac, subnet_from_key, subnet_key, LeaseAttrs, VxlanData};
pub use manager::{
    acquire, find_own, renew, LeaseError, LeaseRequest, Origin, OwnLease, Renewal, LEASE_TTL,
};
pub use peers::{
    judge, mac_problem, Clash, IpProblem, MacProblem, Note, Own, Peer, PeerSet, Rules, Settled,
    SkipReason, MAX_VALUE,
};
pub use store::{
    list_paged, prefix_end, Clock, Event, EventKind, Header, LeaseStore, Listing, Page,
    PageRequest, Record, StoreError, SystemClock, WatchItem, WatchStream, PAGE_KEYS,
};

/// The etcd key prefix under which leases live: `<prefix>/subnets/`.
pub fn subnets_prefix(prefix: &str) -> String {
    format!("{}/subnets/", prefix.trim_end_matches('/'))
}

/// What the daemon watches: everything under `<prefix>/`, the leases and
/// the network config.
pub fn watch_prefix(prefix: &str) -> String {
    format!("{}/", prefix.trim_end_matches('/'))
}

/// The key of the network config: `<prefix>/config`.
pub fn config_key(prefix: &str) -> String {
    format!("{}/config", prefix.trim_end_matches('/'))
}
