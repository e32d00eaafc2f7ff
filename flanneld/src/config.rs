//! The network configuration at `<prefix>/config`, parsed and validated as
//! flannel does (`pkg/subnet/config.go`): field names match
//! case-insensitively (Go's encoding/json), unknown fields are ignored,
//! SubnetLen/SubnetMin/SubnetMax get flannel's defaults, and every error
//! names the field at fault.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("network config is not a JSON object: {0}")]
    Json(String),
    #[error("network config: {field}: {msg}")]
    Field { field: &'static str, msg: String },
}

fn bad(field: &'static str, msg: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field,
        msg: msg.into(),
    }
}

/// The validated cluster network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    pub network: Ipv4Net,
    pub subnet_len: u8,
    /// First and last subnet addresses that may be leased (inclusive).
    pub subnet_min: Ipv4Addr,
    pub subnet_max: Ipv4Addr,
    pub backend: VxlanConfig,
    /// flannel's `EnableNFTables`: masquerade and forward rules in
    /// nftables (unless `--firewall` says otherwise).
    pub enable_nftables: bool,
}

/// The `Backend` object of a `vxlan` network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanConfig {
    pub vni: u32,
    pub port: u16,
    /// Device MTU; `None`: the public interface's MTU minus 50.
    pub mtu: Option<u32>,
    /// flannel's `DirectRouting`: accepted, but peers are always reached
    /// through VXLAN (which they accept whatever their own setting).
    pub direct_routing: bool,
}

/// The VXLAN default UDP port (the Linux kernel's and flannel's).
pub const DEFAULT_VXLAN_PORT: u16 = 8472;

impl NetworkConfig {
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let root: Value =
            serde_json::from_str(text).map_err(|e| ConfigError::Json(e.to_string()))?;
        let obj = root
            .as_object()
            .ok_or_else(|| ConfigError::Json("expected an object".into()))?;
        if get(obj, "EnableIPv6").and_then(Value::as_bool) == Some(true) {
            return Err(bad("EnableIPv6", "IPv6 networks are not supported"));
        }
        let network = parse_network(obj)?;
        let subnet_len = parse_subnet_len(obj, network)?;
        let size = 1u32 << (32 - u32::from(subnet_len));
        let default_min = Ipv4Addr::from(u32::from(network.network()) + size);
        // Not broadcast + 1 - size: that overflows for a network ending at
        // 255.255.255.255.
        let default_max = Ipv4Addr::from(u32::from(network.broadcast()) - (size - 1));
        let subnet_min = parse_bound(obj, "SubnetMin", network, subnet_len, default_min)?;
        let subnet_max = parse_bound(obj, "SubnetMax", network, subnet_len, default_max)?;
        if subnet_min > subnet_max {
            return Err(bad(
                "SubnetMin",
                format!("{subnet_min} is above SubnetMax {subnet_max}"),
            ));
        }
        let backend = VxlanConfig::parse(get(obj, "Backend"))?;
        let enable_nftables = match get(obj, "EnableNFTables") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(bad(
                    "EnableNFTables",
                    format!("expected true or false, got {other}"),
                ))
            }
        };
        Ok(NetworkConfig {
            network,
            subnet_len,
            subnet_min,
            subnet_max,
            backend,
            enable_nftables,
        })
    }

    /// True when `subnet` may be leased under this config (flannel's
    /// `isSubnetConfigCompat`): right length, between SubnetMin and SubnetMax.
    pub fn accepts(&self, subnet: Ipv4Net) -> bool {
        subnet.prefix_len() == self.subnet_len
            && subnet.addr() == subnet.network()
            && (self.subnet_min..=self.subnet_max).contains(&subnet.network())
    }

    /// Every leasable subnet, in address order.
    pub fn subnets(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        let size = 1u64 << (32 - u32::from(self.subnet_len));
        let (min, max) = (
            u64::from(u32::from(self.subnet_min)),
            u64::from(u32::from(self.subnet_max)),
        );
        (min..=max).step_by(size as usize).map(move |a| {
            Ipv4Net::new(Ipv4Addr::from(a as u32), self.subnet_len).expect("valid prefix")
        })
    }
}

/// Looks a field up the way Go's encoding/json does: exact name first,
/// then case-insensitively.
fn get<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

fn parse_network(obj: &Map<String, Value>) -> Result<Ipv4Net, ConfigError> {
    let raw = match get(obj, "Network") {
        Some(Value::String(s)) if !s.is_empty() => s,
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return Err(bad(
                "Network",
                "missing: please define the cluster network, e.g. \"10.244.0.0/16\"",
            ))
        }
        Some(other) => {
            return Err(bad(
                "Network",
                format!("expected a CIDR string, got {other}"),
            ))
        }
    };
    let net: Ipv4Net = raw
        .parse()
        .map_err(|_| bad("Network", format!("{raw:?} is not an IPv4 CIDR")))?;
    if net.prefix_len() > 28 {
        return Err(bad(
            "Network",
            format!("{net} is too small: the smallest useful network is a /28"),
        ));
    }
    Ok(net.trunc())
}

