//! A real etcd (Debian's 3.4) inside a network namespace, and a small client
//! speaking its JSON gateway over plain HTTP/1.1.
//!
//! The test process lives in the root namespace, where the etcd address is
//! not routable; each request opens its socket inside etcd's namespace
//! (see [`crate::http`]).
//!
//! With [`EtcdTls`], clients (flanneld) reach etcd only over TLS with a
//! client certificate, on `https://IP:2379`; the harness's own requests go
//! to a plain-HTTP listener on 127.0.0.1 inside the namespace, which no
//! other namespace can reach.
//!
//! After [`Etcd::enable_auth`], clients must authenticate; the harness's own
//! requests then carry a token of etcd's `root` user.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde_json::{json, Value};

use crate::http::http_with_headers_in;
use crate::{try_wait_until, Netns, Proc, TempDir};

const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;
/// The password of etcd's `root` user, which the harness authenticates as.
const ROOT_PASSWORD: &str = "harness-root";

/// What can go wrong talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("cannot reach etcd at {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("etcd request {path} failed: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("etcd request {path} returned HTTP {status}: {body}")]
    Http {
        path: String,
        status: u16,
        body: String,
    },
    #[error("etcd request {path} returned an unreadable reply: {reason}")]
    BadReply { path: String, reason: String },
}

/// The server side of etcd over TLS: its certificate and key, and the CA
/// that client certificates must be signed by (`--client-cert-auth`).
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

impl From<&crate::Pki> for EtcdTls {
    fn from(pki: &crate::Pki) -> EtcdTls {
        EtcdTls {
            cert: pki.server_cert.clone(),
            key: pki.server_key.clone(),
            client_ca: pki.ca.clone(),
        }
    }
}

/// An etcd server process with its own data dir, stopped on drop.
#[derive(Debug)]
pub struct Etcd {
    netns: PathBuf,
    ip: String,
    name: String,
    dir: TempDir,
    tls: Option<EtcdTls>,
    proc: Option<Proc>,
    /// With authentication on, the `root` token the harness's requests carry.
    token: Mutex<Option<String>>,
}

impl Etcd {
    /// Starts etcd inside `netns`, listening on `ip` (ports 2379/2380), and
    /// waits until it answers.
    pub fn start_in(netns: &Netns, ip: &str) -> Etcd {
        Etcd::start_with(netns, ip, None)
    }

    /// Like [`Etcd::start_in`], with clients served over TLS only, client
    /// certificate required (see the module doc).
    pub fn start_tls_in(netns: &Netns, ip: &str, tls: EtcdTls) -> Etcd {
        Etcd::start_with(netns, ip, Some(tls))
    }

    fn start_with(netns: &Netns, ip: &str, tls: Option<EtcdTls>) -> Etcd {
        let mut etcd = Etcd {
            netns: netns.path(),
            ip: ip.to_string(),
            name: crate::unique("etcd"),
            dir: TempDir::new("fl-etcd"),
            tls,
            proc: None,
            token: Mutex::new(None),
        };
        etcd.start();
        etcd
    }

