//! The etcd v3 lease store.
//!
//! Listings come in pages ([`super::list_paged`]) and the client accepts
//! answers up to [`DECODE_LIMIT`]; watches ask etcd to split large
//! revisions into fragments (etcd >= 3.4), so values written by anyone
//! under the prefix cannot make a listing or a watch fail for good.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    KeyValue, KvClient, PutOptions, ResponseHeader, TlsOptions, Txn, TxnOp, WatchClient,
    WatchOptions,
};

use super::{
    prefix_end, Event, EventKind, Header, LeaseStore, Page, PageRequest, Record, StoreError,
    WatchItem, WatchStream,
};

/// A unary call that takes longer than this is treated as a failure (the
/// caller retries); watches are not bounded.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer the client decodes (gRPC's default is 4 MiB, which a
/// few large values under the prefix exceed). A listing page too large for
/// it is asked again with fewer keys; a watch response is at most etcd's
/// request limit (1.5 MiB by default) plus one event, as it is fragmented.
pub const DECODE_LIMIT: usize = 64 << 20;

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
    #[error("--etcd-username and --etcd-password go together")]
    HalfLogin,
    #[error("etcd client: {0}")]
    Client(String),
}

#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    /// The client's key-value and watch services, accepting answers up to
    /// [`DECODE_LIMIT`] (they share its connection and credentials).
    kv: KvClient,
    watcher: WatchClient,
    login: Option<Arc<Login>>,
}

/// `--etcd-username` and `--etcd-password`, and whether the client holds a
/// token from them that etcd still knows.
struct Login {
    user: String,
    password: String,
    valid: AtomicBool,
}

impl Login {
    /// Forgets the token when etcd says it does not know it (it keeps
    /// tokens in memory: a restart or `--auth-token-ttl` idle seconds lose
    /// them), or never got one (auth enabled after we started). The client
    /// renews a refused token of a unary call by itself, not of a watch.
    fn note(&self, message: &str) {
        if message.contains(INVALID_TOKEN) || message.contains(NO_USER) {
            self.valid.store(false, Ordering::Relaxed);
        }
    }
}

/// etcd's messages (v3rpc/rpctypes) for the refusals flanneld explains.
const INVALID_TOKEN: &str = "etcdserver: invalid auth token";
const NO_USER: &str = "etcdserver: user name is empty";
const AUTH_FAILED: &str = "etcdserver: authentication failed";
const PERMISSION_DENIED: &str = "etcdserver: permission denied";
const AUTH_NOT_ENABLED: &str = "etcdserver: authentication is not enabled";
const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
/// tonic's refusal of an answer larger than the decode limit.
const TOO_LARGE: &str = "message length too large";

/// A failure whose etcd message is `message` (`full`: as the client
/// reports it): a refusal said in flanneld's terms, anything else as is.
fn classify(login: Option<&Login>, message: &str, full: String) -> StoreError {
    if let Some(login) = login {
        login.note(message);
    }
    let user = login.map_or("", |l| l.user.as_str());
    if message.contains(LEASE_NOT_FOUND) {
        return StoreError::NoLease;
    }
    if message.contains(TOO_LARGE) {
        return StoreError::TooLarge(message.to_owned());
    }
    match refusal(message, user) {
        Some(why) => StoreError::Refused(why),
        None => StoreError::Unavailable(full),
    }
}

/// Why etcd refused a request and what to change, where the client's own
/// text would be a bare gRPC status; `None` for any other failure.
fn refusal(message: &str, user: &str) -> Option<String> {
    if message.contains(AUTH_FAILED) {
        Some(format!(
            "etcd refused user {user:?}: authentication failed, \
             wrong --etcd-username or --etcd-password"
        ))
    } else if message.contains(NO_USER) {
        Some("etcd requires authentication: give --etcd-username and --etcd-password".into())
    } else if message.contains(PERMISSION_DENIED) {
        Some(format!(
            "etcd denied user {user:?} access: permission denied, \
             its role needs readwrite on the keys under --etcd-prefix"
        ))
    } else {
        None
    }
}

/// The message etcd sent, without the client's wrapping.
fn message(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(status) => status.message().to_owned(),
        e => e.to_string(),
    }
}

fn timed_out() -> StoreError {
    StoreError::Unavailable("etcd call timed out".into())
}

