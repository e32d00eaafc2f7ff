//! The crate's error: every module's error, and what it means in CNI terms.

use std::path::PathBuf;

use node_state::ipam::IpamError;
use node_state::iptables::IptablesError;
use node_state::mac::MacError;
use node_state::scratch::ScratchError;

use crate::config::ConfigError;
use crate::env::EnvError;
use crate::spec::{code, CniError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Scratch(#[from] ScratchError),
    #[error(transparent)]
    Masq(#[from] IptablesError),
    #[error(transparent)]
    Mac(#[from] MacError),
    #[error(transparent)]
    Netlink(#[from] flannel_netlink::Error),
    #[error(transparent)]
    SubnetEnv(#[from] subnet_env::Error),
    #[error("failed to open netns {}: {source}", path.display())]
    Netns {
        path: PathBuf,
        source: flannel_netlink::Error,
    },
    #[error("failed to open netns {}: {source}", path.display())]
    NotNetns {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("netns {} is the plugin's own network namespace", .0.display())]
    OwnNetns(PathBuf),
    #[error("container veth name provided ({0}) already exists")]
    IfnameExists(String),
    #[error(
        "{bridge:?} already has an IP address different from {want}, and ports attached: {ports} (DEL their pods, or set forceAddress)"
    )]
    BridgeAddress {
        bridge: String,
        want: String,
        ports: String,
    },
    #[error("{bridge:?} exists and is not a bridge")]
    NotABridge { bridge: String },
    #[error(
        "host interface {0} already exists (another pod's, or left over: DEL this container first)"
    )]
    HostVethExists(String),
    #[error("CHECK failed: {0}")]
    CheckMismatch(String),
    #[error("config version {version} does not allow {verb}")]
    VerbNotInVersion {
        version: &'static str,
        verb: &'static str,
    },
    #[error("required prevResult missing")]
    NoPrevResult,
    #[error("invalid prevResult: {0}")]
    BadPrevResult(String),
    #[error("GC needs cni.dev/valid-attachments")]
    NoAttachments,
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The CNI error code: well-known codes where one fits, ours (100+)
    /// otherwise.
    pub fn code(&self) -> u32 {
        match self {
            Error::Env(_) | Error::Netns { .. } | Error::NotNetns { .. } | Error::OwnNetns(_) => {
                code::INVALID_ENV
            }
            Error::Config(ConfigError::Decode(_)) | Error::BadPrevResult(_) => {
                code::DECODING_FAILURE
            }
            Error::Config(ConfigError::Version(_)) | Error::VerbNotInVersion { .. } => {
                code::INCOMPATIBLE_VERSION
            }
            Error::Config(ConfigError::Invalid(_))
            | Error::NoPrevResult
            | Error::NoAttachments
            | Error::Ipam(IpamError::TooSmall(_)) => code::INVALID_CONFIG,
            Error::Ipam(IpamError::Exhausted(_)) => code::RANGE_EXHAUSTED,
            Error::Ipam(IpamError::Duplicate { .. }) => code::DUPLICATE_ALLOCATION,
            Error::Ipam(IpamError::Unavailable { .. }) => code::IP_UNAVAILABLE,
            Error::Ipam(IpamError::Io { .. })
            | Error::Scratch(_)
            | Error::Mac(_)
            | Error::Io { .. } => code::IO_FAILURE,
            Error::SubnetEnv(e) if e.is_not_found() => code::TRY_AGAIN_LATER,
            Error::SubnetEnv(subnet_env::Error::Read { .. }) => code::IO_FAILURE,
            Error::SubnetEnv(_) => code::INVALID_CONFIG,
            Error::Masq(_) => code::FIREWALL,
            Error::Netlink(_) => code::KERNEL,
            Error::IfnameExists(_) => code::IFNAME_EXISTS,
            Error::BridgeAddress { .. } | Error::NotABridge { .. } => code::BRIDGE_ADDRESS,
            Error::HostVethExists(_) => code::HOST_VETH_EXISTS,
            Error::CheckMismatch(_) => code::CHECK_MISMATCH,
        }
    }

    pub fn to_cni(&self) -> CniError {
        CniError::new(self.code(), self.to_string())
    }
}
