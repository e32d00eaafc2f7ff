//! kubelet's path to the plugin: kubelet never executes a CNI plugin, it
//! asks the runtime for a pod sandbox over CRI, and containerd's CRI plugin
//! executes kube-flannel's conflist (flannel, then portmap) through libcni.
//! These tests speak CRI to Debian's containerd running inside a node, the
//! way kubelet does, and check what a cluster user would: the pod's IP,
//! pings between pods, and that removing pods leaves nothing behind.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;

use harness::{
    kube_flannel_conflist, kube_flannel_plugins, require_root, Cluster, ClusterOpts, Containerd,
    LoneNode, Netns, PodMeta,
};

/// kube-flannel's network name (the conflist's `name`, the IPAM store dir).
const NETWORK: &str = "cbr0";

/// A node without flanneld (subnet.env written as flanneld would) running
/// containerd with kube-flannel's conflist. Fields drop in order: every pod
/// is removed through CRI while the node still exists.
struct CriNode {
    ctd: Containerd,
    node: LoneNode,
}

impl CriNode {
    fn new(k: u8) -> CriNode {
        let node = LoneNode::new(k);
        let conflist = kube_flannel_conflist(&node.plugin_conf());
        let ctd = Containerd::start(&node.netns().path(), &conflist, &kube_flannel_plugins());
        CriNode { ctd, node }
    }

    /// RunPodSandbox; returns the sandbox id and the IP the runtime reports.
    fn run_pod(&self, pod: &PodMeta) -> (String, Ipv4Addr) {
        let id = self
            .ctd
            .run_pod(pod)
            .unwrap_or_else(|e| panic!("RunPodSandbox {}: {}", pod.name, e.message()));
        let ip = self.ctd.cri().pod_ip(&id).expect("PodSandboxStatus");
        (id, ip)
    }

    /// StopPodSandbox then RemovePodSandbox, as kubelet does for a deleted pod.
    fn remove_pod(&self, id: &str) {
        let cri = self.ctd.cri();
        cri.stop_pod(id).expect("StopPodSandbox");
        cri.remove_pod(id).expect("RemovePodSandbox");
    }

    /// The IPs the host-local store holds (one file per address).
    fn reserved_ips(&self) -> BTreeSet<String> {
        files(&self.node.ipam_dir(NETWORK))
            .into_iter()
            .filter(|f| f.parse::<Ipv4Addr>().is_ok())
            .collect()
    }

    /// The container ids whose config the plugin saved in its dataDir.
    fn saved_configs(&self) -> BTreeSet<String> {
        files(&self.node.dir().join("flannel"))
    }

    /// The pods' host-side veths: the ports of `cni0`.
    fn bridge_ports(&self) -> BTreeSet<String> {
        bridge_ports(self.node.netns())
    }

    /// Asserts the node holds no pod: no reserved IP, no saved config, no
    /// port on cni0, no sandbox known to the runtime.
    fn assert_no_pods(&self) {
        assert_eq!(self.reserved_ips(), BTreeSet::new(), "IPs still reserved");
        assert_eq!(self.saved_configs(), BTreeSet::new(), "configs still saved");
        assert_eq!(self.bridge_ports(), BTreeSet::new(), "veths still on cni0");
        let pods = self.ctd.cri().pods().expect("ListPodSandbox");
        assert!(pods.is_empty(), "sandboxes left: {pods:?}");
    }
}

fn files(dir: &Path) -> BTreeSet<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeSet::new();
    };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn bridge_ports(node: &Netns) -> BTreeSet<String> {
    let links = node.ip_json(&["link", "show"]);
    let links = links.as_array().cloned().unwrap_or_default();
    links
        .iter()
        .filter(|l| l["master"] == "cni0")
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect()
}

fn in_subnet(ip: Ipv4Addr, node: &LoneNode) -> bool {
    let [a, b, c, _] = ip.octets();
    let [ga, gb, gc, _] = node.gateway().octets();
    (a, b, c) == (ga, gb, gc) && ip != node.gateway()
}

