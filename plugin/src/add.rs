//! ADD: attach a pod to the node's bridge.
//!
//! Order: validate everything and look at the kernel (nothing changed yet),
//! then save the delegate config, set up the bridge, reserve the IP, create
//! the veth, configure the pod, masquerade. Each change that is pod-specific
//! is recorded in [`Undo`]; a failure undoes them in reverse.

use std::path::Path;

use flannel_netlink::{format_mac, Handle, Netns};

use ipnet::Ipv4Net;
use node_state::host_veth_name;
use node_state::ipam::{Range, Store};
use node_state::scratch;
use serde_json::{Map, Value};
use subnet_env::SubnetEnv;

use crate::config::{BridgeConf, NetConf};
use crate::env::CniEnv;
use crate::error::{Error, Result};
use crate::masq;
use crate::pod_netns::open_pod_netns;
use crate::spec::{CniResult, Interface, IpConfig};
use crate::wiring::{self, Veth};

/// The pod-specific changes made so far, undone if a later step fails.
#[derive(Default)]
struct Undo {
    /// The saved config was written; `Some` holds the one it replaced
    /// (another attachment of this container), put back on rollback.
    scratch: Option<Option<Map<String, Value>>>,
    ip: Option<std::net::Ipv4Addr>,
    veth: Option<String>,
    masq: bool,
}

pub fn add(env: &CniEnv, conf: &NetConf) -> Result<CniResult> {
    let (delegate, bc) = bridge_conf(conf)?;
    // Validation: everything that can refuse the call does so before
    // anything changes.
    let routes = bc.result_routes()?;
    let range = Range::for_subnet(bc.subnet)?;
    let netns_path = env.netns.as_deref().expect("ADD requires CNI_NETNS");
    let pod_ns = open_pod_netns(netns_path)?;
    let mut host = Handle::new()?;
    let mut pod = Handle::in_netns(&pod_ns)?;
    if pod.link(&env.ifname)?.is_some() {
        return Err(Error::IfnameExists(env.ifname.clone()));
    }
    let plan = wiring::inspect_bridge(&mut host, &bc)?;

    let host_name = host_veth_name(&env.container_id, &env.ifname);
    let ctx = Ctx {
        env,
        bc: &bc,
        range: &range,
        pod_ns: &pod_ns,
        host_name: &host_name,
    };
    let mut undo = Undo::default();
    let result = (|| {
        let previous = scratch::load(&conf.data_dir, &env.container_id).unwrap_or(None);
        scratch::save(&conf.data_dir, &env.container_id, &delegate)?;
        undo.scratch = Some(previous);
        let bridge = wiring::apply_bridge(&mut host, &bc, plan)?;
        ctx.attach(&mut host, &mut pod, bridge, &mut undo)
    })();
    result
        .map(|res| CniResult { routes, ..res })
        .inspect_err(|_| rollback(&mut host, conf, &ctx, undo))
}

/// flannel's delegate document for this node and the settings it holds.
fn bridge_conf(conf: &NetConf) -> Result<(Map<String, Value>, BridgeConf)> {
    let senv = SubnetEnv::read(&conf.subnet_file)?;
    let delegate = conf.render_delegate(&senv)?;
    let bc = BridgeConf::from_delegate(&delegate)?;
    Ok((delegate, bc))
}

struct Ctx<'a> {
    env: &'a CniEnv,
    bc: &'a BridgeConf,
    range: &'a Range,
    pod_ns: &'a Netns,
    host_name: &'a str,
}

impl Ctx<'_> {
    /// IP, veth, pod configuration, masquerade; the result without routes.
    fn attach(
        &self,
        host: &mut Handle,
        pod: &mut Handle,
        bridge: flannel_netlink::Link,
        undo: &mut Undo,
    ) -> Result<CniResult> {
        let (env, bc) = (self.env, self.bc);
        let store = Store::create(&bc.store_dir)?;
        let ip =
            store
                .lock()?
                .allocate(self.range, &env.container_id, &env.ifname, env.requested_ip)?;
        undo.ip = Some(ip);
        let addr = Ipv4Net::new(ip, bc.subnet.prefix_len()).expect("prefix of a net");
        let names = (self.host_name, env.ifname.as_str());
        let veth = wiring::create_veth(host, pod, self.pod_ns, bc, bridge.index, names)?;
        undo.veth = Some(veth.host_name.clone());
        wiring::set_hairpin(host, bc, &veth.host_name)?;
        wiring::set_arp_notify(self.pod_ns, &env.ifname)?;
        let routes = bc.result_routes()?;
        wiring::configure_pod(pod, veth.pod_index, addr, bc.gateway(), &routes)?;
        if bc.is_gateway {
            wiring::enable_ip_forward()?;
        }
        if bc.ip_masq {
            undo.masq = true;
            masq::setup(&bc.name, &env.container_id, addr)?;
        }
        Ok(self.result(&bridge, &veth, addr))
    }

    fn result(&self, bridge: &flannel_netlink::Link, veth: &Veth, addr: Ipv4Net) -> CniResult {
        let netns = self.env.netns.as_deref().unwrap_or(Path::new(""));
        CniResult {
            interfaces: vec![
                Interface {
                    name: bridge.name.clone(),
                    mac: bridge.mac.as_ref().map(format_mac).unwrap_or_default(),
                    sandbox: String::new(),
                },
                Interface {
                    name: veth.host_name.clone(),
                    mac: format_mac(&veth.host_mac),
                    sandbox: String::new(),
                },
                Interface {
                    name: self.env.ifname.clone(),
                    mac: format_mac(&veth.pod_mac),
                    sandbox: netns.display().to_string(),
                },
            ],
            ips: vec![IpConfig {
                interface: Some(2),
                address: addr,
                gateway: Some(self.bc.gateway()),
            }],
            routes: Vec::new(),
        }
    }
}

/// Undoes the pod-specific changes in reverse order. Failures are logged:
/// the caller reports the error that caused the rollback.
fn rollback(host: &mut Handle, conf: &NetConf, ctx: &Ctx, undo: Undo) {
    let (env, bc) = (ctx.env, ctx.bc);
    let warn = |what: &str, e: &dyn std::fmt::Display| eprintln!("rollback: {what}: {e}");
    if undo.masq {
        if let Err(e) = masq::teardown(&bc.name, &[&env.container_id]) {
            warn("remove masquerade", &e);
        }
    }
    if let Some(name) = undo.veth {
        if let Err(e) = host.del_link(name.as_str()) {
            if !e.is_not_found() {
                warn("delete veth", &e);
            }
        }
    }
    if let Some(ip) = undo.ip {
        let released = Store::open(&bc.store_dir).and_then(|s| s.lock()?.remove(ip));
        if let Err(e) = released {
            warn("release IP", &e);
        }
    }
    let (dir, id) = (&conf.data_dir, &env.container_id);
    let restored = match undo.scratch {
        None => Ok(()),
        Some(None) => scratch::remove(dir, id),
        Some(Some(previous)) => scratch::save(dir, id, &previous),
    };
    if let Err(e) = restored {
        warn("restore saved config", &e);
    }
}
