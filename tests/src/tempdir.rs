//! A directory removed on drop.

use std::path::{Path, PathBuf};

/// A fresh directory under the system temp dir, removed (recursively) on
/// drop: tempfile's, named `<unique(prefix)><random>` so that
/// [`crate::sweep_stale`] can tell one left by a dead run.
#[derive(Debug)]
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    /// Creates `$TMPDIR/<unique(prefix)>…`.
    pub fn new(prefix: &str) -> TempDir {
        let dir = tempfile::Builder::new()
            .prefix(&crate::unique(prefix))
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for {prefix}: {e}"));
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// `path()` joined with `rel`.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.0.path().join(rel)
    }

    /// Leaves the directory in place when dropped (e.g. a cluster kept up).
    pub fn keep(&mut self) {
        self.0.disable_cleanup(true);
    }
}
