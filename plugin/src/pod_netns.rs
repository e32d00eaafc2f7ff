//! Opening `CNI_NETNS` without trusting it.
//!
//! The netlink crate's `Netns::open` is a plain blocking `open(2)`: a FIFO
//! there blocks until a writer comes, which for a runtime's mistyped path
//! is forever, and opening a device node can have side effects. So the
//! path is checked first (a regular file, as every namespace file is),
//! opened with `O_NONBLOCK`, checked again on the open file (`fstatfs`:
//! nsfs), and only this already-open file is handed to `Netns::open`
//! through `/proc/self/fd`, so nothing can be swapped in between.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use flannel_netlink::Netns;

use crate::error::{Error, Result};

/// `NSFS_MAGIC` (linux/magic.h): the filesystem of every namespace file.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Opens `path` as a network namespace other than the plugin's own.
pub fn open_pod_netns(path: &Path) -> Result<Netns> {
    let ns = open_netns(path)?;
    let own = Netns::current()?;
    let netns_err = |source| Error::Netns {
        path: path.to_owned(),
        source,
    };
    if ns.id().map_err(netns_err)? == own.id()? {
        return Err(Error::OwnNetns(path.to_owned()));
    }
    Ok(ns)
}

/// Opens `path` as a network namespace, failing fast on anything else.
pub fn open_netns(path: &Path) -> Result<Netns> {
    let file = open_nsfs(path).map_err(|source| Error::NotNetns {
        path: path.to_owned(),
        source,
    })?;
    let by_fd = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    Netns::open(&by_fd).map_err(|source| Error::Netns {
        path: path.to_owned(),
        source,
    })
}

/// The open namespace file; an error for anything that is not on nsfs.
fn open_nsfs(path: &Path) -> io::Result<File> {
    // Before opening: a FIFO or a device is refused without an open.
    if !std::fs::metadata(path)?.file_type().is_file() {
        return Err(not_nsfs());
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    // SAFETY: fstatfs writes into the zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if st.f_type as i64 != NSFS_MAGIC {
        return Err(not_nsfs());
    }
    Ok(file)
}

fn not_nsfs() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "not a namespace file")
}
