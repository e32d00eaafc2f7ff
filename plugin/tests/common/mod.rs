//! Shared set-up for the plugin's root tests: a "node" network namespace
//! with its own subnet.env and data directories, pods as fresh namespaces,
//! and the built binary executed inside the node the way kubelet does it.

#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Output;

use harness::{CniExec, Netns, TempDir};
use serde_json::{json, Value};

pub const PLUGIN: &str = env!("CARGO_BIN_EXE_flannel");
pub const SUBNET_ENV: &str =
    "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

/// A node: namespace plus a directory holding subnet.env and all state.
pub struct Node {
    pub dir: TempDir,
    pub ns: Netns,
}

impl Node {
    /// A node with flanneld's usual subnet.env in place.
    pub fn new() -> Node {
        let node = Node::without_subnet_env();
        node.write_subnet_env(SUBNET_ENV);
        node
    }

    pub fn without_subnet_env() -> Node {
        Node {
            dir: TempDir::new("flpt"),
            ns: Netns::new("fln"),
        }
    }

    pub fn write_subnet_env(&self, text: &str) {
        std::fs::write(self.subnet_file(), text).unwrap();
    }

    pub fn subnet_file(&self) -> PathBuf {
        self.dir.join("subnet.env")
    }

    /// flannel's per-container saved configs.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("flannel")
    }

    /// The IPAM store of network `cbr0`.
    pub fn store(&self) -> PathBuf {
        self.dir.join("ipam").join("cbr0")
    }

    /// kube-flannel's plugin config as libcni hands it over, pointed at
    /// this node's files.
    pub fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "cbr0",
            "type": "flannel",
            "subnetFile": self.subnet_file(),
            "dataDir": self.data_dir(),
            "ipam": {"dataDir": self.dir.join("ipam")},
            "delegate": {"hairpinMode": true, "isDefaultGateway": true},
        })
    }

    /// The plugin as kubelet's runtime executes it inside this node, with
    /// `conf` on stdin.
    pub fn cni(&self, conf: &Value) -> CniExec {
        CniExec {
            plugin: PathBuf::from(PLUGIN),
            node_netns: self.ns.path(),
            conf: conf.clone(),
        }
    }

    /// Runs the plugin inside the node with kubelet's environment.
    pub fn call(
        &self,
        command: &str,
        id: &str,
        netns: Option<&Path>,
        ifname: &str,
        conf: &Value,
    ) -> Output {
        self.cni(conf).call(command, id, netns, ifname)
    }

    /// Runs `program` in the node with exactly `env` (plus PATH) and stdin.
    pub fn exec_plugin(&self, program: &str, env: &[(&str, String)], stdin: &[u8]) -> Output {
        harness::exec_plugin(&self.ns.path(), program, env, stdin)
    }

    /// ADD that must succeed; returns the result document.
    pub fn add(&self, id: &str, pod: &Netns, conf: &Value) -> Value {
        let out = self.call("ADD", id, Some(&pod.path()), "eth0", conf);
        ok_json(&out)
    }

    pub fn del(&self, id: &str, pod: Option<&Netns>, conf: &Value) {
        let out = self.call("DEL", id, pod.map(|p| p.path()).as_deref(), "eth0", conf);
        assert_success(&out);
        assert!(out.stdout.is_empty(), "DEL printed {}", text(&out.stdout));
    }

    /// Link names in the node namespace.
    pub fn links(&self) -> Vec<String> {
        link_names(&self.ns)
    }

    /// IP files in the store (what host-local would count as allocated).
    pub fn allocated(&self) -> Vec<(Ipv4Addr, String)> {
        allocated_in(&self.store())
    }

    /// Saved configs under the data dir.
    pub fn saved_configs(&self) -> Vec<String> {
        match std::fs::read_dir(self.data_dir()) {
            Ok(rd) => rd
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// `iptables-save -t nat` in the node.
    pub fn nat_rules(&self) -> String {
        self.ns.sh(&["iptables-save", "-t", "nat"])
    }
}

pub fn link_names(ns: &Netns) -> Vec<String> {
    let links = ns.ip_json(&["link", "show"]);
    let names = links.as_array().unwrap().iter();
    names
        .map(|l| l["ifname"].as_str().unwrap().to_string())
        .collect()
}

pub fn allocated_in(store: &Path) -> Vec<(Ipv4Addr, String)> {
    let Ok(rd) = std::fs::read_dir(store) else {
        return Vec::new();
    };
    let mut out: Vec<(Ipv4Addr, String)> = rd
        .filter_map(|e| {
            let e = e.unwrap();
            let ip = e.file_name().to_str()?.parse().ok()?;
            // A FIFO planted under an IP's name is nobody's allocation
            // (and reading it would block).
            if !e.file_type().unwrap().is_file() {
                return None;
            }
            Some((ip, std::fs::read_to_string(e.path()).unwrap()))
        })
        .collect();
    out.sort();
    out
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "plugin failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

pub fn ok_json(out: &Output) -> Value {
    assert_success(out);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", text(&out.stdout)))
}

/// The CNI error document of a failed call: checks the exit status and
/// that the document has exactly the four fields.
pub fn error_doc(out: &Output) -> Value {
    assert!(
        !out.status.success(),
        "expected a failure, got {}",
        text(&out.stdout)
    );
    let doc: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("error output is not JSON ({e}): {}", text(&out.stdout)));
    let mut keys: Vec<&str> = doc
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    keys.sort();
    assert_eq!(keys, ["cniVersion", "code", "details", "msg"], "{doc}");
    doc
}

/// Asserts that an error document's `msg` contains `part`.
pub fn assert_msg_contains(doc: &Value, part: &str) {
    let msg = doc["msg"]
        .as_str()
        .unwrap_or_else(|| panic!("no msg: {doc}"));
    assert!(msg.contains(part), "{part:?} not in {doc}");
}

pub fn error_code(out: &Output) -> u64 {
    error_doc(out)["code"].as_u64().unwrap()
}

/// The pod's IPv4 address from a result.
pub fn result_ip(result: &Value) -> Ipv4Addr {
    harness::result_ip(result).unwrap_or_else(|| panic!("no IPv4 address in {result}"))
}

/// Pings `ip` from inside `ns` (a few tries: the first packet may wait on ARP).
pub fn ping(ns: &Netns, ip: impl ToString) -> bool {
    let ip = ip.to_string();
    (0..3).any(|_| {
        ns.exec(&["ping", "-c", "1", "-W", "1", &ip])
            .status
            .success()
    })
}

/// The pod's routes as `dst via gw` strings, sorted.
pub fn pod_routes(pod: &Netns) -> Vec<String> {
    let routes = pod.ip_json(&["-4", "route", "show"]);
    let mut out: Vec<String> = routes
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let gw = r["gateway"]
                .as_str()
                .map(|g| format!(" via {g}"))
                .unwrap_or_default();
            format!(
                "{}{gw} dev {}",
                r["dst"].as_str().unwrap(),
                r["dev"].as_str().unwrap()
            )
        })
        .collect();
    out.sort();
    out
}
