use std::ops::ControlFlow;
use std::os::fd::AsRawFd;

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP,
    NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::error::{Error, Result};
use crate::netns::{Netns, NetnsGuard};
use crate::raw::{attrs, encode_raw, parse_raw, Message, RawMessage, RAW_KINDS};

/// Receive buffer for one `recv`: the kernel sends dump parts of up to
/// 32 KiB, so 64 KiB never truncates.
const RECV_BUF: usize = 64 * 1024;
/// Socket receive queue: a batch's error replies must all fit while the
/// kernel is still processing the batch, or they are dropped (ENOBUFS).
const RCVBUF_BYTES: libc::c_int = 4 * 1024 * 1024;
/// A dump interrupted by a concurrent change is retried this many times.
const DUMP_ATTEMPTS: usize = 5;
/// NLMSGERR_ATTR_MSG: the extended-ack text attribute.
const NLMSGERR_ATTR_MSG: u16 = 1;

/// One `NETLINK_ROUTE` socket, bound to the netns it was created in.
pub struct Handle {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

/// Outcome of a request that was sent, keyed by its sequence number.
pub(crate) struct Reply {
    pub seq: u32,
    pub result: Result<()>,
}

impl Handle {
    /// A socket in the calling thread's network namespace.
    pub fn new() -> Result<Handle> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(Error::io("open netlink socket"))?;
        sock.bind_auto().map_err(Error::io("bind netlink socket"))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(Error::io("connect netlink socket"))?;
        // Acks without a copy of the request, and the kernel's own error
        // text: both are optional, older kernels just ignore them.
        let _ = sock.set_cap_ack(true);
        let _ = sock.set_ext_ack(true);
        set_rcvbuf(&sock);
        Ok(Handle {
            sock,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// A socket opened inside `ns` and usable from here: every request on
    /// it acts on `ns`, whatever namespace the calling thread is in later.
    pub fn in_netns(ns: &Netns) -> Result<Handle> {
        let _guard = NetnsGuard::enter(ns)?;
        Handle::new()
    }

    /// Appends `msg` to `out` with the given flags; returns its sequence number.
    pub(crate) fn encode(&mut self, msg: impl Into<Message>, flags: u16, out: &mut Vec<u8>) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        match msg.into() {
            Message::Route(msg) => {
                let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
                packet.finalize();
                let start = out.len();
                out.resize(start + packet.buffer_len(), 0);
                packet.serialize(&mut out[start..]);
            }
            Message::Raw(raw) => encode_raw(header, &raw, out),
        }
        self.seq
    }

    pub(crate) fn send(&self, bytes: &[u8]) -> Result<()> {
        self.sock
            .send(bytes, 0)
            .map_err(Error::io("netlink send"))?;
        Ok(())
    }

    /// Sends one change request and waits for its acknowledgement.
    pub(crate) fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<()> {
        let mut out = Vec::with_capacity(256);
        let seq = self.encode(msg, NLM_F_REQUEST | NLM_F_ACK | flags, &mut out);
        self.send(&out)?;
        self.receive(|_, reply| match reply {
            Received::Ack(r) if r.seq == seq => ControlFlow::Break(r.result),
            _ => ControlFlow::Continue(()),
        })
    }

    /// Sends a GET for one object; `None` when the kernel says it does not exist.
    pub(crate) fn get(&mut self, msg: RouteNetlinkMessage) -> Result<Option<RouteNetlinkMessage>> {
        let mut out = Vec::with_capacity(256);
        let seq = self.encode(msg, NLM_F_REQUEST, &mut out);
        self.send(&out)?;
        self.receive(|hdr, reply| match reply {
            Received::Message(Message::Route(m)) if hdr.sequence_number == seq => {
                ControlFlow::Break(Ok(Some(m)))
            }
            Received::Ack(r) if r.seq == seq => ControlFlow::Break(match r.result {
                Err(e) if e.is_not_found() => Ok(None),
                Err(e) => Err(e),
                Ok(()) => Ok(None),
            }),
            _ => ControlFlow::Continue(()),
        })
    }

    /// Dumps a whole table. A dump the kernel marks as interrupted (the
    /// table changed under it) is started again, so the result is consistent.
    pub(crate) fn dump(&mut self, msg: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>> {
        let replies = self.dump_messages(msg.into())?;
        let route = |m| match m {
            Message::Route(m) => Some(m),
            Message::Raw(_) => None,
        };
        Ok(replies.into_iter().filter_map(route).collect())
    }

    /// [`Handle::dump`] for a table the message crate has no type for.
    pub(crate) fn dump_raw(&mut self, msg: RawMessage) -> Result<Vec<RawMessage>> {
        let replies = self.dump_messages(msg.into())?;
        let raw = |m| match m {
            Message::Raw(m) => Some(m),
            Message::Route(_) => None,
        };
        Ok(replies.into_iter().filter_map(raw).collect())
    }

    fn dump_messages(&mut self, msg: Message) -> Result<Vec<Message>> {
        for _ in 0..DUMP_ATTEMPTS {
            let (items, interrupted) = self.dump_once(msg.clone())?;
            if !interrupted {
                return Ok(items);
            }
        }
        Err(Error::Decode {
            op: "netlink dump",
            msg: "interrupted by concurrent changes too many times".into(),
        })
    }

    fn dump_once(&mut self, msg: Message) -> Result<(Vec<Message>, bool)> {
        let mut out = Vec::with_capacity(256);
        let seq = self.encode(msg, NLM_F_REQUEST | NLM_F_DUMP, &mut out);
        self.send(&out)?;
        let mut items = Vec::new();
        let mut interrupted = false;
        self.receive(|hdr, reply| {
            if hdr.sequence_number != seq {
                return ControlFlow::Continue(());
            }
            interrupted |= hdr.flags & NLM_F_DUMP_INTR != 0;
            match reply {
                Received::Message(m) => {
                    items.push(m);
                    ControlFlow::Continue(())
                }
                Received::Done => ControlFlow::Break(Ok(())),
                Received::Ack(r) => ControlFlow::Break(r.result),
                Received::Other => ControlFlow::Continue(()),
            }
        })?;
        Ok((items, interrupted))
    }

    /// Reads replies until `on_reply` breaks, returning what it broke with.
    pub(crate) fn receive<T>(
        &mut self,
        mut on_reply: impl FnMut(&NetlinkHeader, Received) -> ControlFlow<Result<T>>,
    ) -> Result<T> {
        loop {
            let n = self.recv_raw()?;
            let mut offset = 0;
            while offset < n {
                let (hdr, reply, len) = parse_one(&self.buf[offset..n])?;
                offset += len;
                if let ControlFlow::Break(result) = on_reply(&hdr, reply) {
                    return result;
                }
            }
        }
    }

    /// Receives one datagram into `buf`. The buffer is never zero-filled:
    /// its pages are touched only as far as the kernel writes.
    fn recv_raw(&mut self) -> Result<usize> {
        let fd = self.sock.as_raw_fd();
        self.buf.clear();
        loop {
            let spare = self.buf.spare_capacity_mut();
            // SAFETY: the spare capacity is valid for writes of its length.
            let n = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), spare.len(), 0) };
            if n >= 0 {
                // SAFETY: the kernel initialised the first `n` bytes.
                unsafe { self.buf.set_len(n as usize) };
                return Ok(n as usize);
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(Error::Io {
                    op: "netlink receive",
                    source: err,
                });
            }
        }
    }