/// One pod's life as kubelet drives it: the sandbox gets an address of the
/// node's subnet, recorded in the host-local store under its sandbox id; a
/// container in another pod pings it and the gateway; stop and remove
/// release the address and delete the veth and the saved config.
#[test]
fn pod_lifecycle_through_cri() {
    require_root!();
    let n = CriNode::new(3);
    let (version_name, _) = n.ctd.cri().version().expect("Version");
    assert_eq!(version_name, "containerd");
    let (web, client) = (PodMeta::new("web"), PodMeta::new("client"));
    let ports_before = n.bridge_ports();
    let (web_id, web_ip) = n.run_pod(&web);
    assert!(
        in_subnet(web_ip, &n.node),
        "{web_ip} not in {}",
        n.node.subnet()
    );
    let record = std::fs::read_to_string(n.node.ipam_dir(NETWORK).join(web_ip.to_string()))
        .expect("the store holds the pod's IP");
    assert_eq!(record, format!("{web_id}\r\neth0"));
    assert!(
        n.saved_configs().contains(&web_id),
        "{:?}",
        n.saved_configs()
    );
    let web_veth: Vec<String> = n
        .bridge_ports()
        .difference(&ports_before)
        .cloned()
        .collect();
    assert_eq!(web_veth.len(), 1, "one new port on cni0: {web_veth:?}");

    let (client_id, client_ip) = n.run_pod(&client);
    assert_ne!(client_ip, web_ip);
    let container = n.ctd.start_busybox(&client_id, &client);
    assert!(
        n.ctd.ping_from(&container, web_ip),
        "client pod -> web pod {web_ip}"
    );
    assert!(
        n.ctd.ping_from(&container, n.node.gateway()),
        "client pod -> gateway"
    );

    n.remove_pod(&web_id);
    assert!(
        !n.reserved_ips().contains(&web_ip.to_string()),
        "{web_ip} still reserved"
    );
    assert!(
        !n.saved_configs().contains(&web_id),
        "config of {web_id} still saved"
    );
    assert!(
        !n.bridge_ports().contains(&web_veth[0]),
        "veth {} still on cni0",
        web_veth[0]
    );
    assert!(
        !n.ctd.ping_from(&container, web_ip),
        "{web_ip} still answers"
    );

    n.remove_pod(&client_id);
    n.assert_no_pods();
}

/// 20 pods one after the other, then 10 at once (as kubelet starts a
/// deployment's replicas in parallel): each gets its own address, and
/// removing them all leaves nothing.
#[test]
fn many_pods_in_a_row_and_at_once_leak_nothing() {
    require_root!();
    let n = CriNode::new(4);
    let mut ips = BTreeSet::new();
    for i in 0..20 {
        let (id, ip) = n.run_pod(&PodMeta::new(&format!("seq{i}")));
        assert!(in_subnet(ip, &n.node), "{ip}");
        assert!(ips.insert(ip), "{ip} given twice");
        n.remove_pod(&id);
    }
    n.assert_no_pods();

    let started = std::thread::scope(|s| {
        let handles: Vec<_> = (0..10)
            .map(|i| {
                let n = &n;
                s.spawn(move || n.run_pod(&PodMeta::new(&format!("par{i}"))))
            })
            .collect();
        let started: Vec<(String, Ipv4Addr)> = handles
            .into_iter()
            .map(|h| h.join().expect("RunPodSandbox thread"))
            .collect();
        started
    });
    let ips: BTreeSet<Ipv4Addr> = started.iter().map(|(_, ip)| *ip).collect();
    assert_eq!(ips.len(), 10, "10 distinct IPs: {started:?}");
    assert_eq!(n.reserved_ips().len(), 10);
    assert_eq!(n.bridge_ports().len(), 10);
    std::thread::scope(|s| {
        for (id, _) in &started {
            let n = &n;
            s.spawn(move || n.remove_pod(id));
        }
    });
    n.assert_no_pods();
}

