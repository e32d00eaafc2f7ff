//! A real CNI client: podman (CNI backend, through libcni) runs a container
//! inside a node namespace with this plugin as its network.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use harness::{run, TempDir};
use serde_json::{json, Value};

/// podman with its own storage and config, run inside the node through
/// `nsenter` (`ip netns exec` would hide the cgroup mounts it needs).
/// Drop removes its containers, which runs DEL.
struct Podman<'a> {
    node: &'a Node,
    dir: TempDir,
    network: String,
}

impl<'a> Podman<'a> {
    fn new(node: &'a Node) -> Podman<'a> {
        let dir = TempDir::new("flpm");
        let network = harness::unique("fln");
        std::fs::create_dir_all(dir.join("net")).unwrap();
        let mut plugin = node.conf("1.0.0");
        let obj = plugin.as_object_mut().unwrap();
        obj.remove("name");
        obj.remove("cniVersion");
        let conflist = json!({"cniVersion": "1.0.0", "name": network, "plugins": [plugin]});
        let list = dir.join(format!("net/{network}.conflist"));
        std::fs::write(list, conflist.to_string()).unwrap();
        std::fs::write(dir.join("containers.conf"), containers_conf(dir.path())).unwrap();
        let pm = Podman { node, dir, network };
        let image = image_tar(pm.dir.path());
        pm.ok(&["import", image.to_str().unwrap(), "localhost/flbb:1"]);
        pm
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.node.ns.path().display()))
            .arg("podman")
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .args(["--storage-driver", "vfs"]);
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = run(self.cmd().args(args));
        text(&out.stdout).trim().to_string()
    }
}

impl Drop for Podman<'_> {
    fn drop(&mut self) {
        let _ = self.cmd().args(["rm", "-a", "-f", "-t", "0"]).output();
    }
}

fn containers_conf(dir: &Path) -> String {
    let bin_dir = Path::new(PLUGIN).parent().unwrap().display().to_string();
    format!(
        "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
         [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
         tmp_dir = \"{tmp}\"\n\
         [network]\nnetwork_backend = \"cni\"\nnetwork_config_dir = \"{net}\"\n\
         cni_plugin_dirs = [\"{bin_dir}\"]\n",
        tmp = dir.join("tmp").display(),
        net = dir.join("net").display(),
    )
}

/// A one-file image: Debian's static busybox.
fn image_tar(dir: &Path) -> PathBuf {
    let root = dir.join("image");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    let tar = dir.join("image.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    tar
}

#[test]
fn podman_container_gets_the_plugins_address_and_releases_it() {
    let node = Node::new();
    let pm = Podman::new(&node);
    pm.ok(&[
        "run",
        "-d",
        "--name",
        "c1",
        "--network",
        &pm.network,
        "--runtime",
        "runc",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "localhost/flbb:1",
        "/bin/busybox",
        "sleep",
        "600",
    ]);
    let inspect: Value = serde_json::from_str(&pm.ok(&["inspect", "c1"])).unwrap();
    let ip = inspect[0]["NetworkSettings"]["Networks"][&pm.network]["IPAddress"]
        .as_str()
        .expect("podman reports the container's IP")
        .to_string();
    assert_eq!(ip, "10.244.3.2");
    let store = node.dir.join("ipam").join(&pm.network);
    assert!(store.join(&ip).exists(), "no reservation for {ip}");

    // The container's eth0 carries that address, and reaches the gateway.
    let addr = pm.ok(&[
        "exec",
        "c1",
        "/bin/busybox",
        "ip",
        "-4",
        "-o",
        "addr",
        "show",
        "eth0",
    ]);
    assert!(addr.contains(&format!("inet {ip}/24")), "{addr}");
    let ping = pm.ok(&[
        "exec",
        "c1",
        "/bin/busybox",
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        "10.244.3.1",
    ]);
    assert!(ping.contains("1 packets received"), "{ping}");
    assert_eq!(
        node.links().len(),
        3,
        "lo, cni0 and the host veth: {:?}",
        node.links()
    );

    // Removal runs DEL: address, veth and saved config go.
    pm.ok(&["rm", "-f", "-t", "0", "c1"]);
    assert!(allocated_in(&store).is_empty(), "{ip} still reserved");
    assert_eq!(node.links(), ["lo", "cni0"]);
    assert!(node.saved_configs().is_empty());
}
