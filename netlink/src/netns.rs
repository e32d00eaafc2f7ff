use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;

use crate::error::{Error, Result};

/// `NSFS_MAGIC` from linux/magic.h: the filesystem of every namespace file.
const NSFS_MAGIC: libc::c_long = 0x6e73_6673;
/// `NS_GET_NSTYPE` ioctl (linux/nsfs.h): which kind of namespace a file is.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// An open network namespace (a `/run/netns/NAME` or `/proc/PID/ns/net` file).
pub struct Netns {
    file: File,
}

impl Netns {
    /// Opens `path` and checks that it really is a network namespace, so a
    /// wrong path is an error here rather than a `setns` surprise later.
    pub fn open(path: &Path) -> Result<Netns> {
        let file = File::open(path).map_err(Error::io("open network namespace"))?;
        let ns = Netns { file };
        ns.check_is_netns()?;
        Ok(ns)
    }

    /// The calling thread's own network namespace.
    pub fn current() -> Result<Netns> {
        let file = File::open("/proc/thread-self/ns/net")
            .map_err(Error::io("open current network namespace"))?;
        Ok(Netns { file })
    }

    fn check_is_netns(&self) -> Result<()> {
        let fd = self.file.as_raw_fd();
        let not_netns = |what: &str| Error::Io {
            op: "open network namespace",
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_string()),
        };
        // SAFETY: fstatfs writes into the zeroed struct we own.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstatfs(fd, &mut st) } != 0 || st.f_type as libc::c_long != NSFS_MAGIC {
            return Err(not_netns("not a namespace file"));
        }
        // SAFETY: NS_GET_NSTYPE takes no argument and returns the CLONE_NEW* type.
        let kind = unsafe { libc::ioctl(fd, NS_GET_NSTYPE as _) };
        if kind != libc::CLONE_NEWNET {
            return Err(not_netns("not a network namespace"));
        }
        Ok(())
    }

    /// (device, inode): equal for two handles on the same namespace.
    pub fn id(&self) -> Result<(u64, u64)> {
        let meta = self
            .file
            .metadata()
            .map_err(Error::io("stat network namespace"))?;
        use std::os::unix::fs::MetadataExt;
        Ok((meta.dev(), meta.ino()))
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for Netns {
    fn as_raw_fd(&self) -> i32 {
        self.file.as_raw_fd()
    }
}

/// The calling thread inside another network namespace until dropped.
///
/// `setns` changes only the calling thread, so this is safe in a
/// multi-threaded process as long as the guard stays on its thread (it is
/// not `Send`). Drop puts the thread back, also while unwinding a panic.
pub struct NetnsGuard {
    previous: Netns,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl NetnsGuard {
    pub fn enter(target: &Netns) -> Result<NetnsGuard> {
        let previous = Netns::current()?;
        setns(target)?;
        Ok(NetnsGuard {
            previous,
            _not_send: std::marker::PhantomData,
        })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        // A thread left in the wrong namespace would silently act on the
        // wrong node: there is no way to continue safely.
        if let Err(e) = setns(&self.previous) {
            eprintln!("fatal: cannot return to the original network namespace: {e}");
            std::process::abort();
        }
    }
}

fn setns(ns: &Netns) -> Result<()> {
    // SAFETY: a valid namespace fd; CLONE_NEWNET restricts it to netns.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(Error::Io {
            op: "setns",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}
