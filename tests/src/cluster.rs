//! A cluster on one machine: an underlay namespace with a bridge and etcd,
//! and nodes as namespaces attached to it, each running flanneld.
//!
//! ```text
//!  underlay netns: br0 192.0.2.1/24, etcd :2379
//!     |            |             |
//!  node1 eth0    node2 eth0    external eth0
//!  192.0.2.11    192.0.2.12    192.0.2.201
//!  flanneld, cni0, flannel.1, pods (each its own netns)
//! ```

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::cmd::is_stale;
use crate::node::{NodeSpec, HEALTHZ_PORT};
use crate::{try_wait_until, Etcd, EtcdTls, Netns, Node, Pod, TempDir};

/// Name prefixes of the namespaces a cluster creates (underlay, nodes, pods,
/// externals) and of the harness's temp dirs: what [`sweep_stale`] looks for.
pub(crate) const POD_PREFIX: &str = "fl-p";
const NETNS_PREFIXES: [&str; 4] = ["fl-u", "fl-n", POD_PREFIX, "fl-e"];
const DIR_PREFIXES: [&str; 4] = ["fl-c", "fl-etcd", "fl-proc", crate::containerd::DIR_PREFIX];

/// The underlay bridge's address, where etcd listens.
pub const UNDERLAY_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const UNDERLAY_BRIDGE: &str = "br0";
/// Locally administered, fixed for the life of the cluster.
const UNDERLAY_MAC: &str = "02:00:c0:00:02:01";

/// How a [`Cluster`] is set up. `ClusterOpts::default()` is kube-flannel's
/// setup: network 10.244.0.0/16, VXLAN VNI 1, the kube-flannel CNI entry.
#[derive(Debug, Clone)]
pub struct ClusterOpts {
    /// `--etcd-prefix`.
    pub etcd_prefix: String,
    /// The value put at `<prefix>/config`.
    pub config: Value,
    /// Extra flanneld flags for every node.
    pub flanneld_args: Vec<String>,
    /// Pass `--healthz-ip 127.0.0.1 --healthz-port 8285` and wait on `/readyz`.
    pub healthz: bool,
    /// The conflist's plugin entry with `name` and `cniVersion`, as libcni
    /// sends it; each node adds its own `subnetFile`, `dataDir`, `ipam.dataDir`.
    pub cni_conf: Value,
    /// MTU of the underlay links (node `eth0`).
    pub underlay_mtu: u32,
    /// How long every node may take to learn every other node.
    pub converge_timeout: Duration,
    /// Serve etcd's clients over TLS with client certificates (the nodes'
    /// `--etcd-endpoints` is then `https://`; the TLS flags are up to
    /// `flanneld_args`).
    pub etcd_tls: Option<EtcdTls>,
}

impl Default for ClusterOpts {
    fn default() -> Self {
        ClusterOpts {
            etcd_prefix: "/coreos.com/network".to_string(),
            config: json!({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1}}),
            flanneld_args: Vec::new(),
            healthz: true,
            cni_conf: json!({
                "name": "cbr0",
                "cniVersion": "0.3.1",
                "type": "flannel",
                "delegate": {"hairpinMode": true, "isDefaultGateway": true}
            }),
            underlay_mtu: 1500,
            converge_timeout: Duration::from_secs(20),
            etcd_tls: None,
        }
    }
}

impl ClusterOpts {
    /// Adds a flanneld flag (or flag value) for every node.
    pub fn flanneld_arg(mut self, arg: &str) -> Self {
        self.flanneld_args.push(arg.to_string());
        self
    }

    /// Sets `Network` in the config.
    pub fn network(mut self, cidr: &str) -> Self {
        self.config["Network"] = json!(cidr);
        self
    }

    /// Replaces `Backend` in the config.
    pub fn backend(mut self, backend: Value) -> Self {
        self.config["Backend"] = backend;
        self
    }

    /// The VNI the config asks for (flannel's default 1).
    pub fn vni(&self) -> u32 {
        self.config["Backend"]["VNI"]
            .as_u64()
            .map_or(1, |v| v as u32)
    }
}

/// An address on the underlay that is outside the cluster network (a
/// stand-in for the world beyond the nodes).
#[derive(Debug)]
pub struct External {
    pub ip: Ipv4Addr,
    pub netns: Netns,
}

/// Names of everything a kept cluster left running, for a later teardown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeptCluster {
    /// Namespaces in teardown order (pods, nodes, externals, underlay).
    pub netns: Vec<String>,
    pub dirs: Vec<PathBuf>,
}

