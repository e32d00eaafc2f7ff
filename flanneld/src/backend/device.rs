//! The `flannel.<VNI>` device: reused when compatible, else recreated; the
//! device of a VNI the network config no longer has is removed.

use std::net::{IpAddr, Ipv4Addr};

use flannel_netlink::{Link, Mac, Result, VxlanSpec};
use ipnet::{IpNet, Ipv4Net};

use super::Datapath;

/// The device this node needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    pub vni: u32,
    pub port: u16,
    /// The public interface and its address (the tunnel's underlay).
    pub link: u32,
    pub local: Ipv4Addr,
    pub mtu: u32,
    /// Used when the device has to be created.
    pub mac: Mac,
    /// Our subnet: the device carries its `.0/32`.
    pub subnet: Ipv4Net,
}

impl DeviceSpec {
    pub fn name(&self) -> String {
        device_name(self.vni)
    }

    pub fn address(&self) -> IpNet {
        IpNet::V4(Ipv4Net::new(self.subnet.network(), 32).expect("/32 is valid"))
    }

    /// Whether an existing device can be kept: same tunnel parameters.
    /// MTU and link state can be fixed in place.
    pub fn accepts(&self, link: &Link) -> bool {
        let Some(vx) = &link.vxlan else { return false };
        vx.vni == self.vni
            && vx.port == self.port
            && vx.local == Some(self.local)
            && vx.link == Some(self.link)
            && !vx.learning
    }
}

pub fn device_name(vni: u32) -> String {
    format!("flannel.{vni}")
}

/// Makes the device exist, up, with the right MTU and exactly our address.
/// Returns its index.
pub fn ensure<D: Datapath>(dp: &mut D, spec: &DeviceSpec) -> Result<u32> {
    let link = match dp.link(&spec.name())? {
        Some(l) if spec.accepts(&l) => l,
        Some(l) => {
            crate::warn!(
                "{} exists with other parameters ({:?}): recreating it",
                l.name,
                l.vxlan
            );
            dp.del_link(l.index)?;
            create(dp, spec)?
        }
        None => create(dp, spec)?,
    };
    if link.mtu != spec.mtu {
        dp.set_mtu(link.index, spec.mtu)?;
    }
    ensure_address(dp, link.index, spec.address())?;
    if !link.up {
        dp.set_up(link.index)?;
    }
    Ok(link.index)
}

fn create<D: Datapath>(dp: &mut D, spec: &DeviceSpec) -> Result<Link> {
    crate::info!(
        "creating {} (VNI {}, port {}, local {})",
        spec.name(),
        spec.vni,
        spec.port,
        spec.local
    );
    dp.add_vxlan(&VxlanSpec {
        name: spec.name(),
        vni: spec.vni,
        port: spec.port,
        local: Some(spec.local),
        link: Some(spec.link),
        mtu: Some(spec.mtu),
        mac: Some(spec.mac),
        learning: false,
    })?;
    dp.link(&spec.name())?
        .ok_or_else(|| flannel_netlink::Error::Kernel {
            op: format!("find {} after creating it", spec.name()),
            errno: libc::ENODEV,
            msg: "no such device".into(),
        })
}

/// Adds our `.0/32` and removes any other IPv4 address (a previous subnet's).
fn ensure_address<D: Datapath>(dp: &mut D, index: u32, want: IpNet) -> Result<()> {
    let have = dp.addrs(index)?;
    for a in have
        .iter()
        .filter(|a| a.net != want && matches!(a.net.addr(), IpAddr::V4(_)))
    {
        dp.del_addr(index, a.net)?;
    }
    if !have.iter().any(|a| a.net == want) {
        dp.add_addr(index, want)?;
    }
    Ok(())
}

/// Removes the VXLAN devices `flannel.<N>` of another VNI that tunnel from
/// our local address: ours, left behind when the network's VNI changed
/// (their routes would otherwise stay too). Another local address, another
/// name or another kind is someone else's. Returns the names removed.
pub fn remove_stale<D: Datapath>(dp: &mut D, spec: &DeviceSpec) -> Result<Vec<String>> {
    let stale: Vec<Link> = (dp.links()?.into_iter())
        .filter(|l| is_flannel_name(&l.name) && l.name != spec.name())
        .filter(|l| {
            l.vxlan
                .as_ref()
                .is_some_and(|v| v.local == Some(spec.local))
        })
        .collect();
    for l in &stale {
        crate::info!(
            "removing {}: a device of another VNI from our address",
            l.name
        );
        dp.del_link(l.index)?;
    }
    Ok(stale.into_iter().map(|l| l.name).collect())
}

/// `flannel.<N>`, as [`device_name`] makes them.
fn is_flannel_name(name: &str) -> bool {
    name.strip_prefix("flannel.")
        .and_then(|n| n.parse::<u32>().ok())
        .is_some_and(|vni| device_name(vni) == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::fake::FakeKernel;

    fn spec(vni: u32) -> DeviceSpec {
        DeviceSpec {
            vni,
            port: 8472,
            link: 2,
            local: Ipv4Addr::new(192, 0, 2, 11),
            mtu: 1450,
            mac: [2, 0, 0, 0, 0, 1],
            subnet: "10.244.1.0/24".parse().unwrap(),
        }
    }

    #[test]
    fn devices_of_another_vni_from_our_address_are_removed() {
        let mut k = FakeKernel::with_nic("eth0", 2);
        for vni in [1, 7] {
            ensure(&mut k, &spec(vni)).unwrap();
        }
        // Not ours: another local address, a name flanneld does not make.
        let other = DeviceSpec {
            local: Ipv4Addr::new(192, 0, 2, 99),
            ..spec(9)
        };
        ensure(&mut k, &other).unwrap();
        k.add_vxlan(&VxlanSpec {
            name: "flannel.03".into(),
            vni: 3,
            port: 8472,
            local: Some(spec(3).local),
            link: Some(2),
            mtu: None,
            mac: None,
            learning: false,
        })
        .unwrap();
        assert_eq!(remove_stale(&mut k, &spec(7)).unwrap(), ["flannel.1"]);
        let names: Vec<&str> = k.links.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["eth0", "flannel.7", "flannel.9", "flannel.03"]);
        assert_eq!(
            remove_stale(&mut k, &spec(7)).unwrap(),
            Vec::<String>::new()
        );
    }
}
