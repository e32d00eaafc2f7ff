//! `/healthz`, `/readyz` and `/metrics` over plain HTTP/1.1.
//!
//! Three read-only GET endpoints do not need an HTTP framework: each
//! connection serves one request and closes.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::backend::Shared;
use crate::metrics;

const MAX_REQUEST: usize = 8 * 1024;

pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), handle(stream, &shared)).await;
                });
            }
            Err(e) => {
                crate::warn!("http accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let request = String::from_utf8_lossy(&buf);
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, content_type, body) = respond(method, path, shared);
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if method != "HEAD" {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}

/// Status line, content type and body for a request.
pub fn respond(method: &str, path: &str, shared: &Shared) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != "GET" && method != "HEAD" {
        return (
            "405 Method Not Allowed",
            TEXT,
            "method not allowed\n".into(),
        );
    }
    match path.split('?').next().unwrap_or("") {
        "/healthz" => ("200 OK", TEXT, "ok\n".into()),
        "/readyz" if shared.metrics.is_ready() => ("200 OK", TEXT, "ok\n".into()),
        "/readyz" => (
            "503 Service Unavailable",
            TEXT,
            "not ready: datapath not programmed yet\n".into(),
        ),
        "/metrics" => ("200 OK", metrics::CONTENT_TYPE, shared.metrics.render()),
        _ => ("404 Not Found", TEXT, "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn endpoints() {
        let shared = Shared::default();
        assert_eq!(respond("GET", "/healthz", &shared).0, "200 OK");
        assert_eq!(
            respond("GET", "/readyz", &shared).0,
            "503 Service Unavailable"
        );
        Metrics::set(&shared.metrics.ready, 1);
        assert_eq!(respond("GET", "/readyz?verbose", &shared).0, "200 OK");
        let (status, ct, body) = respond("GET", "/metrics", &shared);
        assert_eq!(
            (status, ct),
            (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            )
        );
        assert!(body.contains("\nflanneld_ready 1\n"), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");
        assert_eq!(
            respond("POST", "/healthz", &shared).0,
            "405 Method Not Allowed"
        );
        assert_eq!(respond("GET", "/nope", &shared).0, "404 Not Found");
    }
}