/// Awaits `fut` for at most [`CALL_TIMEOUT`].
async fn deadline<T>(
    fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<Result<T, etcd_client::Error>, StoreError> {
    tokio::time::timeout(CALL_TIMEOUT, fut)
        .await
        .map_err(|_| timed_out())
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
        let login = login(opts)?;
        let mut co = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            // HTTP/2 pings notice a dead etcd even while only a watch is open.
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true)
            // Once logged in, a unary call refused for an expired token
            // logs in again and is retried.
            .with_auto_token_refresh(true);
        if let Some(tls) = tls_options(opts)? {
            co = co.with_tls(tls);
        }
        // No user here: the client would authenticate at once and fail
        // while etcd is down or refuses the password (see `log_in`).
        let client = Client::connect(&opts.endpoints, Some(co))
            .await
            .map_err(|e| EtcdSetupError::Client(e.to_string()))?;
        let kv = client.kv_client().max_decoding_message_size(DECODE_LIMIT);
        let watcher = client
            .watch_client()
            .max_decoding_message_size(DECODE_LIMIT);
        Ok(EtcdStore {
            client,
            kv,
            watcher,
            login,
        })
    }

    /// Authenticates when credentials were given and the client holds no
    /// valid token yet, so that a refused login is an error of a call,
    /// retried and explained like any other.
    async fn log_in(&self) -> Result<(), StoreError> {
        let Some(login) = &self.login else {
            return Ok(());
        };
        if login.valid.load(Ordering::Relaxed) {
            return Ok(());
        }
        let creds = (login.user.clone(), login.password.clone());
        match deadline(self.client.clone().update_user(Some(creds))).await? {
            Ok(()) => {}
            // Like etcd's own client: go on without a token.
            Err(e) if message(&e).contains(AUTH_NOT_ENABLED) => {}
            Err(e) => return Err(self.error(&e)),
        }
        login.valid.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Runs one etcd call, logged in, with a deadline.
    async fn call<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        self.log_in().await?;
        deadline(fut).await?.map_err(|e| self.error(&e))
    }

    fn error(&self, e: &etcd_client::Error) -> StoreError {
        classify(self.login.as_deref(), &message(e), e.to_string())
    }
}

fn login(opts: &EtcdOptions) -> Result<Option<Arc<Login>>, EtcdSetupError> {
    match (&opts.username, &opts.password) {
        (Some(user), Some(password)) => Ok(Some(Arc::new(Login {
            user: user.clone(),
            password: password.clone(),
            valid: AtomicBool::new(false),
        }))),
        (None, None) => Ok(None),
        _ => Err(EtcdSetupError::HalfLogin),
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
            Some(t) => Ok(self
                .call(self.client.clone().lease_grant(ttl_secs(t), None))
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
            let _ = self.call(self.client.clone().lease_revoke(lease)).await;
        }
    }
}

