//! The loop's reactions: watch responses, compaction, repairs, renewal,
//! leaving. Our own lease's repairs are in `own_lease`, the network
//! config's changes in `config_watch`.

use tokio::time::{sleep_until, Instant};

use super::event_loop::{Daemon, Next, Repair, RENEW_RETRY};
use crate::backend::Update;
use crate::lease::{
    renew, Clock, Event, EventKind, LeaseStore, Listing, Note, Renewal, SkipReason, StoreError,
    WatchItem,
};
use crate::masq::FirewallUpdate;
use crate::metrics::Metrics;
use crate::{error, info, warn};

impl<S: LeaseStore, C: Clock> Daemon<S, C> {
    pub(super) fn on_watch(&mut self, next: Result<Next, StoreError>) {
        match next {
            Ok(Next::Opened(header)) => self.on_opened(header),
            Ok(Next::Item(WatchItem::Events { revision, events })) => {
                self.watch_backoff.reset();
                self.watch_retry = None;
                self.apply_events(&events);
                self.revision = self.revision.max(revision);
            }
            Ok(Next::Item(WatchItem::Compacted { revision })) => {
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
                self.watch_broke = true;
                self.watch_retry = Some(Instant::now() + delay);
            }
        }
    }

    /// Applies every event of one response, then sends the peers once if
    /// they changed.
    fn apply_events(&mut self, events: &[Event]) {
        let mut own_changed = false;
        for ev in events {
            let value = (ev.kind == EventKind::Put).then_some(&ev.value[..]);
            if ev.key == self.keys.config {
                self.on_config(value);
            } else if ev.key == self.boot.own.key {
                own_changed |= !value.is_some_and(|v| self.is_ours(v, ev.lease));
            } else if ev.key.starts_with(&self.keys.subnets) {
                match value {
                    Some(v) => self.peers.put(&ev.key, v, ev.create_revision),
                    None => self.peers.delete(&ev.key),
                }
            }
        }
        if self.settle_peers() {
            self.push_target();
        }
        if own_changed {
            self.schedule_reassert();
        }
    }

    /// Whether `value` attached to etcd lease `lease` is what our lease is.
    pub(super) fn is_ours(&self, value: &[u8], lease: i64) -> bool {
        lease == self.boot.own.lease_id && value == self.boot.own.attrs.to_json().as_bytes()
    }

    /// Resolves the peer set, logs and counts every changed verdict (once
    /// per change: a replayed event or a re-listing logs nothing new).
    /// Returns whether the peers changed.
    pub(super) fn settle_peers(&mut self) -> bool {
        let settled = self.peers.settle();
        let m = &self.shared.metrics;
        for note in &settled.notes {
            match note {
                Note::Skipped { key, reason } => {
                    warn!("skipping lease {key}: {reason}");
                    Metrics::add(&m.leases_skipped, 1);
                    if matches!(reason, SkipReason::Conflict { .. }) {
                        Metrics::add(&m.lease_conflicts, 1);
                    }
                }
                Note::Used { key } => info!("lease {key} is usable now: a peer"),
            }
        }
        Metrics::set(&m.skipped_leases, self.peers.skipped_count() as i64);
        settled.changed
    }

    /// One attempt at a pending repair, after its delay. Each attempt is a
    /// few bounded store calls, and the caller drops it when asked to stop.
    pub(super) async fn repair_step(&mut self, repair: Repair) {
        if let Some(t) = self.repair_at {
            sleep_until(t).await;
        }
        let result = match repair {
            Repair::Relist => self.relist().await,
            Repair::Reassert => self.reassert().await,
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

    /// Replaces the peer set with a fresh listing (and reads the network
    /// config again); the watch restarts after it. Asks for our key to be
    /// written back when it is missing or not ours: the watch resumes
    /// after the listing, so it would never show the change.
    async fn relist(&mut self) -> Result<Option<Repair>, String> {
        let listing = (self.store.list(&self.keys.subnets).await)
            .map_err(|e| format!("cannot list leases: {e}"))?;
        if let Some(why) = self.reset_by(listing.header()) {
            return Ok(Some(self.start_over(&why)));
        }
        self.cluster_id = Some(listing.cluster_id).filter(|id| *id != 0);
        self.read_config().await;
        self.peers.reset(&listing.records);
        self.settle_peers();
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
        Ok((!self.holds_own(&listing)).then_some(Repair::Reassert))
    }

    fn holds_own(&self, listing: &Listing) -> bool {
        let own = &self.boot.own.key;
        (listing.records.iter()).any(|r| &r.key == own && self.is_ours(&r.value, r.lease))
    }

    /// Reads the network config for a listing: a change in it may be
    /// behind a compaction. Not reading it is no reason to fail the
    /// listing; the next one or the watch will tell.
    async fn read_config(&mut self) {
        match self.store.get(&self.keys.config).await {
            Ok(record) => self.on_config(record.as_ref().map(|r| &r.value[..])),
            Err(e) => warn!("cannot read the network config {}: {e}", self.keys.config),
        }
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

    pub(super) fn publish_expiry(&self) {
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
