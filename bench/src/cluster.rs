//! Measurements on a cluster of the harness (nodes as namespaces, real
//! etcd and flanneld): how fast a joining node is programmed on the others,
//! and pod-to-pod throughput across nodes next to the raw underlay.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use harness::{Cluster, ClusterOpts, Node};
use serde_json::{json, Value};

use crate::plot::{bars, cdfs, CdfPanel, Series};
use crate::report::{Section, Table};
use crate::stats::{ms, quantiles};
use crate::Opts;

/// The backends measured pod to pod. flanneld has VXLAN only so far; when
/// host-gw or VXLAN `DirectRouting` exist, add them here with their
/// `Backend` config, and the report gains a bar and a row for each.
fn backends() -> Vec<(&'static str, Option<Value>)> {
    vec![
        ("vxlan", Some(json!({"Type": "vxlan", "VNI": 1}))),
        ("host-gw", None),
        ("vxlan + DirectRouting", None),
    ]
}

/// The join-latency section, then the throughput section.
pub fn run(o: &Opts) -> Result<(Section, Section)> {
    let (trials, seconds) = if o.quick { (5, 1) } else { (60, 10) };
    let mut tp = Vec::new();
    let mut join = None;
    for (name, backend) in backends() {
        let Some(backend) = backend else {
            tp.push((name, None));
            continue;
        };
        eprintln!("bench-report: 3-node cluster, backend {name}");
        let mut cluster = Cluster::new(3, ClusterOpts::default().backend(backend));
        if join.is_none() {
            join = Some(join_latency(&cluster, trials)?);
        }
        let underlay = iperf_underlay(&cluster, seconds)?;
        let pods = iperf_pods(&mut cluster, seconds)?;
        tp.push((name, Some((underlay, pods))));
    }
    let join = join.context("no backend measured")?;
    Ok((
        join_section(o, &join, trials)?,
        throughput_section(o, &tp, seconds)?,
    ))
}

/// `ip -o monitor route` in a node, each line stamped when read.
struct RouteMonitor {
    child: Child,
    lines: Receiver<(Instant, String)>,
}

