//! Netlink messages as bytes, for what netlink-packet-route has no type
//! for (nexthop objects, the kernel's extended-ack attributes): the
//! message envelope, the netlink header, and `struct nlattr` attributes.
//!
//! Both the socket (which frames and parses every message) and the
//! nexthop encoder use these, so they live below both.

use netlink_packet_core::{NetlinkBuffer, NetlinkHeader};
use netlink_packet_route::RouteNetlinkMessage;

pub(crate) const RTM_NEWNEXTHOP: u16 = 104;
pub(crate) const RTM_DELNEXTHOP: u16 = 105;
pub(crate) const RTM_GETNEXTHOP: u16 = 106;
/// Message types the message crate cannot parse, handed over as raw bytes.
pub(crate) const RAW_KINDS: [u16; 3] = [RTM_NEWNEXTHOP, RTM_DELNEXTHOP, RTM_GETNEXTHOP];

/// struct nlmsghdr.
const NETLINK_HEADER_LEN: usize = 16;
/// struct nlattr: length (u16) and type (u16).
const ATTR_HEADER_LEN: usize = 4;
/// The type bits of `nla_type` (the top two are the nested and
/// byte-order flags).
const NLA_TYPE_MASK: u16 = 0x3fff;

/// One netlink message: one the message crate knows, or one this crate
/// encodes itself (the crate has no type for it, e.g. nexthop objects).
#[derive(Debug, Clone)]
pub(crate) enum Message {
    Route(RouteNetlinkMessage),
    Raw(RawMessage),
}

/// A message as its netlink type and the bytes after the netlink header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawMessage {
    pub kind: u16,
    pub payload: Vec<u8>,
}

impl From<RouteNetlinkMessage> for Message {
    fn from(msg: RouteNetlinkMessage) -> Message {
        Message::Route(msg)
    }
}

impl From<RawMessage> for Message {
    fn from(msg: RawMessage) -> Message {
        Message::Raw(msg)
    }
}

/// The header and payload of a message of one of [`RAW_KINDS`].
pub(crate) fn parse_raw(buffer: &NetlinkBuffer<&[u8]>) -> (NetlinkHeader, Message) {
    let mut header = NetlinkHeader::default();
    header.length = buffer.length();
    header.message_type = buffer.message_type();
    header.flags = buffer.flags();
    header.sequence_number = buffer.sequence_number();
    header.port_number = buffer.port_number();
    let raw = RawMessage {
        kind: header.message_type,
        payload: buffer.payload().to_vec(),
    };
    (header, Message::Raw(raw))
}

/// A netlink header (16 bytes) and `raw`'s payload, padded to 4 bytes.
pub(crate) fn encode_raw(mut header: NetlinkHeader, raw: &RawMessage, out: &mut Vec<u8>) {
    let len = NETLINK_HEADER_LEN + raw.payload.len();
    header.length = len as u32;
    header.message_type = raw.kind;
    out.extend_from_slice(&header.length.to_ne_bytes());
    out.extend_from_slice(&header.message_type.to_ne_bytes());
    out.extend_from_slice(&header.flags.to_ne_bytes());
    out.extend_from_slice(&header.sequence_number.to_ne_bytes());
    out.extend_from_slice(&header.port_number.to_ne_bytes());
    out.extend_from_slice(&raw.payload);
    pad(out, len);
}

/// Appends one attribute: length (header included), type, value, padding
/// to 4 bytes.
pub(crate) fn push_attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = ATTR_HEADER_LEN + value.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    pad(out, len);
}

fn pad(out: &mut Vec<u8>, len: usize) {
    out.resize(out.len() + (len.next_multiple_of(4) - len), 0);
}

/// An attribute whose length runs past the bytes it came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TruncatedAttr;

/// The attributes in `bytes` as (type, value), in order. A truncated one
/// is reported once and ends the walk; trailing bytes too short for an
/// attribute header are ignored.
pub(crate) fn attrs(bytes: &[u8]) -> Attrs<'_> {
    Attrs { rest: bytes }
}

pub(crate) struct Attrs<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<(u16, &'a [u8]), TruncatedAttr>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.rest;
        if rest.len() < ATTR_HEADER_LEN {
            return None;
        }
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        let Some(value) = rest.get(ATTR_HEADER_LEN..len) else {
            self.rest = &[];
            return Some(Err(TruncatedAttr));
        };
        self.rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
        Some(Ok((kind, value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_with_padding() {
        let mut bytes = Vec::new();
        // The nested flag is not part of the type.
        push_attr(&mut bytes, 0x8002, &9u32.to_ne_bytes());
        push_attr(&mut bytes, 1, &[7, 7, 7]);
        assert_eq!(bytes.len(), 8 + 8);
        let all: Vec<_> = attrs(&bytes).collect();
        let want = [Ok((2, &9u32.to_ne_bytes()[..])), Ok((1, &[7u8, 7, 7][..]))];
        assert_eq!(all, want);
        // The last attribute needs no padding to be read.
        assert_eq!(attrs(&bytes[..15]).collect::<Vec<_>>(), want);
    }

    #[test]
    fn truncated_attributes_end_the_walk() {
        let mut bytes = Vec::new();
        push_attr(&mut bytes, 1, &[1, 2, 3, 4]);
        let all: Vec<_> = attrs(&bytes[..6]).collect();
        assert_eq!(all, [Err(TruncatedAttr)]);
        // A length shorter than the header itself.
        let all: Vec<_> = attrs(&[2, 0, 1, 0, 9, 9, 9, 9]).collect();
        assert_eq!(all, [Err(TruncatedAttr)]);
        assert_eq!(attrs(&[1, 2, 3]).count(), 0);
    }

    #[test]
    fn raw_messages_are_framed_and_padded() {
        let mut header = NetlinkHeader::default();
        header.flags = 5;
        header.sequence_number = 42;
        let raw = RawMessage {
            kind: RTM_NEWNEXTHOP,
            payload: vec![1, 2, 3, 4, 5],
        };
        let mut out = Vec::new();
        encode_raw(header, &raw, &mut out);
        assert_eq!(out.len(), 24);
        let buffer = NetlinkBuffer::new_checked(&out[..]).unwrap();
        let (header, msg) = parse_raw(&buffer);
        assert_eq!(
            (header.length, header.flags, header.sequence_number),
            (21, 5, 42)
        );
        match msg {
            Message::Raw(back) => assert_eq!(back, raw),
            Message::Route(_) => panic!("a raw kind parsed as a route message"),
        }
    }
}
