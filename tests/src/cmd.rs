//! Names, binary paths and command helpers for test set-up.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Encodes `n` in lowercase base36, left-padded with `0` to `width`.
fn base36(mut n: u64, width: usize) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    while n > 0 || out.is_empty() {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
    }
    while out.len() < width {
        out.push(b'0');
    }
    out.reverse();
    String::from_utf8(out).expect("base36 digits are ASCII")
}

/// A short name unique to this process and call: `prefix` + pid + counter.
///
/// The pid has a fixed width (5 base36 digits cover Linux's maximum pid,
/// 4194304), so two processes can never produce the same name. With a prefix
/// of at most 5 bytes the result fits in 15 bytes and can name a link.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{prefix}{}{}",
        base36(u64::from(std::process::id()), 5),
        base36(n, 1)
    )
}

/// The pid a [`unique`] name with this `prefix` was made by, if it is one.
pub(crate) fn unique_pid(name: &str, prefix: &str) -> Option<u32> {
    let digits = name.strip_prefix(prefix)?.get(..5)?;
    let pid = u64::from_str_radix(digits, 36).ok()?;
    (name.len() > prefix.len() + 5).then_some(())?;
    u32::try_from(pid).ok()
}

/// True when `name` was made by [`unique`] with `prefix` in a process that
/// no longer exists (a crashed run).
pub(crate) fn is_stale(name: &str, prefix: &str) -> bool {
    unique_pid(name, prefix)
        .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
}

/// The path of a built binary of this workspace (`flannel`, `flanneld`, ...).
///
/// `FLANNEL_BIN_DIR` wins when set; otherwise the binary sits next to the
/// running executable's profile directory (`target/<profile>/`), which is the
/// parent of `deps/` for test executables.
pub fn bin_path(name: &str) -> PathBuf {
    let dir = match std::env::var_os("FLANNEL_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => profile_dir(),
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "binary `{name}` not found at {}: build it first (`cargo build --release --bins`) \
         or set FLANNEL_BIN_DIR",
        path.display()
    );
    path
}

fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("cannot find the running executable");
    let mut dir = exe
        .parent()
        .expect("executable has a parent dir")
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    dir
}

/// Runs `cmd` to completion; panics with its stdout and stderr if it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!("{}", describe_failure(cmd, &out));
    }
    out
}

/// Runs `args[0]` with the other arguments; returns its stdout, panicking
/// with stdout and stderr when it fails.
pub fn sh(args: &[&str]) -> String {
    let (program, rest) = args.split_first().expect("sh needs a program");
    let out = run(Command::new(program).args(rest));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A readable account of a failed command, for panics.
pub(crate) fn describe_failure(cmd: &Command, out: &Output) -> String {
    format!(
        "command failed ({}): {cmd:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base36_pads_and_encodes() {
        assert_eq!(base36(0, 1), "0");
        assert_eq!(base36(35, 2), "0z");
        assert_eq!(base36(36, 1), "10");
        assert_eq!(base36(4_194_304, 5).len(), 5);
    }

    #[test]
    fn unique_names_differ_and_fit_a_link_name() {
        let a = unique("flann");
        let b = unique("flann");
        assert_ne!(a, b);
        assert!(a.len() <= 15, "{a}");
        assert!(a.starts_with("flann"));
        assert_eq!(unique_pid(&a, "flann"), Some(std::process::id()));
        assert_eq!(unique_pid("flann", "flann"), None);
        assert!(!is_stale(&a, "flann"));
    }
}
