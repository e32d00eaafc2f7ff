//! GC and STATUS (CNI 1.1).

use std::collections::HashSet;

use flannel_netlink::Handle;
use node_state::host_veth_name;
use node_state::ipam::{Allocation, Store};
use node_state::scratch::{self, ScratchError};
use subnet_env::SubnetEnv;

use crate::config::NetConf;
use crate::env::validate_container_id;
use crate::error::{Error, Result};
use crate::masq;
use crate::spec::{code, CniError};

fn require_1_1(conf: &NetConf, verb: &'static str) -> Result<()> {
    if conf.version.allows_status_and_gc() {
        Ok(())
    } else {
        Err(Error::VerbNotInVersion {
            version: conf.version.as_str(),
            verb,
        })
    }
}

/// STATUS: ready once flanneld has written a readable subnet.env.
pub fn status(conf: &NetConf) -> std::result::Result<(), CniError> {
    require_1_1(conf, "STATUS").map_err(|e| e.to_cni())?;
    SubnetEnv::read(&conf.subnet_file).map(|_| ()).map_err(|e| {
        CniError::new(code::NOT_AVAILABLE, "flannel is not ready").with_details(e.to_string())
    })
}

/// GC: releases every allocation of this network that is not a valid
/// attachment, with its veth, masquerade rules and saved config, and the
/// saved configs of containers that are not valid.
pub fn gc(conf: &NetConf) -> Result<()> {
    require_1_1(conf, "GC")?;
    let valid = conf
        .valid_attachments
        .as_ref()
        .ok_or(Error::NoAttachments)?;
    let keep: HashSet<(String, String)> = valid.iter().cloned().collect();
    let kept_ids: HashSet<&str> = keep.iter().map(|(id, _)| id.as_str()).collect();
    let mut first_error = release_allocations(conf, &keep, &kept_ids).err();
    if let Err(e) = remove_unused_saved(conf, &kept_ids) {
        first_error.get_or_insert(e);
    }
    first_error.map_or(Ok(()), Err)
}

/// Releases the allocations not in `keep`, with their veths, masquerade
/// rules and saved configs.
fn release_allocations(
    conf: &NetConf,
    keep: &HashSet<(String, String)>,
    kept_ids: &HashSet<&str>,
) -> Result<()> {
    let store_dir = conf.store_dir()?;
    if !store_dir.exists() {
        return Ok(());
    }
    let mut released = Store::open(&store_dir)?.lock()?.release_all_except(keep)?;
    // A file without an owner (ADD killed before writing it) is released
    // above and has nothing else: no veth, rules or saved config.
    released.retain(|a| !a.container_id.is_empty());
    if released.is_empty() {
        return Ok(());
    }
    let mut first_error = remove_veths(&released, keep).err();
    let gone: Vec<&str> = released
        .iter()
        .map(|a| a.container_id.as_str())
        .filter(|id| !kept_ids.contains(id))
        .collect();
    if let Err(e) = remove_masq(conf, &gone) {
        first_error.get_or_insert(e);
    }
    for id in gone {
        if let Err(e) = scratch::remove(&conf.data_dir, id) {
            first_error.get_or_insert(e.into());
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Removes this network's saved configs of containers not kept, also
/// those no allocation records: ADD saves its config before it reserves
/// an address, so an ADD killed in between leaves only the config. The
/// directory may hold other files: only a file named as a container ID
/// holding this network's delegate config goes, and temp files named as
/// [`scratch::temp_name`] names them that no kept container's write uses.
fn remove_unused_saved(conf: &NetConf, kept_ids: &HashSet<&str>) -> Result<()> {
    let kept_temps: HashSet<String> = kept_ids.iter().map(|id| scratch::temp_name(id)).collect();
    for name in scratch::list(&conf.data_dir)? {
        if scratch::is_temp_name(&name) {
            if !kept_temps.contains(&name) {
                scratch::remove_name(&conf.data_dir, &name)?;
            }
            continue;
        }
        let unused = !kept_ids.contains(name.as_str()) && validate_container_id(&name).is_ok();
        if unused && saved_for_network(conf, &name)? {
            scratch::remove(&conf.data_dir, &name)?;
        }
    }
    Ok(())
}

/// Whether `id`'s file is a saved config of this network. Anything else
/// (not JSON, another network's, a file of someone else's) is not ours:
/// saved configs are written atomically, so ours are always complete.
fn saved_for_network(conf: &NetConf, id: &str) -> Result<bool> {
    match scratch::load(&conf.data_dir, id) {
        Ok(Some(saved)) => Ok(
            saved.get("name").and_then(|n| n.as_str()) == Some(&conf.name)
                && saved.get("type").and_then(|t| t.as_str()).is_some(),
        ),
        Ok(None) | Err(ScratchError::Parse { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Removes the masquerade chains of the released containers. When the
/// config does not say whether pods were masqueraded, only best effort.
fn remove_masq(conf: &NetConf, gone: &[&str]) -> Result<()> {
    let senv = SubnetEnv::read(&conf.subnet_file).ok();
    let ip_masq = conf.ip_masq(senv.as_ref())?;
    if ip_masq == Some(false) || gone.is_empty() {
        return Ok(());
    }
    match masq::teardown(&conf.name, gone) {
        Err(e) if ip_masq == Some(true) => Err(e.into()),
        Err(e) => {
            eprintln!("GC: masquerade rules not checked: {e}");
            Ok(())
        }
        Ok(()) => Ok(()),
    }
}

/// Deletes the host veths of released attachments, except a name that a
/// kept attachment also derives (a hash clash): that one is in use.
fn remove_veths(released: &[Allocation], keep: &HashSet<(String, String)>) -> Result<()> {
    let in_use: HashSet<String> = keep
        .iter()
        .map(|(id, ifn)| host_veth_name(id, ifn))
        .collect();
    let mut host = Handle::new()?;
    for a in released {
        let name = host_veth_name(&a.container_id, &a.ifname);
        if in_use.contains(&name) {
            continue;
        }
        match host.del_link(name.as_str()) {
            Err(e) if !e.is_not_found() => return Err(e.into()),
            _ => {}
        }
    }
    Ok(())
}
