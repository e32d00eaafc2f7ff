//! Named network namespaces (`ip netns`), removed on drop.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::cmd::{describe_failure, run};
use crate::try_wait_until;

/// A network namespace `/run/netns/NAME` with `lo` up.
///
/// Drop kills every process still inside it and deletes it; it never panics.
#[derive(Debug)]
pub struct Netns {
    name: String,
    keep: bool,
}

impl Netns {
    /// Creates a namespace named `unique(prefix)` and brings `lo` up.
    pub fn new(prefix: &str) -> Netns {
        // A name left over by a crashed run with a recycled pid is skipped.
        for _ in 0..100 {
            let name = crate::unique(prefix);
            let out = Command::new("ip").args(["netns", "add", &name]).output();
            let out = out.unwrap_or_else(|e| panic!("cannot run ip: {e}"));
            if out.status.success() {
                let ns = Netns { name, keep: false };
                ns.sh(&["ip", "link", "set", "lo", "up"]);
                return ns;
            }
            if !String::from_utf8_lossy(&out.stderr).contains("exists") {
                panic!(
                    "ip netns add {name} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        panic!("no free namespace name for prefix {prefix}");
    }

    /// Takes charge of an existing namespace (it is deleted on drop).
    pub fn adopt(name: &str) -> Netns {
        Netns {
            name: name.to_string(),
            keep: false,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`, what `CNI_NETNS` and `nsenter --net=` take.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A command running `program` inside the namespace (`ip netns exec`,
    /// which also remounts `/sys` so it shows the namespace's devices).
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `args` inside the namespace and returns its output, failed or not.
    pub fn exec(&self, args: &[&str]) -> Output {
        let (program, rest) = args.split_first().expect("exec needs a program");
        let mut c = self.cmd(program);
        c.args(rest);
        c.output()
            .unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"))
    }

    /// One ping (`-c 1 -W 2`) from inside the namespace; true when answered.
    pub fn ping(&self, ip: impl ToString) -> bool {
        let ip = ip.to_string();
        self.exec(&["ping", "-n", "-q", "-c", "1", "-W", "2", &ip])
            .status
            .success()
    }

    /// Runs `args` inside the namespace; returns stdout, panics on failure.
    pub fn sh(&self, args: &[&str]) -> String {
        let (program, rest) = args.split_first().expect("sh needs a program");
        let out = run(self.cmd(program).args(rest));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip ARGS` in the namespace, `args` split on whitespace; returns
    /// stdout, panics on failure.
    pub fn ip(&self, args: &str) -> String {
        let out = run(Command::new("ip")
            .args(["-n", &self.name])
            .args(args.split_whitespace()));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip -j ARGS` in the namespace, parsed (`[]` when ip prints nothing).
    pub fn ip_json(&self, args: &[&str]) -> Value {
        self.tool_json("ip", args)
    }

    /// `bridge -j ARGS` in the namespace, parsed.
    pub fn bridge_json(&self, args: &[&str]) -> Value {
        self.tool_json("bridge", args)
    }

    fn tool_json(&self, tool: &str, args: &[&str]) -> Value {
        let mut c = Command::new(tool);
        c.args(["-n", &self.name, "-j"]).args(args);
        let out = c
            .output()
            .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
        if !out.status.success() {
            panic!("{}", describe_failure(&c, &out));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        if text.trim().is_empty() {
            return Value::Array(Vec::new());
        }
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{c:?} printed bad JSON ({e}): {text}"))
    }

    /// Runs `f` on a thread that has entered this namespace, so sockets it
    /// opens belong here and stay usable from any thread afterwards.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
        run_in_netns(&self.path(), f)
    }

    /// Pids of the processes living in the namespace.
    pub fn pids(&self) -> Vec<i32> {
        pids_in(&self.name)
    }

    /// Leaves the namespace (and its processes) in place when dropped.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

/// Runs `f` on a fresh thread that entered the network namespace at `path`.
/// The thread ends afterwards, so no thread is ever left in the wrong netns.
pub fn run_in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    let file = File::open(path)?;
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: setns only changes this thread's network namespace; the
            // fd is a valid open namespace file for the call's duration.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn pids_in(name: &str) -> Vec<i32> {
    let out = Command::new("ip").args(["netns", "pids", name]).output();
    let Ok(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Kills every process in namespace `name` and deletes it. Never panics.
pub(crate) fn remove_netns(name: &str) {
    // Gone or not, the namespace is deleted after that (never a panic).
    let _ = try_wait_until(Duration::from_secs(5), || {
        let pids = pids_in(name);
        for &pid in &pids {
            // SAFETY: kill(2) has no memory effects.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        pids.is_empty()
    });
    let _ = Command::new("ip").args(["netns", "del", name]).output();
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.keep {
            remove_netns(&self.name);
        }
    }
}

/// A command running `program` in the network namespace at `path`
/// (`nsenter --net=PATH`, which execs `program` in place: its pid is ours).
pub(crate) fn cmd_in(path: &Path, program: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", path.display())).arg(program);
    c
}
