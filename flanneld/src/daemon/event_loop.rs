//! The loop that keeps our lease and the peer set: watch, renewal, and
//! the repairs (re-list, re-acquire) that must happen before the watch can
//! go on. It works on any [`LeaseStore`] and [`Clock`], and talks to the
//! reconciler and firewall threads only through their channels, so a test
//! drives it with the in-memory store and tokio's paused clock.

use std::future::Future;
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

use subnet_env::SubnetEnv;
use tokio::time::{sleep_until, Instant};

use super::backoff::Backoff;
use crate::backend::reconciler::Target;
use crate::backend::{DeviceSpec, Shared, Update};
use crate::cli::Options;
use crate::config::NetworkConfig;
use crate::iface::ExtIface;
use crate::lease::{
    subnets_prefix, Clock, LeaseAttrs, LeaseStore, OwnLease, PeerSet, StoreError, WatchItem,
    WatchStream,
};
use crate::masq::{FirewallUpdate, Rules};
use crate::metrics::Metrics;

/// Retry delays for the store (watch reconnects, repairs, acquisition).
pub(super) const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// flannel retries a failed renewal after a minute.
pub(super) const RENEW_RETRY: Duration = Duration::from_secs(60);

/// What the loop needs of the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the config and the leases live in the store (`--etcd-prefix`).
    pub prefix: String,
    /// Renew this long before the lease expires.
    pub renew_margin: Duration,
    pub ip_masq: bool,
    pub forward_rules: bool,
    pub subnet_file: PathBuf,
    pub graceful_leave: bool,
}

impl Settings {
    pub fn new(o: &Options) -> Self {
        Settings {
            prefix: o.etcd_prefix.clone(),
            renew_margin: o.renew_margin,
            ip_masq: o.ip_masq,
            forward_rules: o.iptables_forward_rules,
            subnet_file: o.subnet_file.clone(),
            graceful_leave: o.graceful_leave,
        }
    }
}

/// What the daemon knows once it holds a lease.
#[derive(Debug, Clone)]
pub struct Boot {
    pub config: NetworkConfig,
    /// The public interface (the tunnel's underlay).
    pub ext: ExtIface,
    /// What our lease publishes.
    pub attrs: LeaseAttrs,
    pub mtu: u32,
    pub own: OwnLease,
}

/// Where the loop sends its results.
#[derive(Debug, Clone)]
pub struct Channels {
    pub reconciler: Sender<Update>,
    pub firewall: Sender<FirewallUpdate>,
}

pub struct Daemon<S: LeaseStore, C: Clock> {
    pub(super) settings: Settings,
    pub(super) boot: Boot,
    pub(super) store: S,
    pub(super) clock: C,
    pub(super) shared: Arc<Shared>,
    pub(super) peers: PeerSet,
    /// Last store revision seen: the watch resumes after it.
    pub(super) revision: i64,
    pub(super) watch: Option<S::Watch>,
    pub(super) watch_retry: Option<Instant>,
    pub(super) watch_backoff: Backoff,
    pub(super) renew_retry: Option<Instant>,
    pub(super) channels: Channels,
    /// Work that needs the store before the watch can go on.
    pub(super) repair: Option<Repair>,
    pub(super) repair_at: Option<Instant>,
    pub(super) repair_backoff: Backoff,
}

/// What must happen before watching again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Repair {
    /// Rebuild the peer set from a full listing (start, compaction).
    Relist,
    /// Our lease is gone: take one again, then re-list.
    Reacquire,
}

impl<S: LeaseStore, C: Clock> Daemon<S, C> {
    pub fn new(
        settings: Settings,
        boot: Boot,
        store: S,
        clock: C,
        shared: Arc<Shared>,
        channels: Channels,
    ) -> Self {
        let mut peers = PeerSet::new(boot.config.backend.vni);
        peers.set_own(boot.own.subnet);
        Metrics::add(&shared.metrics.lease_acquisitions, 1);
        Daemon {
            settings,
            boot,
            store,
            clock,
            shared,
            peers,
            revision: 0,
            watch: None,
            watch_retry: None,
            watch_backoff: Backoff::new(BACKOFF_MIN, BACKOFF_MAX),
            renew_retry: None,
            channels,
            repair: Some(Repair::Relist),
            repair_at: None,
            repair_backoff: Backoff::new(BACKOFF_MIN, BACKOFF_MAX),
        }
    }

    /// Our lease as the loop holds it now.
    pub fn own(&self) -> &OwnLease {
        &self.boot.own
    }

    /// Runs until `stop` completes: first a listing, then the watch and
    /// the renewals, with repairs whenever the watch cannot go on.
    pub async fn run(&mut self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        self.push_firewall();
        loop {
            if let Some(repair) = self.repair {
                tokio::select! {
                    _ = &mut stop => return,
                    _ = self.repair_step(repair) => {}
                }
                continue;
            }
            let renew_at = self.renew_at();
            let retry_at = self.watch_retry;
            let prefix = subnets_prefix(&self.settings.prefix);
            let from = self.revision + 1;
            tokio::select! {
                _ = &mut stop => return,
                item = next_item(&self.store, &prefix, &mut self.watch, retry_at, from) => {
                    self.on_watch(item)
                }
                _ = sleep_until(renew_at) => self.on_renew().await,
            }
        }
    }

    pub(super) fn push_firewall(&self) {
        let rules = Rules {
            cluster: self.boot.config.network,
            subnet: self.boot.own.subnet,
            masq: self.settings.ip_masq,
            forward: self.settings.forward_rules,
        };
        let _ = self.channels.firewall.send(FirewallUpdate::Rules(rules));
    }

    pub(super) fn push_target(&self) {
        let (b, network) = (&self.boot, self.boot.config.network);
        let target = Target {
            device: DeviceSpec {
                vni: b.config.backend.vni,
                port: b.config.backend.port,
                link: b.ext.index,
                local: b.ext.addr,
                mtu: b.mtu,
                mac: b.attrs.vxlan_data().map(|d| d.vtep_mac).unwrap_or_default(),
                subnet: b.own.subnet,
            },
            cluster: network,
            peers: self.peers.peers(),
            subnet_env: SubnetEnv::for_lease(network, b.own.subnet, b.mtu, self.settings.ip_masq),
            subnet_file: self.settings.subnet_file.clone(),
        };
        let _ = self
            .channels
            .reconciler
            .send(Update::Target(Box::new(target)));
    }

    /// When to renew: the retry after a failure, else the renewal margin
    /// before expiry (far away for a permanent reservation).
    fn renew_at(&self) -> Instant {
        if let Some(t) = self.renew_retry {
            return t;
        }
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let Some(expires) = self.boot.own.expires else {
            return far;
        };
        let due = expires
            .checked_sub(self.settings.renew_margin)
            .unwrap_or(expires);
        let wait = due.duration_since(self.clock.now()).unwrap_or_default();
        Instant::now() + wait
    }
}

/// The next watch response, (re)opening the watch after `retry_at`.
async fn next_item<S: LeaseStore>(
    store: &S,
    prefix: &str,
    watch: &mut Option<S::Watch>,
    retry_at: Option<Instant>,
    from: i64,
) -> Result<WatchItem, StoreError> {
    if watch.is_none() {
        if let Some(t) = retry_at {
            sleep_until(t).await;
        }
        *watch = Some(store.watch(prefix, from).await?);
    }
    watch.as_mut().expect("set above").next().await
}
