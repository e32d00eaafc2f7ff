//! `bench-report`: runs the workspace's benchmarks and writes a report.
//!
//! ```text
//! cargo build --release --bins
//! sudo target/release/bench-report --out DIR [--quick]
//! ```
//!
//! DIR gets `summary.md` (medians, p95/p99 and ratios against the reference
//! measured in the same run), one SVG per chart, and `data.json` with every
//! raw sample. Sections: CNI ADD/DEL latency (`cni-bench`), peer
//! programming time and flanneld's memory against the peer count
//! (`flanneld-bench`), join-to-programmed latency on a 3-node cluster and
//! pod-to-pod throughput next to the underlay (the test harness), and pod
//! start time through containerd's CRI. `--quick` runs each with small
//! counts (a smoke test, about a minute). Needs root, like the tests:
//! everything runs inside network namespaces it creates and removes.

mod cluster;
mod cni;
mod peers;
mod plot;
mod pod_start;
mod report;
mod stats;

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// What the sections share.
pub struct Opts {
    /// The report directory.
    pub out: PathBuf,
    /// Small counts, few iterations.
    pub quick: bool,
    /// Scratch files of the run (the benchmark binaries' JSON).
    pub scratch: PathBuf,
}

fn usage() -> ! {
    eprintln!("usage: bench-report --out DIR [--quick]");
    std::process::exit(2);
}

fn parse_args() -> (PathBuf, bool) {
    let (mut out, mut quick) = (None, false);
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--out" => out = Some(PathBuf::from(it.next().unwrap_or_else(|| usage()))),
            "--quick" => quick = true,
            _ => usage(),
        }
    }
    (out.unwrap_or_else(|| usage()), quick)
}

fn main() -> Result<()> {
    let (out, quick) = parse_args();
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench-report needs root: it creates network namespaces, etcd, containerd");
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let scratch = harness::TempDir::new("fl-proc");
    let o = Opts {
        out,
        quick,
        scratch: scratch.path().to_path_buf(),
    };
    let start = Instant::now();
    let mut sections = vec![cni::run(&o)?];
    let (time, memory) = peers::run(&o)?;
    sections.extend([time, memory]);
    let (join, throughput) = cluster::run(&o)?;
    sections.extend([join, throughput]);
    sections.push(pod_start::run(&o)?);
    let header = header(&o, start.elapsed().as_secs());
    report::write(&o.out, &header, &sections)?;
    eprintln!("bench-report: wrote {}", o.out.join("summary.md").display());
    Ok(())
}

/// Title, the command, and the machine the numbers come from.
fn header(o: &Opts, seconds: u64) -> String {
    let cmd = match o.quick {
        true => "bench-report --out DIR --quick",
        false => "bench-report --out DIR",
    };
    let first_line = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .map(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .unwrap_or_default()
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "# Benchmark report\n\n\
         Made by `sudo target/release/{cmd}` (release build) in {seconds} s{quick}.\n\n\
         | machine | |\n| --- | --- |\n\
         | CPU | {cpu}, {cores} cores |\n\
         | kernel | {kernel} |\n\
         | containerd | {containerd} |\n\
         | reference plugins | Debian `containernetworking-plugins` in /usr/lib/cni |\n",
        quick = if o.quick {
            " (quick: small counts, a smoke test, not figures to quote)"
        } else {
            ""
        },
        kernel = first_line("uname", &["-r"]),
        containerd = first_line("containerd", &["--version"]),
    )
}
