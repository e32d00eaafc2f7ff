//! The daemon's reactions to etcd: watch responses, compaction, a lost
//! lease, renewal, shutdown.

use tokio::time::{sleep_until, Instant};

use super::{Daemon, Repair, BACKOFF_MAX, BACKOFF_MIN, RENEW_RETRY};
use crate::backend::Update;
use crate::lease::{
    acquire, renew, subnets_prefix, Event, EventKind, LeaseError, LeaseRequest, LeaseStore,
    Renewal, StoreError, SystemClock, WatchItem,
};
use crate::masq::FirewallUpdate;
use crate::metrics::Metrics;
use crate::{debug, error, info, warn};

impl Daemon {
    pub(super) fn on_watch(&mut self, item: Result<WatchItem, StoreError>) {
        match item {
            Ok(WatchItem::Events { revision, events }) => {
                self.backoff = BACKOFF_MIN;
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
                warn!(
                    "lease watch broken ({e}); resuming from revision {} in {:?}",
                    self.revision + 1,
                    self.backoff
                );
                Metrics::add(&self.shared.metrics.watch_restarts, 1);
                self.watch = None;
                self.watch_retry = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
            }
        }
    }

    /// Applies every event of one response. Returns whether peers changed.
    fn apply_events(&mut self, events: &[Event]) -> bool {
        let mut changed = false;
        let mut lost = false;
        for ev in events {
            if ev.key == self.own.key {
                lost |=
                    ev.kind == EventKind::Delete || ev.value != self.own.attrs.to_json().as_bytes();
                continue;
            }
            changed |= match ev.kind {
                EventKind::Put => self.upsert(&ev.key, &ev.value),
                EventKind::Delete => self.peers.remove(&ev.key),
            };
        }
        if lost {
            warn!("lease {} was deleted or overwritten", self.own.subnet);
            self.watch = None;
            self.repair = Some(Repair::Reacquire);
            return false;
        }
        changed
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
    /// attempt is a few bounded etcd calls, and the caller drops it when a
    /// signal arrives.
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
                self.backoff = BACKOFF_MIN;
            }
            Err(e) => {
                warn!("{e}; retrying in {:?}", self.backoff);
                self.repair_at = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
            }
        }
    }

    /// Replaces the peer set with a fresh listing; the watch restarts after
    /// it. Asks for a re-acquisition when our own lease is missing.
    async fn relist(&mut self) -> Result<Option<Repair>, String> {
        let prefix = subnets_prefix(&self.opts.etcd_prefix);
        let listing =
            (self.store.list(&prefix).await).map_err(|e| format!("cannot list leases: {e}"))?;
        if !listing.records.iter().any(|r| r.key == self.own.key) {
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

    /// Our lease was deleted, overwritten or expired: take one again
    /// (preferably the same subnet) and carry on, where flannel would exit.
    async fn reacquire(&mut self) -> Result<Option<Repair>, String> {
        let old = self.own.subnet;
        let req = LeaseRequest {
            prefix: &self.opts.etcd_prefix,
            config: &self.config,
            attrs: self.attrs.clone(),
            previous: Some(old),
        };
        let own = match acquire(&self.store, &SystemClock, &req).await {
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
        self.own = own;
        self.peers.set_own(self.own.subnet);
        self.renew_retry = None;
        self.push_firewall();
        // Another node may hold our old subnet now: rebuild from a listing.
        Ok(Some(Repair::Relist))
    }

    pub(super) async fn on_renew(&mut self) {
        self.renew_retry = None;
        match renew(&self.store, &SystemClock, &self.own).await {
            Ok(Renewal::Renewed(exp)) => {
                self.own.expires = Some(exp);
                Metrics::add(&self.shared.metrics.lease_renewals, 1);
                info!(
                    "lease {} renewed until {}",
                    self.own.subnet,
                    crate::log::timestamp(exp)
                );
                self.publish_expiry();
            }
            Ok(Renewal::Permanent) => {}
            Ok(Renewal::Lost) => {
                warn!(
                    "lease {} expired before it could be renewed",
                    self.own.subnet
                );
                self.watch = None;
                self.repair = Some(Repair::Reacquire);
            }
            Err(e) => {
                error!(
                    "cannot renew lease {} ({e}); retrying in {RENEW_RETRY:?}",
                    self.own.subnet
                );
                self.renew_retry = Some(Instant::now() + RENEW_RETRY);
            }
        }
    }

    fn publish_expiry(&self) {
        let secs = self
            .own
            .expires
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs() as i64);
        Metrics::set(&self.shared.metrics.lease_expiry_unix, secs);
    }

    /// Stops the threads (leaving the datapath as it is) and, with
    /// `--graceful-leave`, gives the lease back so peers drop us at once.
    pub(super) async fn shutdown(&mut self) {
        info!("shutting down");
        let _ = self.reconciler.send(Update::Stop);
        let _ = self.firewall.send(FirewallUpdate::Stop);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if !self.opts.graceful_leave {
            return;
        }
        let result = match self.own.lease_id {
            0 => self.store.delete(&self.own.key).await,
            id => self.store.revoke(id).await,
        };
        match result {
            Ok(()) => info!("lease {} released", self.own.subnet),
            Err(e) => error!("cannot release lease {}: {e}", self.own.subnet),
        }
    }
}
