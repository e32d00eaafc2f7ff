//! Host-local IPAM: the reference `host-local` plugin's on-disk store.
//!
//! `<dataDir>/<network>/` holds one file per allocated IP, named by the IP
//! and holding `<containerID>\r\n<ifname>`, plus `last_reserved_ip.0` (the
//! round-robin cursor of range set 0) and `lock`, taken with
//! `flock(LOCK_EX)` around every change. Because the layout, the lock and
//! the allocation order are the reference's, a node keeps its allocations
//! when switching between this plugin and flannel + bridge + host-local,
//! and both can even run side by side on one store.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;

/// Where host-local keeps its stores unless `ipam.dataDir` says otherwise.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";
/// What separates the container ID from the interface name in a file.
const LINE_BREAK: &str = "\r\n";
const LAST_RESERVED: &str = "last_reserved_ip.0";
/// Temp files of the atomic writes, only ever written under the lock.
const RESERVE_TMP: &str = ".reserve.tmp";
const LAST_RESERVED_TMP: &str = ".last_reserved_ip.0.tmp";
/// An owner is a container ID and an interface name: far below this.
const MAX_OWNER_FILE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("no IP addresses available in range set: {0}")]
    Exhausted(Range),
    #[error("{ip} has been allocated to {id}, duplicate allocation is not allowed")]
    Duplicate { ip: Ipv4Addr, id: String },
    #[error("requested IP address {ip} is not available in range set {range}")]
    Unavailable { ip: Ipv4Addr, range: Range },
    #[error("network {0} too small to allocate from")]
    TooSmall(Ipv4Net),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> IpamError + '_ {
    move |source| IpamError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The addresses host-local hands out for one subnet: from network+1 to
/// broadcast-1, the gateway (network+1) excluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub subnet: Ipv4Net,
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
    pub gateway: Ipv4Addr,
}

impl Range {
    pub fn for_subnet(subnet: Ipv4Net) -> Result<Range, IpamError> {
        let subnet = subnet.trunc();
        // A /31 or /32 has no address left once the gateway is taken.
        if subnet.prefix_len() > 30 {
            return Err(IpamError::TooSmall(subnet));
        }
        let net = u32::from(subnet.network());
        Ok(Range {
            subnet,
            start: Ipv4Addr::from(net + 1),
            end: Ipv4Addr::from(u32::from(subnet.broadcast()) - 1),
            gateway: Ipv4Addr::from(net + 1),
        })
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (self.start..=self.end).contains(&ip)
    }

    /// Candidates in round-robin order: the one after `last` first, wrapping
    /// around once, the gateway skipped (host-local's iterator).
    fn candidates(&self, last: Option<Ipv4Addr>) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let (start, end) = (u32::from(self.start), u32::from(self.end));
        let first = match last.filter(|ip| self.contains(*ip)) {
            Some(ip) if u32::from(ip) < end => u32::from(ip) + 1,
            _ => start,
        };
        (first..=end)
            .chain(start..first)
            .map(Ipv4Addr::from)
            .filter(move |ip| *ip != self.gateway)
    }
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// One allocation on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub ip: Ipv4Addr,
    pub container_id: String,
    /// Empty for files written by host-local versions that predate it.
    pub ifname: String,
}

/// One network's store directory, e.g. `/var/lib/cni/networks/cbr0`.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens an existing store (read-only use needs nothing else).
    pub fn open(dir: impl Into<PathBuf>) -> Result<Store, IpamError> {
        let dir = dir.into();
        fs::metadata(&dir).map_err(io_err(&dir))?;
        Ok(Store { dir })
    }

    /// Opens the store, creating its directory as host-local does (0755).
    pub fn create(dir: impl Into<PathBuf>) -> Result<Store, IpamError> {
        let dir = dir.into();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .map_err(io_err(&dir))?;
        Ok(Store { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every allocation in the store, in no particular order.
    pub fn allocations(&self) -> Result<Vec<Allocation>, IpamError> {
        let entries = fs::read_dir(&self.dir).map_err(io_err(&self.dir))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err(&self.dir))?;
            let Some(ip) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            // Released between listing and reading: not an allocation any
            // more. Not a regular file (a FIFO would block the read) or
            // unreadable: nobody's allocation, and `reserve` still sees
            // the name taken.
            let Ok(bytes) = crate::files::read_regular(&entry.path(), MAX_OWNER_FILE) else {
                continue;
            };
            let (container_id, ifname) = parse_owner(&String::from_utf8_lossy(&bytes));
            out.push(Allocation {
                ip,
                container_id,
                ifname,
            });
        }
        Ok(out)
    }

    /// Takes the store's lock (blocking) for a series of changes.
    pub fn lock(&self) -> Result<Locked<'_>, IpamError> {
        let path = self.dir.join("lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            // A FIFO planted as `lock` must not block the open.
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .map_err(io_err(&path))?;
        loop {
            // SAFETY: flock on an fd we own; no memory is involved.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                break;
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(io_err(&path)(err));
            }
        }
        Ok(Locked {
            store: self,
            _lock: file,
        })
    }
}