    /// Reads one datagram and hands over every message in it.
    pub(crate) fn receive_datagram(&mut self, mut on_reply: impl FnMut(Received)) -> Result<()> {
        let n = self.recv_raw()?;
        let mut offset = 0;
        while offset < n {
            let (_, reply, len) = parse_one(&self.buf[offset..n])?;
            offset += len;
            on_reply(reply);
        }
        Ok(())
    }

    pub(crate) fn socket(&self) -> &Socket {
        &self.sock
    }
}

/// One message from the kernel, classified.
pub(crate) enum Received {
    Message(Message),
    Ack(Reply),
    Done,
    /// NOOP, OVERRUN and anything newer: nothing to act on.
    Other,
}

fn parse_one(bytes: &[u8]) -> Result<(NetlinkHeader, Received, usize)> {
    let decode = |msg: String| Error::Decode {
        op: "netlink receive",
        msg,
    };
    let buffer = NetlinkBuffer::new_checked(bytes).map_err(|e| decode(e.to_string()))?;
    let len = (buffer.length() as usize).min(bytes.len());
    let aligned = ((len + 3) & !3).min(bytes.len());
    if RAW_KINDS.contains(&buffer.message_type()) {
        let (header, raw) = parse_raw(&buffer);
        return Ok((header, Received::Message(raw), aligned.max(1)));
    }
    let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[..len])
        .map_err(|e| decode(e.to_string()))?;
    let (header, payload) = message.into_parts();
    let seq = header.sequence_number;
    let received = match payload {
        NetlinkPayload::InnerMessage(m) => Received::Message(Message::Route(m)),
        NetlinkPayload::Done(_) => Received::Done,
        NetlinkPayload::Error(e) => Received::Ack(Reply {
            seq,
            result: match e.code {
                None => Ok(()),
                Some(code) => Err(Error::kernel(-code.get(), ext_ack_text(&e.header))),
            },
        }),
        _ => Received::Other,
    };
    Ok((header, received, aligned.max(1)))
}

/// The kernel's extended-ack message: TLVs after the echoed 16-byte header.
fn ext_ack_text(after_code: &[u8]) -> Option<String> {
    for attr in attrs(after_code.get(16..)?) {
        let (kind, text) = attr.ok()?;
        if kind == NLMSGERR_ATTR_MSG {
            let text = text.split(|b| *b == 0).next().unwrap_or(text);
            return Some(String::from_utf8_lossy(text).into_owned());
        }
    }
    None
}

fn set_rcvbuf(sock: &Socket) {
    let fd = sock.as_raw_fd();
    let size = RCVBUF_BYTES;
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    let ptr = (&size as *const libc::c_int).cast();
    // SAFETY: `ptr` points at a c_int of `len` bytes for the whole call.
    unsafe {
        // FORCE goes past rmem_max but needs CAP_NET_ADMIN; fall back quietly.
        if libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, ptr, len) != 0 {
            libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, ptr, len);
        }
    }
}
