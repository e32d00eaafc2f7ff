//! Keeping our own lease against whatever is written to etcd.
//!
//! Our key is ours while our etcd lease lives: anyone who overwrites it
//! (another node's value, our value detached from our etcd lease) or
//! deletes it gets our value written back, attached to our etcd lease, and
//! the subnet never changes under the local pods. Only when the etcd lease
//! itself is gone (expired, revoked, or the store was wiped) is a lease
//! acquired again, the previous subnet first. Someone who keeps rewriting
//! our key is answered more and more slowly, so two writers cannot spin.
//!
//! A permanent reservation (a key without an etcd lease) is an
//! administrator's: a change of it is theirs to make, and a lease is taken
//! again (the reservation itself if it still carries our PublicIP).

use tokio::time::Instant;

use super::event_loop::{Daemon, Repair, FIGHT_WINDOW};
use crate::lease::{
    acquire, Clock, Header, LeaseAttrs, LeaseError, LeaseRequest, LeaseStore, Record, StoreError,
};
use crate::metrics::Metrics;
use crate::{error, warn};

impl<S: LeaseStore, C: Clock> Daemon<S, C> {
    /// Asks for our key to be checked and written back. Right away the
    /// first time; if someone rewrites it again within [`FIGHT_WINDOW`],
    /// after a delay that doubles each time.
    pub(super) fn schedule_reassert(&mut self) {
        // A pending repair ends with our key checked anyway.
        if self.repair.is_some() {
            return;
        }
        let now = Instant::now();
        let fighting = self.last_reassert.is_some_and(|t| now - t < FIGHT_WINDOW);
        if !fighting {
            self.reassert_backoff.reset();
        }
        self.repair_at = fighting.then(|| now + self.reassert_backoff.next_delay());
        self.last_reassert = Some(now);
        self.repair = Some(Repair::Reassert);
    }

    /// Writes our value back to our key, attached to our etcd lease, unless
    /// it already is; re-acquires when that etcd lease is gone.
    pub(super) async fn reassert(&mut self) -> Result<Option<Repair>, String> {
        let own = &self.boot.own;
        if own.lease_id != 0 && self.lease_gone().await? {
            return Ok(Some(Repair::Reacquire));
        }
        let current = (self.store.get(&own.key).await)
            .map_err(|e| format!("cannot read lease {}: {e}", own.subnet))?;
        if current
            .as_ref()
            .is_some_and(|r| self.is_ours(&r.value, r.lease))
        {
            return Ok(None);
        }
        if own.lease_id == 0 {
            warn!(
                "reservation {} was changed: taking a lease again",
                own.subnet
            );
            return Ok(Some(Repair::Reacquire));
        }
        self.report_overwrite(current.as_ref());
        let json = own.attrs.to_json();
        match self
            .store
            .put_with_lease(&own.key, &json, own.lease_id)
            .await
        {
            Ok(()) => Ok(None),
            Err(StoreError::NoLease) => Ok(Some(Repair::Reacquire)),
            Err(e) => Err(format!("cannot write lease {} back: {e}", own.subnet)),
        }
    }

    /// Whether our etcd lease has expired or was revoked.
    async fn lease_gone(&self) -> Result<bool, String> {
        let own = &self.boot.own;
        let ttl = (self.store.time_to_live(own.lease_id).await)
            .map_err(|e| format!("cannot check etcd lease {:x}: {e}", own.lease_id))?;
        if ttl.is_none() {
            warn!(
                "etcd lease {:x} of {} is gone (expired or revoked)",
                own.lease_id, own.subnet
            );
        }
        Ok(ttl.is_none())
    }

    /// Logs (once per overwrite: the write-back that follows makes the key
    /// ours again) and counts what someone did to our key.
    fn report_overwrite(&self, current: Option<&Record>) {
        let (subnet, ours) = (self.boot.own.subnet, self.boot.own.lease_id);
        match current {
            None => warn!("lease {subnet} was deleted while our etcd lease lives: writing it back"),
            Some(r) if r.value == self.boot.own.attrs.to_json().as_bytes() => warn!(
                "lease {subnet} was moved from our etcd lease {ours:x} to {:x}: writing it back",
                r.lease
            ),
            Some(r) => {
                let ip = serde_json::from_slice::<LeaseAttrs>(&r.value)
                    .map_or("none (not a lease)".to_owned(), |a| a.public_ip.to_string());
                warn!(
                    "lease {subnet} was overwritten (PublicIP {ip}, etcd lease {:x}): \
                     writing ours back",
                    r.lease
                );
            }
        }
        Metrics::add(&self.shared.metrics.lease_overwrites, 1);
    }

    /// Our etcd lease is gone: take a lease again (preferably the same
    /// subnet) and carry on, where flannel would exit.
    pub(super) async fn reacquire(&mut self) -> Result<Option<Repair>, String> {
        let old = self.boot.own.subnet;
        let req = LeaseRequest {
            prefix: &self.settings.prefix,
            config: &self.boot.config,
            attrs: self.boot.attrs.clone(),
            previous: Some(old),
        };
        let own = match acquire(&self.store, &self.clock, &req).await {
            Ok(own) => own,
            Err(e @ LeaseError::Store(_)) => {
                return Err(format!("cannot re-acquire a lease yet: {e}"))
            }
            Err(e) => {
                error!("cannot re-acquire a lease: {e}");
                return Err(e.to_string());
            }
        };
        warn!("lease {old} was lost; acquired {} again", own.subnet);
        Metrics::add(&self.shared.metrics.lease_acquisitions, 1);
        self.boot.own = own;
        self.peers.set_rules(self.boot.rules());
        self.renew_retry = None;
        self.push_firewall();
        // Another node may hold our old subnet now: rebuild from a listing,
        // which also tells where the store is (it may have been wiped).
        (self.revision, self.cluster_id) = (0, None);
        Ok(Some(Repair::Relist))
    }

    /// Checks where a reopened watch found the store. After a break, our
    /// lease is checked too: a store wiped while we were away may answer
    /// from a revision past ours and with the same cluster id (a fresh
    /// etcd with the same name and peer URLs has it), but it does not have
    /// our etcd lease.
    pub(super) fn on_opened(&mut self, header: Header) {
        if let Some(why) = self.reset_by(header) {
            self.repair = Some(self.start_over(&why));
        } else if std::mem::take(&mut self.watch_broke) && self.repair.is_none() {
            self.repair = Some(Repair::Reassert);
        }
    }

    /// Why `header` says the store is not the one we listed (wiped and
    /// started afresh, restored from a backup), if it does.
    pub(super) fn reset_by(&self, header: Header) -> Option<String> {
        let known = self.cluster_id.filter(|_| header.cluster_id != 0);
        if let Some(id) = known.filter(|id| *id != header.cluster_id) {
            return Some(format!(
                "etcd cluster ID changed from {id:x} to {:x}",
                header.cluster_id
            ));
        }
        (header.revision < self.revision).then(|| {
            format!(
                "etcd revision went back from {} to {}",
                self.revision, header.revision
            )
        })
    }

    /// Forgets what the old store said; our lease is taken again (the
    /// same subnet if free) and the peers are listed afresh.
    pub(super) fn start_over(&mut self, why: &str) -> Repair {
        warn!("{why}: etcd was wiped or restored; acquiring our lease again and re-listing");
        Metrics::add(&self.shared.metrics.store_resets, 1);
        self.watch = None;
        self.watch_broke = false;
        self.revision = 0;
        self.cluster_id = None;
        self.repair_at = None;
        Repair::Reacquire
    }
}
