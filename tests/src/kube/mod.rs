//! A Kubernetes API server emulator for the Node resource, for flanneld's
//! `--kube-subnet-mgr` mode: the REST protocol of `kube-apiserver` for
//! Nodes (list, watch, get, create, update, patch, delete, `/status`),
//! reading Pods, discovery, bearer tokens over TLS, and a `resourceVersion`
//! history that can be compacted so watches get 410 Gone.
//!
//! [`KubeApi`] runs it in the test process (on loopback or inside a
//! network namespace) and lets the test act as kube-controller-manager
//! and the scheduler: create and delete Nodes, set `podCIDRs`, place Pods,
//! restart the server, compact its history. The `kube-api-emulator`
//! binary runs the same server on its own.
//!
//! Modules: `store` (objects, versions, history), `routes` (REST paths),
//! `watch` (event streams), `patch` (merge, strategic merge and JSON
//! patch), `selector` (label and field selectors), `meta` (defaults and
//! validation), `status` (errors as `Status`), `server` (TLS, auth).

mod meta;
pub mod patch;
mod routes;
pub mod selector;
mod server;
mod status;
mod store;
mod watch;

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::{json, Value};

pub use routes::SERVER_VERSION;
pub use server::ServerError;
pub use status::ApiError;
use store::{Part, Store};

use crate::{run_in_netns, Netns, Pki, TempDir};

/// The port the emulator listens on inside a namespace (kube-apiserver's
/// secure port).
pub const KUBE_API_PORT: u16 = 6443;

/// How often an open watch that allows bookmarks gets one by default.
pub const BOOKMARK_INTERVAL: Duration = Duration::from_secs(5);

/// How the server is set up.
#[derive(Debug, Clone)]
pub struct KubeApiConfig {
    pub listen: SocketAddr,
    /// A network namespace (`/run/netns/NAME`) to listen in.
    pub netns: Option<PathBuf>,
    /// The address clients use (the kubeconfig's server and the
    /// certificate's name); the listen address when unset.
    pub advertise: Option<std::net::IpAddr>,
    /// Where the certificates and the kubeconfig are written.
    pub dir: PathBuf,
    /// The kubeconfig's path; `dir/kubeconfig` when unset.
    pub kubeconfig: Option<PathBuf>,
    /// The bearer token; a random one when unset.
    pub token: Option<String>,
    pub bookmark_interval: Duration,
    /// Print each request and its status on stderr.
    pub log_requests: bool,
}

/// Whether a restart keeps the stored objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// As with a real API server over the same etcd.
    KeepState,
    /// A new, empty cluster: every Node is gone, and so is every earlier
    /// resource version (watches resuming from one get 410).
    DropState,
}

/// What the handlers share: the store, and what open watches listen to.
pub(crate) struct Shared {
    store: Mutex<Store>,
    /// Poked after every write and every test signal; watches wake on it.
    changes: tokio::sync::watch::Sender<()>,
    /// Bumped to make every open watch send a bookmark.
    bookmark_epoch: AtomicU64,
    /// Bumped to end every open watch with 410 Expired.
    expire_epoch: AtomicU64,
    token: String,
    bookmark_interval: Duration,
    server_address: String,
    requests: Mutex<Vec<String>>,
    log_requests: bool,
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs a write and wakes the watches.
    fn write<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let out = f(&mut self.store());
        self.changes.send_replace(());
        out
    }

    fn signal(&self, epoch: &AtomicU64) {
        epoch.fetch_add(1, Ordering::SeqCst);
        self.changes.send_replace(());
    }

    fn record_request(&self, line: String, status: u16) {
        if self.log_requests {
            eprintln!("kube-api-emulator: {line} -> {status}");
        }
        let mut requests = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
        requests.push(line);
    }
}

/// A running emulator. Dropping it stops the server.
pub struct KubeApi {
    rt: Option<tokio::runtime::Runtime>,
    shared: Arc<Shared>,
    addr: SocketAddr,
    netns: Option<PathBuf>,
    tls: Arc<tokio_rustls::rustls::ServerConfig>,
    running: Option<server::Running>,
    pki: Pki,
    kubeconfig: PathBuf,
    dir: PathBuf,
    _dir: Option<TempDir>,
}

impl std::fmt::Debug for KubeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeApi").field("url", &self.url()).finish()
    }
}

/// What can go wrong starting the emulator.
#[derive(Debug, thiserror::Error)]
pub enum KubeApiError {
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

impl KubeApi {
    /// On 127.0.0.1, a free port, with its files in a temp dir.
    pub fn start_loopback() -> KubeApi {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        KubeApi::start_in_temp(addr, None)
    }

    /// Inside `netns` on `ip:6443` (e.g. on the underlay, where every node
    /// reaches it), with its files in a temp dir.
    pub fn start_in(netns: &Netns, ip: &str) -> KubeApi {
        let ip = ip
            .parse()
            .unwrap_or_else(|e| panic!("bad address {ip}: {e}"));
        KubeApi::start_in_temp(SocketAddr::new(ip, KUBE_API_PORT), Some(netns.path()))
    }