impl RouteMonitor {
    fn start(node: &Node) -> Result<RouteMonitor> {
        let mut child = Command::new("ip")
            .args(["-n", node.netns().name(), "-o", "monitor", "route"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("ip monitor")?;
        let out = child.stdout.take().context("monitor stdout")?;
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        let monitor = RouteMonitor { child, lines };
        monitor.prove_subscribed(node)?;
        Ok(monitor)
    }

    /// A route of our own, added and deleted, must be reported: then the
    /// monitor is listening.
    fn prove_subscribed(&self, node: &Node) -> Result<()> {
        let canary = "198.51.100.77";
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            node.netns().ip(&format!("route add blackhole {canary}/32"));
            node.netns().ip(&format!("route del blackhole {canary}/32"));
            if self
                .wait_for(|l| l.contains(canary), Duration::from_millis(300))
                .is_some()
            {
                // Drain the rest of the canary's lines.
                while self.lines.recv_timeout(Duration::from_millis(50)).is_ok() {}
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("ip monitor in {} reports nothing", node.name());
            }
        }
    }

    /// The time the first line satisfying `f` was read, within `timeout`.
    fn wait_for(&self, f: impl Fn(&str) -> bool, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok((at, line)) if f(&line) => return Some(at),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }
}

impl Drop for RouteMonitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A lease as a joining node writes it, for subnet `10.244.<third>.0/24`.
fn lease(third: u8) -> (String, String) {
    let key = format!("/coreos.com/network/subnets/10.244.{third}.0-24");
    let value = json!({
        "PublicIP": Ipv4Addr::new(192, 0, 2, 100 + third % 100).to_string(),
        "PublicIPv6": null, "BackendType": "vxlan",
        "BackendData": {"VNI": 1, "VtepMAC": format!("02:fe:00:00:00:{third:02x}")},
    });
    (key, value.to_string())
}

/// Milliseconds from just before each new lease's put to its route being
/// programmed, per node.
fn join_latency(cluster: &Cluster, trials: usize) -> Result<Vec<f64>> {
    let monitors: Vec<RouteMonitor> = cluster
        .nodes()
        .iter()
        .map(RouteMonitor::start)
        .collect::<Result<_>>()?;
    let taken: Vec<String> = cluster.nodes().iter().map(|n| n.subnet()).collect();
    let thirds = (120u8..=250).filter(|t| !taken.contains(&format!("10.244.{t}.0/24")));
    let mut samples = Vec::new();
    for third in thirds.take(trials) {
        let (key, value) = lease(third);
        let subnet = format!("10.244.{third}.0/24 ");
        let etcd = cluster.etcd();
        let id = etcd
            .grant(3600)
            .map_err(|e| anyhow::anyhow!("grant: {e:?}"))?;
        let t0 = Instant::now();
        etcd.try_put(&key, &value, id)
            .map_err(|e| anyhow::anyhow!("put: {e:?}"))?;
        for (node, m) in cluster.nodes().iter().zip(&monitors) {
            let at = m
                .wait_for(|l| l.starts_with(&subnet), Duration::from_secs(30))
                .with_context(|| format!("{} never programmed {subnet}", node.name()))?;
            samples.push(at.duration_since(t0).as_secs_f64() * 1e3);
        }
        etcd.delete(&key);
        for m in &monitors {
            let gone = format!("Deleted {subnet}");
            m.wait_for(|l| l.starts_with(&gone), Duration::from_secs(30))
                .context("peer route not removed after its lease")?;
        }
    }
    Ok(samples)
}

fn join_section(o: &Opts, samples: &[f64], trials: usize) -> Result<Section> {
    let mut s = Section::new(
        "Join latency",
        &format!(
            "A 3-node cluster of the harness (real etcd and flanneld in node namespaces). \
             {trials} times, a lease is written into etcd as a joining node writes it; the \
             time runs from just before the put (so it includes the put's round trip) to the \
             moment each of the three nodes' `ip monitor route` reports the new peer's route, \
             the last of its three entries (neighbour, FDB, route). Then the lease is deleted \
             and its removal awaited. One sample per node and join."
        ),
    );
    let q = quantiles(samples);
    let mut table = Table::new(&["measurement", "p50", "p95", "p99", "max", "samples"]);
    let max = samples.iter().copied().fold(0.0, f64::max);
    table.row(vec![
        "join → programmed on a peer".to_string(),
        ms(q.p50),
        ms(q.p95),
        ms(q.p99),
        ms(max),
        samples.len().to_string(),
    ]);
    s.tables.push(table);
    let file = "join_latency_cdf.svg";
    let panel = CdfPanel {
        title: "Lease in etcd → peer programmed (3 nodes)".to_string(),
        x_label: "ms (log scale)".to_string(),
        series: vec![Series::new("flanneld", samples)],
    };
    cdfs(&o.out.join(file), &[panel])?;
    s.plots.push((
        file.to_string(),
        "Join-to-programmed latency, CDF".to_string(),
    ));
    s.data = json!({"join_ms": samples});
    Ok(s)
}

/// `iperf3 -J` client result: received bits per second.
fn iperf_client(cmd: &mut Command, server: &str, port: u16, seconds: u32) -> Result<f64> {
    let out = cmd
        .args([
            "-c",
            server,
            "-p",
            &port.to_string(),
            "-t",
            &seconds.to_string(),
            "-J",
        ])
        .output()
        .context("iperf3 client")?;
    let report: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3 output: {}", String::from_utf8_lossy(&out.stdout)))?;
    match report["end"]["sum_received"]["bits_per_second"].as_f64() {
        Some(bps) if out.status.success() => Ok(bps),
        _ => bail!("iperf3 to {server}:{port} failed: {}", report["error"]),
    }
}

/// Runs a one-off iperf3 server with `server`, then the client with
/// `client` (retried until the server listens); Gbit/s.
fn iperf(
    mut server: Command,
    mut client: impl FnMut() -> Command,
    ip: &str,
    port: u16,
    seconds: u32,
) -> Result<f64> {
    let mut srv = server
        .args(["-s", "-1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("iperf3 server")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let result = loop {
        match iperf_client(&mut client(), ip, port, seconds) {
            Ok(bps) => break Ok(bps / 1e9),
            Err(e) if Instant::now() > deadline => break Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let _ = srv.kill();
    let _ = srv.wait();
    result
}

/// TCP between two nodes' own addresses on the underlay bridge.
fn iperf_underlay(cluster: &Cluster, seconds: u32) -> Result<f64> {
    let (a, b) = (cluster.node(0), cluster.node(1));
    let ip = a.ip().to_string();
    iperf(
        a.netns().cmd("iperf3"),
        || b.netns().cmd("iperf3"),
        &ip,
        5202,
        seconds,
    )
}

/// TCP from a pod on node 2 to a pod on node 1, across the overlay.
fn iperf_pods(cluster: &mut Cluster, seconds: u32) -> Result<f64> {
    let server_ip = cluster.node_mut(0).add_pod("iperf-s").ip().to_string();
    cluster.node_mut(1).add_pod("iperf-c");
    let (a, b) = (cluster.node(0), cluster.node(1));
    let (server, client) = (a.pod("iperf-s"), b.pod("iperf-c"));
    iperf(
        server.cmd("iperf3"),
        || client.cmd("iperf3"),
        &server_ip,
        5201,
        seconds,
    )
}

type Throughput<'a> = Vec<(&'a str, Option<(f64, f64)>)>;

fn throughput_section(o: &Opts, tp: &Throughput, seconds: u32) -> Result<Section> {
    let mut s = Section::new(
        "Pod-to-pod throughput",
        &format!(
            "iperf3 TCP for {seconds} s, one stream, on the same cluster: from a pod on node 2 \
             to a pod on node 1 (through both nodes' `cni0`, VXLAN over the underlay), and \
             between the two nodes' own addresses on the underlay bridge (the ceiling). All of \
             it is veths and a bridge on one machine, so the numbers measure the per-packet \
             cost of each path on this CPU, not a NIC."
        ),
    );
    let (table, chart) = throughput_rows(tp);
    s.tables.push(table);
    let file = "throughput.svg";
    bars(
        &o.out.join(file),
        "TCP throughput across nodes",
        "Gbit/s",
        &chart,
    )?;
    s.plots.push((
        file.to_string(),
        "Pod-to-pod throughput next to the underlay".to_string(),
    ));
    s.data = json!(tp
        .iter()
        .map(|(name, r)| json!({"backend": name,
        "underlay_gbps": r.map(|x| x.0), "pods_gbps": r.map(|x| x.1)}))
        .collect::<Vec<_>>());
    Ok(s)
}

/// The table's rows and the chart's bars: the underlay and the pods per
/// measured backend, a "not measured" row for the others.
fn throughput_rows(tp: &Throughput) -> (Table, Vec<(String, f64)>) {
    let mut table = Table::new(&["path", "Gbit/s", "of the underlay"]);
    let mut chart = Vec::new();
    for (name, result) in tp {
        match result {
            Some((underlay, pods)) => {
                table.row(vec![
                    format!("underlay, node ↔ node ({name} cluster)"),
                    format!("{underlay:.2}"),
                    "100 %".to_string(),
                ]);
                table.row(vec![
                    format!("pod ↔ pod ({name})"),
                    format!("{pods:.2}"),
                    format!("{:.0} %", pods / underlay * 100.0),
                ]);
                chart.push((format!("underlay ({name} run)"), *underlay));
                chart.push((format!("pod ↔ pod, {name}"), *pods));
            }
            None => table.row(vec![
                format!("pod ↔ pod ({name})"),
                "not measured: backend not in flanneld yet".to_string(),
                "–".to_string(),
            ]),
        }
    }
    (table, chart)
}
