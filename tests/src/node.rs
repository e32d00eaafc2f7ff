//! A node: a namespace on the underlay running flanneld, with pods.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output};
use std::time::Duration;

use serde_json::Value;

use crate::http::http_get_in;
use crate::pod::{CniExec, Pod};
use crate::subnet_env::SubnetEnv;
use crate::{try_wait_until, Netns, Proc};

/// How long flanneld may take to write subnet.env and become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where flanneld's health endpoints listen inside each node.
pub const HEALTHZ_PORT: u16 = 8285;

/// One node of a [`crate::Cluster`].
#[derive(Debug)]
pub struct Node {
    name: String,
    ip: Ipv4Addr,
    dir: PathBuf,
    vni: u32,
    flanneld_args: Vec<String>,
    /// Extra environment variables of flanneld (e.g. `FLANNELD_*`).
    flanneld_env: Vec<(String, String)>,
    healthz: bool,
    cni: CniExec,
    // Fields drop in declaration order: pods (DEL), then flanneld, then the
    // namespace with whatever is left in it.
    pods: Vec<Pod>,
    flanneld: Option<Proc>,
    netns: Netns,
}

/// What a node is made of; built by the cluster.
pub(crate) struct NodeSpec {
    pub name: String,
    pub ip: Ipv4Addr,
    pub dir: PathBuf,
    pub vni: u32,
    pub flanneld_args: Vec<String>,
    pub flanneld_env: Vec<(String, String)>,
    pub healthz: bool,
    pub cni_conf: Value,
}

impl Node {
    /// Wraps a namespace already attached to the underlay.
    pub(crate) fn new(spec: NodeSpec, netns: Netns) -> Node {
        std::fs::create_dir_all(&spec.dir).expect("node dir");
        let cni = CniExec {
            plugin: crate::bin_path("flannel"),
            node_netns: netns.path(),
            conf: node_cni_conf(spec.cni_conf, &spec.dir),
        };
        Node {
            name: spec.name,
            ip: spec.ip,
            dir: spec.dir,
            vni: spec.vni,
            flanneld_args: spec.flanneld_args,
            flanneld_env: spec.flanneld_env,
            healthz: spec.healthz,
            flanneld: None,
            cni,
            pods: Vec::new(),
            netns,
        }
    }

