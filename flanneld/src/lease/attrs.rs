//! Lease values and keys, byte-compatible with flannel's JSON.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// flannel's `LeaseAttrs`. Field order and `null` for a missing IPv6
/// address follow Go's `json.Marshal` of that struct.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseAttrs {
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    #[serde(rename = "PublicIPv6", default)]
    pub public_ipv6: Option<String>,
    #[serde(
        rename = "BackendType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub backend_type: String,
    #[serde(
        rename = "BackendData",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_data: Option<serde_json::Value>,
    #[serde(
        rename = "BackendV6Data",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_v6_data: Option<serde_json::Value>,
}

/// The `BackendData` of a vxlan lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanData {
    pub vni: u32,
    pub vtep_mac: [u8; 6],
}

impl LeaseAttrs {
    /// The attributes this node publishes.
    pub fn vxlan(public_ip: Ipv4Addr, data: VxlanData) -> Self {
        // Built by hand so the key order is flannel's (VNI, then VtepMAC).
        let json = format!(
            r#"{{"VNI":{},"VtepMAC":"{}"}}"#,
            data.vni,
            format_mac(&data.vtep_mac)
        );
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: "vxlan".into(),
            backend_data: Some(serde_json::from_str(&json).expect("valid JSON")),
            backend_v6_data: None,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("lease attributes always serialize")
    }

    /// The vxlan data, when this is a well-formed vxlan lease.
    pub fn vxlan_data(&self) -> Result<VxlanData, String> {
        if self.backend_type != "vxlan" {
            return Err(format!("backend type {:?} is not vxlan", self.backend_type));
        }
        let data = self.backend_data.as_ref().ok_or("no BackendData")?;
        let vni = data
            .get("VNI")
            .and_then(serde_json::Value::as_u64)
            .filter(|v| *v < 1 << 24)
            .ok_or("BackendData.VNI missing or invalid")?;
        let mac = data
            .get("VtepMAC")
            .and_then(serde_json::Value::as_str)
            .and_then(parse_mac)
            .ok_or("BackendData.VtepMAC missing or invalid")?;
        Ok(VxlanData {
            vni: vni as u32,
            vtep_mac: mac,
        })
    }
}

/// `10.244.3.0/24` → `10.244.3.0-24` (flannel's `MakeSubnetKey`).
pub fn subnet_key(subnet: Ipv4Net) -> String {
    format!("{}-{}", subnet.network(), subnet.prefix_len())
}

/// The subnet named by the last path element of a lease key, if any.
/// Accepts flannel's dual-stack form `10.244.3.0-24&fc00::-64` (IPv4 part).
pub fn subnet_from_key(key: &str) -> Option<Ipv4Net> {
    let last = key.rsplit('/').next()?;
    let v4 = last.split('&').next()?;
    let (ip, len) = v4.split_once('-')?;
    let net = Ipv4Net::new(ip.parse().ok()?, len.parse().ok()?).ok()?;
    (net.network() == net.addr()).then_some(net)
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    let parts: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut out {
        let p = parts.next()?;
        // from_str_radix alone would take a sign: "+f".
        if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLANNEL: &str = r#"{"PublicIP":"192.0.2.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;

    #[test]
    fn json_is_byte_for_byte_flannels() {
        let mac = parse_mac("c6:d2:32:6f:8f:44").unwrap();
        let attrs = LeaseAttrs::vxlan(
            "192.0.2.11".parse().unwrap(),
            VxlanData {
                vni: 1,
                vtep_mac: mac,
            },
        );
        assert_eq!(attrs.to_json(), FLANNEL);
        let back: LeaseAttrs = serde_json::from_str(FLANNEL).unwrap();
        assert_eq!(back, attrs);
        assert_eq!(
            back.vxlan_data().unwrap(),
            VxlanData {
                vni: 1,
                vtep_mac: mac
            }
        );
    }

    #[test]
    fn keys_round_trip() {
        let net: Ipv4Net = "10.244.3.0/24".parse().unwrap();
        assert_eq!(subnet_key(net), "10.244.3.0-24");
        assert_eq!(
            subnet_from_key("/coreos.com/network/subnets/10.244.3.0-24"),
            Some(net)
        );
        assert_eq!(
            subnet_from_key("/p/subnets/10.244.3.0-24&fc00::-64"),
            Some(net)
        );
        assert_eq!(subnet_from_key("/p/subnets/10.244.3.1-24"), None);
        assert_eq!(subnet_from_key("/p/subnets/junk"), None);
    }

    #[test]
    fn bad_backend_data_is_reported() {
        let other: LeaseAttrs =
            serde_json::from_str(r#"{"PublicIP":"192.0.2.1","BackendType":"host-gw"}"#).unwrap();
        assert!(other.vxlan_data().is_err());
        let bad_mac: LeaseAttrs = serde_json::from_str(
            r#"{"PublicIP":"192.0.2.1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"zz"}}"#,
        )
        .unwrap();
        assert!(bad_mac.vxlan_data().unwrap_err().contains("VtepMAC"));
        assert_eq!(parse_mac("c6:d2:32:6f:8f"), None);
        assert_eq!(parse_mac("c6:d2:32:6f:8f:44:00"), None);
        assert_eq!(parse_mac("+6:d2:32:6f:8f:44"), None);
    }
}
