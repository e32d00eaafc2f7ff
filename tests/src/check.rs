//! Observations a user would make: ping matrices, the source address a
//! receiver sees.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use crate::{Netns, Pod};

/// One cell of a ping matrix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PingResult {
    pub from: String,
    pub to: String,
    pub to_ip: Ipv4Addr,
    pub ok: bool,
}

/// Pings every pod from every other pod (one ping each, sources in
/// parallel); returns every cell, in source-major order.
pub fn ping_matrix(pods: &[&Pod]) -> Vec<PingResult> {
    std::thread::scope(|s| {
        let rows: Vec<_> = pods
            .iter()
            .map(|src| s.spawn(move || ping_row(src, pods)))
            .collect();
        rows.into_iter()
            .flat_map(|r| r.join().expect("ping row"))
            .collect()
    })
}

fn ping_row(src: &Pod, pods: &[&Pod]) -> Vec<PingResult> {
    pods.iter()
        .filter(|dst| dst.netns().name() != src.netns().name())
        .map(|dst| PingResult {
            from: src.name().to_string(),
            to: dst.name().to_string(),
            to_ip: dst.ip(),
            ok: src.ping(dst.ip()),
        })
        .collect()
}

/// Sends one UDP datagram from a socket opened in `from` to `to_ip:port`,
/// received by a socket opened in `to`; returns the source address the
/// receiver saw, or `None` if nothing arrived within 5 s.
pub fn udp_source_seen(from: &Netns, to: &Netns, to_ip: Ipv4Addr, port: u16) -> Option<IpAddr> {
    let bind = SocketAddr::from((to_ip, port));
    let rx = to
        .run_in(|| UdpSocket::bind(bind))
        .expect("enter netns")
        .expect("bind");
    rx.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let tx = from
        .run_in(|| UdpSocket::bind("0.0.0.0:0"))
        .expect("enter netns")
        .expect("bind");
    tx.send_to(b"who am i", bind).expect("send");
    let mut buf = [0u8; 64];
    rx.recv_from(&mut buf).ok().map(|(_, peer)| peer.ip())
}
