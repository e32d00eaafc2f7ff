//! Reading and changing the firewall through `iptables-save` and
//! `iptables-restore --noflush`: a change is one atomic batch, passed as
//! arguments and stdin, never through a shell. Shared by the plugin's
//! per-pod masquerade and flanneld's FLANNEL-* chains.

use std::io::Write;
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("cannot run {tool}: {source}")]
    Spawn {
        tool: &'static str,
        source: std::io::Error,
    },
    #[error("{tool} failed: {stderr}")]
    Failed { tool: &'static str, stderr: String },
}

/// The rules of `table` (all tables when `None`), as `iptables-save` prints them.
pub fn save(table: Option<&str>) -> Result<String, IptablesError> {
    match table {
        Some(t) => run("iptables-save", &["-t", t], None),
        None => run("iptables-save", &[], None),
    }
}

/// Applies `batch` (iptables-save syntax) without flushing what it does
/// not name; waits for the xtables lock rather than failing on it.
pub fn restore(batch: &str) -> Result<(), IptablesError> {
    run("iptables-restore", &["--noflush", "--wait"], Some(batch)).map(|_| ())
}

/// Runs the firewall tool `tool` with `args` (no shell) and `input` on its
/// stdin; its stdout, or its stderr as the error when it fails. The nft
/// runner and flanneld's choice of firewall use it too.
pub fn run(
    tool: &'static str,
    args: &[&str],
    input: Option<&str>,
) -> Result<String, IptablesError> {
    let spawn = |source| IptablesError::Spawn { tool, source };
    let stdin = if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    };
    let mut child = Command::new(tool)
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    if let (Some(text), Some(mut pipe)) = (input, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(spawn)?;
    }
    let out = child.wait_with_output().map_err(spawn)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(IptablesError::Failed { tool, stderr });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
