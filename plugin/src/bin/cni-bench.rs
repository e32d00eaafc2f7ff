//! `cni-bench`: ADD+DEL latency and CPU of this plugin against the
//! reference bridge + host-local, side by side, interleaved, in one run.
//!
//! ```text
//! cargo run --release -p flannel-cni --bin cni-bench -- [--iterations N] [--json FILE]
//! ```
//!
//! Run as root. It creates two identical node namespaces (one per plugin)
//! and a pod namespace for each, runs N rounds of ADD then DEL of both
//! plugins (alternating which goes first), and prints p50/p95/p99 of wall
//! time and CPU time per call and the p50 ratios. CPU time is the child's
//! rusage from `wait4`, which includes the descendants it waited for (the
//! reference bridge runs host-local as a child). Each plugin is exec'ed
//! directly inside its node namespace (`setns` before `exec`), so no
//! wrapper process is measured. Everything it creates is removed at exit,
//! on failure too: failures are returned up to `main`, not panics (release
//! binaries abort on panic, skipping the guards that clean up).
//! `--json FILE` also writes every sample (milliseconds) for plotting.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

const REFERENCE: &str = "/usr/lib/cni/bridge";
const SUBNET_ENV: &str =
    "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

/// A named network namespace (`ip netns`), deleted on drop.
struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Result<Ns, String> {
        let name = format!("cnib-{tag}-{}", std::process::id());
        let ok = Command::new("ip").args(["netns", "add", &name]).status();
        match ok {
            Ok(s) if s.success() => Ok(Ns(name)),
            _ => Err(format!("cannot create netns {name} (root needed)")),
        }
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.0)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A temp directory, removed on drop.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One side of the comparison: a plugin, its node, its pod, its config.
struct Side {
    label: &'static str,
    program: PathBuf,
    node: Ns,
    pod: Ns,
    conf: String,
}

/// Wall and CPU time of one call.
struct Sample {
    wall: Duration,
    cpu: Duration,
}

impl Side {
    /// The plugin's command: kubelet's environment, exec'ed inside the node.
    fn command(&self, node: &std::fs::File, command: &str, id: &str) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", self.pod.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAME={id}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let fd = node.as_raw_fd();
        // SAFETY: only setns (async-signal-safe) runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || match libc::setns(fd, libc::CLONE_NEWNET) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            });
        }
        cmd
    }

    // The child is reaped by `wait4` (for its rusage), not by `Child::wait`.
    #[allow(clippy::zombie_processes)]
    fn call(&self, command: &str, id: &str) -> Result<Sample, String> {
        let what = |e: std::io::Error| format!("{} {command}: {e}", self.label);
        let node = std::fs::File::open(self.node.path()).map_err(what)?;
        let mut cmd = self.command(&node, command, id);
        let start = Instant::now();
        let mut child = cmd.spawn().map_err(what)?;
        let mut out = String::new();
        // Written and read before reaping, so the child never blocks on a
        // pipe; the child is reaped whatever happens to them.
        let io = (child.stdin.take())
            .map_or(Ok(()), |mut pipe| pipe.write_all(self.conf.as_bytes()))
            .and_then(|_| {
                child
                    .stdout
                    .take()
                    .map_or(Ok(0), |mut o| o.read_to_string(&mut out))
            });
        let (status, cpu) = wait4(child.id() as i32)?;
        let wall = start.elapsed();
        io.map_err(what)?;
        if status != 0 {
            let mut err = String::new();
            let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut err));
            return Err(format!(
                "{} {command} failed ({status}): {out} {err}",
                self.label
            ));
        }
        Ok(Sample { wall, cpu })
    }
}

/// Reaps `pid`; returns its exit status and user+system CPU time.
fn wait4(pid: i32) -> Result<(i32, Duration), String> {
    let mut status = 0;
    // SAFETY: rusage is plain data, fully written by wait4.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    if r != pid {
        return Err(format!("wait4: {}", std::io::Error::last_os_error()));
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok((status, tv(ru.ru_utime) + tv(ru.ru_stime)))
}

fn sides(dir: &Path, ours: PathBuf) -> Result<(Side, Side), String> {
    let env = dir.join("subnet.env");
    std::fs::write(&env, SUBNET_ENV).map_err(|e| format!("{}: {e}", env.display()))?;
    let our_conf = serde_json::json!({
        "cniVersion": "0.3.1", "name": "cbr0", "type": "flannel",
        "subnetFile": dir.join("subnet.env"), "dataDir": dir.join("flannel"),
        "ipam": {"dataDir": dir.join("ours")},
        "delegate": {"hairpinMode": true, "isDefaultGateway": true},
    });
    // What flannel's plugin hands the bridge plugin for the same node.
    let ref_conf = serde_json::json!({
        "cniVersion": "0.3.1", "name": "cbr0", "type": "bridge", "hairpinMode": true,
        "ipMasq": false, "isDefaultGateway": true, "isGateway": true, "mtu": 1450,
        "ipam": {"type": "host-local", "dataDir": dir.join("ref"),
                 "ranges": [[{"subnet": "10.244.3.0/24"}]], "routes": [{"dst": "10.244.0.0/16"}]},
    });
    let side = |label, program, conf: serde_json::Value| -> Result<Side, String> {
        Ok(Side {
            label,
            program,
            node: Ns::new(&format!("{label}n"))?,
            pod: Ns::new(&format!("{label}p"))?,
            conf: conf.to_string(),
        })
    };
    Ok((
        side("ours", ours, our_conf)?,
        side("ref", PathBuf::from(REFERENCE), ref_conf)?,
    ))
}

