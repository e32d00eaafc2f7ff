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
use node_state::SavedRules;
use sha2::{Digest, Sha512};

/// The chain of one attachment, as libcni's `FormatChainName`.
pub fn chain_name(network: &str, container_id: &str) -> String {
    let digest = Sha512::digest(format!("{network}{container_id}"));
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("CNI-{hex}")
}

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

/// Removes the chains (and their jumps) of these containers; what is
/// already gone is skipped. One read, and at most one write.
pub fn teardown(network: &str, container_ids: &[&str]) -> Result<(), IptablesError> {
    let saved = SavedRules::parse(&save(Some("nat"))?);
    let chains: Vec<String> = container_ids
        .iter()
        .map(|id| chain_name(network, id))
        .collect();
    match teardown_batch(&saved, &chains) {
        Some(batch) => restore(&batch),
        None => Ok(()),
    }
}

/// The restore batch deleting `chains` and every rule jumping to them,
/// or `None` when none of them exists in `saved` (the nat table).
fn teardown_batch(saved: &SavedRules, chains: &[String]) -> Option<String> {
    let mut batch = String::from("*nat\n");
    let mut found = false;
    for chain in chains {
        for jump in saved.jumps_to("nat", chain) {
            batch += &format!("{}\n", jump.delete_line());
            found = true;
        }
    }
    for chain in chains.iter().filter(|c| saved.chain_exists("nat", c)) {
        // Declaring an existing chain under --noflush empties it.
        batch += &format!(":{chain} - [0:0]\n-X {chain}\n");
        found = true;
    }
    batch += "COMMIT\n";
    found.then_some(batch)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_match_the_reference_bridge() {
        // Seen in iptables-save after the reference bridge's ADD.
        assert_eq!(
            chain_name("cbr0", "abc0.3.1"),
            "CNI-bb7d03d39bcea4783bd151a2"
        );
        assert_eq!(
            chain_name("cbr0", "abc1.0.0"),
            "CNI-62805778e942e8d881d77d8e"
        );
    }

    #[test]
    fn teardown_deletes_exactly_what_exists() {
        let saved = "*nat\n:POSTROUTING ACCEPT [0:0]\n:CNI-bb7d03d39bcea4783bd151a2 - [0:0]\n\
            -A POSTROUTING -s 10.244.3.2/32 -m comment --comment \"name: \\\"cbr0\\\" id: \\\"abc0.3.1\\\"\" -j CNI-bb7d03d39bcea4783bd151a2\n\
            -A POSTROUTING -s 10.244.3.9/32 -j OTHER\n\
            -A CNI-bb7d03d39bcea4783bd151a2 -d 10.244.3.0/24 -j ACCEPT\nCOMMIT\n";
        let saved = SavedRules::parse(saved);
        let chains = [chain_name("cbr0", "abc0.3.1")];
        let batch = teardown_batch(&saved, &chains).unwrap();
        assert_eq!(
            batch,
            "*nat\n-D POSTROUTING -s 10.244.3.2/32 -m comment --comment \"name: \\\"cbr0\\\" id: \\\"abc0.3.1\\\"\" -j CNI-bb7d03d39bcea4783bd151a2\n\
             :CNI-bb7d03d39bcea4783bd151a2 - [0:0]\n-X CNI-bb7d03d39bcea4783bd151a2\nCOMMIT\n"
        );
        assert_eq!(teardown_batch(&saved, &[chain_name("cbr0", "other")]), None);
    }
}
