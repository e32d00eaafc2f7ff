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

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;

/// Default location, as in flannel.
pub const DEFAULT_PATH: &str = "/run/flannel/subnet.env";

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

    pub fn read(path: &Path) -> Result<Self, Error> {
        let text = fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
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
        Ok(SubnetEnv {
            network: network.ok_or_else(|| missing("FLANNEL_NETWORK"))?,
            subnet: subnet.ok_or_else(|| missing("FLANNEL_SUBNET"))?,
            mtu: mtu.ok_or_else(|| missing("FLANNEL_MTU"))?,
            ipmasq: ipmasq.unwrap_or(false),
        })
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
        let dir = std::env::temp_dir().join(format!("subnet-env-test-{}", std::process::id()));
        let path = dir.join("subnet.env");
        env.write(&path).unwrap();
        assert_eq!(SubnetEnv::read(&path).unwrap(), env);
        let mode = fs::metadata(&path).unwrap().permissions();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.mode() & 0o777, 0o644);
        fs::remove_dir_all(dir).unwrap();
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
}
