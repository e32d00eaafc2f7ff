//! The set of remote nodes, built from lease records.
//!
//! Design note: a lease is input from anyone who can write under the etcd
//! prefix (a broken tool, another cluster's flanneld, an attacker), so this
//! is where every lease is judged before anything of it reaches the kernel,
//! in one place, with a typed reason for every refusal:
//!
//! - the key must name a network-aligned subnet inside `Network`, of
//!   exactly `SubnetLen`, not overlapping our own: otherwise a forged lease
//!   would route a foreign prefix, the whole network or our own pods into
//!   the tunnel;
//! - the value must be a JSON object of at most [`MAX_VALUE`] bytes, a
//!   vxlan lease for our VNI, with a PublicIP a tunnel can go to (not
//!   loopback, unspecified, multicast, broadcast, ours, or inside the
//!   network) and a VTEP MAC a neighbour entry can name (not zero,
//!   multicast, or ours);
//! - of valid leases that would share a subnet, a VTEP MAC (one FDB entry)
//!   or a gateway (one neighbour, one nexthop), the older wins (etcd's
//!   create revision, then the key), so the datapath has one answer and
//!   every node picks the same; the other waits until the winner is gone.
//!
//! Verdicts are remembered per key and reported by [`PeerSet::settle`]
//! only when they change, so an invalid lease is logged once, not on every
//! event replay or re-listing.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::{format_mac, LeaseAttrs, Record};
use crate::config::NetworkConfig;

/// The largest lease value used; flannel's are about 150 bytes.
pub const MAX_VALUE: usize = 64 * 1024;

/// A remote node as the datapath needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Peer {
    pub subnet: Ipv4Net,
    pub public_ip: Ipv4Addr,
    pub vtep_mac: [u8; 6],
}

/// This node's own lease, which no peer may collide with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Own {
    pub key: String,
    pub subnet: Ipv4Net,
    pub public_ip: Ipv4Addr,
    pub vtep_mac: [u8; 6],
}

/// What a lease must fit: the network config and our own lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    pub network: Ipv4Net,
    pub subnet_len: u8,
    pub vni: u32,
    /// `None` where there is no own lease (`flanneld status` on a node
    /// without one).
    pub own: Option<Own>,
}

impl Rules {
    pub fn new(config: &NetworkConfig, own: Option<Own>) -> Self {
        Rules {
            network: config.network,
            subnet_len: config.subnet_len,
            vni: config.backend.vni,
            own,
        }
    }
}

/// What two leases would share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Clash {
    Subnet,
    VtepMac,
    Gateway,
}

impl fmt::Display for Clash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Clash::Subnet => "the same subnet",
            Clash::VtepMac => "the same VTEP MAC",
            Clash::Gateway => "the same gateway address",
        })
    }
}

/// Why a PublicIP cannot be a tunnel's destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpProblem {
    Loopback,
    Unspecified,
    Multicast,
    Broadcast,
    Ours,
    /// Inside the cluster network: the tunnel would route into itself.
    InsideNetwork,
}

