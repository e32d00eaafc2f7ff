//! The demo: three nodes with two pods each, a table of who got what, and the
//! full ping matrix. `--keep` leaves the cluster up; `--down` removes a kept
//! one.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use harness::{ping_matrix, teardown, Cluster, ClusterOpts, KeptCluster, PingResult, KEPT_STATE};

const NODES: usize = 3;
const PODS_PER_NODE: usize = 2;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => up(false),
        ["--keep"] => up(true),
        ["--down"] => down(),
        _ => Err("usage: demo [--keep | --down]".to_string()),
    };
    if let Err(e) = result {
        eprintln!("demo: {e}");
        std::process::exit(1);
    }
}

/// Between steps, an interrupt unwinds through the cluster's Drop, which
/// tears everything down.
fn check_interrupt() -> Result<(), String> {
    match INTERRUPTED.load(Ordering::SeqCst) {
        true => Err("interrupted; everything was removed".to_string()),
        false => Ok(()),
    }
}

fn up(keep: bool) -> Result<(), String> {
    if keep && Path::new(KEPT_STATE).exists() {
        return Err(format!(
            "a kept demo cluster exists ({KEPT_STATE}); run ./demo.sh --down first"
        ));
    }
    catch_signals();
    if keep {
        harness::let_children_outlive_us();
    }
    println!("starting etcd and flanneld on {NODES} nodes ...");
    let mut cluster = Cluster::new(NODES, ClusterOpts::default());
    check_interrupt()?;
    add_pods(&mut cluster);
    check_interrupt()?;
    print_table(&cluster);
    let matrix = ping_matrix(&cluster.pods());
    print_matrix(&cluster, &matrix);
    check_interrupt()?;
    let failed = matrix.iter().filter(|r| !r.ok).count();
    if keep {
        print_keep_help(&cluster);
        let kept = cluster.keep();
        kept.save(Path::new(KEPT_STATE))
            .map_err(|e| format!("cannot write {KEPT_STATE}: {e}"))?;
    } else {
        println!("tearing down ...");
        drop(cluster);
    }
    match failed {
        0 => Ok(()),
        n => Err(format!("{n} of {} pings unanswered", matrix.len())),
    }
}

fn catch_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// `pod1a`, `pod1b` on node1, `pod2a`... on node2, and so on.
fn add_pods(cluster: &mut Cluster) {
    for i in 0..NODES {
        for p in ["a", "b", "c", "d"].iter().take(PODS_PER_NODE) {
            cluster.node_mut(i).add_pod(&format!("pod{}{p}", i + 1));
        }
    }
}

fn print_table(c: &Cluster) {
    println!(
        "\n{:<7}{:<13}{:<16}{:<8}{:<13}NETNS",
        "NODE", "PUBLIC IP", "SUBNET", "POD", "POD IP"
    );
    for node in c.nodes() {
        for (i, pod) in node.pods().iter().enumerate() {
            let (name, ip, subnet) = match i {
                0 => (
                    node.name().to_string(),
                    node.ip().to_string(),
                    node.subnet(),
                ),
                _ => Default::default(),
            };
            println!(
                "{name:<7}{ip:<13}{subnet:<16}{:<8}{:<13}{}",
                pod.name(),
                pod.ip().to_string(),
                pod.netns().name()
            );
        }
    }
}

fn print_matrix(c: &Cluster, matrix: &[PingResult]) {
    let pods = c.pods();
    let header: String = pods.iter().map(|p| format!("{:<7}", p.name())).collect();
    println!(
        "\nping matrix (row pings column):\n{:<8}{}",
        "",
        header.trim_end()
    );
    for src in &pods {
        let cells: String = pods
            .iter()
            .map(|dst| {
                let cell = matrix
                    .iter()
                    .find(|r| r.from == src.name() && r.to == dst.name())
                    .map_or("-", |r| if r.ok { "ok" } else { "FAIL" });
                format!("{cell:<7}")
            })
            .collect();
        println!("{:<8}{}", src.name(), cells.trim_end());
    }
    let ok = matrix.iter().filter(|r| r.ok).count();
    println!("{ok}/{} pings answered\n", matrix.len());
}

fn print_keep_help(c: &Cluster) {
    let pods = c.pods();
    let (first, last) = (pods[0], pods[pods.len() - 1]);
    let node = c.node(0);
    println!("The cluster stays up.");
    println!(
        "  enter a pod:     ip netns exec {} sh",
        first.netns().name()
    );
    println!(
        "  ping across:     ip netns exec {} ping {}",
        first.netns().name(),
        last.ip()
    );
    println!(
        "  look at a node:  ip netns exec {} ip route",
        node.netns().name()
    );
    let flanneld = harness::bin_path("flanneld");
    let ns = node.netns().name();
    println!(
        "  flanneld status: ip netns exec {ns} {} status --etcd-endpoints {} \\\n      --subnet-file {} --ipam-dir {}",
        flanneld.display(),
        c.etcd().endpoint(),
        node.subnet_file().display(),
        node.dir().join("ipam").display()
    );
    println!(
        "  flanneld log:    {}",
        node.dir().join("flanneld.log").display()
    );
    println!("  tear down:       ./demo.sh --down");
}

fn down() -> Result<(), String> {
    let kept = match KeptCluster::load(Path::new(KEPT_STATE)) {
        Ok(kept) => kept,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("no kept demo cluster ({KEPT_STATE} does not exist)");
            return Ok(());
        }
        Err(e) => return Err(format!("cannot read {KEPT_STATE}: {e}")),
    };
    teardown(&kept);
    std::fs::remove_file(KEPT_STATE).map_err(|e| format!("cannot remove {KEPT_STATE}: {e}"))?;
    println!(
        "removed {} namespaces and their processes",
        kept.netns.len()
    );
    Ok(())
}
