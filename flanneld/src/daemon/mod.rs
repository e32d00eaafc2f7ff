//! The daemon: one single-threaded async loop for etcd (config, lease,
//! watch, renewal, signals), a reconciler thread that owns the datapath, a
//! thread listening to kernel notifications, and a firewall thread.

use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use flannel_netlink::{Handle, Mac, Monitor};
use subnet_env::SubnetEnv;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::time::{sleep, sleep_until, Instant};

use crate::backend::reconciler::Target;
use crate::backend::{DeviceSpec, KernelDatapath, Reconciler, Shared, Update};
use crate::cli::Options;
use crate::config::NetworkConfig;
use crate::iface::{self, ExtIface};
use crate::lease::etcd::{EtcdOptions, EtcdStore, EtcdWatch};
use crate::lease::{
    acquire, config_key, subnets_prefix, LeaseAttrs, LeaseError, LeaseRequest, LeaseStore,
    OwnLease, PeerSet, StoreError, SystemClock, VxlanData, WatchItem, WatchStream,
};
use crate::masq::{Firewall, FirewallUpdate, Rules};
use crate::metrics::Metrics;
use crate::{error, info, warn};

mod events;

/// Retry delays for etcd (watch reconnects, lease acquisition).
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// flannel retries a failed renewal after a minute.
const RENEW_RETRY: Duration = Duration::from_secs(60);
/// How often "still waiting" is logged.
const WAIT_LOG_EVERY: Duration = Duration::from_secs(5);
/// Follows a failure to reach etcd over TLS without a client certificate:
/// the refusal of an etcd that requires one reaches us as "connection
/// closed" only.
const NO_CLIENT_CERT_HINT: &str = " (no client certificate was given: if etcd requires one \
     (--client-cert-auth), give --etcd-certfile and --etcd-keyfile)";

pub fn run(opts: Options) -> anyhow::Result<()> {
    crate::util::limit_malloc_arenas();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(start(opts))
}

/// SIGTERM and SIGINT, as one stream.
struct Signals(Signal, Signal);

impl Signals {
    fn new() -> anyhow::Result<Self> {
        Ok(Signals(
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        ))
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.0.recv() => {}
            _ = self.1.recv() => {}
        }
    }
}

pub fn etcd_options(o: &Options) -> EtcdOptions {
    EtcdOptions {
        endpoints: o.etcd_endpoints.clone(),
        cafile: o.etcd_cafile.clone(),
        certfile: o.etcd_certfile.clone(),
        keyfile: o.etcd_keyfile.clone(),
        username: o.etcd_username.clone(),
        password: o.etcd_password.clone(),
    }
}

async fn start(opts: Options) -> anyhow::Result<()> {
    let shared = Arc::new(Shared::default());
    let mut signals = Signals::new()?;
    serve_http(&opts, &shared).await?;
    let Some(boot) = bootstrap(&opts, &mut signals).await? else {
        return Ok(());
    };
    let mut d = Daemon::new(opts, boot, shared);
    d.spawn_threads();
    d.event_loop(&mut signals).await;
    d.shutdown().await;
    Ok(())
}

async fn serve_http(opts: &Options, shared: &Arc<Shared>) -> anyhow::Result<()> {
    if opts.healthz_port == 0 {
        return Ok(());
    }
    let (ip, port) = (opts.healthz_ip, opts.healthz_port);
    let listener = tokio::net::TcpListener::bind((ip, port))
        .await
        .with_context(|| format!("cannot listen on {ip}:{port}"))?;
    info!("serving /healthz, /readyz and /metrics on {ip}:{port}");
    tokio::spawn(crate::http::serve(listener, shared.clone()));
    Ok(())
}

/// What the daemon knows once it holds a lease.
struct Boot {
    config: NetworkConfig,
    ext: ExtIface,
    attrs: LeaseAttrs,
    mtu: u32,
    store: EtcdStore,
    own: OwnLease,
}

