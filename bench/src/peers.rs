//! Peer programming time and flanneld's memory against the peer count:
//! `flanneld-bench` once per count.

use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::plot::{lines_loglog, lines_logx, Series};
use crate::report::{Section, Table};
use crate::stats::{ms, quantiles, ratio};
use crate::Opts;

/// Peer counts and rounds per count.
fn plan(quick: bool) -> Vec<(usize, usize)> {
    match quick {
        true => vec![(100, 3), (300, 3)],
        false => vec![(100, 15), (300, 15), (1000, 10), (3000, 7), (10_000, 5)],
    }
}

/// One run of flanneld-bench: its JSON.
fn bench(o: &Opts, peers: usize, rounds: usize) -> Result<Value> {
    eprintln!("bench-report: flanneld-bench, {peers} peers, {rounds} rounds");
    let json = o.scratch.join(format!("flanneld-bench-{peers}.json"));
    let out = Command::new(harness::bin_path("flanneld-bench"))
        .args([
            "--peers",
            &peers.to_string(),
            "--rounds",
            &rounds.to_string(),
            "--json",
        ])
        .arg(&json)
        .output()
        .context("running flanneld-bench")?;
    if !out.status.success() {
        bail!(
            "flanneld-bench failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&std::fs::read(&json)?)?)
}

fn samples(run: &Value, key: &str) -> Vec<f64> {
    let v = run["time"][key].as_array().cloned().unwrap_or_default();
    v.iter().filter_map(Value::as_f64).collect()
}

fn mib(run: &Value, key: &str) -> f64 {
    run["memory"][key].as_f64().unwrap_or(f64::NAN) / 1024.0
}

/// The two sections: programming time, and memory.
pub fn run(o: &Opts) -> Result<(Section, Section)> {
    let runs: Vec<Value> = plan(o.quick)
        .into_iter()
        .map(|(peers, rounds)| bench(o, peers, rounds))
        .collect::<Result<_>>()?;
    Ok((time_section(o, &runs)?, memory_section(o, &runs)?))
}

fn time_section(o: &Opts, runs: &[Value]) -> Result<Section> {
    let mode = runs
        .first()
        .map_or("?", |r| r["time"]["route_mode"].as_str().unwrap_or("?"));
    let mut s = Section::new(
        "Peer programming time",
        &format!(
            "`flanneld-bench --peers N`: one reconcile pass of flanneld's datapath programming \
             N peers (neighbour + FDB entry + route each) into a fresh `flannel.1`, against the \
             same entries through `ip -batch` + `bridge -batch` (flannel's plain `onlink` \
             routes, one process each), and flanneld forced to plain routes (its fallback for \
             kernels without nexthop objects). Rounds interleaved. Route mode this kernel gave \
             flanneld: **{mode}**."
        ),
    );
    let (table, lines) = time_table(runs);
    s.tables.push(table);
    let [ours, plain, reference] = lines;
    let file = "peer_programming.svg";
    lines_loglog(
        &o.out.join(file),
        "Programming N peers (median of rounds)",
        ("peers", "time (ms)"),
        &[
            Series::new(&format!("flanneld ({mode} routes)"), ours),
            Series::new("ip -batch + bridge -batch (plain routes)", reference),
            Series::new("flanneld, plain routes (fallback)", plain),
        ],
    )?;
    s.plots.push((
        file.to_string(),
        "Peer programming time against peer count".to_string(),
    ));
    s.data = json!(runs
        .iter()
        .map(|r| json!({"peers": r["peers"], "rounds": r["rounds"],
                                                "time": r["time"]}))
        .collect::<Vec<_>>());
    Ok(s)
}

/// The table of the programming times, and each side's median per count
/// (ours, plain routes, ip -batch) for the plot.
fn time_table(runs: &[Value]) -> (Table, [Vec<(f64, f64)>; 3]) {
    let mut table = Table::new(&[
        "peers",
        "flanneld p50",
        "flanneld p95",
        "flanneld p99",
        "plain routes p50",
        "ip -batch p50",
        "ip -batch p95",
        "ip -batch p99",
        "flanneld / ip -batch (p50)",
    ]);
    let mut lines = [Vec::new(), Vec::new(), Vec::new()];
    for run in runs {
        let peers = run["peers"].as_f64().unwrap_or(0.0);
        let ours = quantiles(&samples(run, "flanneld_ms"));
        let plain = quantiles(&samples(run, "flanneld_plain_ms"));
        let reference = quantiles(&samples(run, "ip_batch_ms"));
        table.row(vec![
            format!("{peers} peers"),
            ms(ours.p50),
            ms(ours.p95),
            ms(ours.p99),
            ms(plain.p50),
            ms(reference.p50),
            ms(reference.p95),
            ms(reference.p99),
            ratio(ours.p50, reference.p50),
        ]);
        for (line, q) in lines.iter_mut().zip([ours, plain, reference]) {
            line.push((peers, q.p50));
        }
    }
    (table, lines)
}

fn memory_section(o: &Opts, runs: &[Value]) -> Result<Section> {
    let mut s = Section::new(
        "flanneld memory",
        "`flanneld-bench --peers N`, second part: a real flanneld in a namespace against a \
         real etcd holding N peer leases; `VmRSS` and `VmHWM` (peak) from `/proc` once all N \
         routes are programmed, and how long that took from flanneld's start.",
    );
    let mut table = Table::new(&[
        "peers",
        "flanneld RSS",
        "flanneld peak RSS (VmHWM)",
        "of which anonymous",
        "start → N routes programmed",
    ]);
    let (mut rss, mut hwm) = (Vec::new(), Vec::new());
    for run in runs {
        let peers = run["peers"].as_f64().unwrap_or(0.0);
        table.row(vec![
            format!("flanneld RSS, {peers} peers"),
            format!("{:.2} MiB", mib(run, "vm_rss_kb")),
            format!("{:.2} MiB", mib(run, "vm_hwm_kb")),
            format!("{:.2} MiB", mib(run, "rss_anon_kb")),
            ms(run["memory"]["programmed_ms"].as_f64().unwrap_or(f64::NAN)),
        ]);
        rss.push((peers, mib(run, "vm_rss_kb")));
        hwm.push((peers, mib(run, "vm_hwm_kb")));
    }
    s.tables.push(table);
    let file = "flanneld_rss.svg";
    lines_logx(
        &o.out.join(file),
        "flanneld memory with N peer leases",
        ("peers", "MiB"),
        &[Series::new("VmRSS", rss), Series::new("VmHWM (peak)", hwm)],
    )?;
    s.plots.push((
        file.to_string(),
        "flanneld RSS against peer count".to_string(),
    ));
    s.data = json!(runs
        .iter()
        .map(|r| json!({"peers": r["peers"], "memory": r["memory"]}))
        .collect::<Vec<_>>());
    Ok(s)
}
