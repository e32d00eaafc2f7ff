//! The `subnet.env` file: the hand-off from flanneld to the CNI plugin.
//!
//! flanneld writes it once its datapath is ready; the plugin reads it on
//! every ADD. The format is flannel's, so either side can be swapped for
//! flannel's own binary:
//!
//! ```text
//! FLANNEL_NETWORK=10.244.0.0/16
//! FLANNEL_SUBNET=10.244.3.1/24
//! FLANNEL_MTU=1450
//! FLANNEL_IPMASQ=true
//! ```
//!
//! `FLANNEL_SUBNET` holds the *gateway* (first usable address) with the
//! subnet's prefix length, not the network address.
//!
//! The file is validated whole before a reader acts on it: the node's
//! subnet must lie inside the cluster network, neither may be loopback,
//! multicast or unspecified, and the file itself must be a regular file of
//! at most [`MAX_SIZE`] bytes (read without blocking: a FIFO or
//! `/dev/zero` in its place is refused, not waited on or read forever).

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;

/// Default location, as in flannel.
pub const DEFAULT_PATH: &str = "/run/flannel/subnet.env";
/// The largest file read: flannel's is about 120 bytes.
pub const MAX_SIZE: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{path}: line {line}: {msg}")]
    Parse {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("{path}: {key} is missing")]
    Missing { path: PathBuf, key: &'static str },
    #[error("{path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
}

impl Error {
    /// True when the file does not exist (flanneld has not written it yet).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Read { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// The contents of subnet.env (IPv4; flannel's IPv6 keys are ignored on read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// The whole cluster network, e.g. 10.244.0.0/16.
    pub network: Ipv4Net,
    /// This node's subnet as flannel writes it: gateway address + prefix,
    /// e.g. 10.244.3.1/24.
    pub subnet: Ipv4Net,
    pub mtu: u32,
    /// Whether flanneld masquerades traffic leaving the cluster network.
    pub ipmasq: bool,
}

impl SubnetEnv {
    /// Builds the file contents for `lease` (the subnet's network address,
    /// e.g. 10.244.3.0/24): the gateway is the first address after it.
    pub fn for_lease(network: Ipv4Net, lease: Ipv4Net, mtu: u32, ipmasq: bool) -> Self {
        let gw = Ipv4Addr::from(u32::from(lease.network()) + 1);
        let subnet = Ipv4Net::new(gw, lease.prefix_len()).expect("prefix from a valid net");
        SubnetEnv {
            network,
            subnet,
            mtu,
            ipmasq,
        }
    }

    /// The node's subnet as a network (10.244.3.0/24): what IPAM allocates from.
    pub fn node_subnet(&self) -> Ipv4Net {
        self.subnet.trunc()
    }

    /// The bridge/gateway address (10.244.3.1).
    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet.addr()
    }

    /// Reads and validates the file; see the module notes for the bounds.
    pub fn read(path: &Path) -> Result<Self, Error> {
        let read_err = |source| Error::Read {
            path: path.to_owned(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(read_err)?;
        let invalid = |msg: String| Error::Invalid {
            path: path.to_owned(),
            msg,
        };
        let meta = file.metadata().map_err(read_err)?;
        if !meta.file_type().is_file() {
            return Err(invalid("not a regular file".into()));
        }
        let mut bytes = Vec::new();
        // The size can change after the check: read at most one byte more.
        file.take(MAX_SIZE + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        if meta.len() > MAX_SIZE || bytes.len() as u64 > MAX_SIZE {
            return Err(invalid(format!("larger than {MAX_SIZE} bytes")));
        }
        let text = String::from_utf8(bytes).map_err(|_| invalid("not UTF-8 text".into()))?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, Error> {
        let (mut network, mut subnet, mut mtu, mut ipmasq) = (None, None, None, None);
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let perr = |msg: String| Error::Parse {
                path: path.to_owned(),
                line: i + 1,
                msg,
            };
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| perr(format!("expected KEY=VALUE, got {line:?}")))?;
            let value = value.trim().trim_matches('"');
            match key.trim() {
                "FLANNEL_NETWORK" => network = Some(parse_net(value).map_err(perr)?),
                "FLANNEL_SUBNET" => subnet = Some(parse_net(value).map_err(perr)?),
                "FLANNEL_MTU" => {
                    mtu = Some(
                        value
                            .parse()
                            .map_err(|_| perr(format!("bad MTU {value:?}")))?,
                    )
                }
                "FLANNEL_IPMASQ" => ipmasq = Some(value == "true"),
                _ => {}
            }
        }
        let missing = |key| Error::Missing {
            path: path.to_owned(),
            key,
        };
        let env = SubnetEnv {
            network: network.ok_or_else(|| missing("FLANNEL_NETWORK"))?,
            subnet: subnet.ok_or_else(|| missing("FLANNEL_SUBNET"))?,
            mtu: mtu.ok_or_else(|| missing("FLANNEL_MTU"))?,
            ipmasq: ipmasq.unwrap_or(false),
        };
        env.validate().map_err(|msg| Error::Invalid {
            path: path.to_owned(),
            msg,
        })?;
        Ok(env)
    }

    /// The values together: what a reader may build a bridge and routes
    /// from.
    fn validate(&self) -> Result<(), String> {
        for (key, net) in [
            ("FLANNEL_NETWORK", self.network),
            ("FLANNEL_SUBNET", self.subnet),
        ] {
            let ip = net.addr();
            let what = if ip.is_loopback() {
                "loopback"
            } else if ip.is_multicast() {
                "multicast"
            } else if ip.is_unspecified() || net.network().is_unspecified() {
                "unspecified"
            } else if ip.is_broadcast() {
                "broadcast"
            } else {
                continue;
            };
            return Err(format!("{key}={net} is a {what} address"));
        }
        let node = self.node_subnet();
        if !self.network.contains(&node) {
            return Err(format!(
                "FLANNEL_SUBNET={} is not inside FLANNEL_NETWORK={}",
                self.subnet, self.network
            ));
        }
        if !(68..=65535).contains(&self.mtu) {
            return Err(format!("FLANNEL_MTU={} is not within 68-65535", self.mtu));
        }
        Ok(())
    }

    /// Writes the file atomically (temp file in the same directory, fsync,
    /// rename, mode 0644) so a concurrent reader never sees half a file.
    pub fn write(&self, path: &Path) -> Result<(), Error> {
        let werr = |source| Error::Write {
            path: path.to_owned(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(werr)?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("subnet.env");
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let result = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(self.to_string().as_bytes())?;
            f.sync_all()?;
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))?;
            fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(werr)
    }
}

impl fmt::Display for SubnetEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "FLANNEL_NETWORK={}", self.network)?;
        writeln!(f, "FLANNEL_SUBNET={}", self.subnet)?;
        writeln!(f, "FLANNEL_MTU={}", self.mtu)?;
        writeln!(f, "FLANNEL_IPMASQ={}", self.ipmasq)
    }
}

