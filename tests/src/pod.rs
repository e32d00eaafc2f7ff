//! Pods: network namespaces wired by executing the CNI plugin the way kubelet
//! does (environment variables plus the network config on stdin).

use std::ffi::OsStr;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::Netns;

/// How to execute the plugin for one node: inside the node's namespace, with
/// that node's network config.
#[derive(Debug, Clone)]
pub struct CniExec {
    pub plugin: PathBuf,
    /// The node namespace the plugin runs in (where `cni0` lives), as a
    /// path (`/run/netns/NAME`).
    pub node_netns: PathBuf,
    /// The plugin's stdin: the conflist's plugin entry with `name` and
    /// `cniVersion` filled in, as libcni sends it.
    pub conf: Value,
}

impl CniExec {
    /// Executes the plugin with kubelet's environment; returns its output.
    pub fn call(
        &self,
        command: &str,
        container_id: &str,
        netns: Option<&Path>,
        ifname: &str,
    ) -> Output {
        self.call_with(command, container_id, netns, ifname, &self.conf)
    }

    /// Like [`CniExec::call`] with another stdin config (e.g. one carrying a
    /// `prevResult`).
    pub fn call_with(
        &self,
        command: &str,
        container_id: &str,
        netns: Option<&Path>,
        ifname: &str,
        conf: &Value,
    ) -> Output {
        let cni_path = self.plugin.parent().expect("plugin has a dir");
        let mut env = vec![
            ("CNI_COMMAND", command.to_string()),
            ("CNI_CONTAINERID", container_id.to_string()),
            ("CNI_IFNAME", ifname.to_string()),
            ("CNI_PATH", cni_path.display().to_string()),
            ("CNI_ARGS", kubelet_args(container_id)),
        ];
        if let Some(netns) = netns {
            env.push(("CNI_NETNS", netns.display().to_string()));
        }
        exec_plugin(
            &self.node_netns,
            &self.plugin,
            &env,
            conf.to_string().as_bytes(),
        )
    }
}

/// The `CNI_ARGS` kubelet's runtimes pass along.
fn kubelet_args(container_id: &str) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={container_id};\
         K8S_POD_INFRA_CONTAINER_ID={container_id}"
    )
}

/// Runs `program` (a CNI plugin) inside the network namespace at
/// `node_netns` the way a runtime executes it: with exactly `env` plus a
/// standard `PATH` (which `env` may replace), and `stdin` on its stdin.
/// Returns its output, failed or not.
pub fn exec_plugin(
    node_netns: &Path,
    program: impl AsRef<OsStr>,
    env: &[(&str, String)],
    stdin: &[u8],
) -> Output {
    // By path: `env` may give the plugin a PATH without nsenter.
    let mut cmd = Command::new("/usr/bin/nsenter");
    cmd.arg(format!("--net={}", node_netns.display()))
        .arg(program)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env.iter().map(|(k, v)| (k, v)));
    run_with_stdin(&mut cmd, stdin)
}

fn run_with_stdin(cmd: &mut Command, stdin: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    // A plugin that exits before reading stdin is its own failure; the
    // output tells.
    let _ = child.stdin.take().expect("piped").write_all(stdin);
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("cannot wait for {cmd:?}: {e}"))
}

/// A pod: its own namespace, an `eth0` made by the plugin's ADD, and the IP
/// the plugin gave it. Dropping it runs DEL (unless already done) and
/// deletes the namespace.
#[derive(Debug)]
pub struct Pod {
    name: String,
    node: String,
    container_id: String,
    ifname: String,
    ip: Ipv4Addr,
    result: Value,
    exec: CniExec,
    deleted: bool,
    // Declared last: dropped after DEL ran.
    netns: Netns,
}

impl Pod {
    /// Creates the pod namespace and runs ADD; on failure the namespace is
    /// removed and the plugin's output returned.
    pub(crate) fn add(node: &str, name: &str, exec: CniExec) -> Result<Pod, Output> {
        let netns = Netns::new(crate::cluster::POD_PREFIX);
        let container_id = format!("{name}-{}", netns.name());
        let out = exec.call("ADD", &container_id, Some(&netns.path()), "eth0");
        let result: Value = match serde_json::from_slice(&out.stdout) {
            Ok(v) if out.status.success() => v,
            _ => return Err(out),
        };
        let Some(ip) = result_ip(&result) else {
            return Err(out);
        };
        Ok(Pod {
            name: name.to_string(),
            node: node.to_string(),
            container_id,
            ifname: "eth0".to_string(),
            ip,
            result,
            exec,
            deleted: false,
            netns,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name of the node the pod runs on.
    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    pub fn container_id(&self) -> &str {
        &self.container_id
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// The plugin's ADD result, as printed.
    pub fn result(&self) -> &Value {
        &self.result
    }

    /// One ping (`-c 1 -W 2`) from inside the pod; true when answered.
    pub fn ping(&self, ip: impl ToString) -> bool {
        self.netns.ping(ip)
    }

    /// Runs `args` inside the pod; returns its output, failed or not.
    pub fn exec(&self, args: &[&str]) -> Output {
        self.netns.exec(args)
    }

    /// A command running `program` inside the pod.
    pub fn cmd(&self, program: &str) -> Command {
        self.netns.cmd(program)
    }

    /// Runs another CNI verb (CHECK, DEL, ...) for this pod.
    pub fn cni(&self, command: &str) -> Output {
        self.exec.call(
            command,
            &self.container_id,
            Some(&self.netns.path()),
            &self.ifname,
        )
    }

    /// Runs DEL; later drops do not run it again.
    pub fn del(&mut self) -> Output {
        self.deleted = true;
        self.cni("DEL")
    }

    /// Leaves the pod (namespace and IP) in place when dropped.
    pub(crate) fn keep(&mut self) {
        self.deleted = true;
        self.netns.keep();
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if !self.deleted {
            let out = self.del();
            if !out.status.success() {
                eprintln!(
                    "DEL of pod {} failed: {}{}",
                    self.name,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

/// The first IPv4 address of a CNI result (`ips[].address`, `a.b.c.d/len`).
pub fn result_ip(result: &Value) -> Option<Ipv4Addr> {
    let ips = result.get("ips")?.as_array()?;
    ips.iter()
        .filter_map(|ip| ip.get("address")?.as_str()?.split_once('/')?.0.parse().ok())
        .next()
}
