//! CHECK: compare the live state with `prevResult` and say what differs.

use std::net::IpAddr;

use flannel_netlink::{format_mac, Handle, Link};
use ipnet::IpNet;
use node_state::host_veth_name;
use node_state::ipam::Store;
use subnet_env::SubnetEnv;

use crate::config::{BridgeConf, NetConf};
use crate::env::CniEnv;
use crate::error::{Error, Result};
use crate::masq;
use crate::spec::{CniResult, Interface};
use crate::wiring::gateway_net;

pub fn check(env: &CniEnv, conf: &NetConf) -> Result<()> {
    if !conf.version.allows_check() {
        return Err(Error::VerbNotInVersion {
            version: conf.version.as_str(),
            verb: "CHECK",
        });
    }
    let prev = conf.prev_result.as_ref().ok_or(Error::NoPrevResult)?;
    let prev = CniResult::from_value(prev).map_err(Error::BadPrevResult)?;
    let senv = SubnetEnv::read(&conf.subnet_file)?;
    let bc = BridgeConf::from_delegate(&conf.render_delegate(&senv)?)?;
    let netns = env.netns.as_deref().expect("CHECK requires CNI_NETNS");
    let pod_ns = crate::pod_netns::open_netns(netns)?;
    let mut checker = Checker {
        env,
        bc: &bc,
        prev: &prev,
        host: Handle::new()?,
        pod: Handle::in_netns(&pod_ns)?,
        diffs: Vec::new(),
    };
    checker.run()?;
    if checker.diffs.is_empty() {
        Ok(())
    } else {
        Err(Error::CheckMismatch(checker.diffs.join("; ")))
    }
}

struct Checker<'a> {
    env: &'a CniEnv,
    bc: &'a BridgeConf,
    prev: &'a CniResult,
    host: Handle,
    pod: Handle,
    diffs: Vec<String>,
}

impl Checker<'_> {
    fn run(&mut self) -> Result<()> {
        let Some(pod_index) = self.check_pod_link()? else {
            return Ok(());
        };
        self.check_addresses(pod_index)?;
        self.check_routes(pod_index)?;
        self.check_host_side()?;
        self.check_ipam()?;
        Ok(())
    }

    fn differs(&mut self, what: String) {
        self.diffs.push(what);
    }

    fn prev_interface(&self, name: &str) -> Option<&Interface> {
        self.prev.interfaces.iter().find(|i| i.name == name)
    }

    /// The pod interface: listed in prevResult, present, same MAC.
    fn check_pod_link(&mut self) -> Result<Option<u32>> {
        let ifname = self.env.ifname.clone();
        let Some(expected) = self.prev_interface(&ifname).cloned() else {
            self.differs(format!("prevResult lists no interface {ifname}"));
            return Ok(None);
        };
        let Some(link) = self.pod.link(&ifname)? else {
            self.differs(format!(
                "interface {ifname} is missing from the pod namespace"
            ));
            return Ok(None);
        };
        self.compare_mac(&expected, &link);
        if !link.up {
            self.differs(format!("interface {ifname} is down"));
        }
        Ok(Some(link.index))
    }

    fn compare_mac(&mut self, expected: &Interface, link: &Link) {
        let actual = link.mac.as_ref().map(format_mac).unwrap_or_default();
        if !expected.mac.is_empty() && !expected.mac.eq_ignore_ascii_case(&actual) {
            self.differs(format!(
                "interface {} has MAC {actual}, expected {}",
                expected.name, expected.mac
            ));
        }
    }

    fn check_addresses(&mut self, pod_index: u32) -> Result<()> {
        let live: Vec<IpNet> = self
            .pod
            .addrs(Some(pod_index))?
            .into_iter()
            .map(|a| a.net)
            .collect();
        for ip in &self.prev.ips {
            if !live.contains(&IpNet::V4(ip.address)) {
                let what = format!("address {} is missing from {}", ip.address, self.env.ifname);
                self.diffs.push(what);
            }
        }
        Ok(())
    }

    /// Every prevResult route, via its gateway (or the IP's) on the pod link.
    fn check_routes(&mut self, pod_index: u32) -> Result<()> {
        let live = self.pod.routes(false)?;
        let default_gw = self
            .prev
            .ips
            .first()
            .and_then(|i| i.gateway)
            .map(IpAddr::V4);
        for r in &self.prev.routes {
            let gw = r.gw.or(default_gw);
            let found = live.iter().any(|k| {
                k.dst == r.dst && k.oif == Some(pod_index) && (gw.is_none() || k.gateway == gw)
            });
            if !found {
                let via = gw.map(|g| format!(" via {g}")).unwrap_or_default();
                self.differs(format!("route {}{via} is missing from the pod", r.dst));
            }
        }
        Ok(())
    }

    /// Host veth on the bridge, with its MAC; bridge holding the gateway.
    fn check_host_side(&mut self) -> Result<()> {
        let bridge_name = self.bc.bridge.clone();
        let Some(bridge) = self.host.link(&bridge_name)? else {
            self.differs(format!("bridge {bridge_name} is missing"));
            return Ok(());
        };
        let name = host_veth_name(&self.env.container_id, &self.env.ifname);
        match self.host.link(&name)? {
            None => self.differs(format!("host interface {name} is missing")),
            Some(link) => {
                if link.master != Some(bridge.index) {
                    self.differs(format!(
                        "host interface {name} is not on bridge {bridge_name}"
                    ));
                }
                if let Some(expected) = self.prev_interface(&name).cloned() {
                    self.compare_mac(&expected, &link);
                }
            }
        }
        if self.bc.is_gateway {
            let want = gateway_net(self.bc);
            let addrs = self.host.addrs(Some(bridge.index))?;
            if !addrs.iter().any(|a| a.net == want) {
                self.differs(format!(
                    "bridge {bridge_name} lacks the gateway address {want}"
                ));
            }
        }
        Ok(())
    }

    /// The IP is still reserved for this attachment (and masqueraded).
    fn check_ipam(&mut self) -> Result<()> {
        let allocations = Store::open(&self.bc.store_dir)?.allocations()?;
        for ip in &self.prev.ips {
            let ip = ip.address.addr();
            let mine = allocations.iter().any(|a| {
                a.ip == ip && a.container_id == self.env.container_id && a.ifname == self.env.ifname
            });
            if !mine {
                self.differs(format!("IP {ip} is not reserved for this container"));
            }
            if self.bc.ip_masq && !masq::is_set_up(&self.bc.name, &self.env.container_id, ip)? {
                self.differs(format!("masquerade rule for {ip} is missing"));
            }
        }
        Ok(())
    }
}
