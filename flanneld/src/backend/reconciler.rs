//! The reconciler thread: the single owner of the datapath.
//!
//! It keeps the latest target (device + peers), and on every trigger (a new
//! target, a kernel change notification, or the resync timer) runs one
//! pass: ensure the device, dump neighbours/FDB/nexthops/routes, apply the
//! difference in one netlink batch. Triggers that arrive during a pass are
//! coalesced into the next one. Whether the kernel has nexthop objects is
//! asked once, before the first pass. After the first successful pass for
//! a device, the devices of other VNIs that we left behind are removed.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use subnet_env::SubnetEnv;

use super::nexthop::{self, RouteMode};
use super::plan::{affected, plan, Actual, Desired};
use super::{device, Datapath, DeviceSpec};
use crate::lease::Peer;
use crate::metrics::Metrics;

/// After a kernel notification, wait this long for the rest of a burst
/// (a deleted device takes all its routes and neighbours with it).
const SETTLE: Duration = Duration::from_millis(30);

/// What the datapath should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub device: DeviceSpec,
    pub cluster: Ipv4Net,
    pub peers: Vec<Peer>,
    /// Written (atomically) once the datapath is in place.
    pub subnet_env: SubnetEnv,
    pub subnet_file: PathBuf,
}

pub enum Update {
    Target(Box<Target>),
    /// Something changed in the kernel: check.
    Nudge,
    Stop,
}

/// State shared with the other threads.
#[derive(Debug, Default)]
pub struct Shared {
    pub metrics: Metrics,
    /// Index of the VXLAN device, for filtering kernel notifications.
    pub device_index: AtomicU32,
}

/// The outcome of one pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pass {
    pub index: u32,
    pub ops: usize,
    pub failed: usize,
    /// Peers touched by a failed operation.
    pub broken_peers: usize,
}

pub struct Reconciler<D> {
    dp: D,
    target: Option<Target>,
    /// Decided by the first successful probe, then kept.
    mode: Option<RouteMode>,
    written: Option<SubnetEnv>,
    /// The device whose predecessors of other VNIs were removed.
    swept: Option<DeviceSpec>,
    shared: Arc<Shared>,
    resync: Duration,
}

impl<D: Datapath> Reconciler<D> {
    pub fn new(dp: D, shared: Arc<Shared>, resync: Duration) -> Self {
        Reconciler {
            dp,
            target: None,
            mode: None,
            written: None,
            swept: None,
            shared,
            resync,
        }
    }

    /// Runs until `Stop` or until every sender is gone.
    pub fn run(mut self, rx: Receiver<Update>) {
        loop {
            let mut stop = match rx.recv_timeout(self.resync) {
                Ok(u) => self.take(u),
                Err(RecvTimeoutError::Timeout) => false,
                Err(RecvTimeoutError::Disconnected) => true,
            };
            std::thread::sleep(SETTLE.min(self.resync));
            while let Ok(u) = rx.try_recv() {
                stop |= self.take(u);
            }
            if stop {
                return;
            }
            self.pass();
        }
    }

    /// Records an update; true for `Stop`.
    fn take(&mut self, u: Update) -> bool {
        match u {
            Update::Target(t) => self.target = Some(*t),
            Update::Nudge => {}
            Update::Stop => return true,
        }
        false
    }

    /// One reconcile pass with logging and metrics.
    pub fn pass(&mut self) {
        let Some(target) = self.target.clone() else {
            return;
        };
        let start = Instant::now();
        let result = self
            .route_mode()
            .and_then(|mode| reconcile(&mut self.dp, &target, mode));
        let m = &self.shared.metrics;
        m.observe_pass(start.elapsed());
        Metrics::add(&m.reconcile_runs, 1);
        Metrics::set(&m.peers, target.peers.len() as i64);
        if result.as_ref().is_ok_and(|p| p.ops > 0) {
            crate::util::trim_heap();
        }
        match result {
            Ok(p) => self.after_pass(&target, &p),
            Err(e) => {
                Metrics::add(&m.reconcile_errors, 1);
                crate::error!("reconcile failed (retrying): {e}");
            }
        }
    }

