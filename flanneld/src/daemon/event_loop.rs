//! The loop that keeps our lease and the peer set: watch, renewal, and
//! the repairs (re-list, re-assert or re-acquire our lease) that must
//! happen before the watch can go on. It works on any [`LeaseStore`] and
//! [`Clock`], and talks to the reconciler and firewall threads only
//! through their channels, so a test drives it with the in-memory store
//! and tokio's paused clock.
//!
//! It watches everything under `<prefix>/`: the leases, and the network
//! config, whose changes are reported but not applied. Nothing it reads
//! is trusted: leases are judged by [`PeerSet`], a change to our own key
//! is answered by writing ours back while our etcd lease lives, and a
//! store that answers from an older revision or another cluster (wiped,
//! restored from a backup) makes it start over: re-acquire, re-list.

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
use crate::lease::Rules as PeerRules;
use crate::lease::{
    config_key, subnets_prefix, watch_prefix, Clock, Header, LeaseAttrs, LeaseStore, Own, OwnLease,
    PeerSet, StoreError, WatchItem, WatchStream,
};
use crate::masq::{FirewallUpdate, Rules};
use crate::metrics::Metrics;

/// Retry delays for the store (watch reconnects, repairs, acquisition).
pub(super) const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// flannel retries a failed renewal after a minute.
pub(super) const RENEW_RETRY: Duration = Duration::from_secs(60);
/// Our key rewritten again this soon after we wrote it back means someone
/// keeps writing it: the next write-back waits, longer each time.
pub(super) const FIGHT_WINDOW: Duration = Duration::from_secs(30);
pub(super) const FIGHT_BACKOFF_MAX: Duration = Duration::from_secs(10);

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

impl Boot {
    /// What a peer's lease must fit, given our lease.
    pub fn rules(&self) -> PeerRules {
        let mac = self
            .attrs
            .vxlan_data()
            .map(|d| d.vtep_mac)
            .unwrap_or_default();
        let own = Own {
            key: self.own.key.clone(),
            subnet: self.own.subnet,
            public_ip: self.attrs.public_ip,
            vtep_mac: mac,
        };
        PeerRules::new(&self.config, Some(own))
    }
}

/// The keys the loop reads, from `--etcd-prefix`.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    /// `<prefix>/`: what is watched.
    pub watch: String,
    /// `<prefix>/subnets/`: the leases.
    pub subnets: String,
    /// `<prefix>/config`.
    pub config: String,
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
    pub(super) keys: Keys,
    pub(super) peers: PeerSet,
    /// Every change up to this store revision has been seen: the watch
    /// resumes after it. A store answering from before it was reset.
    pub(super) revision: i64,
    /// The cluster that answered the last listing.
    pub(super) cluster_id: Option<u64>,
    /// The network config value last seen, and whether it differs from
    /// the running one (see `config_watch`).
    pub(super) config_seen: Option<Option<Vec<u8>>>,
    pub(super) config_differs: bool,
    pub(super) watch: Option<S::Watch>,
    /// The watch broke since it was last opened.
    pub(super) watch_broke: bool,
    pub(super) watch_retry: Option<Instant>,
    pub(super) watch_backoff: Backoff,
    pub(super) renew_retry: Option<Instant>,
    pub(super) channels: Channels,
    /// Work that needs the store before the watch can go on.
    pub(super) repair: Option<Repair>,
    pub(super) repair_at: Option<Instant>,
    pub(super) repair_backoff: Backoff,
    /// When our key was last written back, and the delay before the next
    /// write-back if someone keeps overwriting it.
    pub(super) last_reassert: Option<Instant>,
    pub(super) reassert_backoff: Backoff,
}

/// What must happen before watching again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Repair {
    /// Rebuild the peer set from a full listing (start, compaction).
    Relist,
    /// Our key was changed or deleted by someone else: write ours back
    /// while our etcd lease lives, else re-acquire.
    Reassert,
    /// Our etcd lease is gone: take one again, then re-list.
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
        let peers = PeerSet::new(boot.rules());
        Metrics::add(&shared.metrics.lease_acquisitions, 1);
        let keys = Keys {
            watch: watch_prefix(&settings.prefix),
            subnets: subnets_prefix(&settings.prefix),
            config: config_key(&settings.prefix),
        };
        Daemon {
            settings,
            boot,
            store,
            clock,
            shared,
            keys,
            peers,
            revision: 0,
            cluster_id: None,
            config_seen: None,
            config_differs: false,
            watch: None,
            watch_broke: false,
            watch_retry: None,
            watch_backoff: Backoff::new(BACKOFF_MIN, BACKOFF_MAX),
            renew_retry: None,
            channels,
            repair: Some(Repair::Relist),
            repair_at: None,
            repair_backoff: Backoff::new(BACKOFF_MIN, BACKOFF_MAX),
            last_reassert: None,
            reassert_backoff: Backoff::new(BACKOFF_MIN, FIGHT_BACKOFF_MAX),
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
            let prefix = self.keys.watch.clone();
            let from = self.revision + 1;
            tokio::select! {
                _ = &mut stop => return,
                next = next_item(&self.store, &prefix, &mut self.watch, retry_at, from) => {
                    self.on_watch(next)
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
            enable_nftables: self.boot.config.enable_nftables,
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

/// What the watch gave.
#[derive(Debug)]
pub(super) enum Next {
    /// The watch was (re)opened; where the store is now.
    Opened(Header),
    Item(WatchItem),
}

/// The next watch response, (re)opening the watch after `retry_at`.
async fn next_item<S: LeaseStore>(
    store: &S,
    prefix: &str,
    watch: &mut Option<S::Watch>,
    retry_at: Option<Instant>,
    from: i64,
) -> Result<Next, StoreError> {
    let Some(w) = watch else {
        if let Some(t) = retry_at {
            sleep_until(t).await;
        }
        let (w, header) = store.watch(prefix, from).await?;
        *watch = Some(w);
        return Ok(Next::Opened(header));
    };
    w.next().await.map(Next::Item)
}
