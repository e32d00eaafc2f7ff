//! The etcd v3 lease store.

use std::path::Path;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};

use super::{Event, EventKind, LeaseStore, Listing, Record, StoreError, WatchItem, WatchStream};

/// A unary call that takes longer than this is treated as a failure (the
/// caller retries); watches are not bounded.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    pub cafile: Option<std::path::PathBuf>,
    pub certfile: Option<std::path::PathBuf>,
    pub keyfile: Option<std::path::PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl EtcdOptions {
    /// Whether etcd is reached over TLS (an `https://` endpoint or any TLS file).
    pub fn uses_tls(&self) -> bool {
        let https = self.endpoints.iter().any(|e| e.starts_with("https://"));
        https || self.cafile.is_some() || self.certfile.is_some() || self.keyfile.is_some()
    }

    /// Whether etcd is reached over TLS without a client certificate. An
    /// etcd that requires one (`--client-cert-auth`) then closes the
    /// connection right after the handshake, and all the client library
    /// reports is "connection closed".
    pub fn tls_without_client_cert(&self) -> bool {
        self.uses_tls() && self.certfile.is_none()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EtcdSetupError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("--etcd-certfile and --etcd-keyfile go together")]
    HalfIdentity,
    #[error("etcd client: {0}")]
    Client(String),
}

