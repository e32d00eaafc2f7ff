//! CNI ADD and DEL latency: `cni-bench` (this plugin against the reference
//! bridge + host-local, interleaved), every sample plotted.

use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::plot::{cdfs, CdfPanel, Series};
use crate::report::{Section, Table};
use crate::stats::quantiles;
use crate::Opts;

pub fn run(o: &Opts) -> Result<Section> {
    let iterations = if o.quick { 20 } else { 300 };
    let data = bench(o, iterations)?;
    let mut s = Section::new(
        "CNI ADD and DEL latency",
        &format!(
            "`cni-bench --iterations {iterations}`: each plugin is executed the way a runtime \
             does (kubelet's environment, the config on stdin) inside its own node namespace, \
             ADD then DEL of one pod, the two plugins interleaved. Ours is `flannel` (one exec); \
             the reference is what flannel's plugin delegates to, Debian's `/usr/lib/cni/bridge` \
             with `host-local`, with the same subnet and options. Wall time of the exec, and \
             CPU time (user + system of the plugin and the children it waited for)."
        ),
    );
    s.tables.push(table(&data));
    let wall = |name: &str| series(&data, name, "wall_ms");
    let (oa, ra, od, rd) = (
        wall("ours_add"),
        wall("ref_add"),
        wall("ours_del"),
        wall("ref_del"),
    );
    let file = "cni_latency.svg";
    let panels = [panel("CNI ADD", &oa, &ra), panel("CNI DEL", &od, &rd)];
    cdfs(&o.out.join(file), &panels)?;
    s.plots
        .push((file.to_string(), "CNI ADD and DEL latency, CDF".to_string()));
    s.data = data;
    Ok(s)
}

/// Runs cni-bench; returns its `--json` output.
fn bench(o: &Opts, iterations: usize) -> Result<Value> {
    eprintln!("bench-report: cni-bench, {iterations} iterations");
    let json = o.scratch.join("cni-bench.json");
    let out = Command::new(harness::bin_path("cni-bench"))
        .args(["--iterations", &iterations.to_string(), "--json"])
        .arg(&json)
        .output()
        .context("running cni-bench")?;
    if !out.status.success() {
        bail!("cni-bench failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&std::fs::read(&json)?)?)
}

/// Samples `what` (`wall_ms`, `cpu_ms`) of series `name` (`ours_add`, ...).
fn series(data: &Value, name: &str, what: &str) -> Vec<f64> {
    let v = data["series"][name][what]
        .as_array()
        .cloned()
        .unwrap_or_default();
    v.iter().filter_map(Value::as_f64).collect()
}

fn table(data: &Value) -> Table {
    let mut table = Table::versus_reference();
    for (verb, what, label) in [
        ("add", "wall_ms", "CNI ADD (wall)"),
        ("del", "wall_ms", "CNI DEL (wall)"),
        ("add", "cpu_ms", "CNI ADD (CPU)"),
        ("del", "cpu_ms", "CNI DEL (CPU)"),
    ] {
        let ours = quantiles(&series(data, &format!("ours_{verb}"), what));
        let reference = quantiles(&series(data, &format!("ref_{verb}"), what));
        table.compare(label, &ours, &reference);
    }
    table
}

fn panel<'a>(title: &str, ours: &'a [f64], reference: &'a [f64]) -> CdfPanel<'a> {
    CdfPanel {
        title: title.to_string(),
        x_label: "wall time per call (ms, log scale)".to_string(),
        series: vec![
            Series::new("ours (flannel)", ours),
            Series::new("reference (bridge + host-local)", reference),
        ],
    }
}
