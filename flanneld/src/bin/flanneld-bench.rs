//! Benchmark of flanneld's datapath programming and memory (run as root):
//!
//! ```text
//! cargo build --release --bins && sudo target/release/flanneld-bench [--peers 1000] [--rounds 15] [--json FILE]
//! ```
//!
//! 1. Time: in fresh network namespaces (each with a veth stand-in NIC and
//!    an identical `flannel.1`), one reconcile pass programming N peers
//!    (neighbour + FDB + route each; the route through a nexthop object
//!    where the kernel has them) against `ip -batch` (neighbours and
//!    flannel's plain routes) + `bridge -batch` (FDB) of the same entries,
//!    and the reconcile pass forced to plain routes (the fallback for
//!    kernels without nexthops). Rounds are interleaved and rotate which
//!    side goes first; medians, p95, p99 and the ratios are printed side
//!    by side.
//! 2. Memory: a real flanneld in a namespace, against a real etcd (inside
//!    that namespace, on loopback) holding N peer leases: VmRSS and VmHWM
//!    once all N routes are programmed.
//!
//! `--json FILE` also writes every sample (milliseconds) and the memory
//! figures, for plotting.
//!
//! Nothing is created outside the namespaces it makes, and they are removed
//! on exit, pass or fail.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use flannel_netlink::{Handle, Netns, NetnsGuard};
use flanneld::backend::nexthop::probe;
use flanneld::backend::reconciler::{reconcile, Target};
use flanneld::backend::{DeviceSpec, KernelDatapath, RouteMode};
use flanneld::lease::{format_mac, Peer};
use subnet_env::SubnetEnv;

const LOCAL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

struct Args {
    peers: usize,
    rounds: usize,
    json: Option<PathBuf>,
}

fn parse_args() -> Args {
    let mut a = Args {
        peers: 1000,
        rounds: 15,
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let text = it.next();
        if let ("--json", Some(path)) = (flag.as_str(), &text) {
            a.json = Some(PathBuf::from(path));
            continue;
        }
        let value = text.and_then(|v| v.parse().ok());
        match (flag.as_str(), value) {
            ("--peers", Some(v)) => a.peers = v,
            ("--rounds", Some(v)) => a.rounds = v,
            _ => {
                eprintln!("usage: flanneld-bench [--peers N] [--rounds N] [--json FILE]");
                std::process::exit(2);
            }
        }
    }
    a
}

/// What must go even when the benchmark panics: the release profile aborts
/// on panic, so Drop guards never run there, but the panic hook does.
#[derive(Default)]
struct Leftovers {
    netns: Vec<String>,
    pids: Vec<u32>,
    dirs: Vec<PathBuf>,
}

static LEFTOVERS: Mutex<Leftovers> = Mutex::new(Leftovers {
    netns: Vec::new(),
    pids: Vec::new(),
    dirs: Vec::new(),
});

fn leftovers() -> std::sync::MutexGuard<'static, Leftovers> {
    LEFTOVERS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kills the processes and removes the namespaces still registered, then
/// reports the panic as usual.
fn clean_up_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let left = std::mem::take(&mut *leftovers());
        for pid in left.pids {
            // SAFETY: kill(2) has no memory effects; the pid is our child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        for name in left.netns {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
        for dir in left.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
        report(info);
    }));
}