fn parse_subnet_len(obj: &Map<String, Value>, network: Ipv4Net) -> Result<u8, ConfigError> {
    let len = match get(obj, "SubnetLen") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_u64()
            .ok_or_else(|| bad("SubnetLen", format!("expected a number, got {v}")))?,
    };
    if len == 0 {
        // flannel: a /24 per node when the network has room for at least
        // four of them, otherwise a quarter of the network.
        return Ok(if network.prefix_len() <= 22 {
            24
        } else {
            network.prefix_len() + 2
        });
    }
    if len > 30 {
        return Err(bad(
            "SubnetLen",
            format!("{len} is too long: must be /30 or shorter"),
        ));
    }
    if len < u64::from(network.prefix_len()) + 2 {
        return Err(bad(
            "SubnetLen",
            format!("/{len} leaves room for fewer than four subnets in {network}"),
        ));
    }
    Ok(len as u8)
}

fn parse_bound(
    obj: &Map<String, Value>,
    field: &'static str,
    network: Ipv4Net,
    subnet_len: u8,
    default: Ipv4Addr,
) -> Result<Ipv4Addr, ConfigError> {
    let addr: Ipv4Addr = match get(obj, field) {
        None | Some(Value::Null) => return Ok(default),
        Some(Value::String(s)) if s.is_empty() => return Ok(default),
        Some(Value::String(s)) => s
            .parse()
            .map_err(|_| bad(field, format!("{s:?} is not an IPv4 address")))?,
        Some(other) => {
            return Err(bad(
                field,
                format!("expected an address string, got {other}"),
            ))
        }
    };
    if !network.contains(&addr) {
        return Err(bad(
            field,
            format!("{addr} is not inside Network {network}"),
        ));
    }
    let mask = u32::MAX << (32 - u32::from(subnet_len));
    if u32::from(addr) & mask != u32::from(addr) {
        return Err(bad(
            field,
            format!("{addr} is not on a /{subnet_len} boundary"),
        ));
    }
    Ok(addr)
}

impl VxlanConfig {
    fn parse(backend: Option<&Value>) -> Result<Self, ConfigError> {
        let empty = Map::new();
        let obj = match backend {
            None | Some(Value::Null) => &empty,
            Some(Value::Object(o)) => o,
            Some(other) => return Err(bad("Backend", format!("expected an object, got {other}"))),
        };
        let ty = match get(obj, "Type") {
            None | Some(Value::Null) => "udp".to_owned(),
            Some(Value::String(s)) => s.to_ascii_lowercase(),
            Some(other) => {
                return Err(bad(
                    "Backend.Type",
                    format!("expected a string, got {other}"),
                ))
            }
        };
        if ty != "vxlan" {
            return Err(bad(
                "Backend.Type",
                format!("{ty:?} is not supported: only \"vxlan\" is"),
            ));
        }
        let vni = uint(obj, "VNI", "Backend.VNI", 1)?;
        if vni >= 1 << 24 {
            return Err(bad(
                "Backend.VNI",
                format!("{vni} is out of range (0-16777215)"),
            ));
        }
        let port = uint(obj, "Port", "Backend.Port", 0)?;
        if port > u64::from(u16::MAX) {
            return Err(bad("Backend.Port", format!("{port} is not a UDP port")));
        }
        let mtu = uint(obj, "MTU", "Backend.MTU", 0)?;
        if mtu != 0 && !(68..=65535).contains(&mtu) {
            return Err(bad(
                "Backend.MTU",
                format!("{mtu} is out of range (68-65535)"),
            ));
        }
        Ok(VxlanConfig {
            vni: vni as u32,
            port: if port == 0 {
                DEFAULT_VXLAN_PORT
            } else {
                port as u16
            },
            mtu: (mtu != 0).then_some(mtu as u32),
            direct_routing: get(obj, "DirectRouting").and_then(Value::as_bool) == Some(true),
        })
    }
}

