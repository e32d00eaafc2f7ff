//! Root tests skip themselves for a normal user.
//!
//! Self-contained (std and libc only): the netlink crate's tests do not
//! depend on the harness and compile this file in with `#[path]`.

use std::io::Write;

/// True when the process runs as root. Otherwise prints one line saying
/// the calling test is skipped and why, and returns false.
///
/// The line goes straight to stderr, past the test runner's output
/// capture, so `cargo test` shows it for a test that passes.
pub fn root_or_skip() -> bool {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    // libtest runs each test on a thread named after it.
    let thread = std::thread::current();
    let test = thread.name().filter(|n| *n != "main").unwrap_or("test");
    let _ = writeln!(
        std::io::stderr(),
        "{test}: skipped: needs root (network namespaces, etcd); run ./test.sh as root"
    );
    false
}

/// Returns from the calling test unless it runs as root, printing one line
/// that says it was skipped and why (see [`root_or_skip`]). First statement
/// of every test that needs root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::root::root_or_skip() {
            return;
        }
    };
}
