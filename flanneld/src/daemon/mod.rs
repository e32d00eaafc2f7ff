//! The daemon: one single-threaded async loop for the lease store (lease,
//! watch, renewal), a reconciler thread that owns the datapath, a thread
//! listening to kernel notifications, a firewall thread, and a thread
//! reclaiming the IPs of pods gone without DEL ([`crate::reclaim`]).
//!
//! - `bootstrap`: the edge, run once: public interface, etcd client,
//!   network config, VTEP MAC, first lease.
//! - `event_loop`: [`Daemon`], generic over the [`crate::lease::LeaseStore`]
//!   and the [`crate::lease::Clock`]; it gets the bootstrap's results as
//!   values and reaches the threads only through their channels.
//! - `events`: its reactions (watch responses, repairs, renewal, leaving).
//! - `own_lease`: our lease against what others write to etcd (write-back,
//!   re-acquisition, a wiped or restored store).
//! - `config_watch`: changes of the network config, reported, not applied.
//! - `backoff`: retry delays, one per kind of retry.
//! - `tests`, `untrusted_tests`: the loop on the in-memory store and
//!   tokio's paused clock; the second with what others may write to etcd.
//! - this module: the process (signals, HTTP, threads, shutdown order).

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use flannel_netlink::{Handle, Monitor};
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::backend::{KernelDatapath, Reconciler, Shared, Update};
use crate::cli::Options;
use crate::lease::SystemClock;
use crate::masq::{Firewall, FirewallChoice, FirewallUpdate};
use crate::{error, info, warn};

mod backoff;
mod bootstrap;
mod config_watch;
mod event_loop;
mod events;
mod own_lease;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod untrusted_tests;

pub use backoff::Backoff;
pub use bootstrap::etcd_options;
pub use event_loop::{Boot, Channels, Daemon, Settings};

pub fn run(opts: Options) -> anyhow::Result<()> {
    crate::util::limit_malloc_arenas();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(start(opts))
}

/// SIGTERM and SIGINT, as one stream; SIGHUP, caught so that it does not
/// kill the daemon (its default action), is logged and ignored.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Returns on SIGTERM or SIGINT.
    async fn recv(&mut self) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => info!(
                    "SIGHUP ignored: flanneld has nothing to reload (a new network config \
                     needs a restart of flanneld on every node)"
                ),
            }
        }
    }
}

/// Refuses a firewall asked for by flag whose tool is missing, before
/// anything changes.
fn check_firewall_tools(opts: &Options) -> anyhow::Result<()> {
    if !(opts.ip_masq || opts.iptables_forward_rules) {
        return Ok(());
    }
    let (tool, package) = match opts.firewall {
        FirewallChoice::Nftables => ("nft", "nftables"),
        FirewallChoice::Iptables => ("iptables-restore", "iptables"),
        FirewallChoice::Auto => return Ok(()),
    };
    anyhow::ensure!(
        crate::masq::which(tool),
        "--firewall={package}: `{tool}` is not in PATH (install {package})"
    );
    Ok(())
}

async fn start(opts: Options) -> anyhow::Result<()> {
    check_firewall_tools(&opts)?;
    let shared = Arc::new(Shared::default());
    let mut signals = Signals::new()?;
    serve_http(&opts, &shared).await?;
    let Some((boot, store)) = bootstrap::bootstrap(&opts, &mut signals).await? else {
        return Ok(());
    };
    let (rtx, rrx) = channel();
    let (ftx, frx) = channel();
    let threads = spawn_threads(&opts, &shared, rrx, frx, rtx.clone());
    let reclaim = crate::reclaim::spawn(reclaim_settings(&opts), shared.clone())?;
    let channels = Channels {
        reconciler: rtx,
        firewall: ftx,
    };
    let settings = Settings::new(&opts);
    let mut d = Daemon::new(settings, boot, store, SystemClock, shared, channels);
    d.run(signals.recv()).await;
    info!("shutting down");
    d.stop_threads();
    for t in threads {
        let _ = t.join();
    }
    if let Some((stop, thread)) = reclaim {
        drop(stop);
        let _ = thread.join();
    }
    d.leave().await;
    Ok(())
}

fn reclaim_settings(opts: &Options) -> crate::reclaim::Settings {
    crate::reclaim::Settings {
        ipam_dir: opts.ipam_dir.clone(),
        cni_data_dir: opts.cni_data_dir.clone(),
        grace: opts.ipam_reclaim_grace,
    }
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

/// The reconciler, the kernel notification listener (feeding `nudges`)
/// and the firewall thread. Returns the ones to join at shutdown.
fn spawn_threads(
    opts: &Options,
    shared: &Arc<Shared>,
    updates: Receiver<Update>,
    rules: Receiver<FirewallUpdate>,
    nudges: Sender<Update>,
) -> Vec<JoinHandle<()>> {
    let (s, resync) = (shared.clone(), opts.resync_interval);
    let reconciler = spawn("reconciler", move || match Handle::new() {
        Ok(h) => Reconciler::new(KernelDatapath::new(h), s, resync).run(updates),
        Err(e) => error!("reconciler: cannot open a netlink socket: {e}"),
    });
    let s = shared.clone();
    // Not joined: it blocks in recv() until the process exits.
    spawn("netlink-monitor", move || monitor(nudges, s));
    let (s, resync, choice) = (shared.clone(), opts.iptables_resync, opts.firewall);
    let firewall = spawn("firewall", move || {
        Firewall::new(s, resync, choice).run(rules)
    });
    vec![reconciler, firewall]
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .expect("cannot start a thread")
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