/// containerd restarted (as a package upgrade does) with pods running: the
/// pods keep their addresses and keep answering, and removing them after
/// the restart still releases everything.
#[test]
fn pods_survive_a_containerd_restart() {
    require_root!();
    let mut n = CriNode::new(5);
    let (a, b) = (PodMeta::new("a"), PodMeta::new("b"));
    let (a_id, a_ip) = n.run_pod(&a);
    let (b_id, b_ip) = n.run_pod(&b);
    let container = n.ctd.start_busybox(&b_id, &b);
    assert!(n.ctd.ping_from(&container, a_ip));
    let reserved = n.reserved_ips();

    n.ctd.restart();
    assert_eq!(
        n.ctd.cri().pod_ip(&a_id).expect("status after restart"),
        a_ip
    );
    assert_eq!(
        n.ctd.cri().pod_ip(&b_id).expect("status after restart"),
        b_ip
    );
    assert!(
        n.ctd.cri().pod_ready(&a_id).expect("status"),
        "pod a not ready"
    );
    assert!(
        n.ctd.ping_from(&container, a_ip),
        "pods talk after the restart"
    );
    assert_eq!(n.reserved_ips(), reserved, "the restart changed the store");

    // A pod started after the restart gets a fresh address.
    let (c_id, c_ip) = n.run_pod(&PodMeta::new("c"));
    assert!(!reserved.contains(&c_ip.to_string()), "{c_ip} reused");
    for id in [&a_id, &b_id, &c_id] {
        n.remove_pod(id);
    }
    n.assert_no_pods();
}

/// Before flanneld wrote subnet.env the plugin answers "try again later"
/// (code 11) with its reason; kubelet sees that reason in the CRI error,
/// nothing is left behind, and the same pod starts once the file is there.
#[test]
fn missing_subnet_env_reaches_kubelet_as_the_plugins_message() {
    require_root!();
    let n = CriNode::new(6);
    n.node.remove_subnet_env();
    let pod = PodMeta::new("early");
    let err = n
        .ctd
        .run_pod(&pod)
        .expect_err("RunPodSandbox without subnet.env");
    let plugin_msg = format!("cannot read {}", n.node.subnet_file().display());
    assert!(
        err.message().contains(&plugin_msg),
        "CRI error {:?} lacks the plugin's message {plugin_msg:?}",
        err.message()
    );
    assert!(
        err.message().contains("No such file or directory"),
        "{}",
        err.message()
    );
    assert_eq!(n.reserved_ips(), BTreeSet::new());
    assert_eq!(n.bridge_ports(), BTreeSet::new());

    n.node.write_subnet_env();
    let retry = PodMeta { attempt: 1, ..pod };
    let (id, ip) = n.run_pod(&retry);
    assert!(in_subnet(ip, &n.node), "{ip}");
    n.remove_pod(&id);
    n.assert_no_pods();
}

/// Two nodes running flanneld, pods started through CRI on each: they ping
/// each other across the VXLAN overlay.
#[test]
fn cri_pods_on_two_nodes_ping_each_other() {
    require_root!();
    let cluster = Cluster::new(2, ClusterOpts::default());
    let runtimes: Vec<Containerd> = cluster
        .nodes()
        .iter()
        .map(|node| {
            let conflist = kube_flannel_conflist(&node.cni().conf);
            Containerd::start(&node.netns().path(), &conflist, &kube_flannel_plugins())
        })
        .collect();
    let mut pods = Vec::new();
    for (node, ctd) in cluster.nodes().iter().zip(&runtimes) {
        let meta = PodMeta::new(&format!("on-{}", node.name()));
        let id = ctd.run_pod(&meta).expect("RunPodSandbox");
        let ip = ctd.cri().pod_ip(&id).expect("PodSandboxStatus");
        let subnet = node.subnet();
        let prefix = subnet.rsplit_once('.').expect("a.b.c.0/24").0;
        assert!(
            ip.to_string().starts_with(&format!("{prefix}.")),
            "{ip} not in {subnet}"
        );
        let container = ctd.start_busybox(&id, &meta);
        pods.push((ctd, container, ip));
    }
    for (i, (ctd, container, ip)) in pods.iter().enumerate() {
        let (_, _, peer_ip) = &pods[1 - i];
        assert!(
            ctd.ping_from(container, *peer_ip),
            "{ip} -> {peer_ip} across nodes"
        );
    }
    for ctd in &runtimes {
        assert_eq!(ctd.cri().remove_all_pods(), Vec::<String>::new());
    }
    for node in cluster.nodes() {
        let store = node.dir().join("ipam").join(NETWORK);
        assert_eq!(
            files(&store)
                .iter()
                .filter(|f| f.parse::<Ipv4Addr>().is_ok())
                .count(),
            0
        );
    }
}