/// Where the demo records a kept cluster; [`sweep_stale`] spares what it
/// lists.
pub const KEPT_STATE: &str = "/run/flannel-demo/state";

impl KeptCluster {
    /// Writes one `netns NAME` or `dir PATH` line per item.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let mut text = String::new();
        self.netns
            .iter()
            .for_each(|n| text.push_str(&format!("netns {n}\n")));
        self.dirs
            .iter()
            .for_each(|d| text.push_str(&format!("dir {}\n", d.display())));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, text)
    }

    /// Reads what [`KeptCluster::save`] wrote.
    pub fn load(path: &Path) -> std::io::Result<KeptCluster> {
        let mut kept = KeptCluster::default();
        for line in std::fs::read_to_string(path)?.lines() {
            match line.split_once(' ') {
                Some(("netns", n)) => kept.netns.push(n.to_string()),
                Some(("dir", d)) => kept.dirs.push(d.into()),
                _ => {
                    let msg = format!("{}: unexpected line {line:?}", path.display());
                    return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, msg));
                }
            }
        }
        Ok(kept)
    }
}

/// A running cluster; dropping it tears everything down, pass or fail.
#[derive(Debug)]
pub struct Cluster {
    opts: ClusterOpts,
    next_node: u8,
    kept: bool,
    // Torn down in this order (see Drop).
    nodes: Vec<Node>,
    externals: Vec<External>,
    etcd: Etcd,
    underlay: Netns,
    dir: TempDir,
}

impl Cluster {
    /// Brings up the underlay, etcd, the config and `n_nodes` nodes, and
    /// waits until every node is ready and knows every other.
    pub fn new(n_nodes: usize, opts: ClusterOpts) -> Cluster {
        sweep_stale();
        let dir = TempDir::new("fl-c");
        let underlay = make_underlay(opts.underlay_mtu);
        let ip = UNDERLAY_IP.to_string();
        let etcd = match &opts.etcd_tls {
            Some(tls) => Etcd::start_tls_in(&underlay, &ip, tls.clone()),
            None => Etcd::start_in(&underlay, &ip),
        };
        etcd.put(
            &format!("{}/config", opts.etcd_prefix),
            &opts.config.to_string(),
        );
        let mut cluster = Cluster {
            opts,
            next_node: 1,
            kept: false,
            nodes: Vec::new(),
            externals: Vec::new(),
            etcd,
            underlay,
            dir,
        };
        for _ in 0..n_nodes {
            cluster.start_node(&[]);
        }
        cluster.nodes.iter_mut().for_each(Node::wait_ready);
        cluster.wait_converged();
        cluster
    }

    /// Adds a node (flanneld with the cluster's flags), waits until it is
    /// ready and every node knows every other.
    pub fn add_node(&mut self) -> &mut Node {
        self.add_node_with(&[])
    }

    /// Like [`Cluster::add_node`] with extra flanneld flags for this node.
    pub fn add_node_with(&mut self, extra_args: &[&str]) -> &mut Node {
        self.start_node(extra_args).wait_ready();
        self.wait_converged();
        self.nodes.last_mut().expect("just added")
    }

    /// Like [`Cluster::add_node_with`], with extra environment variables for
    /// this node's flanneld (e.g. `FLANNELD_ETCD_PASSWORD`).
    pub fn add_node_with_env(&mut self, extra_args: &[&str], env: &[(&str, &str)]) -> &mut Node {
        self.start_node_with_env(extra_args, env).wait_ready();
        self.wait_converged();
        self.nodes.last_mut().expect("just added")
    }

    /// Creates a node (namespace, underlay link, dir) and starts its
    /// flanneld without waiting for anything.
    pub fn start_node(&mut self, extra_args: &[&str]) -> &mut Node {
        self.start_node_with_env(extra_args, &[])
    }