#[derive(Default)]
struct Series {
    wall: Vec<Duration>,
    cpu: Vec<Duration>,
}

impl Series {
    fn push(&mut self, s: Sample) {
        self.wall.push(s.wall);
        self.cpu.push(s.cpu);
    }
}

fn percentile(values: &[Duration], p: f64) -> Duration {
    let mut v = values.to_vec();
    v.sort();
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:8.3}", d.as_secs_f64() * 1000.0)
}

fn print_row(name: &str, s: &Series) {
    let row = |v: &[Duration]| {
        [0.5, 0.95, 0.99]
            .iter()
            .map(|p| ms(percentile(v, *p)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!("{name:<10} {}   {}", row(&s.wall), row(&s.cpu));
}

fn ratio(ours: &[Duration], reference: &[Duration]) -> f64 {
    percentile(ours, 0.5).as_secs_f64() / percentile(reference, 0.5).as_secs_f64()
}

struct Args {
    iterations: usize,
    json: Option<PathBuf>,
}

fn parse_args() -> Args {
    let mut args = Args {
        iterations: 200,
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match (flag.as_str(), it.next()) {
            ("--iterations", Some(n)) => {
                args.iterations = n.parse().expect("--iterations takes a number")
            }
            ("--json", Some(path)) => args.json = Some(PathBuf::from(path)),
            _ => {
                eprintln!("usage: cni-bench [--iterations N] [--json FILE]");
                std::process::exit(2);
            }
        }
    }
    args
}

/// Every sample in milliseconds, by series: what `--json` writes.
fn samples_json(iterations: usize, s: &[Series; 4]) -> serde_json::Value {
    let ms = |v: &[Duration]| -> Vec<f64> { v.iter().map(|d| d.as_secs_f64() * 1e3).collect() };
    let mut series = serde_json::Map::new();
    for (name, x) in ["ours_add", "ref_add", "ours_del", "ref_del"].iter().zip(s) {
        let both = serde_json::json!({"wall_ms": ms(&x.wall), "cpu_ms": ms(&x.cpu)});
        series.insert(name.to_string(), both);
    }
    serde_json::json!({"iterations": iterations, "reference": REFERENCE, "series": series})
}

fn main() -> ExitCode {
    let args = parse_args();
    let result = run(args.iterations).and_then(|series| {
        report(args.iterations, &series);
        match &args.json {
            Some(path) => std::fs::write(path, samples_json(args.iterations, &series).to_string())
                .map_err(|e| format!("{}: {e}", path.display())),
            None => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cni-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The measurements; what it created is removed when it returns.
fn run(iterations: usize) -> Result<[Series; 4], String> {
    let exe = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
    let ours = exe.with_file_name("flannel");
    if !ours.is_file() {
        return Err(format!(
            "build the plugin first: {} missing",
            ours.display()
        ));
    }
    let dir = Dir(std::env::temp_dir().join(format!("cni-bench-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).map_err(|e| format!("{}: {e}", dir.0.display()))?;
    let (a, b) = sides(&dir.0, ours)?;
    // Warm-up: the first ADD creates the bridge; page cache, etc.
    for i in 0..5 {
        for side in [&a, &b] {
            side.call("ADD", &format!("warm{i}"))?;
            side.call("DEL", &format!("warm{i}"))?;
        }
    }
    let mut series: [Series; 4] = Default::default();
    for i in 0..iterations {
        let id = format!("bench{i}");
        let order = if i % 2 == 0 {
            [(&a, 0), (&b, 1)]
        } else {
            [(&b, 1), (&a, 0)]
        };
        for (side, k) in order {
            series[k].push(side.call("ADD", &id)?);
        }
        for (side, k) in order {
            series[2 + k].push(side.call("DEL", &id)?);
        }
    }
    Ok(series)
}

fn report(iterations: usize, s: &[Series; 4]) {
    println!("cni-bench: {iterations} iterations of ADD+DEL, interleaved; times in ms");
    println!("ours = flannel (this crate); ref = {REFERENCE} + host-local");
    println!(
        "{:<10} {:^26}   {:^26}",
        "", "wall p50 / p95 / p99", "CPU p50 / p95 / p99"
    );
    for (name, series) in ["ours ADD", "ref ADD", "ours DEL", "ref DEL"].iter().zip(s) {
        print_row(name, series);
    }
    for (verb, o, r) in [("ADD", &s[0], &s[1]), ("DEL", &s[2], &s[3])] {
        println!(
            "ratio {verb}: wall p50 {:.3}x, CPU p50 {:.3}x (ours / ref)",
            ratio(&o.wall, &r.wall),
            ratio(&o.cpu, &r.cpu)
        );
    }
}
