//! containerd (Debian's, with its CRI plugin) inside a node: the runtime
//! kubelet talks to, executing the CNI plugins through libcni.
//!
//! Each instance has its own root, state dir, socket, CNI `bin_dir` and
//! `conf_dir`, and runs in the node's network namespace and in a mount
//! namespace of its own. That mount namespace is held by a process of its
//! own (not by containerd), so the pods' network-namespace mounts survive a
//! containerd restart, as they survive one on a real node; a tmpfs over
//! `/run/containerd` in it keeps the shims' sockets and runc's state (paths
//! containerd does not let one configure) off the machine's `/run`.
//! containerd and its shims run in a cgroup of their own and the pods in
//! cgroups below another one: whatever is left when the instance is dropped
//! is killed and the cgroups removed.

use std::ffi::CString;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::cmd::is_stale;
use crate::cri::{kubelet_container, kubelet_pod, Cri, PodMeta};
use crate::{run, try_wait_until, Netns, Proc, SubnetEnv, TempDir};

/// The sandbox ("pause") image every pod starts from, imported from a tar
/// the fixture builds: Debian's static busybox sleeping.
pub const PAUSE_IMAGE: &str = "localhost/fl-pause:1";
/// The image of the pods' containers: the same busybox layer.
pub const BUSYBOX_IMAGE: &str = "localhost/fl-busybox:1";

/// Prefix of the fixture's temp dirs and cgroups (see [`sweep_stale_cgroups`]).
pub(crate) const DIR_PREFIX: &str = "fl-rt";
const CGROUP_PREFIX: &str = "flctd";
const CGROUP_FS: &str = "/sys/fs/cgroup";

/// How long containerd may take to answer CRI after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A containerd serving CRI inside a node. Drop removes every pod through
/// CRI (so the CNI plugin runs DEL), stops containerd, kills whatever is
/// left in its cgroups and removes them, the mount namespace and the dir.
pub struct Containerd {
    node_netns: PathBuf,
    daemon: Option<Proc>,
    cri: Cri,
    cgroups: Cgroups,
    // Dropped after the cgroups are empty: the mount namespace goes last.
    holder: Proc,
    dir: TempDir,
}