/// Interface, config, VTEP MAC and lease, in that order. `None` when a
/// signal came while waiting.
async fn bootstrap(opts: &Options, signals: &mut Signals) -> anyhow::Result<Option<Boot>> {
    let mut handle = Handle::new().context("cannot open a netlink socket")?;
    let ext = iface::find(&mut handle, &opts.iface).context("cannot find the public interface")?;
    let public_ip = opts.public_ip.unwrap_or(ext.addr);
    info!(
        "using interface {} ({}), public IP {public_ip}",
        ext.name, ext.addr
    );
    let etcd = etcd_options(opts);
    let store = EtcdStore::connect(&etcd).await?;
    let hint = if etcd.tls_without_client_cert() {
        NO_CLIENT_CERT_HINT
    } else {
        ""
    };
    let Some(config) = wait_config(&store, &opts.etcd_prefix, hint, signals).await else {
        return Ok(None);
    };
    if config.backend.direct_routing {
        warn!("Backend.DirectRouting is not supported: every peer is reached through VXLAN");
    }
    let prefix = &opts.etcd_prefix;
    let vtep_mac = choose_mac(&mut handle, &store, prefix, &config, &ext, public_ip).await;
    let attrs = LeaseAttrs::vxlan(
        public_ip,
        VxlanData {
            vni: config.backend.vni,
            vtep_mac,
        },
    );
    let previous = SubnetEnv::read(&opts.subnet_file)
        .ok()
        .map(|e| e.node_subnet());
    let req = LeaseRequest {
        prefix,
        config: &config,
        attrs: attrs.clone(),
        previous,
    };
    let Some(own) = acquire_retrying(&store, &req, signals).await? else {
        return Ok(None);
    };
    info!(
        "lease {} ({:?}), expires {}",
        own.subnet,
        own.origin,
        expiry_text(own.expires)
    );
    let mtu = config.backend.mtu.unwrap_or(ext.mtu.saturating_sub(50));
    Ok(Some(Boot {
        config,
        ext,
        attrs,
        mtu,
        store,
        own,
    }))
}

/// Waits for `<prefix>/config`, logging why every few seconds (`hint`
/// follows a failure to read it). `None` when a signal came first.
async fn wait_config(
    store: &EtcdStore,
    prefix: &str,
    hint: &str,
    signals: &mut Signals,
) -> Option<NetworkConfig> {
    let key = config_key(prefix);
    let mut last_log: Option<Instant> = None;
    loop {
        let problem = match store.get(&key).await {
            Ok(Some(r)) => match NetworkConfig::parse(&String::from_utf8_lossy(&r.value)) {
                Ok(c) => return Some(c),
                Err(e) => format!("invalid config at {key}: {e}"),
            },
            Ok(None) => format!("waiting for the network config at {key}"),
            // etcd answered: the connection (what `hint` is about) works.
            Err(e @ StoreError::Refused(_)) => format!("cannot read {key}: {e}"),
            Err(e) => format!("cannot read {key}: {e}{hint}"),
        };
        if last_log.is_none_or(|t| t.elapsed() >= WAIT_LOG_EVERY) {
            warn!("{problem}");
            last_log = Some(Instant::now());
        }
        tokio::select! {
            _ = sleep(Duration::from_secs(1)) => {}
            _ = signals.recv() => return None,
        }
    }
}

