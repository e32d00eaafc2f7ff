//! Acquiring and renewing this node's lease (flannel's `LocalManager`).
//!
//! Order of preference, as in flannel: the lease that already carries our
//! PublicIP; else the subnet of the previous subnet.env if nobody holds it;
//! else a random free subnet. New leases are created with a
//! compare-and-create transaction; a lost race is retried.
//!
//! Anyone who can write under the prefix can plant a lease carrying our
//! PublicIP. Of several, ours is the one at the subnet this node had
//! (subnet.env and the local pods say so), else the oldest; the others are
//! not ours to reuse or delete: they are logged and left alone (as peers
//! they are skipped, their PublicIP being ours).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

use ipnet::Ipv4Net;

use super::{
    subnet_from_key, subnet_key, subnets_prefix, Clock, LeaseAttrs, LeaseStore, Record, StoreError,
};
use crate::config::NetworkConfig;

/// flannel's lease lifetime.
pub const LEASE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Attempts before giving up on repeated lost races.
const RACE_RETRIES: usize = 10;
/// flannel picks randomly among the first this many free subnets.
const PICK_AMONG: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no free subnet left in {min} ... {max} (every /{len} is leased)")]
    Exhausted {
        min: Ipv4Addr,
        max: Ipv4Addr,
        len: u8,
    },
    #[error("lost the race for a subnet {0} times in a row")]
    Races(usize),
}

pub struct LeaseRequest<'a> {
    pub prefix: &'a str,
    pub config: &'a NetworkConfig,
    pub attrs: LeaseAttrs,
    /// The subnet of the previous subnet.env, if any.
    pub previous: Option<Ipv4Net>,
}

/// How the lease was obtained (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The existing lease carrying our PublicIP.
    Reused,
    /// The subnet of the previous subnet.env.
    Previous,
    New,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnLease {
    pub subnet: Ipv4Net,
    pub key: String,
    pub attrs: LeaseAttrs,
    /// The etcd lease id; 0 for a permanent reservation.
    pub lease_id: i64,
    /// `None` for a permanent reservation.
    pub expires: Option<SystemTime>,
    pub origin: Origin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// A reservation: nothing to renew.
    Permanent,
    Renewed(SystemTime),
    /// The etcd lease is gone (expired or revoked): acquire again.
    Lost,
}

pub async fn acquire<S: LeaseStore, C: Clock>(
    store: &S,
    clock: &C,
    req: &LeaseRequest<'_>,
) -> Result<OwnLease, LeaseError> {
    for _ in 0..RACE_RETRIES {
        match try_acquire(store, clock, req).await {
            Err(LeaseError::Store(StoreError::Exists)) => continue,
            other => return other,
        }
    }
    Err(LeaseError::Races(RACE_RETRIES))
}

async fn try_acquire<S: LeaseStore, C: Clock>(
    store: &S,
    clock: &C,
    req: &LeaseRequest<'_>,
) -> Result<OwnLease, LeaseError> {
    let listing = store.list(&subnets_prefix(req.prefix)).await?;
    let mut leased: BTreeSet<Ipv4Net> = listing
        .records
        .iter()
        .filter_map(|r| subnet_from_key(&r.key))
        .collect();
    if let Some((record, subnet)) = usable_own(store, req, &listing.records, &mut leased).await? {
        return reuse(store, clock, req, record, subnet).await;
    }
    let previous = req
        .previous
        .filter(|p| req.config.accepts(*p) && !overlaps(&leased, *p));
    let (subnet, origin) = match previous {
        Some(p) => (p, Origin::Previous),
        None => (pick_free(req.config, &leased)?, Origin::New),
    };
    let key = format!("{}{}", subnets_prefix(req.prefix), subnet_key(subnet));
    let lease_id = store
        .create(&key, &req.attrs.to_json(), Some(LEASE_TTL))
        .await?;
    Ok(OwnLease {
        subnet,
        key,
        attrs: req.attrs.clone(),
        lease_id,
        expires: Some(clock.now() + LEASE_TTL),
        origin,
    })
}