/// Why a VTEP MAC cannot be a peer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacProblem {
    Zero,
    Multicast,
    Ours,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// Our own lease: not a peer.
    Own,
    BadKey,
    /// The key's address is not its subnet's network address.
    Misaligned(String),
    OutsideNetwork(Ipv4Net),
    WrongLength(Ipv4Net),
    OverlapsOwn(Ipv4Net),
    TooLarge(usize),
    NotAnObject,
    BadValue(String),
    WrongBackend(String),
    ForeignVni(u32),
    BadPublicIp(Ipv4Addr, IpProblem),
    BadMac([u8; 6], MacProblem),
    /// A valid lease that loses to an older one.
    Conflict {
        winner: String,
        clash: Clash,
    },
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use SkipReason as R;
        match self {
            R::Own => write!(f, "own lease"),
            R::BadKey => write!(f, "key does not name a subnet"),
            R::Misaligned(s) => write!(f, "key {s} is not a subnet's network address"),
            R::OutsideNetwork(s) => write!(f, "subnet {s} is outside the network"),
            R::WrongLength(s) => write!(f, "subnet {s} is not of the network's SubnetLen"),
            R::OverlapsOwn(s) => write!(f, "subnet {s} overlaps this node's own subnet"),
            R::TooLarge(n) => write!(
                f,
                "value of {n} bytes is over the {MAX_VALUE} a lease may have"
            ),
            R::NotAnObject => write!(f, "value is not a JSON object"),
            R::BadValue(why) => write!(f, "malformed lease: {why}"),
            R::WrongBackend(t) => write!(f, "backend type {t:?} is not vxlan"),
            R::ForeignVni(v) => write!(f, "lease is for VNI {v}, not ours"),
            R::BadPublicIp(ip, p) => write!(f, "PublicIP {ip} is {p}"),
            R::BadMac(mac, p) => write!(f, "VtepMAC {} is {p}", format_mac(mac)),
            R::Conflict { winner, clash } => {
                write!(f, "has {clash} as {winner}, which is older and wins")
            }
        }
    }
}

impl fmt::Display for IpProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpProblem::Loopback => "a loopback address",
            IpProblem::Unspecified => "unspecified",
            IpProblem::Multicast => "a multicast address",
            IpProblem::Broadcast => "the broadcast address",
            IpProblem::Ours => "this node's own",
            IpProblem::InsideNetwork => "inside the cluster network",
        })
    }
}

impl fmt::Display for MacProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MacProblem::Zero => "all zero",
            MacProblem::Multicast => "a multicast address",
            MacProblem::Ours => "this node's own",
        })
    }
}

/// A change of verdict, to be logged once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// The lease is not used (newly, or for another reason than before).
    Skipped { key: String, reason: SkipReason },
    /// A lease that was skipped is a peer now.
    Used { key: String },
}

/// What [`PeerSet::settle`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settled {
    /// The peers differ from the previous settle's.
    pub changed: bool,
    pub notes: Vec<Note>,
}

/// A valid lease, before conflicts are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Candidate {
    peer: Peer,
    create_revision: i64,
}

#[derive(Debug, Clone)]
pub struct PeerSet {
    rules: Rules,
    /// Every lease by key: a candidate, or why it is not one.
    leases: BTreeMap<String, Result<Candidate, SkipReason>>,
    /// The verdicts of the last settle (skipped leases only, not our own).
    reported: BTreeMap<String, SkipReason>,
    /// The winners of the last settle, by subnet.
    peers: Vec<Peer>,
}

