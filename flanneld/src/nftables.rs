//! The masquerade and forward rules in nftables, with flannel's table and
//! chain names (`EnableNFTables`): table `ip flannel-ipv4`, base chains
//! `postrtg` (nat, postrouting) and `forward` (filter, forward). A node
//! switching from flannel's nftables mode keeps its table, rewritten.
//!
//! The rules mean what the iptables chains mean (see [`crate::masq`]), and
//! the table is ours alone: every change replaces it whole in one `nft -f`
//! transaction, so rules for a previous subnet go and no other table is
//! touched. Drift (a flush, a deleted rule or table) is found by comparing
//! nft's listing with the one taken right after our last change, so no
//! parsing of nft's output is needed.

use node_state::iptables::IptablesError;
use node_state::nft::{apply, list_table, remove_table_script};

use crate::masq::{Rules, KUBE_PROXY_MARK_BIT};

pub const FAMILY: &str = "ip";
pub const TABLE: &str = "flannel-ipv4";

/// The script that makes our table hold exactly the chains `r` asks for
/// (none: no table), in one transaction.
pub fn script(r: &Rules, fully_random: bool) -> String {
    let mut s = remove_table_script(FAMILY, TABLE);
    if !r.masq && !r.forward {
        return s;
    }
    s += &format!("table {FAMILY} {TABLE} {{\n");
    if r.masq {
        s += &postrtg_chain(r, fully_random);
    }
    if r.forward {
        s += &forward_chain(r);
    }
    s + "}\n"
}

fn postrtg_chain(r: &Rules, fully_random: bool) -> String {
    let (c, n) = (r.cluster, r.subnet);
    let masq = if fully_random {
        "masquerade fully-random"
    } else {
        "masquerade"
    };
    let m = KUBE_PROXY_MARK_BIT;
    let rules = [
        // kube-proxy masquerades what it marked.
        format!("meta mark & {m} == {m} return"),
        // Inside the cluster network: no NAT.
        format!("ip saddr {n} ip daddr {c} return"),
        format!("ip saddr {c} ip daddr {n} return"),
        format!("ip saddr != {c} ip daddr {n} return"),
        // Pods to outside (multicast excepted), outside into the cluster.
        format!("ip saddr {c} ip daddr != 224.0.0.0/4 {masq}"),
        format!("ip saddr != {c} ip daddr {c} {masq}"),
    ];
    chain(
        "postrtg",
        "type nat hook postrouting priority srcnat",
        &rules,
        "flanneld masq",
    )
}

fn forward_chain(r: &Rules) -> String {
    let c = r.cluster;
    // Never a drop policy: it would cut the node's own forwarding.
    let rules = [
        format!("ip saddr {c} accept"),
        format!("ip daddr {c} accept"),
    ];
    chain(
        "forward",
        "type filter hook forward priority filter",
        &rules,
        "flanneld forward",
    )
}

fn chain(name: &str, hook: &str, rules: &[String], comment: &str) -> String {
    let mut s = format!("  chain {name} {{\n    {hook}; policy accept;\n");
    for r in rules {
        s += &format!("    {r} comment \"{comment}\"\n");
    }
    s + "  }\n"
}

/// Keeps our table as the rules want it.
#[derive(Debug)]
pub struct NftFirewall {
    fully_random: bool,
    /// What we last applied, and nft's listing of the table right after.
    applied: Option<(Rules, Option<String>)>,
}

impl Default for NftFirewall {
    fn default() -> Self {
        NftFirewall {
            fully_random: true,
            applied: None,
        }
    }
}

impl NftFirewall {
    /// One check: list the table, and replace it only when it is not what
    /// we left. True when something was changed.
    pub fn sync(&mut self, r: &Rules) -> Result<bool, IptablesError> {
        let now = list_table(FAMILY, TABLE)?;
        let wanted = r.masq || r.forward;
        match &self.applied {
            Some((rules, listing)) if rules == r && *listing == now => return Ok(false),
            _ if !wanted && now.is_none() => {
                self.applied = Some((r.clone(), None));
                return Ok(false);
            }
            _ => {}
        }
        match apply(&script(r, self.fully_random)) {
            // Kernels without fully-random masquerade: plain masquerade.
            Err(IptablesError::Failed { .. }) if self.fully_random && r.masq => {
                self.fully_random = false;
                apply(&script(r, false))?;
            }
            other => other?,
        }
        self.applied = Some((r.clone(), list_table(FAMILY, TABLE)?));
        Ok(true)
    }
}

/// Removes our table (after a switch to iptables); no error when it or
/// nft is absent.
pub fn remove() -> Result<(), IptablesError> {
    match apply(&remove_table_script(FAMILY, TABLE)) {
        Err(IptablesError::Spawn { .. }) => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(masq: bool, forward: bool) -> Rules {
        Rules {
            cluster: "10.244.0.0/16".parse().unwrap(),
            subnet: "10.244.3.0/24".parse().unwrap(),
            masq,
            forward,
            enable_nftables: true,
        }
    }

    #[test]
    fn the_table_is_replaced_whole_in_one_script() {
        let s = script(&rules(true, true), true);
        assert!(s.starts_with(
            "add table ip flannel-ipv4\ndelete table ip flannel-ipv4\ntable ip flannel-ipv4 {\n"
        ));
        assert!(s.contains(
            "  chain postrtg {\n    type nat hook postrouting priority srcnat; policy accept;\n"
        ));
        assert!(s.contains(
            "    ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random comment \"flanneld masq\"\n"
        ));
        assert!(s.contains("    meta mark & 0x4000 == 0x4000 return comment \"flanneld masq\"\n"));
        assert!(s.contains("    ip saddr 10.244.3.0/24 ip daddr 10.244.0.0/16 return"));
        assert!(s.contains(
            "  chain forward {\n    type filter hook forward priority filter; policy accept;\n"
        ));
        assert!(s.contains("    ip daddr 10.244.0.0/16 accept comment \"flanneld forward\"\n"));
        assert_eq!(s.matches("chain ").count(), 2);
    }

    #[test]
    fn only_the_wanted_chains_and_no_table_for_none() {
        let s = script(&rules(false, true), false);
        assert!(!s.contains("postrtg") && s.contains("chain forward"));
        let s = script(&rules(true, false), false);
        assert!(s.contains("masquerade comment") && !s.contains("fully-random"));
        assert_eq!(
            script(&rules(false, false), true),
            "add table ip flannel-ipv4\ndelete table ip flannel-ipv4\n"
        );
    }
}