    fn route_mode(&mut self) -> flannel_netlink::Result<RouteMode> {
        if let Some(mode) = self.mode {
            return Ok(mode);
        }
        let mode = nexthop::probe(&mut self.dp)?;
        match mode {
            RouteMode::Nexthop => crate::info!(
                "peer routes through nexthop objects (ids from {}, proto {})",
                nexthop::ID_BASE,
                nexthop::PROTOCOL
            ),
            RouteMode::Plain => {
                crate::warn!("the kernel has no nexthop objects: plain peer routes")
            }
        }
        self.mode = Some(mode);
        Ok(mode)
    }

    fn after_pass(&mut self, target: &Target, p: &Pass) {
        self.sweep(&target.device);
        let m = &self.shared.metrics;
        self.shared.device_index.store(p.index, Relaxed);
        Metrics::add(&m.reconcile_ops, p.ops as u64);
        Metrics::set(
            &m.peers_programmed,
            (target.peers.len() - p.broken_peers) as i64,
        );
        if p.failed > 0 {
            Metrics::add(&m.reconcile_errors, 1);
        } else if p.ops > 0 {
            crate::info!(
                "datapath: {} changes applied, {} peers",
                p.ops,
                target.peers.len()
            );
        }
        if self.written.as_ref() != Some(&target.subnet_env) {
            match target.subnet_env.write(&target.subnet_file) {
                Ok(()) => {
                    crate::info!("wrote {}", target.subnet_file.display());
                    self.written = Some(target.subnet_env.clone());
                    Metrics::set(&m.ready, 1);
                }
                Err(e) => crate::error!("{e} (retrying)"),
            }
        }
    }
}

impl<D: Datapath> Reconciler<D> {
    /// Once per device: removes the devices of other VNIs we left behind.
    /// Only once, so two daemons for two networks on one node (each with
    /// its own VNI) would not take turns deleting each other's device.
    fn sweep(&mut self, spec: &DeviceSpec) {
        if self.swept.as_ref() == Some(spec) {
            return;
        }
        match device::remove_stale(&mut self.dp, spec) {
            Ok(_) => self.swept = Some(spec.clone()),
            Err(e) => crate::warn!("cannot remove old VXLAN devices (retrying): {e}"),
        }
    }
}

/// Brings the kernel to `target`: device first, then the per-peer entries,
/// with routes built as `mode` says.
pub fn reconcile<D: Datapath>(
    dp: &mut D,
    target: &Target,
    mode: RouteMode,
) -> flannel_netlink::Result<Pass> {
    let index = device::ensure(dp, &target.device)?;
    let actual = read_actual(dp, index, mode)?;
    let desired = Desired {
        index,
        cluster: target.cluster,
        peers: &target.peers,
        mode,
    };
    let ops = plan(&desired, &actual);
    let results = if ops.is_empty() {
        Vec::new()
    } else {
        dp.apply(index, &ops)
    };
    let mut broken = HashSet::new();
    let mut failed = 0;
    for (op, r) in ops.iter().zip(&results) {
        if let Err(e) = r {
            failed += 1;
            crate::warn!("{e}");
            broken.extend(affected(op, &target.peers).into_iter().map(|(p, _)| p));
        }
    }
    Ok(Pass {
        index,
        ops: ops.len(),
        failed,
        broken_peers: broken.len(),
    })
}

/// What the kernel has for the device `index`, as [`plan`] compares it:
/// its neighbours and FDB entries, the main table's IPv4 routes and, when
/// routes go through nexthop objects, every nexthop.
pub fn read_actual<D: Datapath>(
    dp: &mut D,
    index: u32,
    mode: RouteMode,
) -> flannel_netlink::Result<Actual> {
    Ok(Actual {
        neighs: dp.neighs(index)?,
        fdb: dp.fdb(index)?,
        routes: dp.routes()?,
        nexthops: match mode {
            RouteMode::Nexthop => dp.nexthops()?,
            RouteMode::Plain => Vec::new(),
        },
    })
}

#[cfg(test)]
#[path = "reconciler_tests.rs"]
mod tests;