/// Our lease in `records`, if it fits the config. One that does not is
/// deleted, as flannel does, and its subnet is free again in `leased`;
/// other leases carrying our PublicIP are logged and left alone.
async fn usable_own<'r, S: LeaseStore>(
    store: &S,
    req: &LeaseRequest<'_>,
    records: &'r [Record],
    leased: &mut BTreeSet<Ipv4Net>,
) -> Result<Option<(&'r Record, Ipv4Net)>, LeaseError> {
    let ip = req.attrs.public_ip;
    let (mine, others) = find_own(records, ip, req.previous);
    for r in others {
        crate::warn!(
            "lease {} also carries our PublicIP {ip}: not ours, leaving it alone",
            r.key
        );
    }
    let Some((record, subnet)) = mine else {
        return Ok(None);
    };
    if req.config.accepts(subnet) {
        return Ok(Some((record, subnet)));
    }
    crate::warn!("lease {subnet} for {ip} does not fit the network config, deleting it");
    store.delete(&record.key).await?;
    leased.remove(&subnet);
    Ok(None)
}

/// Our lease among the records carrying PublicIP `ip`: the one at
/// `previous` (the subnet this node had), else the oldest (then by key);
/// and the others carrying `ip`.
pub fn find_own(
    records: &[Record],
    ip: Ipv4Addr,
    previous: Option<Ipv4Net>,
) -> (Option<(&Record, Ipv4Net)>, Vec<&Record>) {
    let mut carrying: Vec<(&Record, Ipv4Net)> = records
        .iter()
        .filter_map(|r| {
            let attrs: LeaseAttrs = serde_json::from_slice(&r.value).ok()?;
            Some((r, subnet_from_key(&r.key)?)).filter(|_| attrs.public_ip == ip)
        })
        .collect();
    carrying.sort_by_key(|(r, s)| (Some(*s) != previous, r.create_revision, r.key.clone()));
    let mut rest = carrying.into_iter();
    let own = rest.next();
    (own, rest.map(|(r, _)| r).collect())
}

/// Takes over the lease carrying our PublicIP. An unchanged lease keeps its
/// etcd lease (refreshed), so a restart causes no event at the peers.
async fn reuse<S: LeaseStore, C: Clock>(
    store: &S,
    clock: &C,
    req: &LeaseRequest<'_>,
    record: &Record,
    subnet: Ipv4Net,
) -> Result<OwnLease, LeaseError> {
    let json = req.attrs.to_json();
    let unchanged = record.value == json.as_bytes();
    let (lease_id, expires) = if record.lease == 0 {
        if !unchanged {
            store.put(&record.key, &json, None).await?;
        }
        (0, None)
    } else {
        let kept = match unchanged {
            true => store.keep_alive(record.lease).await?,
            false => None,
        };
        match kept {
            Some(ttl) => (record.lease, Some(clock.now() + ttl)),
            None => {
                let id = store.put(&record.key, &json, Some(LEASE_TTL)).await?;
                (id, Some(clock.now() + LEASE_TTL))
            }
        }
    };
    Ok(OwnLease {
        subnet,
        key: record.key.clone(),
        attrs: req.attrs.clone(),
        lease_id,
        expires,
        origin: Origin::Reused,
    })
}

fn overlaps(leased: &BTreeSet<Ipv4Net>, s: Ipv4Net) -> bool {
    leased
        .iter()
        .any(|l| l.contains(&s.network()) || s.contains(&l.network()))
}

fn pick_free(config: &NetworkConfig, leased: &BTreeSet<Ipv4Net>) -> Result<Ipv4Net, LeaseError> {
    let free: Vec<Ipv4Net> = config
        .subnets()
        .filter(|s| !overlaps(leased, *s))
        .take(PICK_AMONG)
        .collect();
    if free.is_empty() {
        return Err(LeaseError::Exhausted {
            min: config.subnet_min,
            max: config.subnet_max,
            len: config.subnet_len,
        });
    }
    Ok(free[crate::util::random_u64() as usize % free.len()])
}

/// Refreshes our etcd lease once.
pub async fn renew<S: LeaseStore, C: Clock>(
    store: &S,
    clock: &C,
    own: &OwnLease,
) -> Result<Renewal, LeaseError> {
    if own.lease_id == 0 {
        return Ok(Renewal::Permanent);
    }
    Ok(match store.keep_alive(own.lease_id).await? {
        Some(ttl) => Renewal::Renewed(clock.now() + ttl),
        None => Renewal::Lost,
    })
}

#[cfg(test)]
#[path = "manager_tests.rs"]
mod tests;
