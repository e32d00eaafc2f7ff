//! CNI protocol types: spec versions, the ADD result, and the error reply.
//!
//! The result is held once, version-neutral, and written in the caller's
//! `cniVersion`: 0.3.0, 0.3.1 and 0.4.0 carry `ips[].version`, 1.0.0 and
//! 1.1.0 drop it. Field order follows what the reference bridge plugin
//! prints, so a diff of the two outputs shows only real differences.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Every spec version this plugin speaks, oldest first (what VERSION lists).
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest version: used for replies when the caller's is unknown.
pub const LATEST: Version = Version::V1_1_0;

/// A supported CNI spec version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl Version {
    /// Parses a `cniVersion`; `None` for versions this plugin does not speak.
    pub fn parse(text: &str) -> Option<Version> {
        Some(match text {
            "0.3.0" => Version::V0_3_0,
            "0.3.1" => Version::V0_3_1,
            "0.4.0" => Version::V0_4_0,
            "1.0.0" => Version::V1_0_0,
            "1.1.0" => Version::V1_1_0,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        SUPPORTED_VERSIONS[self as usize]
    }

    /// Results before 1.0.0 tag every IP with its family.
    pub fn ips_carry_version(self) -> bool {
        self < Version::V1_0_0
    }

    /// CHECK exists from 0.4.0 on.
    pub fn allows_check(self) -> bool {
        self >= Version::V0_4_0
    }

    /// STATUS and GC exist from 1.1.0 on.
    pub fn allows_status_and_gc(self) -> bool {
        self >= Version::V1_1_0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Well-known CNI error codes, and this plugin's own (100 and up).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODING_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// A kernel (netlink) operation failed.
    pub const KERNEL: u32 = 100;
    /// The IP range has no free address.
    pub const RANGE_EXHAUSTED: u32 = 101;
    /// `CNI_IFNAME` already exists in the pod namespace.
    pub const IFNAME_EXISTS: u32 = 102;
    /// The bridge holds an address other than the gateway.
    pub const BRIDGE_ADDRESS: u32 = 103;
    /// The host veth name is taken (by another pod or a leftover).
    pub const HOST_VETH_EXISTS: u32 = 104;
    /// This container and interface already hold an address.
    pub const DUPLICATE_ALLOCATION: u32 = 105;
    /// CHECK found the live state differing from `prevResult`.
    pub const CHECK_MISMATCH: u32 = 106;
    /// The masquerade rules could not be applied or removed.
    pub const FIREWALL: u32 = 107;
    /// The requested IP (CNI_ARGS `IP=`) is taken or outside the range.
    pub const IP_UNAVAILABLE: u32 = 108;
}

/// The error reply: printed as JSON on stdout, with a non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    /// The reply document, in the caller's version.
    pub fn to_json(&self, version: &str) -> String {
        let doc = ErrorDoc {
            cni_version: version,
            code: self.code,
            msg: &self.msg,
            details: &self.details,
        };
        serde_json::to_string_pretty(&doc).expect("strings always serialize")
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

#[derive(Serialize)]
struct ErrorDoc<'a> {
    #[serde(rename = "cniVersion")]
    cni_version: &'a str,
    code: u32,
    msg: &'a str,
    details: &'a str,
}

/// The VERSION reply.
pub fn version_json() -> String {
    serde_json::json!({
        "cniVersion": LATEST.as_str(),
        "supportedVersions": SUPPORTED_VERSIONS,
    })
    .to_string()
}

/// One interface of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

/// One address of a result: `interface` indexes `interfaces`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub interface: Option<usize>,
    pub address: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
}

/// A route of a result (and of `ipam.routes` in the config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// The ADD result, independent of the spec version.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
}

/// The wire form of an IP entry; `version` only before 1.0.0.
#[derive(Serialize, Deserialize)]
struct IpWire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    interface: Option<usize>,
    address: Ipv4Net,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gateway: Option<Ipv4Addr>,
}

#[derive(Serialize)]
struct ResultWire<'a> {
    #[serde(rename = "cniVersion")]
    cni_version: &'a str,
    interfaces: &'a [Interface],
    ips: Vec<IpWire>,
    routes: &'a [Route],
    dns: Value,
}

#[derive(Deserialize)]
struct ResultIn {
    #[serde(default)]
    interfaces: Vec<Interface>,
    #[serde(default)]
    ips: Vec<IpWire>,
    #[serde(default)]
    routes: Vec<Route>,
}

impl CniResult {
    /// The result document in `version`.
    pub fn to_json(&self, version: Version) -> String {
        let ips = self.ips.iter().map(|ip| ip_wire(ip, version)).collect();
        let doc = ResultWire {
            cni_version: version.as_str(),
            interfaces: &self.interfaces,
            ips,
            routes: &self.routes,
            dns: Value::Object(Default::default()),
        };
        serde_json::to_string_pretty(&doc).expect("result always serializes")
    }

