//! The per-container delegate config: `<dataDir>/<containerID>`.
//!
//! ADD saves the rendered bridge config there (as flannel's own plugin
//! does, same file, same JSON), and DEL reads it back, so DEL tears down
//! exactly what ADD built even when subnet.env or the config changed since.
//! Files written by flannel's plugin before an upgrade are read the same way.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: not a delegate config: {msg}", path.display())]
    Parse { path: PathBuf, msg: String },
}

fn path_of(data_dir: &Path, container_id: &str) -> PathBuf {
    data_dir.join(container_id)
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
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(err)?;
    let json = serde_json::to_vec(delegate).expect("a JSON map serializes");
    file.write_all(&json).map_err(err)
}

/// The saved config, or `None` when there is none.
pub fn load(
    data_dir: &Path,
    container_id: &str,
) -> Result<Option<Map<String, Value>>, ScratchError> {
    let path = path_of(data_dir, container_id);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
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

/// The container IDs that have a saved config (none when the directory
/// does not exist).
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

/// Removes the saved config; already gone is fine.
pub fn remove(data_dir: &Path, container_id: &str) -> Result<(), ScratchError> {
    let path = path_of(data_dir, container_id);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(ScratchError::Io { path, source: e }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn save_load_remove() {
        let dir = std::env::temp_dir().join(format!("scratch-{}", std::process::id()));
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
        fs::remove_dir_all(dir).unwrap();
    }
}
