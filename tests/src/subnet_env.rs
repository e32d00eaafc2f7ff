//! Reading a node's subnet.env, independently of the product's own parser so
//! that tests check the file format rather than trust it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

/// The variables of a subnet.env file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// `FLANNEL_NETWORK`, e.g. `10.244.0.0/16`.
    pub network: String,
    /// `FLANNEL_SUBNET`: the gateway address with prefix, e.g. `10.244.3.1/24`.
    pub subnet: String,
    pub mtu: u32,
    pub ipmasq: bool,
    /// Every `KEY=value` line, including the ones above.
    pub vars: BTreeMap<String, String>,
}

impl SubnetEnv {
    /// Reads and parses the file; `None` while it does not exist or is
    /// incomplete.
    pub fn read(path: &Path) -> Option<SubnetEnv> {
        SubnetEnv::parse(&std::fs::read_to_string(path).ok()?)
    }

    pub fn parse(text: &str) -> Option<SubnetEnv> {
        let vars: BTreeMap<String, String> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        Some(SubnetEnv {
            network: vars.get("FLANNEL_NETWORK")?.clone(),
            subnet: vars.get("FLANNEL_SUBNET")?.clone(),
            mtu: vars.get("FLANNEL_MTU")?.parse().ok()?,
            ipmasq: vars.get("FLANNEL_IPMASQ").is_some_and(|v| v == "true"),
            vars,
        })
    }

    /// The node's subnet as a network, e.g. `10.244.3.0/24`.
    pub fn subnet_network(&self) -> String {
        let (ip, len) = split_cidr(&self.subnet).expect("FLANNEL_SUBNET is a CIDR");
        format!("{}/{len}", network_of(ip, len))
    }

    /// The gateway (bridge) address, e.g. `10.244.3.1`.
    pub fn gateway(&self) -> Ipv4Addr {
        split_cidr(&self.subnet)
            .expect("FLANNEL_SUBNET is a CIDR")
            .0
    }
}

/// `a.b.c.d/len` split into address and prefix length.
pub fn split_cidr(cidr: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, len) = cidr.split_once('/')?;
    let len: u8 = len.parse().ok()?;
    (len <= 32).then_some(())?;
    Some((ip.parse().ok()?, len))
}

/// The network address of `ip/len`.
pub fn network_of(ip: Ipv4Addr, len: u8) -> Ipv4Addr {
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    };
    Ipv4Addr::from(u32::from(ip) & mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flannels_format() {
        let env = SubnetEnv::parse(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap();
        assert_eq!(env.network, "10.244.0.0/16");
        assert_eq!(env.subnet_network(), "10.244.3.0/24");
        assert_eq!(env.gateway(), Ipv4Addr::new(10, 244, 3, 1));
        assert_eq!((env.mtu, env.ipmasq), (1450, true));
        assert!(SubnetEnv::parse("FLANNEL_NETWORK=10.244.0.0/16\n").is_none());
    }
}
