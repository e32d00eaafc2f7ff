//! Everything before the loop, in order: the public interface, the etcd
//! client, the network config (waited for), the VTEP MAC, the lease. This
//! is the etcd- and kernel-facing edge (only the connection and its TLS
//! hint know it is etcd); the loop gets its results as values.

use std::time::{Duration, SystemTime};

use anyhow::Context;
use flannel_netlink::{Handle, Mac};
use ipnet::{IpNet, Ipv4Net};
use subnet_env::SubnetEnv;
use tokio::time::{sleep, Instant};

use super::backoff::Backoff;
use super::event_loop::{Boot, BACKOFF_MAX, BACKOFF_MIN};
use super::Signals;
use crate::backend::DeviceSpec;
use crate::cli::Options;
use crate::config::NetworkConfig;
use crate::iface::{self, ExtIface};
use crate::lease::etcd::{EtcdOptions, EtcdStore};
use crate::lease::{
    acquire, config_key, find_own, mac_problem, subnets_prefix, LeaseAttrs, LeaseError,
    LeaseRequest, LeaseStore, OwnLease, StoreError, SystemClock, VxlanData,
};
use crate::{info, warn};

/// How often "still waiting" is logged.
const WAIT_LOG_EVERY: Duration = Duration::from_secs(5);
/// Follows a failure to reach etcd over TLS without a client certificate:
/// the refusal of an etcd that requires one reaches us as "connection
/// closed" only.
const NO_CLIENT_CERT_HINT: &str = " (no client certificate was given: if etcd requires one \
     (--client-cert-auth), give --etcd-certfile and --etcd-keyfile)";

pub fn etcd_options(o: &Options) -> EtcdOptions {
    EtcdOptions {
        endpoints: o.etcd_endpoints.clone(),
        cafile: o.etcd_cafile.clone(),
        certfile: o.etcd_certfile.clone(),
        keyfile: o.etcd_keyfile.clone(),
        username: o.etcd_username.clone(),
        password: o.etcd_password.clone(),
    }
}

/// Interface, config, VTEP MAC and lease, in that order, and the store
/// they came from. `None` when a signal came while waiting.
pub(super) async fn bootstrap(
    opts: &Options,
    signals: &mut Signals,
) -> anyhow::Result<Option<(Boot, EtcdStore)>> {
    let mut handle = Handle::new().context("cannot open a netlink socket")?;
    let ext = iface::find(&mut handle, &opts.iface).context("cannot find the public interface")?;
    let public_ip = opts.public_ip.unwrap_or(ext.addr);
    info!(
        "using interface {} ({}), public IP {public_ip}",
        ext.name, ext.addr
    );
    let etcd = etcd_options(opts);
    let store = EtcdStore::connect(&etcd).await?;
    let hint = if etcd.tls_without_client_cert() {
        NO_CLIENT_CERT_HINT
    } else {
        ""
    };
    let Some(config) = wait_config(&store, &opts.etcd_prefix, hint, signals).await else {
        return Ok(None);
    };
    if config.backend.direct_routing {
        warn!("Backend.DirectRouting is not supported: every peer is reached through VXLAN");
    }
    let prefix = &opts.etcd_prefix;
    let device = probe(&config, &ext);
    let previous = previous_subnet(&mut handle, &opts.subnet_file, &device, &config);
    let own = (public_ip, previous);
    let vtep_mac = choose_mac(&mut handle, &store, prefix, &device, own).await;
    let attrs = LeaseAttrs::vxlan(
        public_ip,
        VxlanData {
            vni: config.backend.vni,
            vtep_mac,
        },
    );
    let req = LeaseRequest {
        prefix,
        config: &config,
        attrs: attrs.clone(),
        previous,
    };
    let Some(own) = acquire_retrying(&store, &req, signals).await? else {
        return Ok(None);
    };
    info!(
        "lease {} ({:?}), expires {}",
        own.subnet,
        own.origin,
        expiry_text(own.expires)
    );
    let mtu = config.backend.mtu.unwrap_or(ext.mtu.saturating_sub(50));
    let boot = Boot {
        config,
        ext,
        attrs,
        mtu,
        own,
    };
    Ok(Some((boot, store)))
}