impl std::fmt::Debug for Containerd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Containerd")
            .field("node_netns", &self.node_netns)
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl Containerd {
    /// Starts containerd in the node namespace at `node_netns` with
    /// `conflist` as its only CNI network and `plugins` (binaries, found by
    /// their file names) in its CNI `bin_dir`, with Debian's `loopback`
    /// that containerd runs for every pod; imports the images. Returns
    /// once CRI answers and reports the network ready.
    pub fn start(node_netns: &Path, conflist: &Value, plugins: &[PathBuf]) -> Containerd {
        let dir = TempDir::new(DIR_PREFIX);
        let cgroups = Cgroups::create();
        lay_out(&dir, conflist, plugins);
        std::fs::write(dir.join("config.toml"), config_toml(dir.path())).expect("config.toml");
        let holder = mount_ns_holder();
        let cri = Cri::connect(&dir.join("containerd.sock"));
        let mut ctd = Containerd {
            node_netns: node_netns.to_path_buf(),
            daemon: None,
            cri,
            cgroups,
            holder,
            dir,
        };
        ctd.start_daemon();
        ctd.import_images();
        ctd
    }

    /// The CRI client connected to this containerd.
    pub fn cri(&self) -> &Cri {
        &self.cri
    }

    /// The instance's dir (root, state, CNI dirs, config, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CRI socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// containerd's log, across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// The cgroup (below every hierarchy's root) that pods' cgroups go in,
    /// as kubelet's `cgroup_parent` would name it.
    pub fn cgroup_root(&self) -> String {
        format!("/{}/pods", self.cgroups.name)
    }

    /// kubelet's `PodSandboxConfig` for `pod` on this node (its cgroup below
    /// [`Containerd::cgroup_root`], its log directory in the instance's dir).
    pub fn pod_config(&self, pod: &PodMeta) -> k8s_cri::v1::PodSandboxConfig {
        let logs = self
            .dir
            .join(format!("pods/{}_{}_{}", pod.namespace, pod.name, pod.uid));
        std::fs::create_dir_all(&logs).expect("pod log dir");
        kubelet_pod(pod, &self.cgroup_root(), &logs)
    }

    /// Runs a pod as kubelet would (`RunPodSandbox`) and waits for nothing
    /// more: returns its sandbox id, or the runtime's error.
    pub fn run_pod(&self, pod: &PodMeta) -> Result<String, tonic::Status> {
        self.cri.run_pod(&self.pod_config(pod))
    }

    /// Starts a busybox container in sandbox `pod_id` that sleeps; returns
    /// its id. Panics when the runtime refuses.
    pub fn start_busybox(&self, pod_id: &str, pod: &PodMeta) -> String {
        let container = kubelet_container(
            pod,
            "busybox",
            BUSYBOX_IMAGE,
            &["/bin/busybox", "sleep", "3600"],
        );
        self.cri
            .start_container(pod_id, &self.pod_config(pod), &container)
            .unwrap_or_else(|e| {
                panic!(
                    "container in {}: {}\n{}",
                    pod.name,
                    e.message(),
                    self.tail_log()
                )
            })
    }

    /// One ping (`busybox ping -c 1 -W 2`) from container `id`; true when
    /// answered.
    pub fn ping_from(&self, id: &str, ip: Ipv4Addr) -> bool {
        let ip = ip.to_string();
        let cmd = ["/bin/busybox", "ping", "-c", "1", "-W", "2", &ip];
        match self.cri.exec(id, &cmd, Duration::from_secs(10)) {
            Ok(out) => out.exit_code == 0,
            Err(e) => panic!("ExecSync in {id}: {}", e.message()),
        }
    }

    /// Stops containerd (SIGTERM, as a service stop does); pods and their
    /// shims keep running.
    pub fn stop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            let status = daemon.terminate();
            assert!(
                status.success() || status.code().is_none(),
                "containerd exited {status}"
            );
        }
    }

    /// Stops and starts containerd again; returns once CRI answers.
    pub fn restart(&mut self) {
        self.stop();
        self.start_daemon();
    }

    fn start_daemon(&mut self) {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--mount=/proc/{}/ns/mnt", self.holder.pid()))
            .arg(format!("--net={}", self.node_netns.display()))
            .arg("containerd")
            .arg("--config")
            .arg(self.dir.join("config.toml"));
        join_cgroup(&mut cmd, self.cgroups.daemon_procs());
        let mut daemon = Proc::spawn_logged(&mut cmd, self.dir.join("containerd.log"));
        let ready = try_wait_until(START_TIMEOUT, || {
            !daemon.is_running() || self.network_ready()
        });
        if ready.is_none() || !daemon.is_running() {
            panic!(
                "containerd did not get ready within {START_TIMEOUT:?}:\n{}",
                self.log()
            );
        }
        self.daemon = Some(daemon);
    }

    /// CRI answers `Status` with the network ready (a CNI config loaded).
    fn network_ready(&self) -> bool {
        self.cri.network_ready().unwrap_or(false)
    }

    /// `ctr images import` of the busybox archive, inside the mount
    /// namespace (the unpacking mounts belong there).
    fn import_images(&self) {
        let tar = image_archive(self.dir.path());
        run(Command::new("nsenter")
            .arg(format!("--mount=/proc/{}/ns/mnt", self.holder.pid()))
            .arg("ctr")
            .arg("--address")
            .arg(self.socket())
            .args(["-n", "k8s.io", "images", "import"])
            .arg(&tar));
        let refs = self.cri.image_refs().expect("ListImages");
        for image in [PAUSE_IMAGE, BUSYBOX_IMAGE] {
            assert!(
                refs.iter().any(|r| r == image),
                "{image} not imported: {refs:?}"
            );
        }
    }

    /// Runs `program args` inside containerd's mount namespace and the node's
    /// network namespace (where the pods' netns mounts are visible).
    pub fn cmd_in(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--mount=/proc/{}/ns/mnt", self.holder.pid()))
            .arg(format!("--net={}", self.node_netns.display()))
            .arg(program);
        c
    }

    fn tail_log(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- containerd log (last 30 lines) ----\n{}",
                self.tail_log()
            );
        }
        if self.daemon.is_some() {
            for error in self.cri.remove_all_pods() {
                eprintln!("containerd teardown: {error}");
            }
        }
        if let Some(mut daemon) = self.daemon.take() {
            daemon.terminate();
        }
        // Then, in field order: the cgroups (what is left of the shims and
        // the pods is killed), the mount namespace's holder, the dir.
    }
}

/// The dirs and files of one instance: CNI config and plugins, images.
fn lay_out(dir: &TempDir, conflist: &Value, plugins: &[PathBuf]) {
    for sub in ["root", "state", "cni/bin", "cni/conf", "opt", "pods"] {
        std::fs::create_dir_all(dir.join(sub)).expect("containerd dirs");
    }
    let name = conflist["name"].as_str().unwrap_or("net");
    let conf = dir.join(format!("cni/conf/10-{name}.conflist"));
    std::fs::write(conf, serde_json::to_string_pretty(conflist).expect("JSON")).expect("conflist");
    // containerd's CRI plugin brings every pod's `lo` up with `loopback`.
    let loopback = PathBuf::from("/usr/lib/cni/loopback");
    for plugin in plugins.iter().chain([&loopback]) {
        let file = plugin.file_name().expect("plugin has a file name");
        std::os::unix::fs::symlink(plugin, dir.join("cni/bin").join(file)).expect("plugin link");
    }
}

