//! The listener: TLS (rustls, HTTP/1.1), bearer-token authentication, one
//! task per connection, and a stop that closes the port and every
//! connection, open watches included, as a killed API server would.

use std::path::Path;
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

use super::routes;
use super::Shared;

/// What can go wrong setting up the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot read {path}: {reason}")]
    Pem { path: String, reason: String },
    #[error("invalid TLS certificate or key: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

/// A TLS configuration serving `cert` (a PEM chain) with `key`.
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, ServerError> {
    let pem_error = |path: &Path, e: rustls_pki_types::pem::Error| ServerError::Pem {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_error(cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(cert, e))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error(key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    // HTTP/1.1 only: clients offering h2 fall back to it.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A running accept loop; [`Running::stop`] ends it and its connections.
pub struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Serves `listener` (already bound, non-blocking) on the runtime of
    /// `rt`.
    pub fn spawn(
        rt: &tokio::runtime::Handle,
        listener: std::net::TcpListener,
        tls: Arc<ServerConfig>,
        shared: Arc<Shared>,
    ) -> Running {
        let (stop, stopped) = oneshot::channel();
        let task = rt.spawn(accept_loop(
            listener,
            TlsAcceptor::from(tls),
            shared,
            stopped,
        ));
        Running {
            stop: Some(stop),
            task,
        }
    }

    /// Closes the listener and every connection; returns once they are
    /// closed. Blocks the calling thread (never a runtime's).
    pub fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // The loop ends by itself once its connections are gone; polling
        // (rather than block_on) lets this run inside another runtime.
        while !self.task.is_finished() {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

async fn accept_loop(
    listener: std::net::TcpListener,
    tls: TlsAcceptor,
    shared: Arc<Shared>,
    mut stopped: oneshot::Receiver<()>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => return eprintln!("kube-api-emulator: cannot use the listener: {e}"),
    };
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    conns.spawn(serve(tcp, tls.clone(), Arc::clone(&shared)));
                }
                Err(e) => eprintln!("kube-api-emulator: accept: {e}"),
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    conns.shutdown().await;
}

async fn serve(tcp: tokio::net::TcpStream, tls: TlsAcceptor, shared: Arc<Shared>) {
    let Ok(stream) = tls.accept(tcp).await else {
        return; // A client that gave up or rejected our certificate.
    };
    let service = service_fn(move |req| {
        let shared = Arc::clone(&shared);
        async move { Ok::<_, std::convert::Infallible>(answer(shared, req).await) }
    });
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Authenticates, answers, and records the request.
async fn answer(
    shared: Arc<Shared>,
    req: Request<hyper::body::Incoming>,
) -> hyper::Response<routes::Body> {
    let line = format!("{} {}", req.method(), req.uri());
    let resp = if authorized(&shared.token, &req) || routes::is_public(req.uri().path()) {
        routes::handle(Arc::clone(&shared), req).await
    } else {
        routes::unauthorized()
    };
    shared.record_request(line, resp.status().as_u16());
    resp
}

fn authorized(token: &str, req: &Request<hyper::body::Incoming>) -> bool {
    let header = req.headers().get(hyper::header::AUTHORIZATION);
    let given = header.and_then(|v| v.to_str().ok()).and_then(|v| {
        let (scheme, rest) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    given == Some(token)
}
