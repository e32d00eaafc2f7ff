//! Masquerade and forward rules, with flannel's chains and semantics so a
//! node migrated from flannel keeps its rules (they are simply taken over).
//!
//! * `nat FLANNEL-POSTRTG`, jumped to from `POSTROUTING` (with `--ip-masq`):
//!   no NAT for kube-proxy-marked packets or inside the cluster network,
//!   MASQUERADE from the cluster to outside (except multicast) and from
//!   outside into the cluster.
//! * `filter FLANNEL-FWD`, jumped to from `FORWARD` (with
//!   `--iptables-forward-rules`): ACCEPT to and from the cluster network.
//!   It lives in the filter table because nothing else can override a
//!   FORWARD DROP policy (Docker sets one).
//!
//! Each check reads the rules with one `iptables-save`; only when our
//! chains or jumps differ is one `iptables-restore --noflush` batch sent,
//! which rewrites our two chains whole (so rules for a previous subnet go)
//! and touches no other chain.
//!
//! The same rules can live in nftables instead ([`crate::nftables`]);
//! [`choose`] says which firewall a node uses, and whichever is chosen,
//! ours are removed from the other, so a node switching keeps no stale
//! rule.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
// Both binaries drive the firewall the same way.
use node_state::iptables::{restore, save, IptablesError};
use node_state::SavedRules;

use crate::backend::Shared;
use crate::metrics::Metrics;
use crate::nftables::NftFirewall;

const POSTRTG: &str = "FLANNEL-POSTRTG";
const FWD: &str = "FLANNEL-FWD";
/// kube-proxy marks packets it wants masqueraded itself.
const KUBE_PROXY_MARK: &str = "0x4000/0x4000";
pub const KUBE_PROXY_MARK_BIT: &str = "0x4000";

/// What the rules are for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    pub cluster: Ipv4Net,
    pub subnet: Ipv4Net,
    pub masq: bool,
    pub forward: bool,
    /// flannel's `EnableNFTables` in the network config.
    pub enable_nftables: bool,
}

/// `--firewall`: where the rules go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum FirewallChoice {
    /// nftables with `EnableNFTables`, or where iptables is missing or is
    /// nft's shim with nothing that needs iptables; else iptables.
    #[default]
    Auto,
    Iptables,
    Nftables,
}

/// The firewall in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Iptables,
    Nftables,
}

/// What the node's firewall tools say, for [`choose`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// `iptables-restore` and `iptables-save` can be run.
    pub iptables: bool,
    /// `iptables --version` says `nf_tables`.
    pub iptables_is_nft_shim: bool,
    /// `iptables-legacy-save` prints rules (legacy iptables is in use).
    pub legacy_rules: bool,
    /// iptables' `FORWARD` policy is `DROP` (Docker's): only an iptables
    /// rule can let pod traffic through it.
    pub forward_drop: bool,
}

/// The firewall to use, and why (for the log).
pub fn choose(choice: FirewallChoice, enable_nftables: bool, f: &Facts) -> (Kind, &'static str) {
    match choice {
        FirewallChoice::Iptables => (Kind::Iptables, "--firewall=iptables"),
        FirewallChoice::Nftables => (Kind::Nftables, "--firewall=nftables"),
        _ if enable_nftables => (Kind::Nftables, "EnableNFTables in the network config"),
        _ if !f.iptables => (Kind::Nftables, "no iptables-restore/iptables-save"),
        _ if !f.iptables_is_nft_shim => (Kind::Iptables, "iptables is legacy iptables"),
        _ if f.legacy_rules => (Kind::Iptables, "legacy iptables holds rules"),
        _ if f.forward_drop => (Kind::Iptables, "iptables' FORWARD policy is DROP"),
        _ => (
            Kind::Nftables,
            "iptables is nft's shim and nothing needs iptables",
        ),
    }
}

/// Asks the node's tools for [`Facts`].
pub fn facts() -> Facts {
    use node_state::iptables::run;
    let ok = |tool, args: &[&str]| run(tool, args, None).ok();
    let Some(filter) = ok("iptables-save", &["-t", "filter"]) else {
        return Facts::default();
    };
    let iptables = which("iptables-restore");
    let version = ok("iptables", &["--version"]).unwrap_or_default();
    let legacy = ok("iptables-legacy-save", &[]).unwrap_or_default();
    Facts {
        iptables,
        iptables_is_nft_shim: version.contains("nf_tables"),
        legacy_rules: legacy.lines().any(|l| l.starts_with("-A ")),
        forward_drop: filter.lines().any(|l| l.starts_with(":FORWARD DROP")),
    }
}