/// containerd's config (version 2, as Debian's 1.6 uses): everything under
/// `dir`, the CRI plugin with the local pause image, CNI from `dir/cni`,
/// network namespaces mounted under the state dir.
fn config_toml(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
oom_score = 0

[grpc]
  address = "{d}/containerd.sock"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # runc may not lower a container's oom_score_adj below its own here.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni/bin"
    conf_dir = "{d}/cni/conf"
    max_conf_num = 1
"#
    )
}

/// A process holding a private mount namespace with a tmpfs on
/// `/run/containerd`; returns once both are in place.
fn mount_ns_holder() -> Proc {
    let script = "mkdir -p /run/containerd && mount -t tmpfs -o mode=0711 flctd /run/containerd \
                  && exec sleep infinity";
    let mut holder = Proc::spawn(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(script),
    );
    let mountinfo = format!("/proc/{}/mountinfo", holder.pid());
    let mounted = try_wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&mountinfo).is_ok_and(|m| m.contains(" /run/containerd "))
    });
    if mounted.is_none() || !holder.is_running() {
        panic!(
            "mount namespace for containerd not set up:\n{}",
            holder.log()
        );
    }
    holder
}

/// A docker-archive tar holding one layer (Debian's static busybox at
/// /bin/busybox) tagged as both [`PAUSE_IMAGE`] and [`BUSYBOX_IMAGE`]; the
/// sandbox's process is `busybox sleep`.
fn image_archive(dir: &Path) -> PathBuf {
    let img = dir.join("image");
    std::fs::create_dir_all(img.join("rootfs/bin")).expect("image dir");
    std::fs::copy("/bin/busybox", img.join("rootfs/bin/busybox")).expect("copy busybox");
    let layer = img.join("layer.tar");
    run(Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(img.join("rootfs"))
        .arg("-cf")
        .arg(&layer)
        .arg("bin"));
    let digest = sha256(&layer);
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/bin/busybox", "sleep", "2147483647"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{digest}")]},
    });
    std::fs::write(img.join("config.json"), config.to_string()).expect("image config");
    let manifest = json!([{"Config": "config.json", "RepoTags": [PAUSE_IMAGE, BUSYBOX_IMAGE],
                           "Layers": ["layer.tar"]}]);
    std::fs::write(img.join("manifest.json"), manifest.to_string()).expect("image manifest");
    let tar = dir.join("image.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&img)
        .arg("-cf")
        .arg(&tar)
        .args(["manifest.json", "config.json", "layer.tar"]));
    tar
}

fn sha256(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path));
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .next()
        .expect("sha256sum output")
        .to_string()
}