    /// `http://IP:2379` (`https://` with TLS), what `--etcd-endpoints` takes.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:{CLIENT_PORT}", self.ip)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        self.proc
            .as_ref()
            .map(Proc::log)
            .unwrap_or_else(|| std::fs::read_to_string(self.dir.join("log")).unwrap_or_default())
    }

    /// (Re)starts the server on the same data dir and waits until healthy.
    pub fn start(&mut self) {
        assert!(self.proc.is_none(), "etcd is already running");
        let (client, peer) = (self.endpoint(), self.url(PEER_PORT));
        let mut cmd = crate::netns::cmd_in(&self.netns, "/usr/bin/etcd");
        cmd.args([
            "--name",
            &self.name,
            "--logger",
            "zap",
            "--log-level",
            "warn",
        ])
        .arg("--data-dir")
        .arg(self.dir.join("data"))
        .args([
            "--listen-client-urls",
            &self.listen_client_urls(),
            "--advertise-client-urls",
            &client,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", &format!("{}={peer}", self.name)]);
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.client_ca)
                .arg("--client-cert-auth");
        }
        self.proc = Some(Proc::spawn_logged(&mut cmd, self.dir.join("log")));
        self.wait_healthy();
    }

    /// Starts the stopped server afresh on an empty data dir, as after a
    /// restore from an empty backup: no keys, no leases, revision 1.
    pub fn start_wiped(&mut self) {
        assert!(self.proc.is_none(), "stop etcd before wiping it");
        let data = self.dir.join("data");
        if data.exists() {
            std::fs::remove_dir_all(&data).expect("remove etcd's data dir");
        }
        self.start();
    }

    /// Stops the server (SIGTERM); its data stays for [`Etcd::start`].
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.terminate();
        }
    }

    /// Leaves the server running after this value is dropped.
    pub fn detach(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            p.detach();
        }
        self.dir.keep();
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    fn url(&self, port: u16) -> String {
        format!("http://{}:{port}", self.ip)
    }

    /// The client endpoint, and with TLS also the harness's plain-HTTP
    /// listener (TLS applies to the `https://` URLs only).
    fn listen_client_urls(&self) -> String {
        match self.tls {
            Some(_) => format!("{},http://{}", self.endpoint(), self.gateway()),
            None => self.endpoint(),
        }
    }

    /// Where the harness sends its JSON gateway requests.
    fn gateway(&self) -> SocketAddr {
        let ip = match self.tls {
            Some(_) => Ipv4Addr::LOCALHOST,
            None => self.ip.parse().expect("etcd ip"),
        };
        SocketAddr::from((ip, CLIENT_PORT))
    }

    fn wait_healthy(&mut self) {
        let timeout = Duration::from_secs(30);
        let mut health = None;
        let mut exited = false;
        let healthy = try_wait_until(timeout, || {
            let reply = self.http("GET", "/health", None);
            let ok = matches!(&reply, Ok(v) if v["health"] == "true");
            health = Some(reply);
            // Give up at once: a dead etcd never gets healthy.
            exited = !ok && !self.proc.as_mut().expect("started").is_running();
            ok || exited
        });
        if healthy.is_none() || exited {
            panic!(
                "etcd did not become healthy within {timeout:?} ({health:?}); log:\n{}",
                self.log()
            );
        }
    }

    /// Sets `key` to `value`.
    pub fn put(&self, key: &str, value: &str) {
        self.try_put(key, value, 0)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Sets `key` to `value` attached to a new etcd lease of `ttl_secs`;
    /// returns the lease id.
    pub fn put_with_lease(&self, key: &str, value: &str, ttl_secs: i64) -> i64 {
        let lease = self.grant(ttl_secs).unwrap_or_else(|e| panic!("{e}"));
        self.try_put(key, value, lease)
            .unwrap_or_else(|e| panic!("{e}"));
        lease
    }

    /// Grants a lease of `ttl_secs`; returns its id.
    pub fn grant(&self, ttl_secs: i64) -> Result<i64, EtcdError> {
        let path = "/v3/lease/grant";
        let reply = self.call(path, json!({ "TTL": ttl_secs }))?;
        int_field(&reply, "ID").ok_or_else(|| bad(path, "no lease ID"))
    }

    /// Remaining TTL of a lease in seconds; `None` once it is revoked/expired.
    pub fn lease_ttl(&self, lease: i64) -> Option<i64> {
        let reply = self.call("/v3/kv/lease/timetolive", json!({ "ID": lease }));
        let ttl = int_field(&reply.unwrap_or_else(|e| panic!("{e}")), "TTL")?;
        (ttl >= 0).then_some(ttl)
    }

    pub fn try_put(&self, key: &str, value: &str, lease: i64) -> Result<(), EtcdError> {
        let body = json!({
            "key": BASE64.encode(key.as_bytes()),
            "value": BASE64.encode(value.as_bytes()),
            "lease": lease,
        });
        self.call("/v3/kv/put", body).map(drop)
    }

    /// Sets every `(key, value)` in one transaction: one revision, which a
    /// watcher receives as one response carrying every event.
    pub fn put_all(&self, kvs: &[(String, String)]) {
        let puts: Vec<Value> = kvs
            .iter()
            .map(|(k, v)| json!({"requestPut": {"key": BASE64.encode(k), "value": BASE64.encode(v)}}))
            .collect();
        self.call("/v3/kv/txn", json!({ "success": puts }))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<String> {
        self.get_with_lease(key).map(|(v, _)| v)
    }

    /// The value of `key` and its etcd lease id (0: no lease).
    pub fn get_with_lease(&self, key: &str) -> Option<(String, i64)> {
        let kvs = self.try_range(key, None).unwrap_or_else(|e| panic!("{e}"));
        kvs.into_iter().next().map(|kv| (kv.value, kv.lease))
    }

    /// Every key under `prefix` with its value, in key order.
    pub fn list(&self, prefix: &str) -> Vec<(String, String)> {
        let end = prefix_end(prefix.as_bytes());
        let kvs = self
            .try_range(prefix, Some(&end))
            .unwrap_or_else(|e| panic!("{e}"));
        kvs.into_iter().map(|kv| (kv.key, kv.value)).collect()
    }

    /// Deletes `key`; returns how many keys went away (0 or 1).
    pub fn delete(&self, key: &str) -> i64 {
        let body = json!({ "key": BASE64.encode(key.as_bytes()) });
        let reply = self
            .call("/v3/kv/deleterange", body)
            .unwrap_or_else(|e| panic!("{e}"));
        int_field(&reply, "deleted").unwrap_or(0)
    }

    /// Keys (with values and leases) in `[key, end)`, or just `key`.
    pub fn try_range(&self, key: &str, end: Option<&[u8]>) -> Result<Vec<Kv>, EtcdError> {
        let mut body = json!({ "key": BASE64.encode(key.as_bytes()) });
        if let Some(end) = end {
            body["range_end"] = Value::String(BASE64.encode(end));
        }
        let path = "/v3/kv/range";
        let reply = self.call(path, body)?;
        let Some(kvs) = reply.get("kvs").and_then(Value::as_array) else {
            return Ok(Vec::new());
        };
        kvs.iter()
            .map(|kv| Kv::parse(kv).ok_or_else(|| bad(path, "bad kv")))
            .collect()
    }

    /// Turns authentication on: a `root` user, whose token the harness's own
    /// requests carry from then on, and `user` with `password`, whose role
    /// (named after it) may read and write every key starting with `prefix`.
    pub fn enable_auth(&self, user: &str, password: &str, prefix: &str) {
        let perm = json!({
            "permType": "READWRITE",
            "key": BASE64.encode(prefix.as_bytes()),
            "range_end": BASE64.encode(prefix_end(prefix.as_bytes())),
        });
        let steps = [
            (
                "user/add",
                json!({"name": "root", "password": ROOT_PASSWORD}),
            ),
            // etcd enables auth only once `root` has the `root` role.
            ("role/add", json!({"name": "root"})),
            ("user/grant", json!({"user": "root", "role": "root"})),
            ("user/add", json!({"name": user, "password": password})),
            ("role/add", json!({"name": user})),
            ("role/grant", json!({"name": user, "perm": perm})),
            ("user/grant", json!({"user": user, "role": user})),
            ("enable", json!({})),
        ];
        for (step, body) in steps {
            self.call(&format!("/v3/auth/{step}"), body)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        self.authenticate().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Gets a new `root` token.
    fn authenticate(&self) -> Result<(), EtcdError> {
        let path = "/v3/auth/authenticate";
        let body = json!({"name": "root", "password": ROOT_PASSWORD}).to_string();
        let reply = self.send("POST", path, &body, None)?;
        let token = reply["token"]
            .as_str()
            .ok_or_else(|| bad(path, "no token"))?;
        *self.token.lock().unwrap_or_else(PoisonError::into_inner) = Some(token.to_string());
        Ok(())
    }

    fn token(&self) -> Option<String> {
        self.token
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// POSTs `body` to a gateway `path` (e.g. `/v3/kv/put`); returns the reply.
    pub fn call(&self, path: &str, body: Value) -> Result<Value, EtcdError> {
        self.http("POST", path, Some(body))
    }

    fn http(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, EtcdError> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let token = self.token();
        match self.send(method, path, &body, token.as_deref()) {
            // Tokens expire, and a restarted etcd has forgotten them.
            Err(EtcdError::Http { status: 401, .. }) if token.is_some() => {
                self.authenticate()?;
                self.send(method, path, &body, self.token().as_deref())
            }
            reply => reply,
        }
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        body: &str,
        token: Option<&str>,
    ) -> Result<Value, EtcdError> {
        let headers: Vec<(&str, &str)> = token.map(|t| ("Authorization", t)).into_iter().collect();
        let request = (method, path);
        let reply = http_with_headers_in(&self.netns, self.gateway(), request, &headers, body)
            .map_err(|source| EtcdError::Io {
                path: path.to_string(),
                source,
            })?;
        if reply.status != 200 {
            let (status, body) = (reply.status, reply.body);
            return Err(EtcdError::Http {
                path: path.to_string(),
                status,
                body,
            });
        }
        serde_json::from_str(&reply.body).map_err(|e| bad(path, &format!("{e}: {}", reply.body)))
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        // Proc's own Drop terminates the server; the data dir goes after it.
        self.proc.take();
    }
}

/// One key-value pair of a range reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: String,
    pub lease: i64,
    pub mod_revision: i64,
}

impl Kv {
    fn parse(v: &Value) -> Option<Kv> {
        let text = |f: &str| {
            let raw = v.get(f).and_then(Value::as_str).unwrap_or("");
            let bytes = BASE64.decode(raw).ok()?;
            Some(String::from_utf8_lossy(&bytes).into_owned())
        };
        Some(Kv {
            key: text("key")?,
            value: text("value")?,
            lease: int_field(v, "lease").unwrap_or(0),
            mod_revision: int_field(v, "mod_revision").unwrap_or(0),
        })
    }
}

/// The gateway prints int64 fields as JSON strings and omits zero values.
fn int_field(v: &Value, field: &str) -> Option<i64> {
    match v.get(field)? {
        Value::String(s) => s.parse().ok(),
        n => n.as_i64(),
    }
}

fn bad(path: &str, reason: &str) -> EtcdError {
    EtcdError::BadReply {
        path: path.to_string(),
        reason: reason.to_string(),
    }
}

/// The smallest key greater than every key starting with `prefix`
/// (etcd's prefix range convention).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn int_fields_accept_strings_and_numbers() {
        let v = json!({"ID": "7587", "TTL": 5});
        assert_eq!(int_field(&v, "ID"), Some(7587));
        assert_eq!(int_field(&v, "TTL"), Some(5));
        assert_eq!(int_field(&v, "none"), None);
    }
}
