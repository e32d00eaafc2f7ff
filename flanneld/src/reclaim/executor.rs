//! Carries out [`super::decide`]: a thread that reads the IPAM stores and
//! the node's links every few seconds and reclaims what the decision
//! names, each after a last check under the store's lock.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use flannel_netlink::Handle;
use node_state::ipam::Store;
use node_state::reclaim::{is_valid_container_id, remove_leftovers};

use super::{decide, reservations, Links, Reservation};
use crate::backend::Shared;
use crate::metrics::Metrics;
use crate::{info, warn};

/// How often the stores are looked at, at most: a pass reads a few
/// hundred small files and dumps the links.
const MAX_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Settings {
    /// The host-local stores, one directory per network (`--ipam-dir`).
    pub ipam_dir: PathBuf,
    /// The plugin's saved delegate configs (`--cni-data-dir`).
    pub cni_data_dir: PathBuf,
    /// How long a host veth must be absent (`--ipam-reclaim-grace`).
    pub grace: Duration,
}

impl Settings {
    /// Every 10 s, or twice per grace period when that is shorter, so a
    /// reservation goes between one and one and a half grace periods
    /// after its veth.
    pub fn interval(&self) -> Duration {
        (self.grace / 2).clamp(Duration::from_millis(100), MAX_INTERVAL)
    }
}

/// Starts the reclaim thread (none when the grace period is zero); it
/// stops when the returned sender is dropped.
pub fn spawn(
    settings: Settings,
    shared: Arc<Shared>,
) -> anyhow::Result<Option<(Sender<()>, JoinHandle<()>)>> {
    if settings.grace.is_zero() {
        info!("IP reclaim is off (--ipam-reclaim-grace=0)");
        return Ok(None);
    }
    let handle = Handle::new().context("IP reclaim: cannot open a netlink socket")?;
    let (stop, stopped) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("ipam-reclaim".into())
        .spawn(move || Reclaimer::new(settings, handle, shared).run(stopped))
        .context("cannot start the IP reclaim thread")?;
    Ok(Some((stop, thread)))
}

/// The reclaim thread's state.
pub struct Reclaimer {
    settings: Settings,
    handle: Handle,
    shared: Arc<Shared>,
    absent_since: HashMap<Reservation, Instant>,
    /// The unknown pod veths last logged, so a block is logged per change.
    unknown_logged: Vec<String>,
}

impl Reclaimer {
    pub fn new(settings: Settings, handle: Handle, shared: Arc<Shared>) -> Self {
        Reclaimer {
            settings,
            handle,
            shared,
            absent_since: HashMap::new(),
            unknown_logged: Vec::new(),
        }
    }

    /// Runs a pass per interval until `stop` says so or is dropped.
    pub fn run(mut self, stop: Receiver<()>) {
        info!(
            "reclaiming IPs in {} of pods whose host veth is gone for more than {:?}",
            self.settings.ipam_dir.display(),
            self.settings.grace
        );
        while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(self.settings.interval()) {
            if let Err(e) = self.pass(Instant::now()) {
                warn!("IP reclaim: {e:#}");
            }
        }
    }

    /// Reads the stores and links, decides, and reclaims.
    pub fn pass(&mut self, now: Instant) -> anyhow::Result<()> {
        let dir = &self.settings.ipam_dir;
        let found = reservations(dir).with_context(|| format!("reading {}", dir.display()))?;
        let links = Links::new(&self.handle.links().context("listing links")?);
        let d = decide(&found, &links, now, self.settings.grace, &self.absent_since);
        self.absent_since = d.absent_since;
        self.note_unknown(d.unknown_veths);
        for c in d.reclaim {
            let r = &c.reservation;
            match self.reclaim(r) {
                Ok(true) => {
                    Metrics::add(&self.shared.metrics.ipam_reclaimed, 1);
                    self.absent_since.remove(r);
                    info!(
                        "reclaimed IP {} of container {:?} ({}, network {}): host veth {} absent for {}s",
                        r.ip,
                        r.container_id,
                        r.ifname,
                        r.network,
                        r.host_veth(),
                        c.absent_for.as_secs()
                    );
                }
                Ok(false) => {}
                Err(e) => warn!("cannot reclaim IP {} ({}): {e:#}", r.ip, r.network),
            }
        }
        Ok(())
    }

    /// Logs when the set of pod veths that block reclaiming changes.
    fn note_unknown(&mut self, unknown: Vec<String>) {
        if unknown == self.unknown_logged {
            return;
        }
        if unknown.is_empty() {
            info!("IP reclaim resumes: every pod veth is named after a reservation");
        } else {
            warn!(
                "IP reclaim paused: pod veths {unknown:?} are named after no reservation \
                 (pods attached by another plugin, e.g. before a migration from flannel)"
            );
        }
        self.unknown_logged = unknown;
    }

    /// Reclaims `r` if, under the store's lock, it is still reserved to
    /// the same attachment and its veth still absent: first the chain and
    /// saved config (so a failure leaves the IP for the next pass to try
    /// again), then the IP. `false` when it was not gone after all.
    fn reclaim(&mut self, r: &Reservation) -> anyhow::Result<bool> {
        let store = Store::open(self.settings.ipam_dir.join(&r.network))?;
        let locked = store.lock()?;
        let all = store.allocations()?;
        let same = |a: &node_state::ipam::Allocation| {
            a.ip == r.ip && a.container_id == r.container_id && a.ifname == r.ifname
        };
        if !all.iter().any(same) || self.handle.link(&r.host_veth())?.is_some() {
            return Ok(false);
        }
        // The chain and the saved config are the container's: they stay
        // while another of its attachments holds an IP here.
        let last = !all
            .iter()
            .any(|a| a.container_id == r.container_id && a.ip != r.ip);
        if last && is_valid_container_id(&r.container_id) {
            let dir = &self.settings.cni_data_dir;
            let left = remove_leftovers(dir, &r.network, &r.container_id)?;
            if let Some(e) = left.masq_unchecked {
                warn!(
                    "reclaiming IP {}: masquerade chain of {:?} not checked: {e}",
                    r.ip, r.container_id
                );
            }
        }
        locked.remove(r.ip)?;
        Ok(true)
    }
}
