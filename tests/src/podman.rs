//! A real CNI client: podman (CNI backend, through libcni) running
//! containers inside a node namespace with the plugin as their network.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::{run, CniExec, TempDir};

/// The image every container runs: Debian's static busybox, imported once
/// per instance.
const IMAGE: &str = "localhost/flbb:1";

/// A podman with its own storage, config and CNI network (a conflist holding
/// the node's plugin config), run inside the node's network namespace.
/// Drop removes its containers, which runs DEL.
pub struct Podman {
    dir: TempDir,
    node_netns: PathBuf,
    network: String,
}

impl Podman {
    /// A podman whose network executes `cni.plugin` with `cni.conf` inside
    /// `cni.node_netns`; imports the busybox image.
    pub fn new(cni: &CniExec) -> Podman {
        let dir = TempDir::new("flpm");
        let network = crate::unique("fln");
        std::fs::create_dir_all(dir.join("net")).expect("podman net dir");
        let list = dir.join(format!("net/{network}.conflist"));
        std::fs::write(list, conflist(&network, &cni.conf).to_string()).expect("conflist");
        let plugin_dir = cni.plugin.parent().expect("plugin has a dir");
        let conf = containers_conf(dir.path(), plugin_dir);
        std::fs::write(dir.join("containers.conf"), conf).expect("containers.conf");
        let pm = Podman {
            dir,
            node_netns: cni.node_netns.clone(),
            network,
        };
        let image = image_tar(pm.dir.path());
        pm.ok(&["import", image.to_str().expect("UTF-8 path"), IMAGE]);
        pm
    }

    /// The CNI network's name (also the IPAM store's directory name).
    pub fn network(&self) -> &str {
        &self.network
    }

    /// `podman` with this instance's storage, run in the node's namespace
    /// through nsenter (`ip netns exec` would hide the cgroup mounts it needs).
    pub fn cmd(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.node_netns.display()))
            .arg("podman")
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .args(["--storage-driver", "vfs"]);
        c
    }

    /// Runs `podman ARGS`; returns its trimmed stdout, panics when it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = run(self.cmd().args(args));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Starts a container on the network; returns the IP podman reports.
    pub fn run_container(&self, name: &str) -> String {
        self.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            &self.network,
            "--runtime",
            "runc",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            IMAGE,
            "/bin/busybox",
            "sleep",
            "600",
        ]);
        let inspect: Value = serde_json::from_str(&self.ok(&["inspect", name])).unwrap();
        inspect[0]["NetworkSettings"]["Networks"][&self.network]["IPAddress"]
            .as_str()
            .expect("podman reports the container's IP")
            .to_string()
    }

    /// Runs busybox `applet_args` (split on spaces) inside `container`;
    /// returns its stdout, panics when it fails.
    pub fn busybox(&self, container: &str, applet_args: &str) -> String {
        let mut args = vec!["exec", container, "/bin/busybox"];
        args.extend(applet_args.split_whitespace());
        self.ok(&args)
    }

    /// Removes `container` (CNI DEL runs); panics when podman fails.
    pub fn remove(&self, container: &str) {
        self.ok(&["rm", "-f", "-t", "0", container]);
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd().args(["rm", "-a", "-f", "-t", "0"]).output();
    }
}

/// A conflist named `network` holding `plugin` as its only plugin, which
/// leaves `name` and `cniVersion` to the list as libcni expects.
fn conflist(network: &str, plugin: &Value) -> Value {
    let mut plugin = plugin.clone();
    let obj = plugin.as_object_mut().expect("plugin config is an object");
    obj.remove("name");
    obj.remove("cniVersion");
    json!({"cniVersion": "1.0.0", "name": network, "plugins": [plugin]})
}

fn containers_conf(dir: &Path, plugin_dir: &Path) -> String {
    format!(
        "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
         [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
         tmp_dir = \"{tmp}\"\n\
         [network]\nnetwork_backend = \"cni\"\nnetwork_config_dir = \"{net}\"\n\
         cni_plugin_dirs = [\"{bin_dir}\"]\n",
        tmp = dir.join("tmp").display(),
        net = dir.join("net").display(),
        bin_dir = plugin_dir.display(),
    )
}

/// A one-file image: Debian's static busybox at /bin/busybox.
fn image_tar(dir: &Path) -> PathBuf {
    let root = dir.join("image");
    std::fs::create_dir_all(root.join("bin")).expect("image dir");
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copy busybox");
    let tar = dir.join("image.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    tar
}