impl LeaseStore for EtcdStore {
    type Watch = EtcdWatch;

    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        let resp = self.call(self.kv.clone().get(key, None)).await?;
        Ok(resp.kvs().first().map(record))
    }

    async fn range(&self, req: &PageRequest<'_>) -> Result<Page, StoreError> {
        let opts = GetOptions::new()
            .with_range(prefix_end(req.prefix.as_bytes()))
            .with_limit(req.limit as i64)
            .with_revision(req.revision);
        let resp = self.call(self.kv.clone().get(req.from, Some(opts))).await?;
        let next = match (resp.more(), resp.kvs().last()) {
            (true, Some(last)) => Some([last.key(), &[0]].concat()),
            _ => None,
        };
        Ok(Page {
            records: resp.kvs().iter().map(record).collect(),
            header: header(resp.header()),
            next,
        })
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
        match self.call(self.kv.clone().txn(txn)).await {
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
        if let Err(e) = self.put_with_lease(key, value, lease).await {
            self.give_back(lease).await;
            return Err(e);
        }
        Ok(lease)
    }

    async fn put_with_lease(&self, key: &str, value: &str, lease: i64) -> Result<(), StoreError> {
        let mut kv = self.kv.clone();
        let put = kv.put(key, value, Self::put_options(lease));
        self.call(put).await.map(drop)
    }

    async fn keep_alive(&self, lease: i64) -> Result<Option<Duration>, StoreError> {
        // Opening the keep-alive stream sends one refresh and reads its
        // answer; etcd answers TTL <= 0 (reported as "lease not found")
        // for a lease that no longer exists.
        self.log_in().await?;
        let mut client = self.client.clone();
        match deadline(client.lease_keep_alive(lease)).await? {
            Err(etcd_client::Error::LeaseKeepAliveError(msg)) if msg.contains("not found") => {
                return Ok(None)
            }
            Err(e) => return Err(self.error(&e)),
            Ok(_) => {}
        }
        self.time_to_live(lease).await
    }

    async fn time_to_live(&self, lease: i64) -> Result<Option<Duration>, StoreError> {
        match self
            .call(self.client.clone().lease_time_to_live(lease, None))
            .await
        {
            Ok(r) if r.ttl() > 0 => Ok(Some(Duration::from_secs(r.ttl() as u64))),
            Ok(_) => Ok(None),
            Err(StoreError::Unavailable(msg)) if msg.contains("not found") => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn revoke(&self, lease: i64) -> Result<(), StoreError> {
        self.call(self.client.clone().lease_revoke(lease))
            .await
            .map(|_| ())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.call(self.kv.clone().delete(key, None))
            .await
            .map(|_| ())
    }

    async fn watch(&self, prefix: &str, revision: i64) -> Result<(EtcdWatch, Header), StoreError> {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_fragment()
            .with_start_revision(revision);
        let stream = self
            .call(self.watcher.clone().watch(prefix, Some(opts)))
            .await?;
        let mut watch = EtcdWatch {
            stream,
            login: self.login.clone(),
        };
        let created = deadline(watch.stream.message()).await?;
        match created.map_err(|e| watch.error(&message(&e), e.to_string()))? {
            Some(resp) if resp.created() && !resp.canceled() => Ok((watch, header(resp.header()))),
            Some(resp) => Err(watch.error(
                resp.cancel_reason(),
                format!("watch not created: {}", resp.cancel_reason()),
            )),
            None => Err(StoreError::Unavailable("watch stream closed".into())),
        }
    }
}

fn record(kv: &KeyValue) -> Record {
    Record {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        lease: kv.lease(),
        create_revision: kv.create_revision(),
    }
}

fn header(h: Option<&ResponseHeader>) -> Header {
    h.map_or(Header::default(), |h| Header {
        revision: h.revision(),
        cluster_id: h.cluster_id(),
    })
}

pub struct EtcdWatch {
    stream: etcd_client::WatchStream,
    login: Option<Arc<Login>>,
}

impl EtcdWatch {
    /// Unlike a unary call's, a watch's refused token is not renewed by the
    /// client: [`Login::note`] makes the next call (the watch's reopening)
    /// log in again.
    fn error(&self, message: &str, full: String) -> StoreError {
        classify(self.login.as_deref(), message, full)
    }
}

impl WatchStream for EtcdWatch {
    async fn next(&mut self) -> Result<WatchItem, StoreError> {
        loop {
            let resp = match self.stream.message().await {
                Ok(Some(resp)) => resp,
                Ok(None) => return Err(StoreError::Unavailable("watch stream closed".into())),
                Err(e) => return Err(self.error(&message(&e), e.to_string())),
            };
            if resp.compact_revision() > 0 {
                return Ok(WatchItem::Compacted {
                    revision: resp.compact_revision(),
                });
            }
            if resp.canceled() {
                let reason = resp.cancel_reason();
                return Err(self.error(reason, format!("watch canceled: {reason}")));
            }
            // Progress notices carry no events.
            let events: Vec<Event> = resp.events().iter().filter_map(convert).collect();
            let Some(last) = events.last() else { continue };
            // This may be a fragment, the rest of its last revision still
            // to come: only the revisions before it are known complete, so
            // a watch reopened after a break sees that revision again.
            let revision = last.mod_revision - 1;
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
        lease: kv.lease(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(user: Option<&str>, password: Option<&str>) -> EtcdOptions {
        EtcdOptions {
            username: user.map(Into::into),
            password: password.map(Into::into),
            ..EtcdOptions::default()
        }
    }

    #[test]
    fn username_and_password_go_together() {
        assert!(matches!(login(&creds(None, None)), Ok(None)));
        assert!(matches!(login(&creds(Some("u"), Some("p"))), Ok(Some(_))));
        for half in [creds(Some("u"), None), creds(None, Some("p"))] {
            assert!(matches!(login(&half), Err(EtcdSetupError::HalfLogin)));
        }
    }

    #[test]
    fn oversized_answers_and_missing_leases_have_their_own_errors() {
        let too_large =
            "Error, decoded message length too large: found 9 bytes, the limit is: 4 bytes";
        assert!(matches!(
            classify(None, too_large, String::new()),
            StoreError::TooLarge(_)
        ));
        let gone = "etcdserver: requested lease not found";
        assert_eq!(classify(None, gone, String::new()), StoreError::NoLease);
    }

    #[test]
    fn a_forgotten_token_makes_the_next_call_log_in_again() {
        let login = login(&creds(Some("flannel"), Some("p"))).unwrap().unwrap();
        login.valid.store(true, Ordering::Relaxed);
        let denied = classify(Some(&login), PERMISSION_DENIED, String::new());
        assert!(matches!(denied, StoreError::Refused(m) if m.contains("user \"flannel\"")));
        assert!(login.valid.load(Ordering::Relaxed));
        let reason = format!("rpc error: code = Unauthenticated desc = {INVALID_TOKEN}");
        let stale = classify(Some(&login), &reason, "watch canceled".into());
        assert_eq!(stale, StoreError::Unavailable("watch canceled".into()));
        assert!(!login.valid.load(Ordering::Relaxed));
    }
}
