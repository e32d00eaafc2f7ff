//! A real CNI client: podman (CNI backend) runs containers on two nodes
//! through the plugin, and they ping each other across nodes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

use harness::{bin_path, network_of, run, split_cidr, Cluster, ClusterOpts, Node, TempDir};

/// A podman with its own storage, config and CNI network, running inside
/// one node's network namespace. Drop removes its containers (CNI DEL).
struct Podman {
    dir: TempDir,
    node_netns: PathBuf,
    network: String,
}

impl Podman {
    fn new(node: &Node) -> Podman {
        let dir = TempDir::new("pm");
        let network = harness::unique("net");
        std::fs::create_dir_all(dir.join("net")).unwrap();
        let mut plugin = node.cni().conf.clone();
        let plugin_obj = plugin.as_object_mut().unwrap();
        plugin_obj.remove("name");
        plugin_obj.remove("cniVersion");
        let conflist = json!({"cniVersion": "1.0.0", "name": network, "plugins": [plugin]});
        std::fs::write(
            dir.join(format!("net/{network}.conflist")),
            conflist.to_string(),
        )
        .unwrap();
        std::fs::write(dir.join("containers.conf"), containers_conf(dir.path())).unwrap();
        let pm = Podman {
            dir,
            node_netns: node.netns().path(),
            network,
        };
        let image = image_tar(pm.dir.path());
        pm.ok(&["import", image.to_str().unwrap(), "localhost/bb:1"]);
        pm
    }

    /// `podman` with this instance's storage, run in the node's namespace
    /// through nsenter (ip netns exec would hide the cgroup mounts).
    fn cmd(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.node_netns.display()))
            .arg("podman");
        c.env("CONTAINERS_CONF", self.dir.join("containers.conf"));
        c.arg("--root").arg(self.dir.join("root"));
        c.arg("--runroot").arg(self.dir.join("runroot"));
        c.args(["--storage-driver", "vfs"]);
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = run(self.cmd().args(args));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn exec(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Runs busybox `applet_args` (split on spaces) inside `container`.
    fn busybox(&self, container: &str, applet_args: &str) -> Output {
        let mut args = vec!["exec", container, "/bin/busybox"];
        args.extend(applet_args.split_whitespace());
        self.exec(&args)
    }

    /// Starts a container on the network; returns the IP podman reports.
    fn run_container(&self, name: &str) -> String {
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
            "localhost/bb:1",
            "/bin/busybox",
            "sleep",
            "600",
        ]);
        let inspect: Value = serde_json::from_str(&self.ok(&["inspect", name])).unwrap();
        let nets = &inspect[0]["NetworkSettings"]["Networks"][&self.network];
        nets["IPAddress"]
            .as_str()
            .expect("container IP")
            .to_string()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd().args(["rm", "-a", "-f", "-t", "0"]).output();
    }
}

fn containers_conf(dir: &Path) -> String {
    let bin_dir = bin_path("flannel").parent().unwrap().display().to_string();
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

/// A one-file image: Debian's static busybox at /bin/busybox.
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

fn ipam_file(node: &Node, ip: &str) -> bool {
    let dir = node.dir().join("ipam");
    std::fs::read_dir(&dir).is_ok_and(|nets| nets.flatten().any(|net| net.path().join(ip).exists()))
}

/// The address is inside the node's subnet and reserved in its IPAM store.
fn assert_allocated(node: &Node, ip: &str) {
    let (net, _) = split_cidr(&node.subnet()).unwrap();
    let subnet = node.subnet();
    assert_eq!(
        network_of(ip.parse().unwrap(), 24),
        net,
        "{ip} outside {subnet}"
    );
    assert!(ipam_file(node, ip), "no IPAM reservation for {ip}");
}

#[test]
fn podman_containers_on_two_nodes_ping_each_other() {
    let c = Cluster::new(2, ClusterOpts::default());
    let (pm1, pm2) = (Podman::new(c.node(0)), Podman::new(c.node(1)));
    let ip1 = pm1.run_container("c1");
    let ip2 = pm2.run_container("c2");
    assert_allocated(c.node(0), &ip1);
    assert_allocated(c.node(1), &ip2);
    // The container's eth0 carries the address podman reported.
    let addr = pm1.busybox("c1", "ip -4 -o addr show eth0");
    let addr = String::from_utf8_lossy(&addr.stdout);
    assert!(addr.contains(&format!("inet {ip1}/24")), "{addr}");

    for (pm, name, dst) in [(&pm1, "c1", &ip2), (&pm2, "c2", &ip1)] {
        let out = pm.busybox(name, &format!("ping -c 1 -W 2 {dst}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name} -> {dst}: {stdout}");
    }

    // Removing the container runs DEL: the address is released.
    pm1.ok(&["rm", "-f", "-t", "0", "c1"]);
    assert!(
        !ipam_file(c.node(0), &ip1),
        "{ip1} still reserved after podman rm"
    );
}
