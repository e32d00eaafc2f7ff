//! Many change requests sent together. The kinds of request a batch can
//! hold are added by the modules that know them (`neigh`, `route`,
//! `nexthop`), each next to its single-request form on [`Handle`].

use std::collections::HashMap;
use std::ops::ControlFlow;

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST};

use crate::error::{Error, Result};
use crate::raw::Message;
use crate::socket::{Handle, Received};

/// Requests sent per `sendmsg`. The kernel runs them one after another in
/// the sender's context; only errors and the last one's ack come back, so
/// a chunk's replies fit in the socket's receive queue.
const CHUNK: usize = 256;

/// Request flags for "create or overwrite".
pub(crate) const REPLACE: u16 = NLM_F_CREATE | NLM_F_REPLACE;

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

    /// Queues one request; `what` names it in its error.
    pub(crate) fn push(&mut self, msg: impl Into<Message>, flags: u16, what: String) {
        self.ops.push((msg.into(), flags, what));
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