    /// Reads a result of any supported version (e.g. `prevResult`). IPv6
    /// entries are not produced by this plugin and are refused.
    pub fn from_value(value: &Value) -> Result<CniResult, String> {
        let wire = ResultIn::deserialize(value).map_err(|e| e.to_string())?;
        let ips = wire.ips.into_iter().map(|ip| IpConfig {
            interface: ip.interface,
            address: ip.address,
            gateway: ip.gateway,
        });
        Ok(CniResult {
            interfaces: wire.interfaces,
            ips: ips.collect(),
            routes: wire.routes,
        })
    }
}

fn ip_wire(ip: &IpConfig, version: Version) -> IpWire {
    IpWire {
        version: version.ips_carry_version().then(|| "4".to_string()),
        interface: ip.interface,
        address: ip.address,
        gateway: ip.gateway,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "cni0".into(),
                    mac: "0e:76:ac:dc:82:3b".into(),
                    sandbox: String::new(),
                },
                Interface {
                    name: "vetha0b93218".into(),
                    mac: "f6:a9:52:5c:ef:62".into(),
                    sandbox: String::new(),
                },
                Interface {
                    name: "eth0".into(),
                    mac: "5a:66:c3:9f:36:fa".into(),
                    sandbox: "/run/netns/pod".into(),
                },
            ],
            ips: vec![IpConfig {
                interface: Some(2),
                address: "10.244.3.2/24".parse().unwrap(),
                gateway: Some("10.244.3.1".parse().unwrap()),
            }],
            routes: vec![
                Route {
                    dst: "10.244.0.0/16".parse().unwrap(),
                    gw: None,
                },
                Route {
                    dst: "0.0.0.0/0".parse().unwrap(),
                    gw: Some("10.244.3.1".parse().unwrap()),
                },
            ],
        }
    }

    /// What the reference bridge + host-local print for the same pod.
    fn reference(version: &str) -> Value {
        let ip_version = if version.starts_with('0') {
            r#""version": "4","#
        } else {
            ""
        };
        let text = format!(
            r#"{{"cniVersion": "{version}",
            "interfaces": [{{"name": "cni0", "mac": "0e:76:ac:dc:82:3b"}},
                {{"name": "vetha0b93218", "mac": "f6:a9:52:5c:ef:62"}},
                {{"name": "eth0", "mac": "5a:66:c3:9f:36:fa", "sandbox": "/run/netns/pod"}}],
            "ips": [{{{ip_version} "interface": 2, "address": "10.244.3.2/24", "gateway": "10.244.3.1"}}],
            "routes": [{{"dst": "10.244.0.0/16"}}, {{"dst": "0.0.0.0/0", "gw": "10.244.3.1"}}],
            "dns": {{}}}}"#
        );
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn result_matches_reference_and_round_trips_per_version() {
        for text in SUPPORTED_VERSIONS {
            let version = Version::parse(text).unwrap();
            let json = sample().to_json(version);
            let value: Value = serde_json::from_str(&json).unwrap();
            assert_eq!(value, reference(text), "version {text}");
            assert_eq!(CniResult::from_value(&value).unwrap(), sample());
        }
    }

    #[test]
    fn result_keeps_reference_field_order() {
        let json = sample().to_json(Version::V0_3_1);
        let order = ["\"version\"", "\"interface\"", "\"address\"", "\"gateway\""];
        let pos: Vec<usize> = order.iter().map(|k| json.find(k).unwrap()).collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{json}");
        assert!(!sample().to_json(Version::V1_0_0).contains("\"version\""));
    }

    #[test]
    fn versions_parse_and_order() {
        assert_eq!(Version::parse("0.3.1"), Some(Version::V0_3_1));
        assert_eq!(Version::parse("0.2.0"), None);
        assert_eq!(Version::parse(""), None);
        for text in SUPPORTED_VERSIONS {
            assert_eq!(Version::parse(text).unwrap().as_str(), text);
        }
        assert!(!Version::V0_3_1.allows_check());
        assert!(Version::V0_4_0.allows_check());
        assert!(!Version::V1_0_0.allows_status_and_gc());
        assert!(Version::V1_1_0.allows_status_and_gc());
    }

    #[test]
    fn error_and_version_documents() {
        let err = CniError::new(7, "bad").with_details("why");
        let value: Value = serde_json::from_str(&err.to_json("0.3.1")).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"cniVersion": "0.3.1", "code": 7, "msg": "bad", "details": "why"})
        );
        let value: Value = serde_json::from_str(&version_json()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"cniVersion": "1.1.0",
                "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
        );
    }
}