    /// Like [`Cluster::start_node`], with extra environment variables for
    /// this node's flanneld.
    pub fn start_node_with_env(&mut self, extra_args: &[&str], env: &[(&str, &str)]) -> &mut Node {
        let index = self.next_node;
        self.next_node = index
            .checked_add(1)
            .filter(|i| *i < 190)
            .expect("too many nodes");
        let name = format!("node{index}");
        let ip = Ipv4Addr::new(192, 0, 2, 10 + index);
        let netns = Netns::new("fl-n");
        self.attach(&netns, ip);
        let dir = self.dir.join(&name);
        let mut flanneld_args = self.flanneld_args(&dir);
        flanneld_args.extend(extra_args.iter().map(|a| a.to_string()));
        let spec = NodeSpec {
            name,
            ip,
            dir,
            vni: self.opts.vni(),
            flanneld_args,
            flanneld_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            healthz: self.opts.healthz,
            cni_conf: self.opts.cni_conf.clone(),
        };
        let mut node = Node::new(spec, netns);
        node.start_flanneld();
        self.nodes.push(node);
        self.nodes.last_mut().expect("just added")
    }

    fn flanneld_args(&self, node_dir: &Path) -> Vec<String> {
        let mut args = vec![
            "--etcd-endpoints".to_string(),
            self.etcd.endpoint(),
            "--etcd-prefix".to_string(),
            self.opts.etcd_prefix.clone(),
            "--iface".to_string(),
            "eth0".to_string(),
            "--subnet-file".to_string(),
            node_dir.join("subnet.env").display().to_string(),
            // The node's own plugin state, which flanneld's IP reclaim reads
            // (see node_cni_conf), never the machine's.
            "--ipam-dir".to_string(),
            node_dir.join("ipam").display().to_string(),
            "--cni-data-dir".to_string(),
            node_dir.join("flannel").display().to_string(),
        ];
        if self.opts.healthz {
            let port = HEALTHZ_PORT.to_string();
            args.extend(["--healthz-ip", "127.0.0.1", "--healthz-port", &port].map(String::from));
        }
        args.extend(self.opts.flanneld_args.iter().cloned());
        args
    }