/// `id\r\nifname` (host-local), `id\nifname`, or a bare `id` (old files).
fn parse_owner(text: &str) -> (String, String) {
    let text = text.trim();
    match text.split_once('\n') {
        Some((id, ifname)) => (id.trim_end_matches('\r').to_string(), ifname.trim().into()),
        None => (text.to_string(), String::new()),
    }
}

/// The store with its lock held; dropping it unlocks (the fd closes).
pub struct Locked<'a> {
    store: &'a Store,
    _lock: File,
}

impl Locked<'_> {
    /// Reserves an address for (`id`, `ifname`): `requested` if given,
    /// otherwise the next free one after the last reserved.
    pub fn allocate(
        &self,
        range: &Range,
        id: &str,
        ifname: &str,
        requested: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, IpamError> {
        self.refuse_duplicate(range, id, ifname)?;
        if let Some(ip) = requested {
            return self.allocate_requested(range, ip, id, ifname);
        }
        for ip in range.candidates(self.last_reserved()) {
            if self.reserve(ip, id, ifname)? {
                return self.commit(ip);
            }
        }
        Err(IpamError::Exhausted(*range))
    }

    /// Moves the cursor to a freshly reserved `ip`; if that fails (disk
    /// full), the reservation is undone, so a retry is not refused as a
    /// duplicate of an allocation nobody got.
    fn commit(&self, ip: Ipv4Addr) -> Result<Ipv4Addr, IpamError> {
        match self.write_last_reserved(ip) {
            Ok(()) => Ok(ip),
            Err(e) => {
                let _ = self.remove(ip);
                Err(e)
            }
        }
    }

    fn allocate_requested(
        &self,
        range: &Range,
        ip: Ipv4Addr,
        id: &str,
        ifname: &str,
    ) -> Result<Ipv4Addr, IpamError> {
        let unavailable = IpamError::Unavailable { ip, range: *range };
        if !range.contains(ip) || ip == range.gateway || !self.reserve(ip, id, ifname)? {
            return Err(unavailable);
        }
        self.commit(ip)
    }

    /// One attachment gets one address: a second ADD without DEL is refused.
    fn refuse_duplicate(&self, range: &Range, id: &str, ifname: &str) -> Result<(), IpamError> {
        let taken =
            self.store.allocations()?.into_iter().find(|a| {
                a.container_id == id && a.ifname == ifname && range.subnet.contains(&a.ip)
            });
        match taken {
            Some(a) => Err(IpamError::Duplicate {
                ip: a.ip,
                id: id.to_string(),
            }),
            None => Ok(()),
        }
    }

    /// Creates the IP's file exclusively, owner included (so no reader
    /// ever sees it empty); `false` when someone holds it.
    fn reserve(&self, ip: Ipv4Addr, id: &str, ifname: &str) -> Result<bool, IpamError> {
        let path = self.store.dir.join(ip.to_string());
        let tmp = self.store.dir.join(RESERVE_TMP);
        let content = format!("{}{LINE_BREAK}{ifname}", id.trim());
        match crate::files::create_atomic(&path, &tmp, content.as_bytes(), 0o644) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    fn last_reserved(&self) -> Option<Ipv4Addr> {
        let path = self.store.dir.join(LAST_RESERVED);
        let bytes = crate::files::read_regular(&path, MAX_OWNER_FILE).ok()?;
        String::from_utf8(bytes).ok()?.trim().parse().ok()
    }

    /// Replaces the cursor atomically: a failed write (disk full) leaves
    /// the previous cursor, never an empty file.
    fn write_last_reserved(&self, ip: Ipv4Addr) -> Result<(), IpamError> {
        let path = self.store.dir.join(LAST_RESERVED);
        let tmp = self.store.dir.join(LAST_RESERVED_TMP);
        crate::files::write_atomic(&path, &tmp, ip.to_string().as_bytes(), 0o644)
            .map_err(io_err(&path))
    }

    /// Removes temp files an ADD killed mid-write left (the lock is held:
    /// no write is under way).
    fn remove_temp_files(&self) {
        for name in [RESERVE_TMP, LAST_RESERVED_TMP] {
            crate::files::remove_quietly(&self.store.dir.join(name));
        }
    }

    /// Releases what (`id`, `ifname`) holds; files from host-local versions
    /// without the interface name match on the ID alone. Files without an
    /// owner go too: an ADD killed between creating an IP's file and
    /// writing its owner leaves it empty, and as both happen under this
    /// lock, an empty file seen here is nobody's. Returns the IPs.
    pub fn release(&self, id: &str, ifname: &str) -> Result<Vec<Ipv4Addr>, IpamError> {
        let all = self.store.allocations()?;
        let mut mine: Vec<&Allocation> = all
            .iter()
            .filter(|a| a.container_id == id && a.ifname == ifname)
            .collect();
        if mine.is_empty() {
            mine = all
                .iter()
                .filter(|a| a.container_id == id && a.ifname.is_empty())
                .collect();
        }
        mine.extend(all.iter().filter(|a| a.container_id.is_empty()));
        self.remove_temp_files();
        for a in &mine {
            self.remove(a.ip)?;
        }
        Ok(mine.iter().map(|a| a.ip).collect())
    }

    /// Releases every allocation whose (container ID, ifname) is not in
    /// `keep` (GC). Returns the released allocations.
    pub fn release_all_except(
        &self,
        keep: &HashSet<(String, String)>,
    ) -> Result<Vec<Allocation>, IpamError> {
        let mut released = Vec::new();
        self.remove_temp_files();
        for a in self.store.allocations()? {
            if !keep.contains(&(a.container_id.clone(), a.ifname.clone())) {
                self.remove(a.ip)?;
                released.push(a);
            }
        }
        Ok(released)
    }

    /// Deletes one IP's file; already gone is fine.
    pub fn remove(&self, ip: Ipv4Addr) -> Result<(), IpamError> {
        let path = self.store.dir.join(ip.to_string());
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&path)(e)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path().join("cbr0")).unwrap();
        (dir, store)
    }

    fn range(cidr: &str) -> Range {
        Range::for_subnet(cidr.parse().unwrap()).unwrap()
    }

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().unwrap()
    }

    #[test]
    fn first_address_skips_gateway_and_files_match_host_local() {
        let (_d, store) = temp_store();
        let r = range("10.244.3.0/24");
        assert_eq!(r.to_string(), "10.244.3.1-10.244.3.254");
        let lock = store.lock().unwrap();
        assert_eq!(
            lock.allocate(&r, "abc", "eth0", None).unwrap(),
            ip("10.244.3.2")
        );
        let file = fs::read(store.dir().join("10.244.3.2")).unwrap();
        assert_eq!(file, b"abc\r\neth0");
        let last = fs::read(store.dir().join("last_reserved_ip.0")).unwrap();
        assert_eq!(last, b"10.244.3.2");
        assert!(store.dir().join("lock").exists());
    }

    #[test]
    fn round_robin_continues_after_last_and_wraps() {
        let (_d, store) = temp_store();
        let r = range("10.1.0.0/29"); // .1 gateway, .2 - .6 usable
        let lock = store.lock().unwrap();
        let a = lock.allocate(&r, "a", "eth0", None).unwrap();
        let b = lock.allocate(&r, "b", "eth0", None).unwrap();
        assert_eq!((a, b), (ip("10.1.0.2"), ip("10.1.0.3")));
        lock.release("a", "eth0").unwrap();
        // .2 is free again, but round-robin goes on after the last (.3).
        assert_eq!(
            lock.allocate(&r, "c", "eth0", None).unwrap(),
            ip("10.1.0.4")
        );
        fs::write(store.dir().join(LAST_RESERVED), "10.1.0.6").unwrap();
        // After the end it wraps to the start, skipping the gateway.
        assert_eq!(
            lock.allocate(&r, "d", "eth0", None).unwrap(),
            ip("10.1.0.2")
        );
    }

    #[test]
    fn non_regular_files_in_the_store_do_not_block() {
        let (_d, store) = temp_store();
        for name in ["10.1.0.2", LAST_RESERVED] {
            let path = store.dir().join(name);
            let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
            // SAFETY: a valid C string.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        }
        assert!(store.allocations().unwrap().is_empty());
        let r = range("10.1.0.0/24");
        // The FIFO's name stays taken.
        let lock = store.lock().unwrap();
        assert_eq!(
            lock.allocate(&r, "a", "eth0", None).unwrap(),
            ip("10.1.0.3")
        );
    }

    #[test]
    fn cursor_is_rewritten_to_its_exact_length() {
        let (_d, store) = temp_store();
        let r = range("10.1.0.0/24");
        let lock = store.lock().unwrap();
        lock.allocate(&r, "a", "eth0", Some(ip("10.1.0.100")))
            .unwrap();
        lock.allocate(&r, "b", "eth0", Some(ip("10.1.0.5")))
            .unwrap();
        let last = fs::read(store.dir().join(LAST_RESERVED)).unwrap();
        assert_eq!(last, b"10.1.0.5");
        assert_eq!(
            lock.allocate(&r, "c", "eth0", None).unwrap(),
            ip("10.1.0.6")
        );
    }

    #[test]
    fn exhaustion_names_the_range() {
        let (_d, store) = temp_store();
        let r = range("10.1.0.0/30"); // only .2 is usable
        let lock = store.lock().unwrap();
        lock.allocate(&r, "a", "eth0", None).unwrap();
        let err = lock.allocate(&r, "b", "eth0", None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no IP addresses available in range set: 10.1.0.1-10.1.0.2"
        );
        assert!(matches!(
            Range::for_subnet("10.1.0.0/31".parse().unwrap()),
            Err(IpamError::TooSmall(_))
        ));
    }

    #[test]
    fn duplicate_and_requested_addresses() {
        let (_d, store) = temp_store();
        let r = range("10.1.0.0/24");
        let lock = store.lock().unwrap();
        lock.allocate(&r, "a", "eth0", None).unwrap();
        let err = lock.allocate(&r, "a", "eth0", None).unwrap_err();
        assert!(matches!(err, IpamError::Duplicate { .. }), "{err}");
        // Same container, other interface: fine.
        lock.allocate(&r, "a", "net1", None).unwrap();
        let got = lock
            .allocate(&r, "b", "eth0", Some(ip("10.1.0.77")))
            .unwrap();
        assert_eq!(got, ip("10.1.0.77"));
        for taken in ["10.1.0.77", "10.1.0.1", "10.2.0.5"] {
            let err = lock.allocate(&r, "c", "eth0", Some(ip(taken))).unwrap_err();
            assert!(matches!(err, IpamError::Unavailable { .. }), "{taken}");
        }
    }

    #[test]
    fn reads_reference_files_and_releases_them() {
        let (_d, store) = temp_store();
        // As Debian's host-local 1.1.1 writes them, with \n, and an old
        // file holding only the container ID.
        fs::write(store.dir().join("10.1.0.2"), "c1\r\neth0").unwrap();
        fs::write(store.dir().join("10.1.0.3"), "c2\neth0\n").unwrap();
        fs::write(store.dir().join("10.1.0.4"), "c3").unwrap();
        fs::write(store.dir().join(LAST_RESERVED), "10.1.0.4").unwrap();
        let mut all = store.allocations().unwrap();
        all.sort_by_key(|a| a.ip);
        let owners: Vec<(&str, &str)> = all
            .iter()
            .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
            .collect();
        assert_eq!(owners, [("c1", "eth0"), ("c2", "eth0"), ("c3", "")]);
        let lock = store.lock().unwrap();
        assert_eq!(lock.release("c2", "eth0").unwrap(), [ip("10.1.0.3")]);
        assert_eq!(lock.release("c3", "eth0").unwrap(), [ip("10.1.0.4")]);
        assert!(lock.release("c9", "eth0").unwrap().is_empty());
        // An IP file whose owner was never written is released by any DEL.
        fs::write(store.dir().join("10.1.0.9"), "").unwrap();
        assert_eq!(lock.release("c9", "eth0").unwrap(), [ip("10.1.0.9")]);
        let r = range("10.1.0.0/24");
        assert_eq!(
            lock.allocate(&r, "c4", "eth0", None).unwrap(),
            ip("10.1.0.5")
        );
    }

    #[test]
    fn gc_keeps_only_valid_attachments() {
        let (_d, store) = temp_store();
        let r = range("10.1.0.0/24");
        let lock = store.lock().unwrap();
        for id in ["a", "b", "c"] {
            lock.allocate(&r, id, "eth0", None).unwrap();
        }
        let keep: HashSet<_> = [("b".to_string(), "eth0".to_string())].into();
        let released = lock.release_all_except(&keep).unwrap();
        assert_eq!(released.len(), 2);
        let left = store.allocations().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].container_id, "b");
    }

    #[test]
    fn open_needs_an_existing_store() {
        assert!(matches!(
            Store::open("/nonexistent/cbr0"),
            Err(IpamError::Io { .. })
        ));
    }
}