fn parse_net(value: &str) -> Result<Ipv4Net, String> {
    value
        .parse()
        .map_err(|_| format!("bad IPv4 CIDR {value:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLANNEL: &str = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

    #[test]
    fn parses_flannels_file() {
        let env = SubnetEnv::parse(Path::new("x"), FLANNEL).unwrap();
        assert_eq!(env.network.to_string(), "10.244.0.0/16");
        assert_eq!(env.node_subnet().to_string(), "10.244.3.0/24");
        assert_eq!(env.gateway().to_string(), "10.244.3.1");
        assert_eq!(env.mtu, 1450);
        assert!(env.ipmasq);
    }

    #[test]
    fn writes_what_it_reads() {
        let env = SubnetEnv::for_lease(
            "10.244.0.0/16".parse().unwrap(),
            "10.244.3.0/24".parse().unwrap(),
            1450,
            true,
        );
        assert_eq!(env.to_string(), FLANNEL);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let path = dir.join("subnet.env");
        env.write(&path).unwrap();
        assert_eq!(SubnetEnv::read(&path).unwrap(), env);
        let mode = fs::metadata(&path).unwrap().permissions();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.mode() & 0o777, 0o644);
    }

    #[test]
    fn missing_and_bad_values_are_named() {
        let err = SubnetEnv::parse(Path::new("f"), "FLANNEL_NETWORK=10.244.0.0/16\n").unwrap_err();
        assert!(
            err.to_string().contains("FLANNEL_SUBNET is missing"),
            "{err}"
        );
        let err = SubnetEnv::parse(Path::new("f"), "FLANNEL_MTU=abc\n").unwrap_err();
        assert!(err.to_string().contains("line 1: bad MTU"), "{err}");
        assert!(SubnetEnv::read(Path::new("/nonexistent/subnet.env"))
            .unwrap_err()
            .is_not_found());
    }

    fn with(network: &str, subnet: &str, mtu: &str) -> String {
        format!("FLANNEL_NETWORK={network}\nFLANNEL_SUBNET={subnet}\nFLANNEL_MTU={mtu}\n")
    }

    #[test]
    fn values_are_validated_together() {
        let cases = [
            (with("10.244.0.0/16", "10.245.3.1/24", "1450"), "not inside"),
            (with("10.244.0.0/16", "10.0.0.1/8", "1450"), "not inside"),
            (with("127.0.0.0/8", "127.0.3.1/24", "1450"), "loopback"),
            (with("10.244.0.0/16", "127.0.0.1/24", "1450"), "loopback"),
            (with("224.0.0.0/4", "224.1.0.1/24", "1450"), "multicast"),
            (with("0.0.0.0/0", "10.1.0.1/24", "1450"), "unspecified"),
            (with("10.244.0.0/16", "0.0.0.0/24", "1450"), "unspecified"),
            (with("10.244.0.0/16", "10.244.3.1/24", "0"), "FLANNEL_MTU"),
            (
                with("10.244.0.0/16", "10.244.3.1/24", "70000"),
                "FLANNEL_MTU",
            ),
        ];
        for (text, msg) in cases {
            let err = SubnetEnv::parse(Path::new("f"), &text).unwrap_err();
            assert!(matches!(err, Error::Invalid { .. }), "{text}: {err}");
            assert!(err.to_string().contains(msg), "{text}: {err}");
        }
        SubnetEnv::parse(
            Path::new("f"),
            &with("10.244.0.0/16", "10.244.255.1/24", "68"),
        )
        .unwrap();
    }

    #[test]
    fn reads_are_bounded_and_never_block() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let big = dir.join("big");
        let mut text = FLANNEL.to_string();
        text.push_str(&"#".repeat(MAX_SIZE as usize));
        fs::write(&big, text).unwrap();
        for (path, msg) in [
            (fifo.as_path(), "not a regular file"),
            (Path::new("/dev/zero"), "not a regular file"),
            (big.as_path(), "larger than 65536 bytes"),
            (dir, "not a regular file"),
        ] {
            let err = SubnetEnv::read(path).unwrap_err();
            assert!(err.to_string().contains(msg), "{}: {err}", path.display());
        }
    }
}
