//! The VXLAN datapath.
//!
//! Design note (the scheme is flannel's, so mixed clusters interoperate):
//! every node has one VXLAN device `flannel.<VNI>` with `nolearning`, bound
//! to its public interface and carrying `<own subnet>.0/32`. A remote
//! node's subnet is reached by
//!
//! ```text
//! neighbour  <peer subnet>.0 lladdr <peer VtepMAC> permanent   (no ARP needed)
//! fdb        <peer VtepMAC> dst <peer PublicIP> self permanent (where to tunnel)
//! route      <peer subnet> via <peer subnet>.0 dev flannel.N onlink
//! ```
//!
//! The route goes through a nexthop object where the kernel has them
//! (`nexthop id N via <peer subnet>.0 dev flannel.N onlink` + `route <peer
//! subnet> nhid N`): the same forwarding, several times faster to program
//! ([`nexthop`]).
//!
//! A packet to a pod on that node takes the route, resolves the gateway
//! through the static neighbour to the peer's VTEP MAC, and the FDB maps
//! that MAC to the peer's public address as the outer destination.
//!
//! Unlike flannel, which applies lease events one by one, the
//! [`reconciler`] computes the whole desired state from the leases, dumps
//! the kernel's actual state, and applies the difference in netlink
//! batches ([`plan`]). Lease events, kernel change notifications and a
//! timer all just trigger another pass, so a missed event or an entry
//! deleted by someone else is repaired, and a restart changes nothing that
//! is already right.

pub mod datapath;
pub mod device;
pub mod nexthop;
pub mod plan;
pub mod reconciler;

pub use datapath::{Datapath, KernelDatapath, Op};
pub use device::DeviceSpec;
pub use nexthop::RouteMode;
pub use plan::{affected, pending, plan, Actual, Desired, Entry};
pub use reconciler::{read_actual, reconcile, Reconciler, Shared, Update};

/// An in-memory kernel and the datapath scenarios run against it and the
/// real kernel: for tests, never part of the daemon.
#[cfg(any(test, feature = "testing"))]
pub mod fake;
#[cfg(any(test, feature = "testing"))]
pub mod scenarios;