/// Waits for `<prefix>/config`, logging why every few seconds (`hint`
/// follows a failure to read it). `None` when a signal came first.
async fn wait_config(
    store: &impl LeaseStore,
    prefix: &str,
    hint: &str,
    signals: &mut Signals,
) -> Option<NetworkConfig> {
    let key = config_key(prefix);
    let mut last_log: Option<Instant> = None;
    loop {
        let problem = match store.get(&key).await {
            Ok(Some(r)) => match NetworkConfig::parse(&String::from_utf8_lossy(&r.value)) {
                Ok(c) => return Some(c),
                Err(e) => format!("invalid config at {key}: {e}"),
            },
            Ok(None) => format!("waiting for the network config at {key}"),
            // etcd answered: the connection (what `hint` is about) works.
            Err(e @ StoreError::Refused(_)) => format!("cannot read {key}: {e}"),
            Err(e) => format!("cannot read {key}: {e}{hint}"),
        };
        if last_log.is_none_or(|t| t.elapsed() >= WAIT_LOG_EVERY) {
            warn!("{problem}");
            last_log = Some(Instant::now());
        }
        tokio::select! {
            _ = sleep(Duration::from_secs(1)) => {}
            _ = signals.recv() => return None,
        }
    }
}

/// Our device as it would be now, to recognise an existing one.
fn probe(config: &NetworkConfig, ext: &ExtIface) -> DeviceSpec {
    DeviceSpec {
        vni: config.backend.vni,
        port: config.backend.port,
        link: ext.index,
        local: ext.addr,
        mtu: 0,
        mac: [0; 6],
        subnet: config.network,
    }
}

/// The subnet this node had: subnet.env's (what the local pods got their
/// addresses from), else the one our existing VXLAN device carries.
fn previous_subnet(
    h: &mut Handle,
    subnet_file: &std::path::Path,
    device: &DeviceSpec,
    config: &NetworkConfig,
) -> Option<Ipv4Net> {
    if let Ok(env) = SubnetEnv::read(subnet_file) {
        return Some(env.node_subnet());
    }
    let link = h.link(&device.name()).ok().flatten()?;
    let addrs = h.addrs(Some(link.index)).ok()?;
    addrs.iter().find_map(|a| match a.net {
        IpNet::V4(n) if n.prefix_len() == 32 && config.network.contains(&n.addr()) => {
            Ipv4Net::new(n.addr(), config.subnet_len)
                .ok()
                .map(|s| s.trunc())
        }
        _ => None,
    })
}

/// The VTEP MAC: the existing device's (nothing changes on a restart),
/// else the one our lease already publishes (if a device could have it),
/// else a new random one.
async fn choose_mac(
    h: &mut Handle,
    store: &impl LeaseStore,
    prefix: &str,
    device: &DeviceSpec,
    (public_ip, previous): (std::net::Ipv4Addr, Option<Ipv4Net>),
) -> Mac {
    if let Ok(Some(link)) = h.link(&device.name()) {
        if let (true, Some(mac)) = (device.accepts(&link), link.mac) {
            return mac;
        }
    }
    let listing = store
        .list(&subnets_prefix(prefix))
        .await
        .unwrap_or_default();
    let from_lease = find_own(&listing.records, public_ip, previous)
        .0
        .and_then(|(r, _)| {
            let attrs: LeaseAttrs = serde_json::from_slice(&r.value).ok()?;
            let data = attrs.vxlan_data().ok()?;
            (data.vni == device.vni).then_some(data.vtep_mac)
        });
    let usable = from_lease.filter(|mac| mac_problem(mac, None).is_none());
    usable.unwrap_or_else(crate::util::random_mac)
}

/// Acquires a lease, waiting out an unreachable etcd; other failures
/// (e.g. no free subnet) are fatal.
async fn acquire_retrying(
    store: &impl LeaseStore,
    req: &LeaseRequest<'_>,
    signals: &mut Signals,
) -> anyhow::Result<Option<OwnLease>> {
    let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    loop {
        match acquire(store, &SystemClock, req).await {
            Ok(own) => return Ok(Some(own)),
            Err(LeaseError::Store(e)) => warn!("cannot acquire a lease yet: {e}"),
            Err(e) => return Err(e).context("cannot acquire a subnet lease"),
        }
        tokio::select! {
            _ = sleep(backoff.next_delay()) => {}
            _ = signals.recv() => return Ok(None),
        }
    }
}

pub(super) fn expiry_text(t: Option<SystemTime>) -> String {
    t.map_or("never (reservation)".into(), crate::log::timestamp)
}