fn uint(
    obj: &Map<String, Value>,
    name: &str,
    field: &'static str,
    default: u64,
) -> Result<u64, ConfigError> {
    match get(obj, name) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .ok_or_else(|| bad(field, format!("expected a non-negative integer, got {v}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(text: &str) -> &'static str {
        match NetworkConfig::parse(text).unwrap_err() {
            ConfigError::Field { field, .. } => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn flannel_defaults() {
        let c = NetworkConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#)
            .unwrap();
        assert_eq!(c.subnet_len, 24);
        assert_eq!(c.subnet_min.to_string(), "10.244.1.0");
        assert_eq!(c.subnet_max.to_string(), "10.244.255.0");
        assert_eq!(
            c.backend,
            VxlanConfig {
                vni: 1,
                port: 8472,
                mtu: None,
                direct_routing: false,
            }
        );
        assert_eq!(c.subnets().count(), 255);
        assert!(!c.enable_nftables);

        let small = NetworkConfig::parse(r#"{"Network":"10.1.2.0/26","Backend":{"Type":"vxlan"}}"#)
            .unwrap();
        assert_eq!(small.subnet_len, 28);
        assert_eq!(small.subnet_min.to_string(), "10.1.2.16");
        assert_eq!(small.subnet_max.to_string(), "10.1.2.48");
    }

    #[test]
    fn a_network_at_the_top_of_the_address_space() {
        let c = NetworkConfig::parse(r#"{"Network":"255.255.0.0/16","Backend":{"Type":"vxlan"}}"#)
            .unwrap();
        assert_eq!(c.subnet_max.to_string(), "255.255.255.0");
        let all =
            NetworkConfig::parse(r#"{"Network":"0.0.0.0/0","Backend":{"Type":"vxlan"}}"#).unwrap();
        assert_eq!(all.subnet_min.to_string(), "0.0.1.0");
        assert_eq!(all.subnet_max.to_string(), "255.255.255.0");
    }

    #[test]
    fn explicit_values_and_case_insensitive_names() {
        let c = NetworkConfig::parse(
            r#"{"network":"10.5.0.0/16","subnetLen":26,"SubnetMin":"10.5.1.0","SubnetMax":"10.5.2.192",
                "Extra":1,"Backend":{"type":"VXLAN","VNI":4096,"Port":4789,"MTU":1400,"GBP":false,"DirectRouting":true}}"#,
        )
        .unwrap();
        assert_eq!(c.subnet_len, 26);
        assert_eq!(c.subnets().count(), 8);
        assert_eq!(
            c.backend,
            VxlanConfig {
                vni: 4096,
                port: 4789,
                mtu: Some(1400),
                direct_routing: true,
            }
        );
        assert!(c.accepts("10.5.2.192/26".parse().unwrap()));
        assert!(!c.accepts("10.5.3.0/26".parse().unwrap()));
        assert!(!c.accepts("10.5.1.0/24".parse().unwrap()));
    }

    #[test]
    fn enable_nftables_is_flannels_bool() {
        let vx = r#""Network":"10.0.0.0/16","Backend":{"Type":"vxlan"}"#;
        let c = NetworkConfig::parse(&format!(r#"{{{vx},"EnableNFTables":true}}"#)).unwrap();
        assert!(c.enable_nftables);
        let c = NetworkConfig::parse(&format!(r#"{{{vx},"enablenftables":false}}"#)).unwrap();
        assert!(!c.enable_nftables);
        assert_eq!(
            field_of(&format!(r#"{{{vx},"EnableNFTables":"yes"}}"#)),
            "EnableNFTables"
        );
    }

    #[test]
    fn each_bad_field_is_named() {
        let vx = r#""Backend":{"Type":"vxlan"}"#;
        assert_eq!(field_of(&format!(r#"{{{vx}}}"#)), "Network");
        assert_eq!(
            field_of(&format!(r#"{{"Network":"10.0.0.0/30",{vx}}}"#)),
            "Network"
        );
        assert_eq!(
            field_of(&format!(r#"{{"Network":"banana",{vx}}}"#)),
            "Network"
        );
        assert_eq!(
            field_of(&format!(
                r#"{{"Network":"10.0.0.0/16","SubnetLen":31,{vx}}}"#
            )),
            "SubnetLen"
        );
        assert_eq!(
            field_of(&format!(
                r#"{{"Network":"10.0.0.0/16","SubnetLen":17,{vx}}}"#
            )),
            "SubnetLen"
        );
        assert_eq!(
            field_of(&format!(
                r#"{{"Network":"10.0.0.0/16","SubnetLen":"24",{vx}}}"#
            )),
            "SubnetLen"
        );
        assert_eq!(
            field_of(&format!(
                r#"{{"Network":"10.0.0.0/16","SubnetMin":"10.1.0.0",{vx}}}"#
            )),
            "SubnetMin"
        );
        assert_eq!(
            field_of(&format!(
                r#"{{"Network":"10.0.0.0/16","SubnetMax":"10.0.0.5",{vx}}}"#
            )),
            "SubnetMax"
        );
        assert_eq!(field_of(r#"{"Network":"10.0.0.0/16"}"#), "Backend.Type");
        assert_eq!(
            field_of(r#"{"Network":"10.0.0.0/16","Backend":{"Type":"host-gw"}}"#),
            "Backend.Type"
        );
        assert_eq!(
            field_of(r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}"#),
            "Backend.VNI"
        );
        assert_eq!(
            field_of(r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","Port":70000}}"#),
            "Backend.Port"
        );
        assert_eq!(
            field_of(r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","MTU":20}}"#),
            "Backend.MTU"
        );
        assert!(matches!(
            NetworkConfig::parse("[1]"),
            Err(ConfigError::Json(_))
        ));
        assert!(matches!(
            NetworkConfig::parse("{"),
            Err(ConfigError::Json(_))
        ));
    }
}