impl PeerSet {
    pub fn new(rules: Rules) -> Self {
        PeerSet {
            rules,
            leases: BTreeMap::new(),
            reported: BTreeMap::new(),
            peers: Vec::new(),
        }
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// New rules (our lease moved) take effect with the next [`Self::reset`]:
    /// leases are judged when they arrive, and their values are not kept.
    pub fn set_rules(&mut self, rules: Rules) {
        self.rules = rules;
    }

    /// Judges one lease as it is now; the peers change at the next settle.
    pub fn put(&mut self, key: &str, value: &[u8], create_revision: i64) {
        let verdict = judge(&self.rules, key, value).map(|peer| Candidate {
            peer,
            create_revision,
        });
        self.leases.insert(key.to_owned(), verdict);
    }

    pub fn delete(&mut self, key: &str) {
        self.leases.remove(key);
    }

    /// Replaces every lease with a snapshot.
    pub fn reset(&mut self, records: &[Record]) {
        self.leases.clear();
        for r in records {
            self.put(&r.key, &r.value, r.create_revision);
        }
    }

    /// Resolves conflicts and reports what changed since the last settle.
    pub fn settle(&mut self) -> Settled {
        let (peers, losers) = self.resolve();
        let mut verdicts: BTreeMap<String, SkipReason> = (self.leases.iter())
            .filter_map(|(k, v)| Some((k.clone(), v.as_ref().err()?.clone())))
            .filter(|(_, why)| *why != SkipReason::Own)
            .collect();
        verdicts.extend(losers);
        let notes = self.changes(&verdicts);
        self.reported = verdicts;
        let changed = peers != self.peers;
        self.peers = peers;
        Settled { changed, notes }
    }

    /// The winners, by subnet, and each loser with its winner: older
    /// leases first, each taking its subnet, VTEP MAC and gateway.
    fn resolve(&self) -> (Vec<Peer>, Vec<(String, SkipReason)>) {
        let mut order: Vec<(&String, &Candidate)> = (self.leases.iter())
            .filter_map(|(k, v)| Some((k, v.as_ref().ok()?)))
            .collect();
        order.sort_by_key(|(k, c)| (c.create_revision, *k));
        let mut taken: HashMap<(Clash, u64), &String> = HashMap::new();
        let (mut peers, mut losers) = (Vec::new(), Vec::new());
        for (key, c) in order {
            let claims = claims(&c.peer);
            match claims
                .iter()
                .find_map(|cl| taken.get(cl).map(|w| (cl.0, *w)))
            {
                Some((clash, winner)) => {
                    let winner = winner.clone();
                    losers.push((key.clone(), SkipReason::Conflict { winner, clash }));
                }
                None => {
                    for cl in claims {
                        taken.insert(cl, key);
                    }
                    peers.push(c.peer);
                }
            }
        }
        peers.sort();
        (peers, losers)
    }

    fn changes(&self, verdicts: &BTreeMap<String, SkipReason>) -> Vec<Note> {
        let mut notes: Vec<Note> = (verdicts.iter())
            .filter(|(k, why)| self.reported.get(*k) != Some(*why))
            .map(|(k, why)| Note::Skipped {
                key: k.clone(),
                reason: why.clone(),
            })
            .collect();
        // Deleted leases are forgotten silently.
        notes.extend(
            (self.reported.keys())
                .filter(|k| !verdicts.contains_key(*k) && self.leases.contains_key(*k))
                .map(|k| Note::Used { key: k.clone() }),
        );
        notes
    }

    /// The peers of the last settle, by subnet.
    pub fn peers(&self) -> Vec<Peer> {
        self.peers.clone()
    }

    /// The leases skipped at the last settle, by key, with why.
    pub fn skipped(&self) -> impl Iterator<Item = (&str, &SkipReason)> {
        self.reported.iter().map(|(k, why)| (k.as_str(), why))
    }

    pub fn skipped_count(&self) -> usize {
        self.reported.len()
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

/// What a peer holds exclusively: its subnet, VTEP MAC and gateway.
fn claims(p: &Peer) -> [(Clash, u64); 3] {
    let mac = p
        .vtep_mac
        .iter()
        .fold(0u64, |acc, b| acc << 8 | u64::from(*b));
    let subnet = u64::from(u32::from(p.subnet.network())) << 8 | u64::from(p.subnet.prefix_len());
    [
        (Clash::Subnet, subnet),
        (Clash::VtepMac, mac),
        (Clash::Gateway, u64::from(u32::from(p.subnet.network()))),
    ]
}

/// The peer a lease describes, or why it cannot be one.
pub fn judge(rules: &Rules, key: &str, value: &[u8]) -> Result<Peer, SkipReason> {
    if rules.own.as_ref().is_some_and(|o| o.key == key) {
        return Err(SkipReason::Own);
    }
    let subnet = judge_key(rules, key)?;
    let (public_ip, vtep_mac) = judge_value(rules, value)?;
    Ok(Peer {
        subnet,
        public_ip,
        vtep_mac,
    })
}

/// The subnet a key names, if it fits the network and misses ours.
fn judge_key(rules: &Rules, key: &str) -> Result<Ipv4Net, SkipReason> {
    let last = key.rsplit('/').next().unwrap_or_default();
    // flannel's dual-stack form `10.244.3.0-24&fc00::-64`: the IPv4 part.
    let v4 = last.split('&').next().unwrap_or_default();
    let (ip, len) = v4.split_once('-').ok_or(SkipReason::BadKey)?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| SkipReason::BadKey)?;
    let len: u8 = len.parse().map_err(|_| SkipReason::BadKey)?;
    let subnet = Ipv4Net::new(ip, len).map_err(|_| SkipReason::BadKey)?;
    if subnet.network() != ip {
        return Err(SkipReason::Misaligned(v4.to_owned()));
    }
    if !rules.network.contains(&subnet) {
        return Err(SkipReason::OutsideNetwork(subnet));
    }
    if len != rules.subnet_len {
        return Err(SkipReason::WrongLength(subnet));
    }
    let own = rules.own.as_ref().map(|o| o.subnet);
    if own.is_some_and(|o| o.contains(&subnet) || subnet.contains(&o)) {
        return Err(SkipReason::OverlapsOwn(subnet));
    }
    Ok(subnet)
}

/// The PublicIP and VTEP MAC of a vxlan lease value for our VNI.
fn judge_value(rules: &Rules, value: &[u8]) -> Result<(Ipv4Addr, [u8; 6]), SkipReason> {
    if value.len() > MAX_VALUE {
        return Err(SkipReason::TooLarge(value.len()));
    }
    let json: serde_json::Value =
        serde_json::from_slice(value).map_err(|e| SkipReason::BadValue(e.to_string()))?;
    if !json.is_object() {
        return Err(SkipReason::NotAnObject);
    }
    let attrs: LeaseAttrs =
        serde_json::from_value(json).map_err(|e| SkipReason::BadValue(e.to_string()))?;
    if attrs.backend_type != "vxlan" {
        return Err(SkipReason::WrongBackend(attrs.backend_type));
    }
    let data = attrs.vxlan_data().map_err(SkipReason::BadValue)?;
    if data.vni != rules.vni {
        return Err(SkipReason::ForeignVni(data.vni));
    }
    if let Some(p) = ip_problem(rules, attrs.public_ip) {
        return Err(SkipReason::BadPublicIp(attrs.public_ip, p));
    }
    let own_mac = rules.own.as_ref().map(|o| &o.vtep_mac);
    if let Some(p) = mac_problem(&data.vtep_mac, own_mac) {
        return Err(SkipReason::BadMac(data.vtep_mac, p));
    }
    Ok((attrs.public_ip, data.vtep_mac))
}

fn ip_problem(rules: &Rules, ip: Ipv4Addr) -> Option<IpProblem> {
    let own = rules.own.as_ref().map(|o| o.public_ip);
    Some(match ip {
        _ if ip.is_loopback() => IpProblem::Loopback,
        _ if ip.is_unspecified() => IpProblem::Unspecified,
        _ if ip.is_multicast() => IpProblem::Multicast,
        _ if ip.is_broadcast() => IpProblem::Broadcast,
        _ if Some(ip) == own => IpProblem::Ours,
        _ if rules.network.contains(&ip) => IpProblem::InsideNetwork,
        _ => return None,
    })
}

/// Why `mac` cannot be a VXLAN device's address (`own`: ours, which no
/// peer may have), if it cannot; also checks the MAC our own device takes
/// from a lease.
pub fn mac_problem(mac: &[u8; 6], own: Option<&[u8; 6]>) -> Option<MacProblem> {
    Some(match mac {
        [0, 0, 0, 0, 0, 0] => MacProblem::Zero,
        _ if mac[0] & 1 == 1 => MacProblem::Multicast,
        _ if Some(mac) == own => MacProblem::Ours,
        _ => return None,
    })
}

#[cfg(test)]
#[path = "peers_tests.rs"]
mod tests;
