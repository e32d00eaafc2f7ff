//! Per-pod masquerade, as the reference bridge plugin's `ipMasq` does it.
//!
//! Each pod gets a nat chain `CNI-<24 hex of sha512(name + containerID)>`
//! accepting traffic to its own subnet and masquerading the rest (except
//! multicast), and a POSTROUTING rule sending the pod's source address to
//! it, all tagged `name: "<net>" id: "<id>"`. Names and rules are the
//! reference's, so rules left by flannel + bridge are removed by our DEL.
//!
//! Each change is one `iptables-restore --noflush` batch (arguments, no
//! shell). Removal first reads `iptables-save -t nat` and deletes exactly
//! the rules found, so it succeeds whatever is (or is not) left.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use node_state::iptables::{restore, save, IptablesError};
// The chain's name and its removal are shared with flanneld, which
// removes the chains of pods that are gone without DEL.
pub use node_state::reclaim::{chain_name, teardown_masq as teardown};
use node_state::SavedRules;

/// The rule comment, as libcni's `FormatComment` (Go's %q quoting).
fn comment(network: &str, container_id: &str) -> String {
    format!("\"name: \\\"{network}\\\" id: \\\"{container_id}\\\"\"")
}

/// Adds the pod's chain and its POSTROUTING jump.
pub fn setup(network: &str, container_id: &str, addr: Ipv4Net) -> Result<(), IptablesError> {
    let chain = chain_name(network, container_id);
    let c = comment(network, container_id);
    let batch = format!(
        "*nat\n:{chain} - [0:0]\n\
         -A {chain} -d {subnet} -m comment --comment {c} -j ACCEPT\n\
         -A {chain} ! -d 224.0.0.0/4 -m comment --comment {c} -j MASQUERADE\n\
         -A POSTROUTING -s {ip}/32 -m comment --comment {c} -j {chain}\n\
         COMMIT\n",
        subnet = addr.trunc(),
        ip = addr.addr(),
    );
    restore(&batch)
}

/// Whether the pod's jump rule is in place (for CHECK).
pub fn is_set_up(network: &str, container_id: &str, ip: Ipv4Addr) -> Result<bool, IptablesError> {
    let saved = SavedRules::parse(&save(Some("nat"))?);
    let source = format!("-s {ip}/32 ");
    let chain = chain_name(network, container_id);
    let found = saved
        .jumps_to("nat", &chain)
        .any(|r| r.chain() == "POSTROUTING" && r.spec().starts_with(&source));
    Ok(found)
}
