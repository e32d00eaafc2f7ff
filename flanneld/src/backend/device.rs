//! The `flannel.<VNI>` device: reused when compatible, else recreated.

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
