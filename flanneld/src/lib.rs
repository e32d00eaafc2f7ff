//! flanneld: a Flannel-compatible node daemon.
//!
//! It leases a subnet for this node in etcd (flannel's keys and JSON),
//! programs a VXLAN datapath towards every other node's subnet, keeps both
//! right by reconciling desired state (the leases) with actual state (the
//! kernel), and hands the subnet to the CNI plugin through subnet.env.

pub mod backend;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod http;
pub mod iface;
pub mod lease;
pub mod log;
pub mod masq;
pub mod metrics;
pub mod nftables;
pub mod reclaim;
pub mod status;
pub mod util;

// The log macros, so modules write `crate::info!` and `use crate::{info, warn}`.
pub use tracing::{debug, error, info, trace, warn};
