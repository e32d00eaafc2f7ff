//! DEL: detach a pod. Idempotent: whatever is already gone is success, and
//! every step runs even when an earlier one failed (the first error is
//! reported). Works without `CNI_NETNS`, and without subnet.env when ADD
//! saved its delegate config.

use std::path::PathBuf;

use flannel_netlink::{Handle, Netns};
use node_state::host_veth_name;
use node_state::ipam::Store;
use node_state::scratch;
use subnet_env::SubnetEnv;

use crate::config::{BridgeConf, NetConf};
use crate::env::CniEnv;
use crate::error::{Error, Result};
use crate::masq;

/// What DEL needs to know; from the saved config when there is one.
struct Teardown {
    network: String,
    store_dir: PathBuf,
    /// `None`: unknown (no saved config, no subnet.env): look for rules.
    ip_masq: Option<bool>,
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
    note(remove_veth(env));
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
    if let Some(bc) = saved.and_then(|d| BridgeConf::from_delegate(&d).ok()) {
        return Ok(Teardown {
            network: bc.name,
            store_dir: bc.store_dir,
            ip_masq: Some(bc.ip_masq),
        });
    }
    let senv = SubnetEnv::read(&conf.subnet_file).ok();
    Ok(Teardown {
        network: conf.name.clone(),
        store_dir: conf.store_dir()?,
        ip_masq: conf.ip_masq(senv.as_ref())?,
    })
}

/// Removes the pair. With the pod's namespace at hand, through the pod end
/// (as the bridge plugin does: it can only be this attachment's); without
/// it, by the host end's derived name.
fn remove_veth(env: &CniEnv) -> Result<()> {
    let pod_ns = env.netns.as_deref().and_then(|p| Netns::open(p).ok());
    let result = match pod_ns {
        Some(ns) => Handle::in_netns(&ns)?.del_link(env.ifname.as_str()),
        None => {
            let name = host_veth_name(&env.container_id, &env.ifname);
            Handle::new()?.del_link(name.as_str())
        }
    };
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