#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Runs one etcd call with a deadline.
async fn call<T>(
    fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(r) => r.map_err(unavailable),
        Err(_) => Err(StoreError::Unavailable("etcd call timed out".into())),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, EtcdSetupError> {
    std::fs::read(path).map_err(|source| EtcdSetupError::Read {
        path: path.to_owned(),
        source,
    })
}

impl EtcdStore {
    /// Builds the client. The connection itself is made lazily, so this
    /// succeeds while etcd is down; calls fail until it is back.
    pub async fn connect(opts: &EtcdOptions) -> Result<Self, EtcdSetupError> {
        let mut co = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            // HTTP/2 pings notice a dead etcd even while only a watch is open.
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        if let (Some(u), Some(p)) = (&opts.username, &opts.password) {
            co = co.with_user(u.clone(), p.clone());
        }
        if let Some(tls) = tls_options(opts)? {
            co = co.with_tls(tls);
        }
        let client = Client::connect(&opts.endpoints, Some(co))
            .await
            .map_err(|e| EtcdSetupError::Client(e.to_string()))?;
        Ok(EtcdStore { client })
    }
}

fn tls_options(opts: &EtcdOptions) -> Result<Option<TlsOptions>, EtcdSetupError> {
    if !opts.uses_tls() {
        return Ok(None);
    }
    let mut tls = TlsOptions::new();
    if let Some(ca) = &opts.cafile {
        tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
    }
    match (&opts.certfile, &opts.keyfile) {
        (Some(c), Some(k)) => tls = tls.identity(Identity::from_pem(read(c)?, read(k)?)),
        (None, None) => {}
        _ => return Err(EtcdSetupError::HalfIdentity),
    }
    Ok(Some(tls))
}

fn ttl_secs(ttl: Duration) -> i64 {
    ttl.as_secs().max(1) as i64
}

impl EtcdStore {
    async fn grant(&self, ttl: Option<Duration>) -> Result<i64, StoreError> {
        match ttl {
            None => Ok(0),
            Some(t) => Ok(call(self.client.clone().lease_grant(ttl_secs(t), None))
                .await?
                .id()),
        }
    }

    fn put_options(lease: i64) -> Option<PutOptions> {
        (lease != 0).then(|| PutOptions::new().with_lease(lease))
    }

    /// Gives back a lease granted for a write that did not happen.
    async fn give_back(&self, lease: i64) {
        if lease != 0 {
            let _ = call(self.client.clone().lease_revoke(lease)).await;
        }
    }
}

impl LeaseStore for EtcdStore {
    type Watch = EtcdWatch;

    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        let resp = call(self.client.clone().get(key, None)).await?;
        Ok(resp.kvs().first().map(|kv| Record {
            key: key.to_owned(),
            value: kv.value().to_vec(),
            lease: kv.lease(),
        }))
    }

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        let resp = call(
            self.client
                .clone()
                .get(prefix, Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let records = resp
            .kvs()
            .iter()
            .map(|kv| Record {
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                value: kv.value().to_vec(),
                lease: kv.lease(),
            })
            .collect();
        let revision = resp.header().map_or(0, |h| h.revision());
        Ok(Listing { records, revision })
    }

    async fn create(
        &self,
        key: &str,
        value: &str,
        ttl: Option<Duration>,
    ) -> Result<i64, StoreError> {
        let lease = self.grant(ttl).await?;
        let txn = Txn::new()
            .when([Compare::version(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, Self::put_options(lease))]);
        match call(self.client.clone().txn(txn)).await {
            Ok(resp) if resp.succeeded() => Ok(lease),
            Ok(_) => {
                self.give_back(lease).await;
                Err(StoreError::Exists)
            }
            Err(e) => {
                self.give_back(lease).await;
                Err(e)
            }
        }
    }

    async fn put(&self, key: &str, value: &str, ttl: Option<Duration>) -> Result<i64, StoreError> {
        let lease = self.grant(ttl).await?;
        if let Err(e) = call(
            self.client
                .clone()
                .put(key, value, Self::put_options(lease)),
        )
        .await
        {
            self.give_back(lease).await;
            return Err(e);
        }
        Ok(lease)
    }

    async fn keep_alive(&self, lease: i64) -> Result<Option<Duration>, StoreError> {
        // Opening the keep-alive stream sends one refresh and reads its
        // answer; etcd answers TTL <= 0 (reported as "lease not found")
        // for a lease that no longer exists.
        let mut client = self.client.clone();
        match tokio::time::timeout(CALL_TIMEOUT, client.lease_keep_alive(lease)).await {
            Err(_) => return Err(StoreError::Unavailable("etcd call timed out".into())),
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(msg))) if msg.contains("not found") => {
                return Ok(None)
            }
            Ok(Err(e)) => return Err(unavailable(e)),
            Ok(Ok(_)) => {}
        }
        self.time_to_live(lease).await
    }

    async fn time_to_live(&self, lease: i64) -> Result<Option<Duration>, StoreError> {
        match call(self.client.clone().lease_time_to_live(lease, None)).await {
            Ok(r) if r.ttl() > 0 => Ok(Some(Duration::from_secs(r.ttl() as u64))),
            Ok(_) => Ok(None),
            Err(StoreError::Unavailable(msg)) if msg.contains("not found") => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn revoke(&self, lease: i64) -> Result<(), StoreError> {
        call(self.client.clone().lease_revoke(lease))
            .await
            .map(|_| ())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        call(self.client.clone().delete(key, None))
            .await
            .map(|_| ())
    }

    async fn watch(&self, prefix: &str, revision: i64) -> Result<EtcdWatch, StoreError> {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(revision);
        let stream = call(self.client.clone().watch(prefix, Some(opts))).await?;
        Ok(EtcdWatch { stream })
    }
}

pub struct EtcdWatch {
    stream: etcd_client::WatchStream,
}

impl WatchStream for EtcdWatch {
    async fn next(&mut self) -> Result<WatchItem, StoreError> {
        loop {
            let resp = self
                .stream
                .message()
                .await
                .map_err(unavailable)?
                .ok_or_else(|| StoreError::Unavailable("watch stream closed".into()))?;
            if resp.compact_revision() > 0 {
                return Ok(WatchItem::Compacted {
                    revision: resp.compact_revision(),
                });
            }
            if resp.canceled() {
                return Err(StoreError::Unavailable(format!(
                    "watch canceled: {}",
                    resp.cancel_reason()
                )));
            }
            // The creation acknowledgement and progress notices carry no events.
            if resp.events().is_empty() {
                continue;
            }
            let revision = resp.header().map_or(0, |h| h.revision());
            let events = resp.events().iter().filter_map(convert).collect();
            return Ok(WatchItem::Events { revision, events });
        }
    }
}

fn convert(ev: &etcd_client::Event) -> Option<Event> {
    let kv = ev.kv()?;
    Some(Event {
        kind: match ev.event_type() {
            EventType::Put => EventKind::Put,
            EventType::Delete => EventKind::Delete,
        },
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        prev_value: ev.prev_kv().map(|p| p.value().to_vec()),
    })
}