    /// The node's name in the cluster (`node1`, `node2`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The public (underlay) address on `eth0`.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// The node's own directory (subnet.env, plugin state, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn subnet_file(&self) -> PathBuf {
        self.dir.join("subnet.env")
    }

    /// The VXLAN device flanneld manages, `flannel.<VNI>`.
    pub fn vxlan_dev(&self) -> String {
        format!("flannel.{}", self.vni)
    }

    /// The parsed subnet.env; panics while it is missing.
    pub fn subnet_env(&self) -> SubnetEnv {
        SubnetEnv::read(&self.subnet_file())
            .unwrap_or_else(|| panic!("{}: no valid {}", self.name, self.subnet_file().display()))
    }

    /// The node's pod subnet, e.g. `10.244.3.0/24`.
    pub fn subnet(&self) -> String {
        self.subnet_env().subnet_network()
    }

    /// The full flanneld command line (after the binary).
    pub fn flanneld_args(&self) -> &[String] {
        &self.flanneld_args
    }

    /// Sets `flag=value` for the next start of flanneld, replacing any
    /// earlier `flag=...` (a flag given twice is an error for flanneld).
    pub fn set_flanneld_flag(&mut self, flag: &str, value: &str) {
        let prefix = format!("{flag}=");
        self.flanneld_args.retain(|a| !a.starts_with(&prefix));
        self.flanneld_args.push(format!("{prefix}{value}"));
    }

    /// Starts flanneld in the node's namespace (logging to `dir/flanneld.log`).
    pub fn start_flanneld(&mut self) {
        assert!(
            self.flanneld.is_none(),
            "{}: flanneld already running",
            self.name
        );
        let mut cmd = self.netns.cmd(crate::bin_path("flanneld"));
        cmd.args(&self.flanneld_args)
            .envs(self.flanneld_env.clone());
        self.flanneld = Some(Proc::spawn_logged(&mut cmd, self.dir.join("flanneld.log")));
    }

    /// True when flanneld was started and not stopped through this node.
    pub fn flanneld_started(&self) -> bool {
        self.flanneld.is_some()
    }

    /// True while flanneld runs.
    pub fn flanneld_running(&mut self) -> bool {
        self.flanneld.as_mut().is_some_and(Proc::is_running)
    }

    /// Waits until subnet.env exists and, with health endpoints on, until
    /// `/readyz` answers 200. Panics with the log when flanneld dies or the
    /// time is up.
    pub fn wait_ready(&mut self) {
        let mut env = None;
        let mut exited = false;
        let ready = try_wait_until(READY_TIMEOUT, || {
            env = SubnetEnv::read(&self.subnet_file());
            if env.is_some() && (!self.healthz || self.readyz() == Some(200)) {
                return true;
            }
            // Give up at once: a dead flanneld never gets ready.
            exited = !self.flanneld_running();
            exited
        });
        if ready.is_none() || exited {
            let why = match exited {
                true => "flanneld exited".to_string(),
                false => format!("not ready within {READY_TIMEOUT:?}"),
            };
            panic!(
                "{}: {why} (subnet.env {env:?}); log:\n{}",
                self.name,
                self.flanneld_log()
            );
        }
    }

    /// Status code of flanneld's `/readyz`, `None` when it does not answer.
    pub fn readyz(&self) -> Option<u16> {
        self.http_get("/readyz").map(|r| r.status)
    }

    /// `GET path` on flanneld's health server (e.g. `/metrics`).
    pub fn http_get(&self, path: &str) -> Option<crate::http::HttpReply> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, HEALTHZ_PORT));
        http_get_in(&self.netns.path(), addr, path).ok()
    }

    /// The value of metric `name` on flanneld's `/metrics`; panics when
    /// flanneld does not answer or has no such metric.
    pub fn metric(&self, name: &str) -> f64 {
        let reply = self.http_get("/metrics").unwrap_or_else(|| {
            panic!(
                "{}: /metrics does not answer:\n{}",
                self.name,
                self.flanneld_log()
            )
        });
        let value = reply
            .body
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{}: no {name} in\n{}", self.name, reply.body));
        value
            .parse()
            .unwrap_or_else(|e| panic!("{}: {name} {value:?}: {e}", self.name))
    }

    /// Waits until flanneld made `passes` more datapath reconcile passes
    /// than it had made when this is called: proof that whatever one could
    /// change did run.
    pub fn wait_reconcile_passes(&self, passes: u32) {
        const RUNS: &str = "flanneld_reconcile_runs_total";
        let target = self.metric(RUNS) + f64::from(passes);
        let what = format!("{}: {passes} more reconcile passes", self.name);
        crate::wait_until(Duration::from_secs(60), &what, || {
            self.metric(RUNS) >= target
        });
    }

    /// SIGTERM and wait (a graceful stop; with `--graceful-leave` the lease
    /// is revoked).
    pub fn stop_flanneld(&mut self) -> ExitStatus {
        let mut p = self.flanneld.take().expect("flanneld is running");
        p.terminate()
    }

    /// SIGKILL: a crash.
    pub fn kill_flanneld(&mut self) -> ExitStatus {
        let mut p = self.flanneld.take().expect("flanneld is running");
        p.kill9()
    }

    /// Graceful stop, start again, wait until ready.
    pub fn restart_flanneld(&mut self) {
        self.stop_flanneld();
        self.start_flanneld();
        self.wait_ready();
    }

    /// Everything flanneld logged on this node, across restarts.
    pub fn flanneld_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("flanneld.log")).unwrap_or_default()
    }

    /// How many lines of flanneld's log contain `text`.
    pub fn logged(&self, text: &str) -> usize {
        self.flanneld_log()
            .lines()
            .filter(|l| l.contains(text))
            .count()
    }

    /// Waits until `times` lines of flanneld's log contain `text`; panics
    /// with the log when that takes longer than `timeout`.
    pub fn wait_logged(&self, text: &str, times: usize, timeout: Duration) {
        let done = try_wait_until(timeout, || self.logged(text) >= times);
        assert!(
            done.is_some(),
            "{}: {text:?} not logged {times} times within {timeout:?}; log:\n{}",
            self.name,
            self.flanneld_log()
        );
    }

    /// Sends SIGTERM to flanneld without waiting (to stop many at once).
    pub fn signal_flanneld(&self) {
        self.signal_flanneld_with(libc::SIGTERM);
    }

    /// Sends `sig` to flanneld without waiting.
    pub fn signal_flanneld_with(&self, sig: libc::c_int) {
        if let Some(p) = &self.flanneld {
            p.signal(sig);
        }
    }

    /// The plugin as this node executes it.
    pub fn cni(&self) -> &CniExec {
        &self.cni
    }

    /// Adds a pod named `name` (ADD through the plugin); panics with the
    /// plugin's output when ADD fails.
    pub fn add_pod(&mut self, name: &str) -> &Pod {
        if let Err(out) = self.push_pod(name) {
            panic!(
                "{}: ADD of pod {name} failed ({}):\nstdout: {}\nstderr: {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.pods.last().expect("just pushed")
    }

    /// Adds a pod; returns the plugin's output when ADD fails.
    pub fn try_add_pod(&mut self, name: &str) -> Result<&Pod, Output> {
        self.push_pod(name)?;
        Ok(self.pods.last().expect("just pushed"))
    }

    fn push_pod(&mut self, name: &str) -> Result<(), Output> {
        assert!(
            self.pod_index(name).is_none(),
            "{}: pod {name} exists",
            self.name
        );
        self.pods
            .push(Pod::add(&self.name, name, self.cni.clone())?);
        Ok(())
    }

    /// Runs DEL for pod `name` and removes its namespace; returns DEL's output.
    pub fn del_pod(&mut self, name: &str) -> Output {
        let i = self
            .pod_index(name)
            .unwrap_or_else(|| panic!("{}: no pod {name}", self.name));
        let mut pod = self.pods.remove(i);
        pod.del()
    }

    pub fn pod(&self, name: &str) -> &Pod {
        let i = self
            .pod_index(name)
            .unwrap_or_else(|| panic!("{}: no pod {name}", self.name));
        &self.pods[i]
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    fn pod_index(&self, name: &str) -> Option<usize> {
        self.pods.iter().position(|p| p.name() == name)
    }

    /// One ping (`-c 1 -W 2`) from the node itself (host network); true
    /// when answered.
    pub fn ping(&self, ip: impl ToString) -> bool {
        self.netns.ping(ip)
    }

    /// Destinations of the node's routes (`ip -j route`), e.g. `10.244.3.0/24`.
    pub fn route_dsts(&self) -> Vec<String> {
        let routes = self.netns.ip_json(&["-4", "route", "show"]);
        let routes = routes.as_array().cloned().unwrap_or_default();
        routes
            .iter()
            .filter_map(|r| r["dst"].as_str().map(str::to_string))
            .collect()
    }

    /// Runs DEL for every pod and removes their namespaces.
    pub(crate) fn clear_pods(&mut self) {
        while let Some(pod) = self.pods.pop() {
            drop(pod);
        }
    }

    /// Leaves everything of the node running after the program ends.
    pub(crate) fn keep(&mut self) {
        self.pods.iter_mut().for_each(Pod::keep);
        if let Some(p) = self.flanneld.as_mut() {
            p.detach();
        }
        self.netns.keep();
    }
}

/// The plugin's stdin for this node: the configured entry with the node's
/// own subnet file and state dirs.
fn node_cni_conf(mut conf: Value, dir: &Path) -> Value {
    let path = |p: &str| Value::String(dir.join(p).display().to_string());
    conf["subnetFile"] = path("subnet.env");
    conf["dataDir"] = path("flannel");
    if !conf["ipam"].is_object() {
        conf["ipam"] = Value::Object(Default::default());
    }
    conf["ipam"]["dataDir"] = path("ipam");
    conf
}
