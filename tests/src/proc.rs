//! A spawned child process, stopped and reaped on drop.

use std::fs::{File, OpenOptions};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::{try_wait_until, TempDir};

/// How long a process gets to exit after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(5);

static OUTLIVE: AtomicBool = AtomicBool::new(false);

/// From now on, spawned processes survive this program (for a cluster that
/// is kept up). By default a child is SIGKILLed by the kernel when the
/// thread that spawned it ends, so a test killed outright leaks no daemon.
pub fn let_children_outlive_us() {
    OUTLIVE.store(true, Ordering::SeqCst);
}

/// A child process whose stdout and stderr go to one log file.
///
/// Drop sends SIGTERM, then SIGKILL after a grace period, and reaps it.
#[derive(Debug)]
pub struct Proc {
    child: Option<Child>,
    pid: u32,
    log: PathBuf,
    // Owns the log's directory when the caller gave none.
    _dir: Option<TempDir>,
}

impl Proc {
    /// Spawns `cmd` logging into a file of a fresh temp dir.
    pub fn spawn(cmd: &mut Command) -> Proc {
        let dir = TempDir::new("fl-proc");
        let mut p = Proc::spawn_logged(cmd, dir.join("log"));
        p._dir = Some(dir);
        p
    }

    /// Spawns `cmd` appending its stdout and stderr to `log`, so that a
    /// restarted daemon keeps one log across runs.
    pub fn spawn_logged(cmd: &mut Command, log: impl Into<PathBuf>) -> Proc {
        let log = log.into();
        let file = open_log(&log);
        let err = file.try_clone().expect("cannot clone log file handle");
        if !OUTLIVE.load(Ordering::SeqCst) {
            die_with_parent(cmd);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
        Proc {
            pid: child.id(),
            child: Some(child),
            log,
            _dir: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything the process wrote so far (stdout and stderr interleaved).
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let mut status = None;
        try_wait_until(timeout, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        })?;
        self.child = None;
        status
    }

    /// SIGKILL (a crash, as far as the process can tell) and reap.
    pub fn kill9(&mut self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        self.wait_timeout(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("pid {} survived SIGKILL", self.pid))
    }

    /// SIGTERM, SIGKILL after the grace period; returns how it exited.
    pub fn terminate(&mut self) -> ExitStatus {
        if self.child.is_none() {
            return ExitStatus::from_raw(0);
        }
        self.signal(libc::SIGTERM);
        match self.wait_timeout(GRACE) {
            Some(status) => status,
            None => self.kill9(),
        }
    }

    /// Sends `sig` to the process if it has not been reaped yet.
    pub fn signal(&self, sig: libc::c_int) {
        if self.child.is_some() {
            // SAFETY: kill(2) has no memory effects; the pid is our unreaped
            // child, so it cannot have been recycled for another process.
            unsafe { libc::kill(self.pid as libc::pid_t, sig) };
        }
    }

    /// Forgets the process: it keeps running after this `Proc` is dropped
    /// (for a cluster kept up after the program ends).
    pub fn detach(&mut self) {
        self.child = None;
        if let Some(dir) = self._dir.as_mut() {
            dir.keep();
        }
    }
}

/// Asks the kernel to SIGKILL the child when the spawning thread ends.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl(2) is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn open_log(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open log {}: {e}", path.display()))
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.signal(libc::SIGTERM);
            if self.wait_timeout(GRACE).is_none() {
                // Worth knowing: a daemon that ignores SIGTERM is a bug.
                let log = self.log.display();
                eprintln!(
                    "pid {} ignored SIGTERM for {GRACE:?}; killing it (log: {log})",
                    self.pid
                );
                self.signal(libc::SIGKILL);
                let _ = self.wait_timeout(Duration::from_secs(10));
            }
        }
    }
}
