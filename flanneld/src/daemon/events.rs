//! The loop's reactions: watch responses, compaction, a lost lease,
//! renewal, leaving.

use tokio::time::{sleep_until, Instant};

use super::event_loop::{Daemon, Repair, RENEW_RETRY};
use crate::backend::Update;
use crate::lease::{
    acquire, renew, subnets_prefix, Clock, Event, EventKind, LeaseError, LeaseRequest, LeaseStore,
    Listing, Renewal, StoreError, WatchItem,
};
use crate::masq::FirewallUpdate;
use crate::metrics::Metrics;
use crate::{debug, error, info, warn};

impl<S: LeaseStore, C: Clock> Daemon<S, C> {
    pub(super) fn on_watch(&mut self, item: Result<WatchItem, StoreError>) {
        match item {
            Ok(WatchItem::Events { revision, events }) => {
                self.watch_backoff.reset();
                self.watch_retry = None;
                let changed = self.apply_events(&events);
                self.revision = self.revision.max(revision);
                if changed {
                    self.push_target();
                }
            }
            Ok(WatchItem::Compacted { revision }) => {
                warn!("watch fell behind etcd compaction (revision {revision}): re-listing leases");
                self.watch = None;
                self.repair = Some(Repair::Relist);
            }
            Err(e) => {
                let delay = self.watch_backoff.next_delay();
                warn!(
                    "lease watch broken ({e}); resuming from revision {} in {delay:?}",
                    self.revision + 1,
                );
                Metrics::add(&self.shared.metrics.watch_restarts, 1);
                self.watch = None;
                self.watch_retry = Some(Instant::now() + delay);
            }
        }
    }

    /// Applies every event of one response. Returns whether peers changed.
    fn apply_events(&mut self, events: &[Event]) -> bool {
        let mut changed = false;
        let mut lost = false;
        for ev in events {
            if ev.key == self.boot.own.key {
                lost |= ev.kind == EventKind::Delete || !self.is_ours(&ev.value);
                continue;
            }
            changed |= match ev.kind {
                EventKind::Put => self.upsert(&ev.key, &ev.value),
                EventKind::Delete => self.peers.remove(&ev.key),
            };
        }
        if lost {
            warn!("lease {} was deleted or overwritten", self.boot.own.subnet);
            self.watch = None;
            self.repair = Some(Repair::Reacquire);
            return false;
        }
        changed
    }

    /// Whether `value` is what our lease publishes.
    fn is_ours(&self, value: &[u8]) -> bool {
        value == self.boot.own.attrs.to_json().as_bytes()
    }

    fn upsert(&mut self, key: &str, value: &[u8]) -> bool {
        match self.peers.upsert(key, value) {
            Ok(changed) => {
                if changed {
                    debug!("peer lease {key} updated");
                }
                changed
            }
            Err((why, dropped)) => {
                warn!("skipping lease {key}: {why}");
                Metrics::add(&self.shared.metrics.leases_skipped, 1);
                dropped
            }
        }
    }

    /// One attempt at a pending repair, after its backoff delay. Each
    /// attempt is a few bounded store calls, and the caller drops it when
    /// asked to stop.
    pub(super) async fn repair_step(&mut self, repair: Repair) {
        if let Some(t) = self.repair_at {
            sleep_until(t).await;
        }
        let result = match repair {
            Repair::Relist => self.relist().await,
            Repair::Reacquire => self.reacquire().await,
        };
        match result {
            Ok(next) => {
                self.repair = next;
                self.repair_at = None;
                self.repair_backoff.reset();
            }
            Err(e) => {
                let delay = self.repair_backoff.next_delay();
                warn!("{e}; retrying in {delay:?}");
                self.repair_at = Some(Instant::now() + delay);
            }
        }
    }

    /// Replaces the peer set with a fresh listing; the watch restarts after
    /// it. Asks for a re-acquisition when our own lease is missing or no
    /// longer ours: the watch resumes after the listing, so it would never
    /// show the change.
    async fn relist(&mut self) -> Result<Option<Repair>, String> {
        let prefix = subnets_prefix(&self.settings.prefix);
        let listing =
            (self.store.list(&prefix).await).map_err(|e| format!("cannot list leases: {e}"))?;
        if !self.holds_own(&listing) {
            warn!(
                "lease {} is missing or overwritten in the listing",
                self.boot.own.subnet
            );
            return Ok(Some(Repair::Reacquire));
        }
        for (key, why) in self.peers.reset(&listing.records) {
            warn!("skipping lease {key}: {why}");
            Metrics::add(&self.shared.metrics.leases_skipped, 1);
        }
        self.revision = listing.revision;
        self.watch = None;
        info!(
            "{} peers in etcd (revision {})",
            self.peers.len(),
            listing.revision
        );
        self.push_target();
        self.publish_expiry();
        crate::util::trim_heap();
        Ok(None)
    }

    fn holds_own(&self, listing: &Listing) -> bool {
        let own = &self.boot.own.key;
        (listing.records.iter()).any(|r| &r.key == own && self.is_ours(&r.value))
    }

    /// Our lease was deleted, overwritten or expired: take one again
    /// (preferably the same subnet) and carry on, where flannel would exit.
    async fn reacquire(&mut self) -> Result<Option<Repair>, String> {
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
        self.peers.set_own(self.boot.own.subnet);
        self.renew_retry = None;
        self.push_firewall();
        // Another node may hold our old subnet now: rebuild from a listing.
        Ok(Some(Repair::Relist))
    }

    pub(super) async fn on_renew(&mut self) {
        self.renew_retry = None;
        match renew(&self.store, &self.clock, &self.boot.own).await {
            Ok(Renewal::Renewed(exp)) => {
                self.boot.own.expires = Some(exp);
                Metrics::add(&self.shared.metrics.lease_renewals, 1);
                info!(
                    "lease {} renewed until {}",
                    self.boot.own.subnet,
                    crate::log::timestamp(exp)
                );
                self.publish_expiry();
            }
            Ok(Renewal::Permanent) => {}
            Ok(Renewal::Lost) => {
                warn!(
                    "lease {} expired before it could be renewed",
                    self.boot.own.subnet
                );
                self.watch = None;
                self.repair = Some(Repair::Reacquire);
            }
            Err(e) => {
                error!(
                    "cannot renew lease {} ({e}); retrying in {RENEW_RETRY:?}",
                    self.boot.own.subnet
                );
                self.renew_retry = Some(Instant::now() + RENEW_RETRY);
            }
        }
    }

    fn publish_expiry(&self) {
        let secs = (self.boot.own.expires)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs() as i64);
        Metrics::set(&self.shared.metrics.lease_expiry_unix, secs);
    }

    /// Tells the reconciler and firewall threads to stop (the datapath
    /// stays as it is).
    pub fn stop_threads(&self) {
        let _ = self.channels.reconciler.send(Update::Stop);
        let _ = self.channels.firewall.send(FirewallUpdate::Stop);
    }

    /// With `--graceful-leave`, gives the lease back so peers drop us at
    /// once.
    pub async fn leave(&self) {
        if !self.settings.graceful_leave {
            return;
        }
        let own = &self.boot.own;
        let result = match own.lease_id {
            0 => self.store.delete(&own.key).await,
            id => self.store.revoke(id).await,
        };
        match result {
            Ok(()) => info!("lease {} released", own.subnet),
            Err(e) => error!("cannot release lease {}: {e}", own.subnet),
        }
    }
}
