//! An in-memory kernel for tests of the device and reconcile logic. It
//! behaves as the kernel does where the reconciler can tell: the datapath
//! scenarios ([`super::scenarios`]) run against it and against the real
//! kernel, and must end the same.

use std::net::{IpAddr, Ipv4Addr};

use flannel_netlink::{
    Addr, Error, FdbEntry, Link, Mac, Neighbour, Nexthop, Result, Route, VxlanInfo, VxlanSpec,
};
use ipnet::IpNet;

use super::device::device_name;
use super::nexthop;
use super::scenarios::{self, extra_route, Disturb};
use super::{Datapath, Op};

#[derive(Debug, Default)]
pub struct FakeKernel {
    pub links: Vec<Link>,
    pub addrs: Vec<Addr>,
    pub neighs: Vec<Neighbour>,
    pub fdb: Vec<FdbEntry>,
    /// As sent: a route through a nexthop has only its id.
    pub routes: Vec<Route>,
    pub nexthops: Vec<Nexthop>,
    /// A kernel before 5.3: every nexthop request fails with EOPNOTSUPP.
    pub no_nexthops: bool,
    /// `net.ipv4.nexthop_compat_mode=0`: dumps of routes through a nexthop
    /// show only its id, not its gateway and device.
    pub no_compat: bool,
    /// Nexthop dumps asked for.
    pub nexthop_dumps: usize,
    /// Every op applied, in order.
    pub log: Vec<Op>,
    pub created: usize,
    pub round_trips: usize,
    next_index: u32,
}

fn kernel_error(what: &str, errno: i32) -> Error {
    Error::Kernel {
        op: what.into(),
        errno,
        msg: std::io::Error::from_raw_os_error(errno).to_string(),
    }
}

fn not_found(what: &str) -> Error {
    kernel_error(what, libc::ENOENT)
}

/// A route's metric as the kernel keys it (none is 0).
fn metric(r: &Route) -> u32 {
    r.metric.unwrap_or(0)
}

impl FakeKernel {
    pub fn new() -> Self {
        FakeKernel {
            next_index: 10,
            ..Default::default()
        }
    }

    /// A kernel with one more interface, up: the public one.
    pub fn with_nic(name: &str, index: u32) -> Self {
        let mut k = FakeKernel::new();
        k.links.push(Link {
            index,
            name: name.into(),
            mtu: 1500,
            up: true,
            ..Default::default()
        });
        k
    }

    /// Makes a scenario's change of someone else, with what the kernel
    /// does along with it.
    pub fn disturb(&mut self, d: &Disturb, nic: u32) {
        let name = device_name(scenarios::VNI);
        let Some(dev) = self.links.iter().find(|l| l.name == name) else {
            panic!("{d:?}: no {name}");
        };
        let dev = dev.index;
        match d {
            Disturb::DelRoute(dst) => {
                // What `ip route del` sends: no protocol, no gateway.
                let mut r = Route::new(IpNet::V4(*dst));
                r.protocol = 0;
                self.del_route(&r).expect("a route to delete");
            }
            Disturb::DelNeigh(ip) => self.neighs.retain(|n| n.ip != IpAddr::V4(*ip)),
            Disturb::DelFdb(mac) => self.fdb.retain(|f| f.mac != *mac),
            Disturb::DelNexthops => {
                let ours: Vec<u32> = (self.nexthops.iter())
                    .filter(|n| n.protocol == nexthop::PROTOCOL)
                    .map(|n| n.id)
                    .collect();
                ours.into_iter()
                    .for_each(|id| self.del_nexthop(id).expect("listed"));
            }
            Disturb::DelDevice => self.del_link(dev).expect("device"),
            Disturb::SetDown => self.set_down(dev),
            Disturb::SetMtu(mtu) => self.set_mtu(dev, *mtu).expect("device"),
            _ => self.add(d, dev, nic),
        }
    }

    /// The scenario changes that add an entry.
    fn add(&mut self, d: &Disturb, dev: u32, nic: u32) {
        match d {
            Disturb::AddAddr(net) => self.addrs.push(Addr {
                index: dev,
                net: IpNet::V4(*net),
            }),
            Disturb::AddNeigh { ip, mac, permanent } => {
                self.neighs.retain(|n| n.ip != IpAddr::V4(*ip));
                self.neighs.push(Neighbour {
                    index: dev,
                    ip: (*ip).into(),
                    mac: Some(*mac),
                    permanent: *permanent,
                });
            }
            Disturb::AddFdb {
                mac,
                dst,
                permanent,
            } => self.fdb.push(FdbEntry {
                index: dev,
                mac: *mac,
                dst: Some((*dst).into()),
                master: None,
                permanent: *permanent,
            }),
            Disturb::AddRoute(r) => self.routes.push(extra_route(r, dev, nic)),
            other => unreachable!("not an addition: {other:?}"),
        }
    }

