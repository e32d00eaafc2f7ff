//! The plugin only ever touches its own pod: calls with foreign or hostile
//! input (a never-added container, another pod's namespace, the node's own
//! bridge, a FIFO where a namespace or state file should be, a full disk,
//! a shared data directory) leave the node working and nothing behind.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use harness::Netns;
use serde_json::json;

/// Runs the plugin in the node with kubelet's environment, killed if it
/// has not returned within `limit`; panics if it had to be killed.
fn call_within(
    node: &Node,
    limit: Duration,
    command: &str,
    id: &str,
    netns: &Path,
    conf: &serde_json::Value,
) -> Output {
    let mut cmd = Command::new("/usr/bin/timeout");
    cmd.args([
        "-s",
        "KILL",
        &limit.as_secs().to_string(),
        "/usr/bin/nsenter",
    ])
    .arg(format!("--net={}", node.ns.path().display()))
    .arg(PLUGIN)
    .env_clear()
    .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    .env("CNI_COMMAND", command)
    .env("CNI_CONTAINERID", id)
    .env("CNI_NETNS", netns)
    .env("CNI_IFNAME", "eth0")
    .env("CNI_PATH", "/opt/cni/bin");
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the plugin");
    let stdin = conf.to_string();
    let _ = std::io::Write::write_all(&mut child.stdin.take().unwrap(), stdin.as_bytes());
    let out = child.wait_with_output().expect("wait for the plugin");
    assert!(
        out.status.signal().is_none() && out.status.code() != Some(137),
        "{command} {id} hung: killed after {:?}",
        started.elapsed()
    );
    out
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
}

/// DEL of a container that was never added, pointed at the node's own
/// namespace and its bridge: the bridge and the pod on it stay.
#[test]
fn del_of_unknown_container_leaves_the_node_bridge() {
    harness::require_root!();
    let node = Node::new();
    let conf = node.conf("1.0.0");
    let pod = Netns::new("flhb");
    let ip = result_ip(&node.add("pod-a", &pod, &conf));
    let out = node.call("DEL", "never-added", Some(&node.ns.path()), "cni0", &conf);
    assert_success(&out);
    assert!(node.links().contains(&"cni0".to_string()), "bridge deleted");
    assert!(ping(&pod, "10.244.3.1"), "pod lost its gateway");
    assert!(ping(&node.ns, ip), "node cannot reach the pod");
    assert_eq!(node.allocated().len(), 1);
    node.del("pod-a", Some(&pod), &conf);
}

/// DEL of a container that was never added, pointed at another pod's
/// namespace and eth0, and DEL of a container that was added but pointed
/// at the other pod: that pod keeps its interface and its address.
#[test]
fn del_of_another_pods_namespace_leaves_that_pod() {
    harness::require_root!();
    let node = Node::new();
    let conf = node.conf("1.0.0");
    let (a, b) = (Netns::new("flha"), Netns::new("flhc"));
    let ip_a = result_ip(&node.add("pod-a", &a, &conf));
    let ip_b = result_ip(&node.add("pod-b", &b, &conf));
    let out = node.call("DEL", "never-added", Some(&b.path()), "eth0", &conf);
    assert_success(&out);
    assert!(link_names(&b).contains(&"eth0".to_string()), "eth0 deleted");
    assert!(ping(&a, ip_b), "pod a cannot reach pod b");
    // pod-a's own DEL, given pod b's namespace: only pod a's pair goes.
    node.del("pod-a", Some(&b), &conf);
    assert!(ping(&node.ns, ip_b), "node cannot reach pod b");
    assert_eq!(link_names(&a), ["lo"], "pod a's eth0 stays");
    assert_eq!(node.allocated(), [(ip_b, "pod-b\r\neth0".to_string())]);
    let _ = ip_a;
    node.del("pod-b", Some(&b), &conf);
    assert_eq!(node.links(), ["lo", "cni0"]);
}

