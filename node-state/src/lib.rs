//! What the CNI plugin and flanneld both read or write on a node.
//!
//! The plugin writes this state and flanneld reads it (its status command
//! lists pods from the IPAM store and finds their host veths by name), or
//! both change it the same way (the firewall). Keeping each format, name
//! and runner in one place keeps the two binaries agreeing on them, and
//! neither binary crate has to import the other:
//!
//! - [`ipam`]: the host-local IPAM store (`<dataDir>/<network>/`), its
//!   file format, lock, allocation order and release.
//! - [`veth`]: the host end's name of a pod's veth pair.
//! - [`scratch`]: the saved delegate config, `<dataDir>/<containerID>`.
//! - [`iptables`]: `iptables-save` / `iptables-restore --noflush`.
//! - [`nft`]: `nft list table` / `nft -f -`, one transaction per change.
//! - [`saved_rules`]: one parser of `iptables-save` output.
//! - [`mac`]: random locally administered MAC addresses.
//! - [`files`]: atomic writes and bounded, non-blocking reads of state.
//! - [`reclaim`]: a pod's masquerade chain name and what the plugin's DEL
//!   removes, for flanneld's reclaim of pods gone without DEL.

pub mod files;
pub mod ipam;
pub mod iptables;
pub mod mac;
pub mod nft;
pub mod reclaim;
pub mod saved_rules;
pub mod scratch;
pub mod veth;

pub use mac::random_mac;
pub use saved_rules::{Rule, SavedRules};
pub use veth::host_veth_name;
