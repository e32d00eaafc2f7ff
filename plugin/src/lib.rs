//! A Flannel-compatible CNI plugin: flannel's meta-plugin, the bridge
//! plugin and host-local IPAM in one executable.
//!
//! kube-flannel's config (`{"type":"flannel","delegate":{…}}`) and the
//! on-disk state of flannel + bridge + host-local are used unchanged; one
//! exec and a handful of netlink round trips replace three processes.
//!
//! What flanneld reads of the plugin's work (the IPAM store, the host veth
//! names) and the firewall runner both use live in `node_state`.

pub mod add;
pub mod check;
pub mod config;
pub mod del;
pub mod env;
pub mod error;
pub mod gc;
pub mod masq;
pub mod pod_netns;
pub mod spec;
pub mod wiring;

pub use error::{Error, Result};

use config::NetConf;
use env::{CniEnv, Command};
use spec::CniError;

/// What one invocation prints on success (`None`: nothing).
pub type Output = Option<String>;

/// Runs one CNI call: `lookup` reads the environment, `stdin` is the
/// config. On failure, the error to print.
pub fn run(
    lookup: impl Fn(&str) -> Option<String>,
    stdin: &[u8],
) -> std::result::Result<Output, CniError> {
    let env = CniEnv::from_lookup(lookup).map_err(|e| Error::from(e).to_cni())?;
    if env.command == Command::Version {
        return Ok(Some(spec::version_json()));
    }
    let conf = NetConf::parse(stdin).map_err(|e| Error::from(e).to_cni())?;
    let cni = |e: Error| e.to_cni();
    match env.command {
        Command::Add => add::add(&env, &conf)
            .map(|r| Some(r.to_json(conf.version)))
            .map_err(cni),
        Command::Del => del::del(&env, &conf).map(|_| None).map_err(cni),
        Command::Check => check::check(&env, &conf).map(|_| None).map_err(cni),
        Command::Status => gc::status(&conf).map(|_| None),
        Command::Gc => gc::gc(&conf).map(|_| None).map_err(cni),
        Command::Version => unreachable!("handled above"),
    }
}