/// The VTEP MAC: the existing device's (nothing changes on a restart),
/// else the one our lease already publishes, else a new random one.
async fn choose_mac(
    h: &mut Handle,
    store: &EtcdStore,
    prefix: &str,
    config: &NetworkConfig,
    ext: &ExtIface,
    public_ip: std::net::Ipv4Addr,
) -> Mac {
    let probe = DeviceSpec {
        vni: config.backend.vni,
        port: config.backend.port,
        link: ext.index,
        local: ext.addr,
        mtu: 0,
        mac: [0; 6],
        subnet: config.network,
    };
    if let Ok(Some(link)) = h.link(&probe.name()) {
        if let (true, Some(mac)) = (probe.accepts(&link), link.mac) {
            return mac;
        }
    }
    let listing = store
        .list(&subnets_prefix(prefix))
        .await
        .unwrap_or_default();
    let from_lease = listing.records.iter().find_map(|r| {
        let attrs: LeaseAttrs = serde_json::from_slice(&r.value).ok()?;
        let data = attrs.vxlan_data().ok()?;
        (attrs.public_ip == public_ip && data.vni == config.backend.vni).then_some(data.vtep_mac)
    });
    from_lease.unwrap_or_else(crate::util::random_mac)
}

/// Acquires a lease, waiting out an unreachable etcd; other failures
/// (e.g. no free subnet) are fatal.
async fn acquire_retrying(
    store: &EtcdStore,
    req: &LeaseRequest<'_>,
    signals: &mut Signals,
) -> anyhow::Result<Option<OwnLease>> {
    let mut backoff = BACKOFF_MIN;
    loop {
        match acquire(store, &SystemClock, req).await {
            Ok(own) => return Ok(Some(own)),
            Err(LeaseError::Store(e)) => warn!("cannot acquire a lease yet: {e}"),
            Err(e) => return Err(e).context("cannot acquire a subnet lease"),
        }
        tokio::select! {
            _ = sleep(backoff) => {}
            _ = signals.recv() => return Ok(None),
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

fn expiry_text(t: Option<SystemTime>) -> String {
    t.map_or("never (reservation)".into(), crate::log::timestamp)
}

struct Daemon {
    opts: Options,
    config: NetworkConfig,
    ext: ExtIface,
    attrs: LeaseAttrs,
    mtu: u32,
    store: EtcdStore,
    shared: Arc<Shared>,
    own: OwnLease,
    peers: PeerSet,
    /// Last etcd revision seen: the watch resumes after it.
    revision: i64,
    watch: Option<EtcdWatch>,
    watch_retry: Option<Instant>,
    backoff: Duration,
    renew_retry: Option<Instant>,
    reconciler: Sender<Update>,
    firewall: Sender<FirewallUpdate>,
    threads: Vec<JoinHandle<()>>,
    receivers: Option<(
        std::sync::mpsc::Receiver<Update>,
        std::sync::mpsc::Receiver<FirewallUpdate>,
    )>,
    /// Work that needs etcd before the watch can go on, retried with backoff.
    repair: Option<Repair>,
    repair_at: Option<Instant>,
}

/// What must happen before watching again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repair {
    /// Rebuild the peer set from a full listing (start, compaction).
    Relist,
    /// Our lease is gone: take one again, then re-list.
    Reacquire,
}

impl Daemon {
    fn new(opts: Options, boot: Boot, shared: Arc<Shared>) -> Self {
        let mut peers = PeerSet::new(boot.config.backend.vni);
        peers.set_own(boot.own.subnet);
        let (rtx, rrx) = channel();
        let (ftx, frx) = channel();
        Metrics::add(&shared.metrics.lease_acquisitions, 1);
        Daemon {
            opts,
            config: boot.config,
            ext: boot.ext,
            attrs: boot.attrs,
            mtu: boot.mtu,
            store: boot.store,
            shared,
            own: boot.own,
            peers,
            revision: 0,
            watch: None,
            watch_retry: None,
            backoff: BACKOFF_MIN,
            renew_retry: None,
            reconciler: rtx,
            firewall: ftx,
            threads: Vec::new(),
            receivers: Some((rrx, frx)),
            repair: Some(Repair::Relist),
            repair_at: None,
        }
    }

    fn spawn_threads(&mut self) {
        let Some((rrx, frx)) = self.receivers.take() else {
            return;
        };
        let shared = self.shared.clone();
        let resync = self.opts.resync_interval;
        self.threads
            .push(spawn("reconciler", move || match Handle::new() {
                Ok(h) => Reconciler::new(KernelDatapath::new(h), shared, resync).run(rrx),
                Err(e) => error!("reconciler: cannot open a netlink socket: {e}"),
            }));
        let (shared, tx) = (self.shared.clone(), self.reconciler.clone());
        // Not joined: it blocks in recv() until the process exits.
        spawn("netlink-monitor", move || monitor(tx, shared));
        let (shared, resync) = (self.shared.clone(), self.opts.iptables_resync);
        self.threads.push(spawn("firewall", move || {
            Firewall::new(shared, resync).run(frx)
        }));
        self.push_firewall();
    }

    fn push_firewall(&self) {
        let rules = Rules {
            cluster: self.config.network,
            subnet: self.own.subnet,
            masq: self.opts.ip_masq,
            forward: self.opts.iptables_forward_rules,
        };
        let _ = self.firewall.send(FirewallUpdate::Rules(rules));
    }

    fn push_target(&self) {
        let network = self.config.network;
        let target = Target {
            device: DeviceSpec {
                vni: self.config.backend.vni,
                port: self.config.backend.port,
                link: self.ext.index,
                local: self.ext.addr,
                mtu: self.mtu,
                mac: self
                    .attrs
                    .vxlan_data()
                    .map(|d| d.vtep_mac)
                    .unwrap_or_default(),
                subnet: self.own.subnet,
            },
            cluster: network,
            peers: self.peers.peers(),
            subnet_env: SubnetEnv::for_lease(network, self.own.subnet, self.mtu, self.opts.ip_masq),
            subnet_file: self.opts.subnet_file.clone(),
        };
        let _ = self.reconciler.send(Update::Target(Box::new(target)));
    }

    async fn event_loop(&mut self, signals: &mut Signals) {
        loop {
            if let Some(repair) = self.repair {
                tokio::select! {
                    _ = signals.recv() => return,
                    _ = self.repair_step(repair) => {}
                }
                continue;
            }
            let renew_at = self.renew_at();
            let retry_at = self.watch_retry;
            let prefix = subnets_prefix(&self.opts.etcd_prefix);
            let from = self.revision + 1;
            tokio::select! {
                _ = signals.recv() => return,
                item = next_item(&self.store, &prefix, &mut self.watch, retry_at, from) => {
                    self.on_watch(item)
                }
                _ = sleep_until(renew_at) => self.on_renew().await,
            }
        }
    }

    fn renew_at(&self) -> Instant {
        if let Some(t) = self.renew_retry {
            return t;
        }
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let Some(expires) = self.own.expires else {
            return far;
        };
        let due = expires
            .checked_sub(self.opts.renew_margin)
            .unwrap_or(expires);
        let wait = due.duration_since(SystemTime::now()).unwrap_or_default();
        Instant::now() + wait
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .expect("cannot start a thread")
}

/// The next watch response, (re)opening the watch after `retry_at`.
async fn next_item(
    store: &EtcdStore,
    prefix: &str,
    watch: &mut Option<EtcdWatch>,
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

/// Turns kernel notifications that may mean our state was disturbed into
/// reconcile nudges.
fn monitor(tx: Sender<Update>, shared: Arc<Shared>) {
    use flannel_netlink::Event as K;
    let mut mon = match Monitor::new() {
        Ok(m) => m,
        Err(e) => return error!("cannot listen to kernel notifications: {e}"),
    };
    loop {
        let events = match mon.recv() {
            Ok(ev) => ev,
            Err(e) => {
                warn!("kernel notifications: {e}");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        let dev = shared
            .device_index
            .load(std::sync::atomic::Ordering::Relaxed);
        let relevant = events.iter().any(|e| match e {
            K::Link { index, .. } | K::Neigh { index, .. } => *index == dev,
            K::Route { deleted } | K::Nexthop { deleted } => *deleted,
            K::Overflow => true,
        });
        if relevant && tx.send(Update::Nudge).is_err() {
            return;
        }
    }
}