/// GC in a data directory shared with other files removes only what is
/// in the plugin's own formats.
#[test]
fn gc_keeps_files_that_are_not_the_plugins() {
    harness::require_root!();
    let node = Node::new();
    let conf = node.conf("1.1.0");
    let pod = Netns::new("flhg");
    node.add("gone", &pod, &conf);
    let data = node.data_dir();
    let foreign = [
        ("notes.txt", "not a config"),
        ("other", r#"{"name":"cbr0"}"#),
        ("json-of-another-net", r#"{"type":"bridge","name":"other"}"#),
        (".tmp-xyz", "x"),
    ];
    for (name, content) in foreign {
        std::fs::write(data.join(name), content).unwrap();
    }
    std::fs::write(node.store().join("notes.txt"), "mine").unwrap();
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    assert_success(&node.call("GC", "", None, "", &gc));
    let mut left = node.saved_configs();
    left.sort();
    let mut want: Vec<String> = foreign.iter().map(|(n, _)| n.to_string()).collect();
    want.sort();
    assert_eq!(left, want, "GC removed someone else's file, or kept ours");
    assert!(node.allocated().is_empty());
    assert!(node.store().join("notes.txt").exists());
    assert_eq!(node.links(), ["lo", "cni0"]);
}

/// An empty `dataDir` or `ipam.dataDir` is refused (7) before anything is
/// written anywhere, the current directory included.
#[test]
fn empty_data_dirs_are_refused() {
    harness::require_root!();
    let node = Node::new();
    let pod = Netns::new("flhe");
    for key in ["dataDir", "ipam"] {
        let mut conf = node.conf("1.0.0");
        if key == "ipam" {
            conf["ipam"]["dataDir"] = json!("");
        } else {
            conf["dataDir"] = json!("");
        }
        let out = node.call("ADD", "pod-e", Some(&pod.path()), "eth0", &conf);
        let doc = error_doc(&out);
        assert_eq!(doc["code"], 7, "{doc}");
        assert_msg_contains(&doc, "must not be empty");
        assert_eq!(node.links(), ["lo"]);
        assert_eq!(link_names(&pod), ["lo"]);
        assert!(node.allocated().is_empty() && node.saved_configs().is_empty());
    }
    // nsenter runs the plugin in the test's own directory: nothing there.
    assert!(!Path::new("pod-e").exists() && !Path::new("cbr0").exists());
}

/// A FIFO as `CNI_NETNS`: ADD fails fast with code 4, DEL returns at once
/// and still releases the IP; a FIFO planted in the IPAM store does not
/// hang ADD under the store's lock.
#[test]
fn fifos_never_hang_the_plugin() {
    harness::require_root!();
    let node = Node::new();
    let conf = node.conf("1.0.0");
    let limit = Duration::from_secs(10);
    let fifo = node.dir.join("netns-fifo");
    mkfifo(&fifo);
    let out = call_within(&node, limit, "ADD", "pod-f", &fifo, &conf);
    assert_eq!(error_code(&out), 4, "{}", text(&out.stdout));
    assert_msg_contains(&error_doc(&out), "not a namespace file");

    let pod = Netns::new("flhf");
    std::fs::create_dir_all(node.store()).unwrap();
    mkfifo(&node.store().join("10.244.3.2"));
    mkfifo(&node.store().join("last_reserved_ip.0"));
    let out = call_within(&node, limit, "ADD", "pod-f", &pod.path(), &conf);
    let ip = result_ip(&ok_json(&out));
    assert_eq!(ip.to_string(), "10.244.3.3", "the FIFO's name stays taken");
    assert!(ping(&pod, "10.244.3.1"));

    let out = call_within(&node, limit, "DEL", "pod-f", &fifo, &conf);
    assert_success(&out);
    assert!(node.allocated().is_empty(), "{:?}", node.allocated());
    assert!(node.saved_configs().is_empty());
    assert_eq!(node.links(), ["lo", "cni0"]);
}

/// A second ADD of an attached container from another namespace is
/// refused (105) and leaves the first attachment whole: its saved config
/// too, so that its DEL still knows what to undo.
#[test]
fn refused_second_add_keeps_the_first_attachment() {
    harness::require_root!();
    let node = Node::new();
    let conf = node.conf("1.0.0");
    let (a, b) = (Netns::new("flhs"), Netns::new("flht"));
    let ip = result_ip(&node.add("pod-s", &a, &conf));
    let saved = std::fs::read(node.data_dir().join("pod-s")).unwrap();
    let out = node.call("ADD", "pod-s", Some(&b.path()), "eth0", &conf);
    assert_eq!(error_code(&out), 105, "{}", text(&out.stdout));
    assert_eq!(std::fs::read(node.data_dir().join("pod-s")).unwrap(), saved);
    assert_eq!(link_names(&b), ["lo"]);
    assert!(ping(&a, "10.244.3.1"));
    assert_eq!(node.allocated(), [(ip, "pod-s\r\neth0".to_string())]);
    node.del("pod-s", Some(&a), &conf);
    assert!(node.saved_configs().is_empty());
    assert_eq!(node.links(), ["lo", "cni0"]);
}

/// A container ID too long for a file name: ADD says so (4) and changes
/// nothing; DEL succeeds.
#[test]
fn overlong_container_id() {
    harness::require_root!();
    let node = Node::new();
    let conf = node.conf("1.0.0");
    let pod = Netns::new("flhl");
    let id = "a".repeat(300);
    let doc = error_doc(&node.call("ADD", &id, Some(&pod.path()), "eth0", &conf));
    assert_eq!(doc["code"], 4, "{doc}");
    assert_msg_contains(&doc, "300 bytes long");
    assert_eq!(node.links(), ["lo"]);
    assert!(node.allocated().is_empty() && node.saved_configs().is_empty());
    node.del(&id, Some(&pod), &conf);
    node.del(&id, None, &conf);
}

/// A subnet.env whose subnet lies outside its network, or a FIFO in its
/// place: ADD is refused (7) at once, naming the problem, before anything
/// changes.
#[test]
fn invalid_subnet_env_is_refused_before_any_change() {
    harness::require_root!();
    let node = Node::new();
    let conf = node.conf("1.0.0");
    let pod = Netns::new("flhv");
    node.write_subnet_env(&SUBNET_ENV.replace("10.244.3.1/24", "10.245.3.1/24"));
    let doc = error_doc(&node.call("ADD", "pod-v", Some(&pod.path()), "eth0", &conf));
    assert_eq!(doc["code"], 7, "{doc}");
    assert_msg_contains(
        &doc,
        "FLANNEL_SUBNET=10.245.3.1/24 is not inside FLANNEL_NETWORK=10.244.0.0/16",
    );
    std::fs::remove_file(node.subnet_file()).unwrap();
    mkfifo(&node.subnet_file());
    let out = call_within(
        &node,
        Duration::from_secs(10),
        "ADD",
        "pod-v",
        &pod.path(),
        &conf,
    );
    let doc = error_doc(&out);
    assert_eq!(doc["code"], 7, "{doc}");
    assert_msg_contains(&doc, "not a regular file");
    assert_eq!(node.links(), ["lo"]);
    assert_eq!(link_names(&pod), ["lo"]);
    assert!(node.allocated().is_empty() && node.saved_configs().is_empty());
}

/// A tmpfs mounted on a test-owned directory, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: std::path::PathBuf, size: &str) -> Tmpfs {
        std::fs::create_dir_all(&dir).unwrap();
        let opts = format!("size={size},mode=0755");
        harness::sh(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &opts,
            "tmpfs",
            dir.to_str().unwrap(),
        ]);
        Tmpfs(dir)
    }

    /// Fills the file system with one-page files; returns them.
    fn fill(&self) -> Vec<std::path::PathBuf> {
        let mut pages = Vec::new();
        for i in 0.. {
            let path = self.0.join(format!("fill-{i}"));
            if std::fs::write(&path, [0u8; 4096]).is_err() {
                let _ = std::fs::remove_file(&path);
                return pages;
            }
            pages.push(path);
        }
        unreachable!()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Data and IPAM directories on a full disk, with 0 to 3 pages left: each
/// ADD that fails says why (5, no space) and leaves nothing: no IP file, no
/// cursor it cannot complete, no saved config, no veth. Once space is
/// freed, the same ADD succeeds.
#[test]
fn full_disk_fails_cleanly_and_a_retry_succeeds() {
    harness::require_root!();
    let node = Node::new();
    let disk = Tmpfs::mount(node.dir.join("disk"), "64k");
    let mut conf = node.conf("1.0.0");
    conf["dataDir"] = json!(disk.0.join("flannel"));
    conf["ipam"]["dataDir"] = json!(disk.0.join("ipam"));
    let store = disk.0.join("ipam").join("cbr0");
    let pod = Netns::new("flhd");
    let mut failures = Vec::new();
    for free in 0..4 {
        let mut pages = disk.fill();
        pages
            .drain(..free)
            .for_each(|p| std::fs::remove_file(p).unwrap());
        let id = format!("pod-{free}");
        let out = node.call("ADD", &id, Some(&pod.path()), "eth0", &conf);
        if out.status.success() {
            node.del(&id, Some(&pod), &conf);
        } else {
            let doc = error_doc(&out);
            assert_eq!(doc["code"], 5, "{doc}");
            assert_msg_contains(&doc, "No space left on device");
            assert!(allocated_in(&store).is_empty(), "{free}: IP left");
            let saved: Vec<_> = std::fs::read_dir(disk.0.join("flannel"))
                .map(|d| d.map(|e| e.unwrap().file_name()).collect())
                .unwrap_or_default();
            assert!(saved.is_empty(), "{free}: left {saved:?}");
            assert!(node.links().iter().all(|l| l == "lo" || l == "cni0"));
            assert_eq!(link_names(&pod), ["lo"]);
            failures.push(doc["msg"].as_str().unwrap().to_string());
        }
        pages
            .into_iter()
            .for_each(|p| std::fs::remove_file(p).unwrap());
        let ip = result_ip(&node.add(&id, &pod, &conf));
        assert_eq!(allocated_in(&store), [(ip, format!("{id}\r\neth0"))]);
        node.del(&id, Some(&pod), &conf);
    }
    // The full disk stopped ADD both at its saved config and in the store.
    assert!(
        failures.iter().any(|m| m.contains("/flannel/")),
        "{failures:?}"
    );
    assert!(
        failures.iter().any(|m| m.contains("/cbr0/")),
        "{failures:?}"
    );
}

/// The node's subnet changed while the bridge kept the old gateway: with
/// no pod attached, ADD re-addresses the bridge and the pod works; with a
/// pod attached, ADD fails naming that pod's port, and that pod still
/// works.
#[test]
fn bridge_with_an_old_subnets_gateway() {
    harness::require_root!();
    let node = Node::new();
    let conf = node.conf("1.0.0");
    let (a, b) = (Netns::new("flhr"), Netns::new("flhq"));
    let old_ip = result_ip(&node.add("pod-old", &a, &conf));
    let moved = SUBNET_ENV.replace("10.244.3.1/24", "10.244.7.1/24");
    node.write_subnet_env(&moved);
    let doc = error_doc(&node.call("ADD", "pod-new", Some(&b.path()), "eth0", &conf));
    assert_eq!(doc["code"], 103, "{doc}");
    let port = node_state::host_veth_name("pod-old", "eth0");
    assert_msg_contains(&doc, &format!("and ports attached: {port}"));
    assert!(
        ping(&a, "10.244.3.1") && ping(&node.ns, old_ip),
        "old pod cut off"
    );
    assert_eq!(link_names(&b), ["lo"]);

    node.del("pod-old", Some(&a), &conf);
    let ip = result_ip(&node.add("pod-new", &b, &conf));
    assert_eq!(ip.to_string(), "10.244.7.2");
    let addrs = node.ns.ip_json(&["-4", "addr", "show", "cni0"]);
    let locals: Vec<&str> = addrs[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["local"].as_str().unwrap())
        .collect();
    assert_eq!(locals, ["10.244.7.1"]);
    assert!(ping(&b, "10.244.7.1"), "new pod cannot reach its gateway");
    node.del("pod-new", Some(&b), &conf);
}

/// A router advertisement as a pod can forge it: ICMPv6 type 134 from a
/// link-local source with hop limit 255 to ff02::1, a router lifetime (a
/// default route) and a prefix with the autonomous flag (an address).
fn router_advertisement() -> Vec<u8> {
    let mut ra = vec![134, 0, 0, 0, 64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0];
    // Prefix information: type 3, 4 × 8 bytes, /64, on-link + autonomous,
    // valid and preferred lifetimes, reserved, prefix 2001:db8:77::.
    ra.extend([3, 4, 64, 0xc0]);
    ra.extend(86400u32.to_be_bytes());
    ra.extend(14400u32.to_be_bytes());
    ra.extend([0; 4]);
    ra.extend([
        0x20, 0x01, 0x0d, 0xb8, 0, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    ra
}

/// Sends [`router_advertisement`] out of `ifindex` of the calling thread's
/// namespace from `fe80::77` (the kernel fills in the ICMPv6 checksum).
fn send_router_advertisement(ifindex: u32) -> std::io::Result<()> {
    let last_err = || std::io::Error::last_os_error();
    let sockaddr = |addr: &str| libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: 0,
        sin6_flowinfo: 0,
        sin6_addr: libc::in6_addr {
            s6_addr: addr.parse::<std::net::Ipv6Addr>().unwrap().octets(),
        },
        sin6_scope_id: ifindex,
    };
    let len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    // SAFETY: plain socket calls on an fd this function owns and closes;
    // every pointer is to a live local of the size passed.
    unsafe {
        let fd = libc::socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6);
        if fd < 0 {
            return Err(last_err());
        }
        let hops: libc::c_int = 255;
        let setopt = |opt, value: *const libc::c_void, size| {
            libc::setsockopt(fd, libc::IPPROTO_IPV6, opt, value, size as libc::socklen_t)
        };
        let ok = setopt(
            libc::IPV6_MULTICAST_HOPS,
            (&hops as *const libc::c_int).cast(),
            4,
        ) == 0
            && setopt(libc::IPV6_MULTICAST_IF, (&ifindex as *const u32).cast(), 4) == 0
            && libc::bind(
                fd,
                (&sockaddr("fe80::77") as *const libc::sockaddr_in6).cast(),
                len,
            ) == 0;
        let ra = router_advertisement();
        let dst = sockaddr("ff02::1");
        let mut result = if ok { Ok(()) } else { Err(last_err()) };
        for _ in 0..3 {
            if result.is_err() {
                break;
            }
            let sent = libc::sendto(
                fd,
                ra.as_ptr().cast(),
                ra.len(),
                0,
                (&dst as *const libc::sockaddr_in6).cast(),
                len,
            );
            if sent < 0 {
                result = Err(last_err());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        libc::close(fd);
        result
    }
}

/// A pod's forged router advertisement gives the node no IPv6 default
/// route and no address; the sysctls are the reference's.
#[test]
fn router_advertisements_from_pods_are_ignored() {
    harness::require_root!();
    let node = Node::new();
    let conf = node.conf("1.0.0");
    let pod = Netns::new("flhi");
    node.add("pod-ra", &pod, &conf);
    let host_veth = node_state::host_veth_name("pod-ra", "eth0");
    let sysctl = |ns: &Netns, path: &str| ns.sh(&["cat", path]).trim().to_string();
    for dev in ["cni0", host_veth.as_str()] {
        let path = format!("/proc/sys/net/ipv6/conf/{dev}/accept_ra");
        assert_eq!(sysctl(&node.ns, &path), "0", "{dev}");
    }
    assert_eq!(sysctl(&pod, "/proc/sys/net/ipv4/conf/eth0/arp_notify"), "1");
    pod.sh(&["ip", "addr", "add", "fe80::77/64", "dev", "eth0", "nodad"]);
    // The bridge's own link-local address: it is up and can hear.
    let hears = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        let addrs = node.ns.ip("-6 addr show dev cni0 scope link");
        addrs.contains("fe80") && !addrs.contains("tentative")
    });
    assert!(hears, "cni0 has no IPv6 link-local address");
    let index = pod.ip_json(&["link", "show", "eth0"])[0]["ifindex"]
        .as_u64()
        .unwrap() as u32;
    pod.run_in(|| send_router_advertisement(index))
        .unwrap()
        .expect("send the advertisement");
    std::thread::sleep(Duration::from_millis(500));
    let routes = node.ns.ip("-6 route show");
    assert!(
        !routes.contains("default"),
        "node took a default route:\n{routes}"
    );
    let addrs = node.ns.ip("-6 addr show");
    assert!(
        !addrs.contains("2001:db8:77"),
        "node took an address:\n{addrs}"
    );
    node.del("pod-ra", Some(&pod), &conf);
}
