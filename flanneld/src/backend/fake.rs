//! An in-memory kernel for unit tests of the device and reconcile logic.

use std::net::IpAddr;

use flannel_netlink::{
    Addr, Error, FdbEntry, Link, Neighbour, Result, Route, VxlanInfo, VxlanSpec,
};
use ipnet::IpNet;

use super::{Datapath, Op};

#[derive(Debug, Default)]
pub struct FakeKernel {
    pub links: Vec<Link>,
    pub addrs: Vec<Addr>,
    pub neighs: Vec<Neighbour>,
    pub fdb: Vec<FdbEntry>,
    pub routes: Vec<Route>,
    /// Every op applied, in order.
    pub log: Vec<Op>,
    pub created: usize,
    pub round_trips: usize,
    next_index: u32,
}

fn not_found(what: &str) -> Error {
    Error::Kernel {
        op: what.into(),
        errno: libc::ENOENT,
        msg: "not found".into(),
    }
}

impl FakeKernel {
    pub fn new() -> Self {
        FakeKernel {
            next_index: 10,
            ..Default::default()
        }
    }

    fn apply_one(&mut self, index: u32, op: &Op) -> Result<()> {
        match op {
            Op::ReplaceNeigh { ip, mac } => {
                self.neighs.retain(|n| n.ip != IpAddr::V4(*ip));
                self.neighs.push(Neighbour {
                    index,
                    ip: (*ip).into(),
                    mac: Some(*mac),
                    permanent: true,
                });
            }
            Op::DelNeigh { ip } => self.neighs.retain(|n| n.ip != *ip),
            Op::ReplaceFdb { mac, dst } => match self.fdb.iter_mut().find(|f| f.mac == *mac) {
                Some(f) => f.dst = Some((*dst).into()),
                None => self.fdb.push(FdbEntry {
                    index,
                    mac: *mac,
                    dst: Some((*dst).into()),
                    master: None,
                    permanent: true,
                }),
            },
            Op::DelFdb { mac, dst } => {
                let before = self.fdb.len();
                self.fdb
                    .retain(|f| !(f.mac == *mac && (dst.is_none() || f.dst == *dst)));
                if self.fdb.len() == before {
                    return Err(not_found("del fdb"));
                }
            }
            Op::ReplaceRoute(r) => {
                self.routes.retain(|x| x.dst != r.dst);
                self.routes.push(r.clone());
            }
            Op::DelRoute(r) => self.routes.retain(|x| x.dst != r.dst),
        }
        Ok(())
    }
}

impl Datapath for FakeKernel {
    fn link(&mut self, name: &str) -> Result<Option<Link>> {
        Ok(self.links.iter().find(|l| l.name == name).cloned())
    }
    fn link_by_index(&mut self, index: u32) -> Result<Option<Link>> {
        Ok(self.links.iter().find(|l| l.index == index).cloned())
    }
    fn add_vxlan(&mut self, spec: &VxlanSpec) -> Result<()> {
        self.next_index += 1;
        self.created += 1;
        self.links.push(Link {
            index: self.next_index,
            name: spec.name.clone(),
            mac: spec.mac,
            mtu: spec.mtu.unwrap_or(1500),
            kind: Some("vxlan".into()),
            vxlan: Some(VxlanInfo {
                vni: spec.vni,
                port: spec.port,
                local: spec.local,
                link: spec.link,
                learning: spec.learning,
            }),
            ..Default::default()
        });
        Ok(())
    }
    fn del_link(&mut self, index: u32) -> Result<()> {
        self.links.retain(|l| l.index != index);
        self.addrs.retain(|a| a.index != index);
        self.neighs.retain(|n| n.index != index);
        self.fdb.retain(|f| f.index != index);
        self.routes.retain(|r| r.oif != Some(index));
        Ok(())
    }
    fn set_up(&mut self, index: u32) -> Result<()> {
        self.links
            .iter_mut()
            .filter(|l| l.index == index)
            .for_each(|l| l.up = true);
        Ok(())
    }
    fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        self.links
            .iter_mut()
            .filter(|l| l.index == index)
            .for_each(|l| l.mtu = mtu);
        Ok(())
    }
    fn addrs(&mut self, index: u32) -> Result<Vec<Addr>> {
        Ok(self
            .addrs
            .iter()
            .filter(|a| a.index == index)
            .cloned()
            .collect())
    }
    fn add_addr(&mut self, index: u32, net: IpNet) -> Result<()> {
        self.addrs.push(Addr { index, net });
        Ok(())
    }
    fn del_addr(&mut self, index: u32, net: IpNet) -> Result<()> {
        self.addrs.retain(|a| !(a.index == index && a.net == net));
        Ok(())
    }
    fn neighs(&mut self, index: u32) -> Result<Vec<Neighbour>> {
        Ok(self
            .neighs
            .iter()
            .filter(|n| n.index == index)
            .cloned()
            .collect())
    }
    fn fdb(&mut self, index: u32) -> Result<Vec<FdbEntry>> {
        Ok(self
            .fdb
            .iter()
            .filter(|f| f.index == index)
            .cloned()
            .collect())
    }
    fn routes(&mut self) -> Result<Vec<Route>> {
        Ok(self.routes.clone())
    }
    fn apply(&mut self, index: u32, ops: &[Op]) -> Vec<Result<()>> {
        self.round_trips += 1;
        self.log.extend(ops.iter().cloned());
        ops.iter().map(|op| self.apply_one(index, op)).collect()
    }
}