    /// A device going down loses its routes, the nexthops through it (and
    /// their routes) and its neighbours; FDB entries and addresses stay.
    fn set_down(&mut self, index: u32) {
        self.links
            .iter_mut()
            .filter(|l| l.index == index)
            .for_each(|l| l.up = false);
        self.routes.retain(|r| r.oif != Some(index));
        self.neighs.retain(|n| n.index != index);
        let gone: Vec<u32> = (self.nexthops.iter())
            .filter(|n| n.oif == Some(index))
            .map(|n| n.id)
            .collect();
        gone.into_iter()
            .for_each(|id| self.del_nexthop(id).expect("listed"));
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
            Op::ReplaceFdb { mac, dst } => self.replace_fdb(index, *mac, *dst),
            Op::DelFdb { mac, dst } => {
                let before = self.fdb.len();
                self.fdb
                    .retain(|f| !(f.mac == *mac && (dst.is_none() || f.dst == *dst)));
                if self.fdb.len() == before {
                    return Err(not_found("del fdb"));
                }
            }
            Op::ReplaceNexthop(nh) => self.replace_nexthop(nh)?,
            Op::DelNexthop { id } => self.del_nexthop(*id)?,
            Op::ReplaceRoute(r) => {
                if r.nhid
                    .is_some_and(|id| !self.nexthops.iter().any(|n| n.id == id))
                {
                    return Err(kernel_error("replace route", libc::EINVAL));
                }
                // In place: the kernel swaps the entry with the same
                // destination and metric, there is no moment without a route.
                match self
                    .routes
                    .iter_mut()
                    .find(|x| x.dst == r.dst && metric(x) == metric(r))
                {
                    Some(x) => *x = r.clone(),
                    None => self.routes.push(r.clone()),
                }
            }
            Op::DelRoute(r) => self.del_route(r)?,
        }
        Ok(())
    }

    /// The entry for `mac` gets `dst` as its first destination and becomes
    /// permanent (the state belongs to the entry, not to a destination).
    fn replace_fdb(&mut self, index: u32, mac: Mac, dst: Ipv4Addr) {
        let mut rows = self.fdb.iter_mut().filter(|f| f.mac == mac).peekable();
        if rows.peek().is_none() {
            self.fdb.push(FdbEntry {
                index,
                mac,
                dst: Some(dst.into()),
                master: None,
                permanent: true,
            });
            return;
        }
        for (i, f) in rows.enumerate() {
            if i == 0 {
                f.dst = Some(dst.into());
            }
            f.permanent = true;
        }
    }

    /// Like the kernel: the route of lowest metric to `r.dst` that matches
    /// every attribute the request gives. A request naming a gateway or a
    /// device never matches a route through a nexthop object.
    fn del_route(&mut self, r: &Route) -> Result<()> {
        let matches = |x: &Route| {
            let target = match r.nhid {
                Some(id) => x.nhid == Some(id),
                None if r.gateway.is_some() || r.oif.is_some() => {
                    x.nhid.is_none()
                        && r.gateway.is_none_or(|g| x.gateway == Some(g))
                        && r.oif.is_none_or(|o| x.oif == Some(o))
                }
                None => true,
            };
            x.dst == r.dst
                && target
                && r.metric.is_none_or(|m| m == 0 || metric(x) == m)
                && r.src.is_none_or(|s| x.src == Some(s))
                && (r.protocol == 0 || x.protocol == r.protocol)
        };
        let found = (self.routes.iter().enumerate())
            .filter(|(_, x)| matches(x))
            .min_by_key(|(_, x)| metric(x))
            .map(|(i, _)| i);
        match found {
            Some(i) => {
                self.routes.remove(i);
                Ok(())
            }
            None => Err(kernel_error("delete route", libc::ESRCH)),
        }
    }

    fn replace_nexthop(&mut self, nh: &Nexthop) -> Result<()> {
        if self.no_nexthops {
            return Err(kernel_error("replace nexthop", libc::EOPNOTSUPP));
        }
        match self.nexthops.iter_mut().find(|n| n.id == nh.id) {
            Some(n) => *n = nh.clone(),
            None => self.nexthops.push(nh.clone()),
        }
        Ok(())
    }

    /// Like the kernel, takes the routes using the nexthop along.
    pub fn del_nexthop(&mut self, id: u32) -> Result<()> {
        let before = self.nexthops.len();
        self.nexthops.retain(|n| n.id != id);
        if self.nexthops.len() == before {
            return Err(not_found("del nexthop"));
        }
        self.routes.retain(|r| r.nhid != Some(id));
        Ok(())
    }

    /// A route as a dump shows it.
    fn dumped(&self, r: &Route) -> Route {
        let mut r = r.clone();
        let nh = r
            .nhid
            .and_then(|id| self.nexthops.iter().find(|n| n.id == id));
        if let Some(nh) = nh.filter(|_| !self.no_compat) {
            (r.gateway, r.oif, r.onlink) = (nh.gateway, nh.oif, nh.onlink);
        }
        r
    }
}

impl Datapath for FakeKernel {
    fn link(&mut self, name: &str) -> Result<Option<Link>> {
        Ok(self.links.iter().find(|l| l.name == name).cloned())
    }
    fn link_by_index(&mut self, index: u32) -> Result<Option<Link>> {
        Ok(self.links.iter().find(|l| l.index == index).cloned())
    }
    fn links(&mut self) -> Result<Vec<Link>> {
        Ok(self.links.clone())
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
        let gone: Vec<u32> = self
            .nexthops
            .iter()
            .filter(|n| n.oif == Some(index))
            .map(|n| n.id)
            .collect();
        for id in gone {
            self.del_nexthop(id)?;
        }
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
        Ok(self.routes.iter().map(|r| self.dumped(r)).collect())
    }
    fn nexthops(&mut self) -> Result<Vec<Nexthop>> {
        self.nexthop_dumps += 1;
        if self.no_nexthops {
            return Err(kernel_error("dump nexthops", libc::EOPNOTSUPP));
        }
        Ok(self.nexthops.clone())
    }
    fn apply(&mut self, index: u32, ops: &[Op]) -> Vec<Result<()>> {
        self.round_trips += 1;
        self.log.extend(ops.iter().cloned());
        ops.iter().map(|op| self.apply_one(index, op)).collect()
    }
}