/// A named network namespace removed on drop.
struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        let name = format!("flb{tag}{}", std::process::id());
        // A leftover of a run killed before it could clean up.
        if Path::new("/run/netns").join(&name).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
        sh(&["ip", "netns", "add", &name]);
        leftovers().netns.push(name.clone());
        let ns = Ns(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns.ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
        ]);
        ns.ip(&["addr", "add", &format!("{LOCAL}/24"), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["link", "set", "eth0p", "up"]);
        ns
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.0)
    }

    fn ip(&self, args: &[&str]) {
        let mut full = vec!["ip", "-n", &self.0];
        full.extend_from_slice(args);
        sh(&full);
    }

    /// The same `flannel.1` flanneld would create, for both sides.
    fn with_device(self) -> Ns {
        self.ip(&[
            "link",
            "add",
            "flannel.1",
            "type",
            "vxlan",
            "id",
            "1",
            "dev",
            "eth0",
            "local",
            "192.0.2.1",
        ]);
        self.ip(&["link", "set", "flannel.1", "type", "vxlan", "nolearning"]);
        self.ip(&["link", "set", "flannel.1", "mtu", "1450", "up"]);
        self.ip(&["addr", "add", "10.0.0.0/32", "dev", "flannel.1"]);
        self
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        leftovers().netns.retain(|n| *n != self.0);
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run command");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn peers(n: usize) -> Vec<Peer> {
    (0..n)
        .map(|i| Peer {
            subnet: format!("10.{}.{}.0/24", 1 + i / 256, i % 256)
                .parse()
                .unwrap(),
            public_ip: Ipv4Addr::new(198, 18, (i / 250) as u8, (i % 250 + 1) as u8),
            vtep_mac: [2, 0, 0, 0, (i >> 8) as u8, i as u8],
        })
        .collect()
}

fn target(peers: Vec<Peer>, index: u32, dir: &Path) -> Target {
    let subnet = "10.0.0.0/24".parse().unwrap();
    let cluster = "10.0.0.0/8".parse().unwrap();
    Target {
        device: DeviceSpec {
            vni: 1,
            port: 8472,
            link: index,
            local: LOCAL,
            mtu: 1450,
            mac: [2, 0, 0, 0, 0, 1],
            subnet,
        },
        cluster,
        peers,
        subnet_env: SubnetEnv::for_lease(cluster, subnet, 1450, false),
        subnet_file: dir.join("subnet.env"),
    }
}

/// One reconcile pass programming every peer, after the start-up probe
/// for nexthop objects (or with plain routes when `plain`); returns its
/// duration and the route mode used.
fn ours(peers: &[Peer], plain: bool) -> (Duration, RouteMode) {
    let ns = Ns::new("o").with_device();
    let netns = Netns::open(&ns.path()).expect("open netns");
    let mut h = Handle::in_netns(&netns).expect("netlink socket");
    let eth0 = h.link("eth0").unwrap().unwrap().index;
    let t = target(peers.to_vec(), eth0, Path::new("/nonexistent"));
    let mut dp = KernelDatapath::new(h);
    let start = Instant::now();
    let mode = match plain {
        true => RouteMode::Plain,
        false => probe(&mut dp).expect("probe nexthops"),
    };
    let pass = reconcile(&mut dp, &t, mode).expect("reconcile");
    let took = start.elapsed();
    let per_peer = if mode == RouteMode::Nexthop { 4 } else { 3 };
    assert_eq!(
        (pass.ops, pass.failed),
        (peers.len() * per_peer, 0),
        "reconcile programmed everything"
    );
    (took, mode)
}

/// `ip -batch` + `bridge -batch` of the same entries; returns the duration.
fn reference(peers: &[Peer]) -> Duration {
    let ns = Ns::new("r").with_device();
    let (mut ip_batch, mut fdb_batch) = (String::new(), String::new());
    for p in peers {
        let gw = p.subnet.network();
        let mac = format_mac(&p.vtep_mac);
        ip_batch += &format!("neigh replace {gw} lladdr {mac} dev flannel.1 nud permanent\n");
        fdb_batch += &format!(
            "fdb replace {mac} dev flannel.1 dst {} self permanent\n",
            p.public_ip
        );
    }
    for p in peers {
        ip_batch += &format!(
            "route replace {} via {} dev flannel.1 onlink\n",
            p.subnet,
            p.subnet.network()
        );
    }
    let dir = std::env::temp_dir();
    let (ipf, brf) = (
        dir.join(format!("{}.ip", ns.0)),
        dir.join(format!("{}.br", ns.0)),
    );
    std::fs::write(&ipf, ip_batch).unwrap();
    std::fs::write(&brf, fdb_batch).unwrap();
    let start = Instant::now();
    // flannel's order: neighbours, then FDB, then routes; ip -batch runs
    // its lines in order, so neighbours and routes share one process.
    sh(&["bridge", "-n", &ns.0, "-batch", brf.to_str().unwrap()]);
    sh(&["ip", "-n", &ns.0, "-batch", ipf.to_str().unwrap()]);
    let took = start.elapsed();
    let _ = std::fs::remove_file(ipf);
    let _ = std::fs::remove_file(brf);
    took
}