/// Whether `tool` is an executable file in `PATH`.
pub fn which(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(tool))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

pub enum FirewallUpdate {
    Rules(Rules),
    Stop,
}

/// The rules of our chain, as `iptables-save` prints them.
pub fn masq_rules(cluster: Ipv4Net, subnet: Ipv4Net, random_fully: bool) -> Vec<String> {
    let c = "-m comment --comment \"flanneld masq\"";
    let rf = if random_fully { " --random-fully" } else { "" };
    vec![
        format!("-A {POSTRTG} -m mark --mark {KUBE_PROXY_MARK} {c} -j RETURN"),
        format!("-A {POSTRTG} -s {subnet} -d {cluster} {c} -j RETURN"),
        format!("-A {POSTRTG} -s {cluster} -d {subnet} {c} -j RETURN"),
        format!("-A {POSTRTG} ! -s {cluster} -d {subnet} {c} -j RETURN"),
        format!("-A {POSTRTG} -s {cluster} ! -d 224.0.0.0/4 {c} -j MASQUERADE{rf}"),
        format!("-A {POSTRTG} ! -s {cluster} -d {cluster} {c} -j MASQUERADE{rf}"),
    ]
}

pub fn forward_rules(cluster: Ipv4Net) -> Vec<String> {
    let c = "-m comment --comment \"flanneld forward\"";
    vec![
        format!("-A {FWD} -s {cluster} {c} -j ACCEPT"),
        format!("-A {FWD} -d {cluster} {c} -j ACCEPT"),
    ]
}

fn masq_jump() -> String {
    format!("-A POSTROUTING -m comment --comment \"flanneld masq\" -j {POSTRTG}")
}

fn forward_jump() -> String {
    format!("-A FORWARD -m comment --comment \"flanneld forward\" -j {FWD}")
}

/// One of our chains as found in (or wanted in) a table.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChainState {
    pub exists: bool,
    pub rules: Vec<String>,
    /// How many jump rules from the built-in chain point at it.
    pub jumps: usize,
}

/// Reads our chain `chain` (jumped to by `jump`) from the saved rules.
pub fn read_chain(saved: &SavedRules, table: &str, chain: &str, jump: &str) -> ChainState {
    ChainState {
        exists: saved.chain_exists(table, chain),
        rules: saved
            .rules(table, chain)
            .map(|r| r.line().to_owned())
            .collect(),
        jumps: saved
            .jumps_to(table, chain)
            .filter(|r| r.line() == jump)
            .count(),
    }
}

/// The `iptables-restore --noflush` text that turns `have` into `want`
/// (`None`: the chain should not exist); empty when nothing is to do.
pub fn restore_text(
    table: &str,
    chain: &str,
    jump: &str,
    have: &ChainState,
    want: Option<&[String]>,
) -> String {
    let mut out = String::new();
    match want {
        Some(rules) if !(have.exists && have.rules == rules && have.jumps == 1) => {
            // Declaring a chain under --noflush creates it or flushes it.
            out += &format!(":{chain} - [0:0]\n");
            for r in rules {
                out += &format!("{r}\n");
            }
            for _ in 1..have.jumps {
                out += &format!("{}\n", jump.replacen("-A ", "-D ", 1));
            }
            if have.jumps == 0 {
                out += &format!("{jump}\n");
            }
        }
        None if have.exists => {
            for _ in 0..have.jumps {
                out += &format!("{}\n", jump.replacen("-A ", "-D ", 1));
            }
            out += &format!(":{chain} - [0:0]\n-X {chain}\n");
        }
        _ => {}
    }
    if out.is_empty() {
        return out;
    }
    format!("*{table}\n{out}COMMIT\n")
}

/// Keeps the rules in place; runs on its own thread.
pub struct Firewall {
    rules: Option<Rules>,
    choice: FirewallChoice,
    /// The firewall in use, once the first rules came.
    kind: Option<Kind>,
    random_fully: bool,
    nft: NftFirewall,
    shared: Arc<Shared>,
    resync: Duration,
}

/// nftables is checked at least this often: nft lists one small table, and
/// a flushed table is back within this time.
const NFT_RESYNC: Duration = Duration::from_secs(1);

