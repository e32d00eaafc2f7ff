//! DEL: detach a pod. Idempotent: whatever is already gone is success, and
//! every step runs even when an earlier one failed (the first error is
//! reported). Works without `CNI_NETNS`, and without subnet.env when ADD
//! saved its delegate config.
//!
//! DEL only ever removes what this container's ADD made. `CNI_NETNS` and
//! `CNI_IFNAME` come from the caller and may name anything (the node's own
//! namespace and its bridge, another pod's namespace and its eth0), so a
//! link is deleted only when the node's records say it is this
//! attachment's: the host end under the name derived from the attachment
//! when the saved config or the IPAM store says this container was added,
//! or else (a pod wired by the reference bridge plugin, whose host end has
//! a random name) a veth in the pod namespace that carries an address the
//! IPAM store records for this container and interface.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use flannel_netlink::Handle;
use node_state::host_veth_name;
use node_state::ipam::Store;
use node_state::scratch;
use subnet_env::SubnetEnv;

use crate::config::{BridgeConf, NetConf};
use crate::env::CniEnv;
use crate::error::{Error, Result};
use crate::masq;
use crate::pod_netns::open_pod_netns;

/// What DEL needs to know; from the saved config when there is one.
struct Teardown {
    network: String,
    store_dir: PathBuf,
    /// `None`: unknown (no saved config, no subnet.env): look for rules.
    ip_masq: Option<bool>,
    /// Whether a saved config of this container exists (ADD got that far).
    saved: bool,
    /// The addresses the IPAM store records for this attachment.
    owned_ips: Vec<Ipv4Addr>,
}

impl Teardown {
    /// Whether the node's records say that this container was added.
    fn added(&self) -> bool {
        self.saved || !self.owned_ips.is_empty()
    }
}

pub fn del(env: &CniEnv, conf: &NetConf) -> Result<()> {
    let plan = teardown_plan(env, conf)?;
    let mut first_error: Option<Error> = None;
    let mut note = |r: Result<()>| {
        if let Err(e) = r {
            eprintln!("DEL {}: {e}", env.container_id);
            first_error.get_or_insert(e);
        }
    };
    note(remove_veth(env, &plan));
    note(release_ip(env, &plan));
    let masq = || masq::teardown(&plan.network, &[&env.container_id]);
    match plan.ip_masq {
        Some(true) => note(masq().map_err(Error::from)),
        // Unknown whether ADD masqueraded: look, but a node without
        // iptables must not make DEL fail forever.
        None => {
            if let Err(e) = masq() {
                eprintln!(
                    "DEL {}: masquerade rules not checked: {e}",
                    env.container_id
                );
            }
        }
        Some(false) => {}
    }
    match first_error {
        // Kept on failure, so that a retried DEL still knows what to undo.
        None => Ok(scratch::remove(&conf.data_dir, &env.container_id)?),
        Some(e) => Err(e),
    }
}

fn teardown_plan(env: &CniEnv, conf: &NetConf) -> Result<Teardown> {
    let saved = match scratch::load(&conf.data_dir, &env.container_id) {
        Ok(saved) => saved,
        Err(e) => {
            eprintln!("DEL {}: ignoring saved config: {e}", env.container_id);
            None
        }
    };
    let was_saved = saved.is_some() || scratch::exists(&conf.data_dir, &env.container_id);
    let mut plan = match saved.and_then(|d| BridgeConf::from_delegate(&d).ok()) {
        Some(bc) => Teardown {
            network: bc.name,
            store_dir: bc.store_dir,
            ip_masq: Some(bc.ip_masq),
            saved: was_saved,
            owned_ips: Vec::new(),
        },
        None => {
            let senv = SubnetEnv::read(&conf.subnet_file).ok();
            Teardown {
                network: conf.name.clone(),
                store_dir: conf.store_dir()?,
                ip_masq: conf.ip_masq(senv.as_ref())?,
                saved: was_saved,
                owned_ips: Vec::new(),
            }
        }
    };
    plan.owned_ips = owned_ips(env, &plan.store_dir);
    Ok(plan)
}

/// The addresses the store records for (`id`, `ifname`), or for `id`
/// alone in files of host-local versions that wrote no interface name.
fn owned_ips(env: &CniEnv, store_dir: &std::path::Path) -> Vec<Ipv4Addr> {
    let Ok(all) = Store::open(store_dir).and_then(|s| s.allocations()) else {
        return Vec::new();
    };
    all.into_iter()
        .filter(|a| a.container_id == env.container_id)
        .filter(|a| a.ifname == env.ifname || a.ifname.is_empty())
        .map(|a| a.ip)
        .collect()
}

/// Removes the pair: by the host end's derived name when this container
/// was added, otherwise through the pod end if the records say it is this
/// attachment's. Anything else is left alone (and logged).
fn remove_veth(env: &CniEnv, plan: &Teardown) -> Result<()> {
    let mut host = Handle::new()?;
    if plan.added() {
        let name = host_veth_name(&env.container_id, &env.ifname);
        let is_veth = |l: &flannel_netlink::Link| l.kind.as_deref() == Some("veth");
        if host.link(&name)?.is_some_and(|l| is_veth(&l)) {
            return ignore_not_found(host.del_link(name.as_str()));
        }
    }
    let Some(path) = env.netns.as_deref() else {
        return Ok(());
    };
    let pod_ns = match open_pod_netns(path) {
        Ok(ns) => ns,
        Err(e) => {
            eprintln!("DEL {}: pod namespace not used: {e}", env.container_id);
            return Ok(());
        }
    };
    let mut pod = Handle::in_netns(&pod_ns)?;
    let Some(link) = pod.link(&env.ifname)? else {
        return Ok(());
    };
    if link.kind.as_deref() == Some("veth") && carries_owned_ip(&mut pod, &link, plan)? {
        return ignore_not_found(pod.del_link(link.index));
    }
    eprintln!(
        "DEL {}: {} in {} is not this container's attachment: left alone",
        env.container_id,
        env.ifname,
        path.display()
    );
    Ok(())
}

/// Whether `link` holds an address the store records for this attachment.
fn carries_owned_ip(
    pod: &mut Handle,
    link: &flannel_netlink::Link,
    plan: &Teardown,
) -> Result<bool> {
    let addrs = pod.addrs(Some(link.index))?;
    Ok(addrs
        .iter()
        .any(|a| matches!(a.net.addr(), IpAddr::V4(ip) if plan.owned_ips.contains(&ip))))
}

fn ignore_not_found(result: flannel_netlink::Result<()>) -> Result<()> {
    match result {
        Err(e) if !e.is_not_found() => Err(e.into()),
        _ => Ok(()),
    }
}

fn release_ip(env: &CniEnv, plan: &Teardown) -> Result<()> {
    let store = match Store::open(&plan.store_dir) {
        Ok(store) => store,
        // No store: nothing was ever allocated there.
        Err(_) if !plan.store_dir.exists() => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    store.lock()?.release(&env.container_id, &env.ifname)?;
    Ok(())
}
