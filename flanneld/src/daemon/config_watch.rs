//! Changes of the network config while flanneld runs.
//!
//! A new `Network`, `SubnetLen`, VNI or port cannot be applied by one node
//! alone: leases and devices of every node would have to move together.
//! So flanneld keeps the datapath of the config it started with, and says
//! once per change what changed and what the operator must do (restart
//! flanneld on every node); `flanneld_config_changes_total` counts it.

use super::event_loop::Daemon;
use crate::config::NetworkConfig;
use crate::lease::{Clock, LeaseStore};
use crate::metrics::Metrics;
use crate::{info, warn};

const APPLY: &str = "flanneld keeps the datapath of the config it started with; \
                     restart flanneld on every node to apply it";

impl<S: LeaseStore, C: Clock> Daemon<S, C> {
    /// The config key now holds `value` (`None`: deleted). Replays of a
    /// value already seen say nothing.
    pub(super) fn on_config(&mut self, value: Option<&[u8]>) {
        if self.config_seen.as_ref().map(Option::as_deref) == Some(value) {
            return;
        }
        self.config_seen = Some(value.map(<[u8]>::to_vec));
        let key = &self.keys.config;
        let change = match value.map(|v| NetworkConfig::parse(&String::from_utf8_lossy(v))) {
            None => format!("network config {key} was deleted"),
            Some(Err(e)) => format!("network config {key} changed and is invalid ({e})"),
            Some(Ok(c)) if c == self.boot.config => {
                if std::mem::take(&mut self.config_differs) {
                    info!("network config {key} is the running one again");
                }
                return;
            }
            Some(Ok(c)) => format!(
                "network config {key} changed: {}",
                differences(&self.boot.config, &c)
            ),
        };
        warn!("{change}; {APPLY}");
        self.config_differs = true;
        Metrics::add(&self.shared.metrics.config_changes, 1);
    }
}

/// `VNI 1 -> 2, Port 8472 -> 4789`: every field that differs.
pub fn differences(old: &NetworkConfig, new: &NetworkConfig) -> String {
    let (a, b) = (&old.backend, &new.backend);
    let mtu = |m: Option<u32>| m.map_or("auto".to_owned(), |m| m.to_string());
    let fields = [
        ("Network", old.network.to_string(), new.network.to_string()),
        (
            "SubnetLen",
            old.subnet_len.to_string(),
            new.subnet_len.to_string(),
        ),
        (
            "SubnetMin",
            old.subnet_min.to_string(),
            new.subnet_min.to_string(),
        ),
        (
            "SubnetMax",
            old.subnet_max.to_string(),
            new.subnet_max.to_string(),
        ),
        ("Backend.VNI", a.vni.to_string(), b.vni.to_string()),
        ("Backend.Port", a.port.to_string(), b.port.to_string()),
        ("Backend.MTU", mtu(a.mtu), mtu(b.mtu)),
        (
            "Backend.DirectRouting",
            a.direct_routing.to_string(),
            b.direct_routing.to_string(),
        ),
        (
            "EnableNFTables",
            old.enable_nftables.to_string(),
            new.enable_nftables.to_string(),
        ),
    ];
    let changed: Vec<String> = (fields.iter())
        .filter(|(_, was, now)| was != now)
        .map(|(name, was, now)| format!("{name} {was} -> {now}"))
        .collect();
    changed.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_each_changed_field() {
        let parse = |s: &str| NetworkConfig::parse(s).unwrap();
        let old = parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
        let new = parse(
            r#"{"Network":"10.245.0.0/16","SubnetLen":26,"Backend":{"Type":"vxlan","VNI":2,"Port":4789}}"#,
        );
        assert_eq!(
            differences(&old, &new),
            "Network 10.244.0.0/16 -> 10.245.0.0/16, SubnetLen 24 -> 26, \
             SubnetMin 10.244.1.0 -> 10.245.0.64, SubnetMax 10.244.255.0 -> 10.245.255.192, \
             Backend.VNI 1 -> 2, Backend.Port 8472 -> 4789"
        );
        assert_eq!(differences(&old, &old), "");
    }
}
