//! The per-container delegate config: `<dataDir>/<containerID>`.
//!
//! ADD saves the rendered bridge config there (as flannel's own plugin
//! does, same file, same JSON), and DEL reads it back, so DEL tears down
//! exactly what ADD built even when subnet.env or the config changed since.
//! Files written by flannel's plugin before an upgrade are read the same way.
//!
//! The file is written atomically through `<dataDir>/.tmp-<hash of ID>`
//! (a fixed length, so any ID that fits a file name fits), which DEL and
//! GC find again from the container ID when an ADD died mid-write. The
//! directory may be shared with other files: only names in these two
//! formats are ever touched.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::files;

use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: not a delegate config: {msg}", path.display())]
    Parse { path: PathBuf, msg: String },
}

/// A saved config is a delegate document: far below this.
const MAX_SAVED: u64 = 1 << 20;
const TEMP_PREFIX: &str = ".tmp-";

fn path_of(data_dir: &Path, container_id: &str) -> PathBuf {
    data_dir.join(container_id)
}

/// The temp file name of `container_id`'s saved config: the FNV-1a 64-bit
/// hash of the ID in hex.
pub fn temp_name(container_id: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{TEMP_PREFIX}{hash:016x}")
}

/// Whether `name` is a temp file name as [`temp_name`] makes them.
pub fn is_temp_name(name: &str) -> bool {
    name.strip_prefix(TEMP_PREFIX)
        .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Not found, or a name no file system can hold: nothing there either way.
fn is_absent(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || files::is_name_too_long(e)
}

/// Saves the delegate config (directory 0700, file 0600, as flannel).
pub fn save(
    data_dir: &Path,
    container_id: &str,
    delegate: &Map<String, Value>,
) -> Result<(), ScratchError> {
    let path = path_of(data_dir, container_id);
    let err = |source| ScratchError::Io {
        path: path.clone(),
        source,
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(err)?;
    let json = serde_json::to_vec(delegate).expect("a JSON map serializes");
    let tmp = data_dir.join(temp_name(container_id));
    files::write_atomic(&path, &tmp, &json, 0o600).map_err(err)
}

/// Whether a saved config file of `container_id` exists, readable or not.
pub fn exists(data_dir: &Path, container_id: &str) -> bool {
    fs::symlink_metadata(path_of(data_dir, container_id)).is_ok()
}

/// The saved config, or `None` when there is none.
pub fn load(
    data_dir: &Path,
    container_id: &str,
) -> Result<Option<Map<String, Value>>, ScratchError> {
    let path = path_of(data_dir, container_id);
    let bytes = match files::read_regular(&path, MAX_SAVED) {
        Ok(b) => b,
        Err(e) if is_absent(&e) => return Ok(None),
        Err(source) => return Err(ScratchError::Io { path, source }),
    };
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(Some(map)),
        Ok(_) => Err(ScratchError::Parse {
            path,
            msg: "not a JSON object".into(),
        }),
        Err(e) => Err(ScratchError::Parse {
            path,
            msg: e.to_string(),
        }),
    }
}

/// The names of the regular files in `data_dir` (none when the directory
/// does not exist): the candidates for saved configs and their temp files.
pub fn list(data_dir: &Path) -> Result<Vec<String>, ScratchError> {
    let err = |source| ScratchError::Io {
        path: data_dir.to_owned(),
        source,
    };
    let entries = match fs::read_dir(data_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(err(e)),
    };
    let mut ids = Vec::new();
    for entry in entries {
        let entry = entry.map_err(err)?;
        if entry.file_type().map_err(err)?.is_file() {
            ids.extend(entry.file_name().into_string());
        }
    }
    Ok(ids)
}

/// Removes the saved config and a temp file of it that an ADD killed
/// mid-write left; already gone is fine.
pub fn remove(data_dir: &Path, container_id: &str) -> Result<(), ScratchError> {
    remove_name(data_dir, &temp_name(container_id))?;
    remove_name(data_dir, container_id)
}

/// Removes `data_dir/name`; already gone is fine.
pub fn remove_name(data_dir: &Path, name: &str) -> Result<(), ScratchError> {
    let path = data_dir.join(name);
    match fs::remove_file(&path) {
        Err(e) if !is_absent(&e) => Err(ScratchError::Io { path, source: e }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn save_load_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let data = dir.join("flannel");
        let mut map = Map::new();
        map.insert("type".into(), "bridge".into());
        save(&data, "abc", &map).unwrap();
        assert_eq!(
            fs::read_to_string(data.join("abc")).unwrap(),
            r#"{"type":"bridge"}"#
        );
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&data), mode(&data.join("abc"))), (0o700, 0o600));
        assert_eq!(load(&data, "abc").unwrap(), Some(map));
        assert_eq!(list(&data).unwrap(), ["abc"]);
        remove(&data, "abc").unwrap();
        remove(&data, "abc").unwrap();
        assert_eq!(load(&data, "abc").unwrap(), None);
        assert!(list(&data).unwrap().is_empty());
        assert!(list(&dir.join("none")).unwrap().is_empty());
        fs::write(data.join("bad"), "{").unwrap();
        assert!(matches!(
            load(&data, "bad"),
            Err(ScratchError::Parse { .. })
        ));
    }

    #[test]
    fn temp_files_and_long_ids() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("flannel");
        let name = temp_name("abc");
        assert!(is_temp_name(&name), "{name}");
        assert_ne!(name, temp_name("abd"));
        assert!(!is_temp_name("notes.txt") && !is_temp_name(".tmp-xyz"));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(&name), "{").unwrap();
        remove(&dir, "abc").unwrap();
        assert!(!dir.join(&name).exists());
        let long = "a".repeat(300);
        assert_eq!(load(&dir, &long).unwrap(), None);
        remove(&dir, &long).unwrap();
        assert!(!exists(&dir, &long));
    }
}
