//! The set of remote nodes, built from lease records.
//!
//! This cache turns etcd snapshots and events into the desired peer list;
//! the reconciler compares that list with the kernel. A lease that cannot be
//! used (bad key or JSON, other backend, other VNI) is skipped with a reason,
//! never fatal.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::{subnet_from_key, LeaseAttrs, Record};

/// A remote node as the datapath needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Peer {
    pub subnet: Ipv4Net,
    pub public_ip: Ipv4Addr,
    pub vtep_mac: [u8; 6],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// Our own lease: not a peer.
    Own,
    BadKey,
    BadValue(String),
    ForeignVni(u32),
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Own => write!(f, "own lease"),
            SkipReason::BadKey => write!(f, "key does not name a subnet"),
            SkipReason::BadValue(why) => write!(f, "malformed lease: {why}"),
            SkipReason::ForeignVni(v) => write!(f, "lease is for VNI {v}, not ours"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct PeerSet {
    vni: u32,
    own: Option<Ipv4Net>,
    peers: BTreeMap<Ipv4Net, Peer>,
}

impl PeerSet {
    pub fn new(vni: u32) -> Self {
        PeerSet {
            vni,
            own: None,
            peers: BTreeMap::new(),
        }
    }

    /// Sets our own subnet, which is never a peer.
    pub fn set_own(&mut self, own: Ipv4Net) {
        self.own = Some(own);
        self.peers.remove(&own);
    }

    pub fn parse(&self, key: &str, value: &[u8]) -> Result<Peer, SkipReason> {
        let subnet = subnet_from_key(key).ok_or(SkipReason::BadKey)?;
        if Some(subnet) == self.own {
            return Err(SkipReason::Own);
        }
        let attrs: LeaseAttrs =
            serde_json::from_slice(value).map_err(|e| SkipReason::BadValue(e.to_string()))?;
        let data = attrs.vxlan_data().map_err(SkipReason::BadValue)?;
        if data.vni != self.vni {
            return Err(SkipReason::ForeignVni(data.vni));
        }
        Ok(Peer {
            subnet,
            public_ip: attrs.public_ip,
            vtep_mac: data.vtep_mac,
        })
    }

    /// Applies a put. Returns whether the set changed; a lease that cannot
    /// be used also drops any peer previously known under that subnet.
    pub fn upsert(&mut self, key: &str, value: &[u8]) -> Result<bool, (SkipReason, bool)> {
        match self.parse(key, value) {
            Ok(peer) => Ok(self.peers.insert(peer.subnet, peer) != Some(peer)),
            Err(why) => {
                let dropped = subnet_from_key(key)
                    .filter(|s| Some(*s) != self.own)
                    .is_some_and(|s| self.peers.remove(&s).is_some());
                Err((why, dropped))
            }
        }
    }

    /// Applies a delete. Returns whether a peer was removed.
    pub fn remove(&mut self, key: &str) -> bool {
        subnet_from_key(key).is_some_and(|s| self.peers.remove(&s).is_some())
    }

    /// Replaces the whole set with a snapshot; returns the skipped records.
    pub fn reset(&mut self, records: &[Record]) -> Vec<(String, SkipReason)> {
        self.peers.clear();
        let mut skipped = Vec::new();
        for r in records {
            match self.parse(&r.key, &r.value) {
                Ok(p) => {
                    self.peers.insert(p.subnet, p);
                }
                Err(SkipReason::Own) => {}
                Err(why) => skipped.push((r.key.clone(), why)),
            }
        }
        skipped
    }

    pub fn peers(&self) -> Vec<Peer> {
        self.peers.values().copied().collect()
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(ip: &str, vni: u32, mac: &str) -> Vec<u8> {
        format!(r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":{vni},"VtepMAC":"{mac}"}}}}"#)
            .into_bytes()
    }

    #[test]
    fn malformed_and_foreign_leases_are_skipped() {
        let mut set = PeerSet::new(1);
        set.set_own("10.244.1.0/24".parse().unwrap());
        let records = vec![
            Record {
                key: "/p/subnets/10.244.1.0-24".into(),
                value: lease("192.0.2.1", 1, "aa:aa:aa:aa:aa:01"),
                lease: 0,
            },
            Record {
                key: "/p/subnets/10.244.2.0-24".into(),
                value: lease("192.0.2.2", 1, "aa:aa:aa:aa:aa:02"),
                lease: 0,
            },
            Record {
                key: "/p/subnets/10.244.3.0-24".into(),
                value: b"{not json".to_vec(),
                lease: 0,
            },
            Record {
                key: "/p/subnets/10.244.4.0-24".into(),
                value: lease("192.0.2.4", 7, "aa:aa:aa:aa:aa:04"),
                lease: 0,
            },
            Record {
                key: "/p/subnets/garbage".into(),
                value: lease("192.0.2.5", 1, "aa:aa:aa:aa:aa:05"),
                lease: 0,
            },
        ];
        let skipped = set.reset(&records);
        assert_eq!(set.len(), 1);
        assert_eq!(set.peers()[0].public_ip.to_string(), "192.0.2.2");
        let reasons: Vec<_> = skipped.iter().map(|(_, r)| r.clone()).collect();
        assert!(matches!(reasons[0], SkipReason::BadValue(_)));
        assert_eq!(reasons[1], SkipReason::ForeignVni(7));
        assert_eq!(reasons[2], SkipReason::BadKey);
    }

    #[test]
    fn updates_and_removals() {
        let mut set = PeerSet::new(1);
        let key = "/p/subnets/10.244.2.0-24";
        assert_eq!(
            set.upsert(key, &lease("192.0.2.2", 1, "aa:aa:aa:aa:aa:02")),
            Ok(true)
        );
        assert_eq!(
            set.upsert(key, &lease("192.0.2.2", 1, "aa:aa:aa:aa:aa:02")),
            Ok(false)
        );
        assert_eq!(
            set.upsert(key, &lease("192.0.2.9", 1, "aa:aa:aa:aa:aa:02")),
            Ok(true)
        );
        // Overwritten with junk: skipped, and the old peer is dropped.
        assert!(matches!(
            set.upsert(key, b"junk"),
            Err((SkipReason::BadValue(_), true))
        ));
        assert!(set.is_empty());
        set.upsert(key, &lease("192.0.2.2", 1, "aa:aa:aa:aa:aa:02"))
            .unwrap();
        assert!(set.remove(key));
        assert!(!set.remove(key));
    }
}