    fn start_in_temp(listen: SocketAddr, netns: Option<PathBuf>) -> KubeApi {
        let dir = TempDir::new("fl-kube");
        let config = KubeApiConfig {
            listen,
            netns,
            advertise: None,
            dir: dir.path().to_path_buf(),
            kubeconfig: None,
            token: None,
            bookmark_interval: BOOKMARK_INTERVAL,
            log_requests: false,
        };
        let mut api = KubeApi::start(config).unwrap_or_else(|e| panic!("kube-api-emulator: {e}"));
        api._dir = Some(dir);
        api
    }

    /// Starts a server as `config` says: certificates for the advertised
    /// address (made with `openssl`), the listener, the kubeconfig.
    pub fn start(config: KubeApiConfig) -> Result<KubeApi, KubeApiError> {
        let write_error = |path: &Path, source| KubeApiError::Write {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&config.dir).map_err(|e| write_error(&config.dir, e))?;
        let listener = bind(config.listen, config.netns.as_deref())?;
        let addr = listener
            .local_addr()
            .map_err(|e| write_error(&config.dir, e))?;
        let advertise = config.advertise.unwrap_or(addr.ip());
        let advertised = SocketAddr::new(advertise, addr.port());
        let mut sans = vec![advertise.to_string()];
        if !advertise.is_loopback() {
            sans.push("127.0.0.1".to_string());
        }
        let pki = Pki::generate(
            &config.dir,
            &sans.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let tls = server::tls_config(&pki.server_cert, &pki.server_key)?;
        let token = config.token.clone().unwrap_or_else(random_token);
        let kubeconfig = config
            .kubeconfig
            .clone()
            .unwrap_or_else(|| config.dir.join("kubeconfig"));
        let text = kubeconfig_text(&format!("https://{advertised}"), &pki.ca, &token);
        std::fs::write(&kubeconfig, text).map_err(|e| write_error(&kubeconfig, e))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kube-api-emulator")
            .enable_all()
            .build()
            .map_err(KubeApiError::Runtime)?;
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new(0)),
            changes: tokio::sync::watch::channel(()).0,
            bookmark_epoch: AtomicU64::new(0),
            expire_epoch: AtomicU64::new(0),
            token,
            bookmark_interval: config.bookmark_interval,
            server_address: advertised.to_string(),
            requests: Mutex::new(Vec::new()),
            log_requests: config.log_requests,
        });
        let running =
            server::Running::spawn(rt.handle(), listener, Arc::clone(&tls), Arc::clone(&shared));
        Ok(KubeApi {
            rt: Some(rt),
            shared,
            addr,
            netns: config.netns,
            tls,
            running: Some(running),
            pki,
            kubeconfig,
            dir: config.dir,
            _dir: None,
        })
    }

    /// `https://IP:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bearer token clients must send.
    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// The CA certificate (PEM) that signed the server's certificate.
    pub fn ca(&self) -> &Path {
        &self.pki.ca
    }

    /// A kubeconfig with the server, the CA and the token.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// `kubectl` (`$KUBECTL` when set) with this server's kubeconfig, and
    /// its discovery cache and home in the emulator's directory, so nothing
    /// is read from or left in the user's `~/.kube`.
    pub fn kubectl(&self) -> std::process::Command {
        let program = std::env::var_os("KUBECTL").unwrap_or_else(|| "kubectl".into());
        let mut cmd = std::process::Command::new(program);
        cmd.env("HOME", &self.dir)
            .env_remove("KUBECONFIG")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.join("kubectl-cache"));
        cmd
    }

    /// Every request served so far, as `METHOD /path?query`, in order.
    pub fn requests(&self) -> Vec<String> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The latest resource version.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().resource_version()
    }

    /// Creates a Node from `body` (a Node object; `metadata.name` needed).
    pub fn try_create_node(&self, body: Value) -> Result<Value, ApiError> {
        self.shared.write(|s| s.create_node(body))
    }

    /// Creates Node `name` with an InternalIP address, as kubelet
    /// registers it (the controller manager sets `podCIDRs` later).
    pub fn create_node(&self, name: &str, internal_ip: &str) -> Value {
        let body = json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
            "status": {"addresses": [
                {"type": "InternalIP", "address": internal_ip},
                {"type": "Hostname", "address": name},
            ]},
        });
        self.try_create_node(body)
            .unwrap_or_else(|e| panic!("create node {name}: {e}"))
    }

    /// The Node `name`, if it exists.
    pub fn node(&self, name: &str) -> Option<Value> {
        self.shared.store().node(name).ok()
    }

    /// Every Node, by name.
    pub fn nodes(&self) -> Vec<Value> {
        self.shared.store().nodes(&Default::default())
    }

    /// Sets `spec.podCIDRs` (and `podCIDR`) of Node `name`, as the node
    /// IPAM controller does.
    pub fn set_pod_cidrs(&self, name: &str, cidrs: &[&str]) -> Value {
        let patch = json!({"spec": {"podCIDR": cidrs.first(), "podCIDRs": cidrs}});
        self.patch_node(name, &patch)
    }

    /// Applies a JSON merge patch to Node `name` (spec and metadata).
    pub fn patch_node(&self, name: &str, patch: &Value) -> Value {
        self.try_patch(name, Part::Main, patch)
            .unwrap_or_else(|e| panic!("patch node {name}: {e}"))
    }

    /// Applies a JSON merge patch to the status of Node `name`.
    pub fn patch_node_status(&self, name: &str, patch: &Value) -> Value {
        self.try_patch(name, Part::Status, patch)
            .unwrap_or_else(|e| panic!("patch node {name} status: {e}"))
    }

    fn try_patch(&self, name: &str, part: Part, patch: &Value) -> Result<Value, ApiError> {
        self.shared.write(|s| {
            s.update_node(name, part, |old| {
                let mut new = old.clone();
                patch::merge_patch(&mut new, patch);
                Ok(new)
            })
        })
    }

    /// Deletes Node `name`; false if there was none.
    pub fn delete_node(&self, name: &str) -> bool {
        self.shared
            .write(|s| s.delete_node(name, None, None))
            .is_ok()
    }

    /// Makes Pod `namespace/name` run on Node `node` (flannel finds its
    /// node through `POD_NAME`/`POD_NAMESPACE`).
    pub fn set_pod(&self, namespace: &str, name: &str, node: &str) -> Value {
        self.shared.write(|s| s.set_pod(namespace, name, node))
    }

    /// Drops the history: a watch or a continued list from any version
    /// before the latest gets 410 Expired. Open watches go on.
    pub fn compact(&self) {
        self.shared.write(Store::compact);
    }

    /// Compacts, and ends every open watch with an ERROR event carrying
    /// 410 Expired (what kube-apiserver sends when etcd compacts under a
    /// watch).
    pub fn expire_watches(&self) {
        self.compact();
        self.shared.signal(&self.shared.expire_epoch);
    }

    /// Makes every open watch that allows bookmarks send one now.
    pub fn send_bookmarks(&self) {
        self.shared.signal(&self.shared.bookmark_epoch);
    }

    /// Stops serving: the port closes and every connection, open watches
    /// included, is cut. The objects stay.
    pub fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop();
        }
    }

    /// Serves again on the same address after [`KubeApi::stop`].
    pub fn resume(&mut self) {
        assert!(self.running.is_none(), "the emulator is already running");
        let listener = bind(self.addr, self.netns.as_deref()).unwrap_or_else(|e| panic!("{e}"));
        let rt = self.rt.as_ref().expect("runtime").handle();
        let shared = Arc::clone(&self.shared);
        self.running = Some(server::Running::spawn(
            rt,
            listener,
            Arc::clone(&self.tls),
            shared,
        ));
    }

    /// Stops and starts again on the same address, token and certificate.
    pub fn restart(&mut self, how: Restart) {
        self.stop();
        if how == Restart::DropState {
            // Versions go on from past the old ones, all counted as
            // compacted, so no client mistakes the new cluster for the old.
            let mut store = self.shared.store();
            *store = Store::new(store.resource_version() + 1000);
        }
        self.resume();
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.stop();
        if let Some(rt) = self.rt.take() {
            // Non-blocking: a test may drop this inside its own runtime.
            rt.shutdown_background();
        }
    }
}

/// A listening socket on `addr`, inside `netns` when given (the socket
/// stays in the namespace it was made in).
fn bind(addr: SocketAddr, netns: Option<&Path>) -> Result<std::net::TcpListener, ServerError> {
    let listen = || {
        let l = std::net::TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        Ok(l)
    };
    let listener = match netns {
        Some(path) => run_in_netns(path, listen).and_then(|r| r),
        None => listen(),
    };
    listener.map_err(|source| ServerError::Listen {
        addr: addr.to_string(),
        source,
    })
}

/// 32 random bytes in hex.
fn random_token() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("getrandom");
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// A kubeconfig (YAML; the strings JSON-quoted, which YAML reads too).
fn kubeconfig_text(server: &str, ca: &Path, token: &str) -> String {
    let q = |s: &str| Value::String(s.to_string()).to_string();
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: emulator\n  cluster:\n    server: {}\n    certificate-authority: {}\ncontexts:\n- name: emulator\n  context:\n    cluster: emulator\n    user: emulator\ncurrent-context: emulator\nusers:\n- name: emulator\n  user:\n    token: {}\npreferences: {{}}\n",
        q(server),
        q(&ca.display().to_string()),
        q(token)
    )
}