/// Moves the child into the cgroup whose `cgroup.procs` is `procs` before
/// it runs anything, so its own children (the shims) are in it too.
fn join_cgroup(cmd: &mut Command, procs: CString) {
    // SAFETY: only open/write/close (async-signal-safe) run between fork and
    // exec, on a path allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let n = libc::write(fd, b"0\n".as_ptr().cast(), 2);
            libc::close(fd);
            if n != 2 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// `/<name>` in every cgroup hierarchy: containerd and its shims in
/// `pids:/<name>/daemon`, the pods below `/<name>/pods` (runc creates those).
struct Cgroups {
    name: String,
}

impl Cgroups {
    fn create() -> Cgroups {
        let name = crate::unique(CGROUP_PREFIX);
        let daemon = Path::new(CGROUP_FS).join("pids").join(&name).join("daemon");
        std::fs::create_dir_all(&daemon)
            .unwrap_or_else(|e| panic!("cannot create cgroup {}: {e}", daemon.display()));
        Cgroups { name }
    }

    fn daemon_procs(&self) -> CString {
        let path = format!("{CGROUP_FS}/pids/{}/daemon/cgroup.procs", self.name);
        CString::new(path).expect("no NUL in a cgroup path")
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        kill_and_remove_cgroup(&self.name);
    }
}

/// SIGKILLs every process in `pids:/<name>` and below, then removes
/// `/<name>` from every hierarchy, deepest first. Never panics.
fn kill_and_remove_cgroup(name: &str) {
    let pids_root = Path::new(CGROUP_FS).join("pids").join(name);
    let _ = try_wait_until(Duration::from_secs(10), || {
        let pids = procs_below(&pids_root);
        for &pid in &pids {
            // SAFETY: kill(2) has no memory effects.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        pids.is_empty()
    });
    for hierarchy in hierarchies() {
        let root = hierarchy.join(name);
        if root.is_dir() {
            // A cgroup is removable once its last task has been reaped.
            let _ = try_wait_until(Duration::from_secs(5), || {
                remove_tree(&root);
                !root.exists()
            });
        }
    }
}

fn hierarchies() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(CGROUP_FS) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    if dirs.is_empty() || Path::new(CGROUP_FS).join("cgroup.procs").exists() {
        // Unified hierarchy only: the root is the one hierarchy.
        dirs = vec![PathBuf::from(CGROUP_FS)];
    }
    dirs
}

fn procs_below(dir: &Path) -> Vec<i32> {
    let mut pids: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    for sub in subdirs(dir) {
        pids.extend(procs_below(&sub));
    }
    pids
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

/// rmdir of a cgroup tree, children first (cgroupfs has no recursive remove).
fn remove_tree(dir: &Path) {
    for sub in subdirs(dir) {
        remove_tree(&sub);
    }
    let _ = std::fs::remove_dir(dir);
}

/// Kills and removes the cgroups of fixtures whose test process is gone (a
/// test killed outright leaves shims behind, not containerd: it dies with
/// the test).
pub(crate) fn sweep_stale_cgroups() {
    let mut names: Vec<String> = hierarchies()
        .iter()
        .flat_map(|h| subdirs(h))
        .filter_map(|d| Some(d.file_name()?.to_string_lossy().into_owned()))
        .filter(|n| is_stale(n, CGROUP_PREFIX))
        .collect();
    names.sort();
    names.dedup();
    names.iter().for_each(|n| kill_and_remove_cgroup(n));
}

/// A node with no flanneld: a network namespace and the subnet.env flanneld
/// would have written (subnet `10.244.<k>.0/24` of `10.244.0.0/16`), for
/// tests of one node's pods. Drop deletes both.
#[derive(Debug)]
pub struct LoneNode {
    netns: Netns,
    dir: TempDir,
    k: u8,
}

impl LoneNode {
    /// A node namespace whose subnet.env gives it `10.244.<k>.0/24`.
    pub fn new(k: u8) -> LoneNode {
        let netns = Netns::new("fl-n");
        let dir = TempDir::new(DIR_PREFIX);
        let node = LoneNode { netns, dir, k };
        node.write_subnet_env();
        node
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `10.244.<k>.0/24`.
    pub fn subnet(&self) -> String {
        format!("10.244.{}.0/24", self.k)
    }

    /// The node's side of the pod network (`cni0`'s address), `.1`.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, self.k, 1)
    }

    pub fn subnet_file(&self) -> PathBuf {
        self.dir.join("subnet.env")
    }

    /// Writes subnet.env as flanneld does (temp file and rename).
    pub fn write_subnet_env(&self) {
        let text = format!(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={}/24\nFLANNEL_MTU=1450\n\
             FLANNEL_IPMASQ=true\n",
            self.gateway()
        );
        let tmp = self.dir.join("subnet.env.tmp");
        std::fs::write(&tmp, text).expect("write subnet.env");
        std::fs::rename(&tmp, self.subnet_file()).expect("rename subnet.env");
        assert!(SubnetEnv::read(&self.subnet_file()).is_some());
    }

    pub fn remove_subnet_env(&self) {
        std::fs::remove_file(self.subnet_file()).expect("remove subnet.env");
    }

    /// The plugin entry as the node's conflist holds it (kube-flannel's,
    /// with this node's subnet file and state dirs).
    pub fn plugin_conf(&self) -> Value {
        json!({
            "type": "flannel",
            "subnetFile": self.subnet_file(),
            "dataDir": self.dir.join("flannel"),
            "ipam": {"dataDir": self.dir.join("ipam")},
            "delegate": {"hairpinMode": true, "isDefaultGateway": true},
        })
    }

    /// The host-local store dir of network `name` (one file per IP).
    pub fn ipam_dir(&self, network: &str) -> PathBuf {
        self.dir.join("ipam").join(network)
    }
}

/// kube-flannel's conflist (`conf/10-flannel.conflist` of this repository:
/// the flannel plugin, then portmap) with the flannel entry's node-specific
/// keys (`subnetFile`, `dataDir`, `ipam`) taken from `node_conf`.
pub fn kube_flannel_conflist(node_conf: &Value) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf/10-flannel.conflist");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut list: Value = serde_json::from_str(&text).expect("10-flannel.conflist is JSON");
    let flannel = list["plugins"]
        .as_array_mut()
        .and_then(|p| p.iter_mut().find(|p| p["type"] == "flannel"))
        .expect("10-flannel.conflist has a flannel plugin");
    for key in ["subnetFile", "dataDir", "ipam"] {
        if let Some(v) = node_conf.get(key) {
            flannel[key] = v.clone();
        }
    }
    list
}

/// The CNI plugins kube-flannel's conflist needs: this workspace's
/// `flannel` and Debian's `portmap`.
pub fn kube_flannel_plugins() -> Vec<PathBuf> {
    vec![
        crate::bin_path("flannel"),
        PathBuf::from("/usr/lib/cni/portmap"),
    ]
}