struct Stats {
    median: Duration,
    p95: Duration,
    p99: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Stats {
        median: rank(0.5),
        p95: rank(0.95),
        p99: rank(0.99),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn row(label: &str, s: &Stats) {
    println!(
        "  {:<34} {:>10} {:>10} {:>10}",
        label,
        ms(s.median),
        ms(s.p95),
        ms(s.p99)
    );
}

/// Every sample of the time section, in milliseconds: what `--json` writes.
fn samples_json(mode: RouteMode, times: &[Vec<Duration>; 3]) -> serde_json::Value {
    let ms = |v: &[Duration]| -> Vec<f64> { v.iter().map(|d| d.as_secs_f64() * 1e3).collect() };
    let mode = match mode {
        RouteMode::Nexthop => "nexthop",
        RouteMode::Plain => "plain",
    };
    serde_json::json!({
        "route_mode": mode,
        "flanneld_ms": ms(&times[0]),
        "flanneld_plain_ms": ms(&times[1]),
        "ip_batch_ms": ms(&times[2]),
    })
}

fn time_section(a: &Args) -> serde_json::Value {
    let peers = peers(a.peers);
    let mut times: [Vec<Duration>; 3] = Default::default();
    let mut mode = RouteMode::Plain;
    // One warm-up round of each, then interleaved rounds rotating which
    // side goes first.
    ours(&peers, false);
    ours(&peers, true);
    reference(&peers);
    for round in 0..a.rounds {
        for side in (0..3).map(|i| (i + round) % 3) {
            times[side].push(match side {
                0 => {
                    let (took, m) = ours(&peers, false);
                    mode = m;
                    took
                }
                1 => ours(&peers, true).0,
                _ => reference(&peers),
            });
        }
    }
    let samples = samples_json(mode, &times);
    let [auto, plain, reference] = times.map(stats);
    println!(
        "Programming {} peers (neighbour + FDB + route each), {} rounds:",
        a.peers, a.rounds
    );
    println!("  {:<34} {:>10} {:>10} {:>10}", "", "median", "p95", "p99");
    let label = match mode {
        RouteMode::Nexthop => "flanneld, nexthop routes",
        RouteMode::Plain => "flanneld (no nexthops: plain)",
    };
    row(label, &auto);
    row("flanneld, plain routes (fallback)", &plain);
    row("ip -batch + bridge -batch (plain)", &reference);
    let ratio = |s: &Stats| s.median.as_secs_f64() / reference.median.as_secs_f64();
    println!(
        "  ratio vs ip+bridge (medians): {:.2}x {}, {:.2}x plain   (target <= 1.5x)",
        ratio(&auto),
        if mode == RouteMode::Nexthop {
            "nexthop"
        } else {
            "plain"
        },
        ratio(&plain)
    );
    samples
}

fn main() {
    clean_up_on_panic();
    let a = parse_args();
    let time = time_section(&a);
    println!();
    let memory = memory::section(a.peers);
    if let Some(path) = &a.json {
        let all = serde_json::json!({"peers": a.peers, "rounds": a.rounds, "time": time,
                                     "memory": memory});
        std::fs::write(path, all.to_string()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

mod memory {
    //! flanneld's memory with N peers, against a real etcd.

    use super::*;
    use etcd_client::Client;

    const PORT: u16 = 23_790;

    /// A child killed on drop (or by the panic hook).
    struct Killed(Child);

    impl Killed {
        fn new(child: Child) -> Killed {
            leftovers().pids.push(child.id());
            Killed(child)
        }
    }

    impl Drop for Killed {
        fn drop(&mut self) {
            leftovers().pids.retain(|p| *p != self.0.id());
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn etcd(ns: &Ns, dir: &Path) -> Killed {
        let url = format!("http://127.0.0.1:{PORT}");
        let peer = format!("http://127.0.0.1:{}", PORT + 1);
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.0, "etcd", "--data-dir"])
            .arg(dir.join("etcd"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--log-level",
                "error",
                "--logger",
                "zap",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        Killed::new(child)
    }

    /// Writes the config and N leases from a thread inside the namespace.
    fn fill(ns: &Ns, peers: &[Peer]) {
        let netns = Netns::open(&ns.path()).expect("open netns");
        std::thread::scope(|s| {
            s.spawn(|| {
                let _in = NetnsGuard::enter(&netns).expect("enter netns");
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async {
                    let url = format!("http://127.0.0.1:{PORT}");
                    let deadline = Instant::now() + Duration::from_secs(20);
                    let mut c = loop {
                        if let Ok(mut c) = Client::connect([url.as_str()], None).await {
                            if c.status().await.is_ok() {
                                break c;
                            }
                        }
                        assert!(Instant::now() < deadline, "etcd did not start");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    };
                    let cfg = r#"{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}"#;
                    c.put("/coreos.com/network/config", cfg, None).await.unwrap();
                    for p in peers {
                        let key = format!("/coreos.com/network/subnets/{}-24", p.subnet.network());
                        let value = format!(
                            r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
                            p.public_ip,
                            format_mac(&p.vtep_mac)
                        );
                        c.put(key, value, None).await.unwrap();
                    }
                });
            });
        });
    }

    fn status_kb(pid: u32, field: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Prints flanneld's memory with `n` peers; returns the figures (kB
    /// as /proc reports them) for `--json`.
    pub fn section(n: usize) -> serde_json::Value {
        let ns = Ns::new("m");
        let dir = std::env::temp_dir().join(format!("flb-mem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        leftovers().dirs.push(dir.clone());
        let _etcd = etcd(&ns, &dir);
        let peers = peers(n);
        fill(&ns, &peers);
        let bin = std::env::current_exe().unwrap().with_file_name("flanneld");
        let start = Instant::now();
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.0])
            .arg(&bin)
            .args([
                "--etcd-endpoints",
                &format!("http://127.0.0.1:{PORT}"),
                "--iface",
                "eth0",
            ])
            .arg("--subnet-file")
            .arg(dir.join("subnet.env"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start flanneld");
        let flanneld = Killed::new(child);
        let netns = Netns::open(&ns.path()).unwrap();
        let mut h = Handle::in_netns(&netns).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while h
            .routes(false)
            .unwrap()
            .iter()
            .filter(|r| r.gateway.is_some() && r.onlink)
            .count()
            < n
        {
            assert!(
                Instant::now() < deadline,
                "flanneld did not program {n} peers"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let programmed = start.elapsed();
        std::thread::sleep(Duration::from_secs(2));
        let pid = flanneld.0.id();
        let (rss, hwm) = (status_kb(pid, "VmRSS:"), status_kb(pid, "VmHWM:"));
        println!("flanneld with {n} peer leases in a real etcd:");
        println!("  start to {n} routes programmed: {}", ms(programmed));
        let (anon, file) = (status_kb(pid, "RssAnon:"), status_kb(pid, "RssFile:"));
        let mib = |kb: u64| kb as f64 / 1024.0;
        println!(
            "  VmRSS {:.2} MiB, VmHWM {:.2} MiB   (target <= 8 MiB)",
            mib(rss),
            mib(hwm)
        );
        println!(
            "  of which anonymous {:.2} MiB, file-backed (binary, libraries) {:.2} MiB",
            mib(anon),
            mib(file)
        );
        drop(flanneld);
        let _ = std::fs::remove_dir_all(&dir);
        serde_json::json!({
            "programmed_ms": programmed.as_secs_f64() * 1e3,
            "vm_rss_kb": rss, "vm_hwm_kb": hwm, "rss_anon_kb": anon, "rss_file_kb": file,
        })
    }
}
