use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::ControlFlow;

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST};
use netlink_packet_route::RouteNetlinkMessage;

use crate::error::{Error, Result};
use crate::neigh::{fdb_msg, neigh_msg, REPLACE};
use crate::nexthop::{del_nexthop_msg, new_nexthop_msg, Nexthop};
use crate::route::{describe, route_msg, Route};
use crate::socket::{Handle, Message, Received};
use crate::{format_mac, Mac};

/// Requests sent per `sendmsg`. The kernel runs them one after another in
/// the sender's context; only errors and the last one's ack come back, so
/// a chunk's replies fit in the socket's receive queue.
const CHUNK: usize = 256;

/// Many change requests sent together, each with its own result.
///
/// Programming a thousand peers one request at a time is three thousand
/// round trips; a batch is a dozen `sendmsg` calls.
#[derive(Default)]
pub struct Batch {
    ops: Vec<(Message, u16, String)>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    fn push(&mut self, msg: impl Into<Message>, flags: u16, what: String) {
        self.ops.push((msg.into(), flags, what));
    }

    pub fn replace_neigh(&mut self, index: u32, ip: IpAddr, mac: Mac) {
        let msg = RouteNetlinkMessage::NewNeighbour(neigh_msg(index, ip, Some(mac)));
        self.push(
            msg,
            REPLACE,
            format!("replace neighbour {ip} on link {index}"),
        );
    }

    pub fn del_neigh(&mut self, index: u32, ip: IpAddr) {
        let msg = RouteNetlinkMessage::DelNeighbour(neigh_msg(index, ip, None));
        self.push(msg, 0, format!("delete neighbour {ip} on link {index}"));
    }

    pub fn replace_fdb(&mut self, index: u32, mac: Mac, dst: IpAddr) {
        let msg = RouteNetlinkMessage::NewNeighbour(fdb_msg(index, mac, Some(dst)));
        let what = format!("replace fdb {} dst {dst} on link {index}", format_mac(&mac));
        self.push(msg, REPLACE, what);
    }

    pub fn del_fdb(&mut self, index: u32, mac: Mac, dst: Option<IpAddr>) {
        let msg = RouteNetlinkMessage::DelNeighbour(fdb_msg(index, mac, dst));
        self.push(
            msg,
            0,
            format!("delete fdb {} on link {index}", format_mac(&mac)),
        );
    }

    pub fn add_route(&mut self, route: &Route) {
        let msg = RouteNetlinkMessage::NewRoute(route_msg(route));
        let what = format!("add route {}", describe(route));
        self.push(msg, NLM_F_CREATE | NLM_F_EXCL, what);
    }

    pub fn replace_route(&mut self, route: &Route) {
        let msg = RouteNetlinkMessage::NewRoute(route_msg(route));
        self.push(msg, REPLACE, format!("replace route {}", describe(route)));
    }

    pub fn del_route(&mut self, route: &Route) {
        let msg = RouteNetlinkMessage::DelRoute(route_msg(route));
        self.push(msg, 0, format!("delete route {}", describe(route)));
    }

    pub fn replace_nexthop(&mut self, nh: &Nexthop) {
        let mut what = format!("replace nexthop {}", nh.id);
        if let Some(gw) = nh.gateway {
            what += &format!(" via {gw}");
        }
        if let Some(oif) = nh.oif {
            what += &format!(" dev {oif}");
        }
        self.push(new_nexthop_msg(nh), REPLACE, what);
    }

    pub fn del_nexthop(&mut self, id: u32) {
        self.push(del_nexthop_msg(id), 0, format!("delete nexthop {id}"));
    }
}

impl Handle {
    /// Sends every request of `batch` in order; the result of each, in order.
    /// A failed request does not stop the ones after it.
    pub fn run(&mut self, batch: Batch) -> Vec<Result<()>> {
        let mut results = Vec::with_capacity(batch.ops.len());
        let mut ops = batch.ops.into_iter().peekable();
        while ops.peek().is_some() {
            let chunk: Vec<_> = ops.by_ref().take(CHUNK).collect();
            results.extend(self.run_chunk(chunk));
        }
        results
    }

    /// One request built by `build`, with its result.
    pub(crate) fn run_one(&mut self, build: impl FnOnce(&mut Batch)) -> Result<()> {
        let mut batch = Batch::new();
        build(&mut batch);
        self.run(batch).pop().unwrap_or(Ok(()))
    }

    fn run_chunk(&mut self, chunk: Vec<(Message, u16, String)>) -> Vec<Result<()>> {
        let count = chunk.len();
        let mut out = Vec::with_capacity(count * 64);
        let mut position = HashMap::with_capacity(count);
        let mut whats = Vec::with_capacity(count);
        for (i, (msg, flags, what)) in chunk.into_iter().enumerate() {
            let ack = if i + 1 == count { NLM_F_ACK } else { 0 };
            let seq = self.encode(msg, NLM_F_REQUEST | flags | ack, &mut out);
            position.insert(seq, i);
            whats.push(what);
        }
        let mut results: Vec<Result<()>> = (0..count).map(|_| Ok(())).collect();
        if let Err(e) = self
            .send(&out)
            .and_then(|_| self.collect(&position, count, &mut results))
        {
            // The socket failed: nothing is known about what the kernel did.
            let msg = e.to_string();
            return whats
                .into_iter()
                .map(|w| Err(Error::kernel(libc::EIO, Some(msg.clone())).context(w)))
                .collect();
        }
        for (result, what) in results.iter_mut().zip(whats) {
            if let Err(e) = std::mem::replace(result, Ok(())) {
                *result = Err(e.context(what));
            }
        }
        results
    }

    /// Reads errors until the last request's ack: requests run in order,
    /// so every earlier reply has arrived by then.
    fn collect(
        &mut self,
        position: &HashMap<u32, usize>,
        count: usize,
        results: &mut [Result<()>],
    ) -> Result<()> {
        self.receive(|_, reply| {
            let Received::Ack(r) = reply else {
                return ControlFlow::Continue(());
            };
            let Some(&i) = position.get(&r.seq) else {
                return ControlFlow::Continue(());
            };
            results[i] = r.result;
            if i + 1 == count {
                ControlFlow::Break(Ok(()))
            } else {
                ControlFlow::Continue(())
            }
        })
    }
}
