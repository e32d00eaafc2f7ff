//! Plain HTTP/1.1 requests to a server inside a network namespace.
//!
//! The TCP socket is opened on a thread that entered the namespace; it stays
//! bound there and is used from the calling thread, so the test process can
//! reach addresses that only exist inside the namespace.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use crate::netns::run_in_netns;

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    pub status: u16,
    pub body: String,
}

/// Connects to `addr` from inside the namespace at `netns`.
pub fn connect_in(netns: &Path, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let connect = || TcpStream::connect_timeout(&addr, Duration::from_secs(2));
    let stream = run_in_netns(netns, connect)??;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

/// Sends one request (`Connection: close`) and reads the whole reply.
pub fn http_in(
    netns: &Path,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<HttpReply> {
    http_with_headers_in(netns, addr, (method, path), &[], body)
}

/// Like [`http_in`], with extra `(name, value)` header lines.
pub fn http_with_headers_in(
    netns: &Path,
    addr: SocketAddr,
    (method, path): (&str, &str),
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<HttpReply> {
    let mut stream = connect_in(netns, addr)?;
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         {extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_reply(&raw).ok_or_else(|| {
        let text = String::from_utf8_lossy(&raw);
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad HTTP reply: {text}"),
        )
    })
}

/// `GET path` from inside the namespace.
pub fn http_get_in(netns: &Path, addr: SocketAddr, path: &str) -> std::io::Result<HttpReply> {
    http_in(netns, addr, "GET", path, "")
}

/// Splits an HTTP/1.1 response and decodes a chunked body.
fn parse_reply(raw: &[u8]) -> Option<HttpReply> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Some(HttpReply { status, body })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_replies() {
        let plain = parse_reply(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n{\"a\":1}").unwrap();
        assert_eq!((plain.status, plain.body.as_str()), (200, "{\"a\":1}"));
        let chunked = b"HTTP/1.1 503 X\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n";
        let chunked = parse_reply(chunked).unwrap();
        assert_eq!((chunked.status, chunked.body.as_str()), (503, "{\"a\":1}"));
        assert!(parse_reply(b"garbage").is_none());
    }
}