    /// Plugs `netns` into the underlay bridge as `eth0` with `ip/24`.
    fn attach(&self, netns: &Netns, ip: Ipv4Addr) {
        let port = crate::unique("ul");
        let mtu = self.opts.underlay_mtu.to_string();
        let peer = ["peer", "name", "eth0", "mtu", &mtu, "netns", netns.name()];
        let mut add = vec!["ip", "link", "add", &port, "mtu", &mtu, "type", "veth"];
        add.extend(peer);
        self.underlay.sh(&add);
        self.underlay
            .sh(&["ip", "link", "set", &port, "master", UNDERLAY_BRIDGE, "up"]);
        netns.sh(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        netns.sh(&["ip", "link", "set", "eth0", "up"]);
    }

    /// Adds an "external" host on the underlay (192.0.2.201, .202, ...):
    /// reachable from the nodes, outside the cluster network.
    pub fn add_external(&mut self) -> &External {
        let k = u8::try_from(self.externals.len()).expect("few externals") + 1;
        let ip = Ipv4Addr::new(192, 0, 2, 200 + k);
        let netns = Netns::new("fl-e");
        self.attach(&netns, ip);
        self.externals.push(External { ip, netns });
        self.externals.last().expect("just added")
    }

    /// The external hosts, in the order they were added.
    pub fn externals(&self) -> &[External] {
        &self.externals
    }

    /// Waits until every node whose flanneld was started has a route to
    /// every other such node's subnet; panics naming what is missing.
    pub fn wait_converged(&self) {
        let timeout = self.opts.converge_timeout;
        let mut missing = Vec::new();
        let converged = try_wait_until(timeout, || {
            missing = self.missing_routes();
            missing.is_empty()
        });
        assert!(
            converged.is_some(),
            "cluster did not converge within {timeout:?}: {}",
            missing.join("; ")
        );
    }

    /// "nodeA has no route to nodeB's SUBNET" for every gap.
    fn missing_routes(&self) -> Vec<String> {
        let live: Vec<&Node> = self.nodes.iter().filter(|n| n.flanneld_started()).collect();
        let subnets: Vec<(&str, String)> = live.iter().map(|n| (n.name(), n.subnet())).collect();
        let mut missing = Vec::new();
        for node in &live {
            let dsts = node.route_dsts();
            for (peer, subnet) in subnets.iter().filter(|(p, _)| *p != node.name()) {
                if !dsts.contains(subnet) {
                    missing.push(format!("{} has no route to {peer}'s {subnet}", node.name()));
                }
            }
        }
        missing
    }

    /// The `i`-th node, from 0 (named `node{i+1}`).
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    pub fn node_mut(&mut self, i: usize) -> &mut Node {
        &mut self.nodes[i]
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn nodes_mut(&mut self) -> &mut [Node] {
        &mut self.nodes
    }

    /// Every pod of every node.
    pub fn pods(&self) -> Vec<&Pod> {
        self.nodes.iter().flat_map(|n| n.pods()).collect()
    }

    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    pub fn etcd_mut(&mut self) -> &mut Etcd {
        &mut self.etcd
    }

    pub fn etcd_prefix(&self) -> &str {
        &self.opts.etcd_prefix
    }

    pub fn opts(&self) -> &ClusterOpts {
        &self.opts
    }

    pub fn underlay(&self) -> &Netns {
        &self.underlay
    }

    /// The cluster's temp dir (one subdir per node).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The lease keys in etcd with their values.
    pub fn leases(&self) -> Vec<(String, String)> {
        self.etcd
            .list(&format!("{}/subnets/", self.opts.etcd_prefix))
    }

    /// Leaves the whole cluster running after this value is gone; returns
    /// what a later [`teardown`] needs.
    pub fn keep(mut self) -> KeptCluster {
        self.kept = true;
        let mut kept = KeptCluster::default();
        for node in &mut self.nodes {
            kept.netns
                .extend(node.pods().iter().map(|p| p.netns().name().to_string()));
            node.keep();
        }
        kept.netns
            .extend(self.nodes.iter().map(|n| n.netns().name().to_string()));
        for ext in &mut self.externals {
            kept.netns.push(ext.netns.name().to_string());
            ext.netns.keep();
        }
        kept.netns.push(self.underlay.name().to_string());
        self.underlay.keep();
        self.etcd.detach();
        self.dir.keep();
        kept.dirs = vec![
            self.dir.path().to_path_buf(),
            self.etcd.data_dir().to_path_buf(),
        ];
        kept
    }

    fn dump_logs(&self) {
        for node in &self.nodes {
            let log = node.flanneld_log();
            eprintln!(
                "---- {} flanneld log (last 60 lines) ----\n{}",
                node.name(),
                tail(&log, 60)
            );
        }
        eprintln!(
            "---- etcd log (last 20 lines) ----\n{}",
            tail(&self.etcd.log(), 20)
        );
    }
}

/// The underlay namespace with its bridge, addressed `UNDERLAY_IP/24`.
fn make_underlay(mtu: u32) -> Netns {
    let underlay = Netns::new("fl-u");
    let br = UNDERLAY_BRIDGE;
    underlay.ip(&format!("link add {br} mtu {mtu} type bridge"));
    // A bridge takes the lowest MAC of its ports unless one is set: nodes
    // joining or leaving would then change etcd's MAC under the nodes' ARP
    // caches and stall their etcd connections.
    underlay.ip(&format!("link set {br} address {UNDERLAY_MAC}"));
    underlay.ip(&format!("addr add {UNDERLAY_IP}/24 dev {br}"));
    underlay.ip(&format!("link set {br} up"));
    underlay
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Removes the namespaces and temp dirs left by harness runs whose process
/// is gone (a test killed outright runs no Drop). Names carry the creating
/// pid (see [`crate::unique`]), so live runs are never touched.
pub fn sweep_stale() {
    // Shims of a dead run's containerd first: they hold its pods' netns.
    crate::containerd::sweep_stale_cgroups();
    let kept = KeptCluster::load(Path::new(KEPT_STATE)).unwrap_or_default();
    let list = crate::sh(&["ip", "netns", "list"]);
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        if kept.netns.iter().any(|k| k == name) {
            continue;
        }
        if NETNS_PREFIXES.iter().any(|p| is_stale(name, p)) {
            crate::netns::remove_netns(name);
        }
    }
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if kept.dirs.contains(&entry.path()) {
            continue;
        }
        if DIR_PREFIXES.iter().any(|p| is_stale(&name, p)) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Removes what a kept cluster left: kills the processes inside each
/// namespace, deletes the namespaces, removes the dirs. Never panics.
pub fn teardown(kept: &KeptCluster) {
    for name in &kept.netns {
        crate::netns::remove_netns(name);
    }
    for dir in &kept.dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        if std::thread::panicking() {
            self.dump_logs();
        }
        // Pods first (DEL needs the node intact), then every flanneld is
        // asked to stop at once, then nodes go in reverse order.
        self.nodes.iter_mut().for_each(Node::clear_pods);
        self.nodes.iter().for_each(Node::signal_flanneld);
        while let Some(node) = self.nodes.pop() {
            drop(node);
        }
        // externals, etcd, underlay and dir drop next, in field order.
    }
}
