//! File primitives for state other programs read: atomic writes and
//! bounded reads that never block.
//!
//! A write that fails half way (disk full, a crash) must leave either the
//! old file or the new one, never an empty or partial one: a reader would
//! take an empty IP file for an ownerless allocation, or an empty cursor
//! for a damaged store. So every write goes to a temp file in the same
//! directory, is fsynced, and is then moved into place in one step.
//!
//! The state directories may be shared with other software, or planted
//! with anything: reading a FIFO blocks until a writer comes, reading
//! `/dev/zero` never ends. Reads open with `O_NONBLOCK`, refuse anything
//! but a regular file, and stop after a bound.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes `bytes` to `path` through `tmp` (same directory): either the
/// whole new content is at `path` afterwards, or `path` is unchanged and
/// `tmp` is gone.
pub fn write_atomic(path: &Path, tmp: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    write_tmp(tmp, bytes, mode)
        .and_then(|()| fs::rename(tmp, path))
        .inspect_err(|_| remove_quietly(tmp))
}

/// Like [`write_atomic`], but fails with `AlreadyExists` (leaving the
/// existing file alone) when `path` exists: an exclusive create whose
/// file is never seen without its content.
pub fn create_atomic(path: &Path, tmp: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let result = write_tmp(tmp, bytes, mode).and_then(|()| fs::hard_link(tmp, path));
    remove_quietly(tmp);
    result
}

fn write_tmp(tmp: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    // A temp file left by a crash is overwritten, not a reason to fail.
    remove_quietly(tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Removes `path`; gone already or not removable is not an error here.
pub fn remove_quietly(path: &Path) {
    let _ = fs::remove_file(path);
}

/// Reads a regular file of at most `max` bytes without ever blocking:
/// `InvalidData` for anything else (FIFO, device, directory, too big).
pub fn read_regular(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    read_open_regular(&file, max)
}

/// [`read_regular`] of an already open file.
pub fn read_open_regular(file: &File, max: u64) -> io::Result<Vec<u8>> {
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(invalid("not a regular file"));
    }
    if meta.len() > max {
        return Err(invalid(&format!("larger than {max} bytes")));
    }
    let mut bytes = Vec::new();
    // The size can grow after the check: the bound holds regardless.
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(invalid(&format!("larger than {max} bytes")));
    }
    Ok(bytes)
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Whether an error says that a name is too long for the file system
/// (`ENAMETOOLONG`): nothing of that name can exist.
pub fn is_name_too_long(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENAMETOOLONG)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::tempdir;

    #[test]
    fn atomic_writes_replace_or_create_exclusively() {
        let d = tempdir().unwrap();
        let (path, tmp) = (d.path().join("f"), d.path().join(".f.tmp"));
        fs::write(&tmp, "left by a crash").unwrap();
        write_atomic(&path, &tmp, b"one", 0o644).unwrap();
        write_atomic(&path, &tmp, b"two", 0o644).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert!(!tmp.exists());
        let err = create_atomic(&path, &tmp, b"three", 0o644).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert!(!tmp.exists());
        create_atomic(&d.path().join("g"), &tmp, b"new", 0o644).unwrap();
        assert_eq!(fs::read(d.path().join("g")).unwrap(), b"new");
    }

    #[test]
    fn reads_are_bounded_and_never_block() {
        let d = tempdir().unwrap();
        let fifo = d.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let err = read_regular(&fifo, 10).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let err = read_regular(Path::new("/dev/zero"), 10).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        fs::write(d.path().join("big"), [b'x'; 11]).unwrap();
        assert!(read_regular(&d.path().join("big"), 10).is_err());
        assert_eq!(read_regular(&d.path().join("big"), 11).unwrap().len(), 11);
        assert!(read_regular(d.path(), 10).is_err());
    }
}
