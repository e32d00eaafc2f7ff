//! What a pod attachment leaves on the node besides its IP, and removing
//! it when the attachment is gone: its masquerade chain and its saved
//! delegate config.
//!
//! The chain is the reference bridge plugin's `ipMasq` chain: a nat chain
//! `CNI-<24 hex of sha512(network + containerID)>` and a POSTROUTING jump
//! to it. The plugin creates it at ADD and removes it at DEL and GC;
//! flanneld removes it when it reclaims the IP of a pod that is gone
//! without DEL. Both use these functions, so they agree on the names, and
//! rules left by flannel + bridge are removed too.
//!
//! A removal first reads `iptables-save -t nat` and deletes exactly the
//! rules found (one `iptables-restore --noflush` batch), so it succeeds
//! whatever is, or is not, left.

use std::path::Path;

use serde_json::Value;
use sha2::{Digest, Sha512};

use crate::iptables::{restore, save, IptablesError};
use crate::saved_rules::SavedRules;
use crate::scratch::{self, ScratchError};

#[derive(Debug, thiserror::Error)]
pub enum ReclaimError {
    #[error(transparent)]
    Saved(#[from] ScratchError),
    #[error("container ID {0:?} is not valid (it could name files outside the directory)")]
    InvalidId(String),
    #[error("masquerade rules: {0}")]
    Masq(#[from] IptablesError),
}

/// The chain of one attachment, as libcni's `FormatChainName`.
pub fn chain_name(network: &str, container_id: &str) -> String {
    let digest = Sha512::digest(format!("{network}{container_id}"));
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("CNI-{hex}")
}

/// Removes the masquerade chains (and their jumps) of these containers;
/// what is already gone is skipped. One read, and at most one write.
pub fn teardown_masq(network: &str, container_ids: &[&str]) -> Result<(), IptablesError> {
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

/// `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$` (the CNI spec's container ID): the ID
/// names files on disk, so nothing that could climb out of a directory
/// gets through. The plugin refuses other IDs, so none of them has a
/// saved config or a chain.
pub fn is_valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    first_ok && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// What the saved delegate config of a container says about one network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SavedConfig {
    /// None saved.
    Missing,
    /// Saved for this network; `ip_masq` as it set the pod up.
    Ours { ip_masq: bool },
    /// Saved for another network: that attachment's, not to be touched.
    Other,
    /// Not a readable delegate config (an ADD killed while writing it): of
    /// use to nobody, as DEL ignores it.
    Unreadable,
}

/// Reads `<data_dir>/<container_id>` and tells what it is to `network`.
pub fn saved_config(
    data_dir: &Path,
    container_id: &str,
    network: &str,
) -> Result<SavedConfig, ScratchError> {
    let saved = match scratch::load(data_dir, container_id) {
        Ok(Some(saved)) => saved,
        Ok(None) => return Ok(SavedConfig::Missing),
        Err(ScratchError::Parse { .. }) => return Ok(SavedConfig::Unreadable),
        Err(e) => return Err(e),
    };
    if saved.get("name").and_then(Value::as_str) != Some(network) {
        return Ok(SavedConfig::Other);
    }
    // As the plugin reads it: missing is false; anything but a boolean
    // makes the whole config unusable to its DEL.
    match saved.get("ipMasq") {
        None | Some(Value::Null) => Ok(SavedConfig::Ours { ip_masq: false }),
        Some(Value::Bool(ip_masq)) => Ok(SavedConfig::Ours { ip_masq: *ip_masq }),
        Some(_) => Ok(SavedConfig::Unreadable),
    }
}

/// What [`remove_leftovers`] could not check but did not need to.
#[derive(Debug)]
pub struct Leftovers {
    /// No saved config said whether the pod was masqueraded, and looking
    /// for its chain failed (e.g. no iptables on the node).
    pub masq_unchecked: Option<IptablesError>,
}

/// Removes the masquerade chain and the saved config of an attachment of
/// `container_id` to `network` that is gone, as the plugin's DEL would:
/// the chain when the saved config says the pod was masqueraded (an error
/// then fails the call, and the saved config is kept so that a retry still
/// knows), or, with no saved config to tell, the chain if it can be looked
/// for; then the saved config, unless it is another network's.
pub fn remove_leftovers(
    data_dir: &Path,
    network: &str,
    container_id: &str,
) -> Result<Leftovers, ReclaimError> {
    if !is_valid_container_id(container_id) {
        return Err(ReclaimError::InvalidId(container_id.to_owned()));
    }
    let saved = saved_config(data_dir, container_id, network)?;
    let mut left = Leftovers {
        masq_unchecked: None,
    };
    match saved {
        SavedConfig::Ours { ip_masq: true } => teardown_masq(network, &[container_id])?,
        SavedConfig::Ours { ip_masq: false } => {}
        SavedConfig::Missing | SavedConfig::Other | SavedConfig::Unreadable => {
            left.masq_unchecked = teardown_masq(network, &[container_id]).err();
        }
    }
    if saved != SavedConfig::Other {
        scratch::remove(data_dir, container_id)?;
    }
    Ok(left)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;
    use std::fs;

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

    #[test]
    fn container_ids_that_name_files_elsewhere_are_invalid() {
        for ok in ["a", "abc0.3.1", "9_x-y.z", "A"] {
            assert!(is_valid_container_id(ok), "{ok}");
        }
        for bad in [
            "", ".", "..", "../x", "a/b", "-a", "_a", ".a", "a b", "a\n", "é",
        ] {
            assert!(!is_valid_container_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn saved_configs_are_told_apart_by_network() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("flannel");
        let mut map = Map::new();
        map.insert("name".into(), "cbr0".into());
        map.insert("ipMasq".into(), true.into());
        scratch::save(&dir, "masq", &map).unwrap();
        map.insert("ipMasq".into(), false.into());
        scratch::save(&dir, "plain", &map).unwrap();
        map.insert("name".into(), "net2".into());
        scratch::save(&dir, "other", &map).unwrap();
        fs::write(dir.join("cut"), r#"{"name":"cb"#).unwrap();
        let of = |id| saved_config(&dir, id, "cbr0").unwrap();
        assert_eq!(of("masq"), SavedConfig::Ours { ip_masq: true });
        assert_eq!(of("plain"), SavedConfig::Ours { ip_masq: false });
        assert_eq!(of("other"), SavedConfig::Other);
        assert_eq!(of("cut"), SavedConfig::Unreadable);
        assert_eq!(of("none"), SavedConfig::Missing);
        // Without masquerade nothing runs iptables: only the file goes,
        // and another network's stays.
        remove_leftovers(&dir, "cbr0", "plain").unwrap();
        assert_eq!(of("plain"), SavedConfig::Missing);
        // An ID that could name a file elsewhere is refused before anything.
        fs::write(dir.join("x"), "{}").unwrap();
        let err = remove_leftovers(&dir.join("sub"), "cbr0", "../x").unwrap_err();
        assert!(matches!(err, ReclaimError::InvalidId(_)), "{err}");
        assert!(dir.join("x").exists());
    }
}
