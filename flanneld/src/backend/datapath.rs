//! What the reconciler needs from the kernel, behind a trait so the diff
//! and device logic can be tested against a fake.

use std::net::{IpAddr, Ipv4Addr};

use flannel_netlink::{
    Addr, Batch, FdbEntry, Handle, Link, Mac, Neighbour, Nexthop, Result, Route, VxlanSpec,
};
use ipnet::IpNet;

/// One change to the per-peer state of the VXLAN device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    ReplaceNeigh { ip: Ipv4Addr, mac: Mac },
    DelNeigh { ip: IpAddr },
    ReplaceFdb { mac: Mac, dst: Ipv4Addr },
    DelFdb { mac: Mac, dst: Option<IpAddr> },
    ReplaceNexthop(Nexthop),
    DelNexthop { id: u32 },
    ReplaceRoute(Route),
    DelRoute(Route),
}

pub trait Datapath {
    fn link(&mut self, name: &str) -> Result<Option<Link>>;
    fn link_by_index(&mut self, index: u32) -> Result<Option<Link>>;
    fn links(&mut self) -> Result<Vec<Link>>;
    fn add_vxlan(&mut self, spec: &VxlanSpec) -> Result<()>;
    fn del_link(&mut self, index: u32) -> Result<()>;
    fn set_up(&mut self, index: u32) -> Result<()>;
    fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()>;
    fn addrs(&mut self, index: u32) -> Result<Vec<Addr>>;
    fn add_addr(&mut self, index: u32, net: IpNet) -> Result<()>;
    fn del_addr(&mut self, index: u32, net: IpNet) -> Result<()>;
    fn neighs(&mut self, index: u32) -> Result<Vec<Neighbour>>;
    fn fdb(&mut self, index: u32) -> Result<Vec<FdbEntry>>;
    /// IPv4 routes of the main table.
    fn routes(&mut self) -> Result<Vec<Route>>;
    /// Every nexthop object (EOPNOTSUPP on kernels without them).
    fn nexthops(&mut self) -> Result<Vec<Nexthop>>;
    /// Applies `ops` on device `index`, in order, in as few round trips as
    /// possible; one result per op.
    fn apply(&mut self, index: u32, ops: &[Op]) -> Vec<Result<()>>;
}

/// The real kernel, through one netlink socket.
pub struct KernelDatapath {
    handle: Handle,
}

impl KernelDatapath {
    pub fn new(handle: Handle) -> Self {
        KernelDatapath { handle }
    }
}

impl Datapath for KernelDatapath {
    fn link(&mut self, name: &str) -> Result<Option<Link>> {
        self.handle.link(name)
    }
    fn link_by_index(&mut self, index: u32) -> Result<Option<Link>> {
        self.handle.link_by_index(index)
    }
    fn links(&mut self) -> Result<Vec<Link>> {
        self.handle.links()
    }
    fn add_vxlan(&mut self, spec: &VxlanSpec) -> Result<()> {
        self.handle.add_vxlan(spec)
    }
    fn del_link(&mut self, index: u32) -> Result<()> {
        self.handle.del_link(index)
    }
    fn set_up(&mut self, index: u32) -> Result<()> {
        self.handle.set_up(index)
    }
    fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        self.handle.set_mtu(index, mtu)
    }
    fn addrs(&mut self, index: u32) -> Result<Vec<Addr>> {
        self.handle.addrs(Some(index))
    }
    fn add_addr(&mut self, index: u32, net: IpNet) -> Result<()> {
        self.handle.add_addr(index, net)
    }
    fn del_addr(&mut self, index: u32, net: IpNet) -> Result<()> {
        self.handle.del_addr(index, net)
    }
    fn neighs(&mut self, index: u32) -> Result<Vec<Neighbour>> {
        self.handle.neighs(Some(index))
    }
    fn fdb(&mut self, index: u32) -> Result<Vec<FdbEntry>> {
        self.handle.fdb(Some(index))
    }
    fn routes(&mut self) -> Result<Vec<Route>> {
        self.handle.routes(false)
    }
    fn nexthops(&mut self) -> Result<Vec<Nexthop>> {
        self.handle.nexthops()
    }
    fn apply(&mut self, index: u32, ops: &[Op]) -> Vec<Result<()>> {
        // The socket sends a few hundred requests per `sendmsg` anyway;
        // building the batch a slice at a time keeps only that slice's
        // messages in memory, not thousands.
        let mut results = Vec::with_capacity(ops.len());
        for slice in ops.chunks(APPLY_SLICE) {
            let mut batch = Batch::new();
            slice.iter().for_each(|op| add_op(&mut batch, index, op));
            results.extend(self.handle.run(batch));
        }
        results
    }
}

/// Ops turned into netlink messages at a time by [`KernelDatapath::apply`].
const APPLY_SLICE: usize = 1024;

fn add_op(batch: &mut Batch, index: u32, op: &Op) {
    match op {
        Op::ReplaceNeigh { ip, mac } => batch.replace_neigh(index, (*ip).into(), *mac),
        Op::DelNeigh { ip } => batch.del_neigh(index, *ip),
        Op::ReplaceFdb { mac, dst } => batch.replace_fdb(index, *mac, (*dst).into()),
        Op::DelFdb { mac, dst } => batch.del_fdb(index, *mac, *dst),
        Op::ReplaceNexthop(nh) => batch.replace_nexthop(nh),
        Op::DelNexthop { id } => batch.del_nexthop(*id),
        Op::ReplaceRoute(r) => batch.replace_route(r),
        Op::DelRoute(r) => batch.del_route(r),
    }
}