impl Firewall {
    pub fn new(shared: Arc<Shared>, resync: Duration, choice: FirewallChoice) -> Self {
        Firewall {
            rules: None,
            choice,
            kind: None,
            random_fully: true,
            nft: NftFirewall::default(),
            shared,
            resync,
        }
    }

    pub fn run(mut self, rx: Receiver<FirewallUpdate>) {
        loop {
            let resync = match self.kind {
                Some(Kind::Nftables) => self.resync.min(NFT_RESYNC),
                _ => self.resync,
            };
            match rx.recv_timeout(resync) {
                Ok(FirewallUpdate::Rules(r)) => self.rules = Some(r),
                Ok(FirewallUpdate::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {}
            }
            if let Some(rules) = self.rules.clone() {
                // With both rule sets off, one successful pass (removing
                // chains a previous run left) is all there is to do.
                if self.check(&rules) && !rules.masq && !rules.forward {
                    self.rules = None;
                }
            }
        }
    }

    /// One resync with logging and metrics; true when it succeeded.
    fn check(&mut self, rules: &Rules) -> bool {
        let shared = self.shared.clone();
        Metrics::add(&shared.metrics.firewall_syncs, 1);
        let kind = self.kind(rules);
        let result = match kind {
            Kind::Iptables => self.sync(rules),
            Kind::Nftables => self.nft.sync(rules),
        };
        match result {
            Ok(true) => {
                crate::info!(
                    "firewall rules updated for {} (subnet {})",
                    rules.cluster,
                    rules.subnet
                );
                true
            }
            Ok(false) => true,
            Err(e) => {
                Metrics::add(&shared.metrics.firewall_errors, 1);
                crate::error!("firewall rules ({kind:?}): {e} (retrying)");
                false
            }
        }
    }

    /// The firewall in use: chosen once, when ours are also removed from
    /// the other one.
    fn kind(&mut self, rules: &Rules) -> Kind {
        if let Some(kind) = self.kind {
            return kind;
        }
        let (kind, why) = choose(self.choice, rules.enable_nftables, &facts());
        crate::info!("firewall: {kind:?} ({why})");
        let cleaned = match kind {
            Kind::Nftables => self.remove_iptables_chains(rules),
            Kind::Iptables => crate::nftables::remove(),
        };
        if let Err(e) = cleaned {
            crate::warn!("firewall: cannot remove our rules from the other firewall: {e}");
        }
        self.kind = Some(kind);
        kind
    }

    /// Our chains and jumps out of iptables, where iptables exists.
    fn remove_iptables_chains(&self, rules: &Rules) -> Result<(), IptablesError> {
        let none = Rules {
            masq: false,
            forward: false,
            ..rules.clone()
        };
        let text = match save(None) {
            Ok(save) => self.text(&save, &none),
            Err(IptablesError::Spawn { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        if text.is_empty() {
            return Ok(());
        }
        restore(&text)
    }

    /// One iptables check: read, compare, and write only what differs.
    pub fn sync(&mut self, rules: &Rules) -> Result<bool, IptablesError> {
        let save = save(None)?;
        let text = self.text(&save, rules);
        if text.is_empty() {
            return Ok(false);
        }
        match restore(&text) {
            Err(IptablesError::Failed { .. }) if self.random_fully && rules.masq => {
                // Older iptables lack --random-fully: masquerade without it.
                self.random_fully = false;
                let text = self.text(&save, rules);
                restore(&text)?;
            }
            other => {
                other?;
            }
        }
        Ok(true)
    }

    fn text(&self, save: &str, r: &Rules) -> String {
        let saved = SavedRules::parse(save);
        let masq = read_chain(&saved, "nat", POSTRTG, &masq_jump());
        let fwd = read_chain(&saved, "filter", FWD, &forward_jump());
        let want_masq = r
            .masq
            .then(|| masq_rules(r.cluster, r.subnet, self.random_fully));
        let want_fwd = r.forward.then(|| forward_rules(r.cluster));
        restore_text("nat", POSTRTG, &masq_jump(), &masq, want_masq.as_deref())
            + &restore_text("filter", FWD, &forward_jump(), &fwd, want_fwd.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets() -> (Ipv4Net, Ipv4Net) {
        (
            "10.244.0.0/16".parse().unwrap(),
            "10.244.3.0/24".parse().unwrap(),
        )
    }

    #[test]
    fn the_firewall_chosen() {
        use FirewallChoice::*;
        let shim = Facts {
            iptables: true,
            iptables_is_nft_shim: true,
            ..Facts::default()
        };
        let kind = |choice, nft, f: &Facts| choose(choice, nft, f).0;
        assert_eq!(kind(Auto, false, &shim), Kind::Nftables);
        assert_eq!(kind(Auto, false, &Facts::default()), Kind::Nftables);
        assert_eq!(kind(Auto, true, &shim), Kind::Nftables);
        let legacy = Facts {
            iptables_is_nft_shim: false,
            ..shim.clone()
        };
        assert_eq!(kind(Auto, false, &legacy), Kind::Iptables);
        assert_eq!(kind(Auto, true, &legacy), Kind::Nftables);
        let in_use = Facts {
            legacy_rules: true,
            ..shim.clone()
        };
        assert_eq!(kind(Auto, false, &in_use), Kind::Iptables);
        let docker = Facts {
            forward_drop: true,
            ..shim.clone()
        };
        assert_eq!(kind(Auto, false, &docker), Kind::Iptables);
        // The flag wins over everything.
        assert_eq!(kind(Iptables, true, &Facts::default()), Kind::Iptables);
        assert_eq!(kind(Nftables, false, &docker), Kind::Nftables);
    }

    #[test]
    fn rules_are_flannels() {
        let (c, s) = nets();
        let r = masq_rules(c, s, true);
        assert_eq!(r[0], "-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment \"flanneld masq\" -j RETURN");
        assert_eq!(r[4], "-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully");
        assert_eq!(
            forward_rules(c)[1],
            "-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT"
        );
    }

    #[test]
    fn nothing_to_do_when_rules_match() {
        let (c, s) = nets();
        let save = format!(
            "*nat\n:POSTROUTING ACCEPT [0:0]\n:FLANNEL-POSTRTG - [0:0]\n{}\n{}\nCOMMIT\n*filter\n:FLANNEL-FWD - [0:0]\n{}\n{}\nCOMMIT\n",
            masq_jump(),
            masq_rules(c, s, true).join("\n"),
            forward_jump(),
            forward_rules(c).join("\n")
        );
        let fw = Firewall::new(
            Arc::new(Shared::default()),
            Duration::from_secs(5),
            FirewallChoice::Iptables,
        );
        assert_eq!(
            fw.text(
                &save,
                &Rules {
                    cluster: c,
                    subnet: s,
                    masq: true,
                    forward: true,
                    enable_nftables: false,
                }
            ),
            ""
        );
    }

    #[test]
    fn old_subnet_rules_are_replaced_and_others_untouched() {
        let (c, s) = nets();
        let old: Ipv4Net = "10.244.9.0/24".parse().unwrap();
        let save = format!(
            "*nat\n:FLANNEL-POSTRTG - [0:0]\n-A POSTROUTING -j OTHER\n{}\n{}\nCOMMIT\n",
            masq_jump(),
            masq_rules(c, old, true).join("\n")
        );
        let fw = Firewall::new(
            Arc::new(Shared::default()),
            Duration::from_secs(5),
            FirewallChoice::Iptables,
        );
        let text = fw.text(
            &save,
            &Rules {
                cluster: c,
                subnet: s,
                masq: true,
                forward: false,
                enable_nftables: false,
            },
        );
        let expected = format!(
            "*nat\n:FLANNEL-POSTRTG - [0:0]\n{}\nCOMMIT\n",
            masq_rules(c, s, true).join("\n")
        );
        assert_eq!(text, expected);
        assert!(!text.contains("OTHER") && !text.contains("10.244.9.0"));
    }

    #[test]
    fn missing_jump_added_duplicates_removed_disabled_chain_deleted() {
        let (c, _) = nets();
        let fwd = |have: &ChainState, want: Option<&[String]>| {
            restore_text("filter", FWD, &forward_jump(), have, want)
        };
        let have = ChainState {
            exists: true,
            rules: forward_rules(c),
            jumps: 0,
        };
        let t = fwd(&have, Some(&forward_rules(c)));
        assert!(t.ends_with(&format!("{}\nCOMMIT\n", forward_jump())), "{t}");
        let have = ChainState { jumps: 3, ..have };
        let t = fwd(&have, Some(&forward_rules(c)));
        assert_eq!(t.matches("-D FORWARD").count(), 2, "{t}");
        let t = fwd(&have, None);
        assert!(
            t.contains("-X FLANNEL-FWD") && t.matches("-D FORWARD").count() == 3,
            "{t}"
        );
        assert_eq!(
            restore_text("filter", FWD, &forward_jump(), &ChainState::default(), None),
            ""
        );
    }
}
