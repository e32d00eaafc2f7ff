//! The plugin's configuration: flannel's options, and the bridge settings
//! flannel derives from them and from subnet.env.
//!
//! flannel's own plugin turns its config into a "delegate" config for the
//! reference bridge plugin and saves it per container, so that DEL works
//! after subnet.env is gone. This plugin renders the same delegate document
//! (same keys, same defaults), saves it the same way (see [`node_state::scratch`])
//! and reads its bridge settings from it, for ADD and DEL alike.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use ipnet::{IpNet, Ipv4Net};
use node_state::ipam::DEFAULT_DATA_DIR as DEFAULT_IPAM_DIR;
use serde_json::{Map, Value};
use subnet_env::SubnetEnv;

use crate::env::validate_ifname;
use crate::spec::{Route, Version};

pub const DEFAULT_SUBNET_FILE: &str = subnet_env::DEFAULT_PATH;
/// Where flannel keeps the per-container delegate configs.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/flannel";
pub const DEFAULT_BRIDGE: &str = "cni0";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not JSON, or a field of the wrong type (CNI code 6).
    #[error("error unmarshall network config: {0}")]
    Decode(String),
    /// Understood but unusable (CNI code 7).
    #[error("{0}")]
    Invalid(String),
    /// A `cniVersion` this plugin does not speak (CNI code 1).
    #[error("incompatible CNI versions: config is {0:?}, plugin supports [0.3.0 0.3.1 0.4.0 1.0.0 1.1.0]")]
    Version(String),
}

fn decode(what: &str, e: impl std::fmt::Display) -> ConfigError {
    ConfigError::Decode(format!("{what}: {e}"))
}

/// What came in on stdin.
#[derive(Debug, Clone)]
pub struct NetConf {
    pub version: Version,
    pub name: String,
    pub subnet_file: PathBuf,
    pub data_dir: PathBuf,
    /// `delegate` as given (bridge options), before flannel's defaults.
    pub delegate: Map<String, Value>,
    /// The top-level `ipam` object as given.
    pub ipam: Map<String, Value>,
    pub runtime_config: Option<Value>,
    pub prev_result: Option<Value>,
    /// GC: the attachments to keep, as (container ID, ifname).
    pub valid_attachments: Option<Vec<(String, String)>>,
}

/// The `cniVersion` of a document, if it has a string one: error replies
/// are written in it even when the rest of the config is unusable.
pub fn peek_version(stdin: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(stdin).ok()?;
    Some(value.get("cniVersion")?.as_str()?.to_string())
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<NetConf, ConfigError> {
        let value: Value = serde_json::from_slice(stdin).map_err(|e| decode("stdin", e))?;
        let Value::Object(mut doc) = value else {
            return Err(ConfigError::Decode("config is not a JSON object".into()));
        };
        let version_text = opt_str(&doc, "cniVersion")?.unwrap_or_default();
        let version =
            Version::parse(&version_text).ok_or(ConfigError::Version(version_text.clone()))?;
        let name = opt_str(&doc, "name")?.unwrap_or_default();
        validate_network_name(&name)?;
        let path = |key, default: &str| -> Result<PathBuf, ConfigError> {
            Ok(PathBuf::from(
                opt_str(&doc, key)?.unwrap_or_else(|| default.to_string()),
            ))
        };
        let data_dir = path("dataDir", DEFAULT_DATA_DIR)?;
        refuse_empty_dir("dataDir", &data_dir)?;
        let subnet_file = path("subnetFile", DEFAULT_SUBNET_FILE)?;
        let ipam = take_object(&mut doc, "ipam")?;
        ipam_base(&ipam)?;
        Ok(NetConf {
            version,
            subnet_file,
            data_dir,
            delegate: take_object(&mut doc, "delegate")?,
            ipam,
            runtime_config: doc.remove("runtimeConfig").filter(|v| !v.is_null()),
            prev_result: doc.remove("prevResult").filter(|v| !v.is_null()),
            valid_attachments: attachments(&doc)?,
            name,
        })
    }

    /// The IPAM store directory: `<ipam.dataDir>/<network name>`.
    pub fn store_dir(&self) -> Result<PathBuf, ConfigError> {
        Ok(ipam_base(&self.ipam)?.join(&self.name))
    }

    /// `delegate.ipMasq` if the config sets it; flannel's default otherwise.
    pub fn ip_masq(&self, env: Option<&SubnetEnv>) -> Result<Option<bool>, ConfigError> {
        match self.delegate.get("ipMasq") {
            Some(v) => Ok(Some(as_bool(v, "delegate.ipMasq")?)),
            None => Ok(env.map(|e| !e.ipmasq)),
        }
    }

    /// flannel's delegate document for this node: the bridge plugin's
    /// config with flannel's defaults and the IPAM section filled in.
    pub fn render_delegate(&self, env: &SubnetEnv) -> Result<Map<String, Value>, ConfigError> {
        let mut d = self.delegate.clone();
        if d.get("type").is_some_and(|t| !t.is_string()) {
            return Err(invalid(
                "'delegate' dictionary, if present, must have (string) 'type' field",
            ));
        }
        for key in ["name", "ipam"] {
            if d.contains_key(key) {
                return Err(invalid(&format!(
                    "'delegate' dictionary must not have '{key}' field, it'll be set by flannel"
                )));
            }
        }
        if let Some(rc) = &self.runtime_config {
            d.insert("runtimeConfig".into(), rc.clone());
        }
        d.insert("name".into(), self.name.clone().into());
        d.entry("type").or_insert_with(|| "bridge".into());
        d.entry("ipMasq").or_insert_with(|| (!env.ipmasq).into());
        d.entry("mtu").or_insert_with(|| env.mtu.into());
        if d["type"] == "bridge" {
            d.entry("isGateway").or_insert(true.into());
        }
        d.insert("cniVersion".into(), self.version.as_str().into());
        d.insert("ipam".into(), Value::Object(self.render_ipam(env)?));
        Ok(d)
    }

    fn render_ipam(&self, env: &SubnetEnv) -> Result<Map<String, Value>, ConfigError> {
        let mut ipam = self.ipam.clone();
        ipam.entry("type").or_insert_with(|| "host-local".into());
        let subnet = env.node_subnet().to_string();
        ipam.insert("ranges".into(), serde_json::json!([[{ "subnet": subnet }]]));
        let mut routes = match ipam.get("routes") {
            Some(v) => parse_routes(v)?,
            None => Vec::new(),
        };
        routes.push(Route {
            dst: IpNet::V4(env.network),
            gw: None,
        });
        let routes = serde_json::to_value(routes).expect("routes serialize");
        ipam.insert("routes".into(), routes);
        Ok(ipam)
    }
}

fn parse_routes(v: &Value) -> Result<Vec<Route>, ConfigError> {
    serde::Deserialize::deserialize(v).map_err(|e| decode("ipam.routes", e))
}

/// The bridge settings: what ADD builds and DEL tears down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConf {
    pub name: String,
    pub bridge: String,
    pub mtu: u32,
    pub hairpin: bool,
    pub is_gateway: bool,
    pub is_default_gateway: bool,
    pub ip_masq: bool,
    pub force_address: bool,
    pub promisc: bool,
    /// The node's pod subnet (IPAM range), e.g. 10.244.3.0/24.
    pub subnet: Ipv4Net,
    /// `ipam.routes` then the cluster network, in that order.
    pub routes: Vec<Route>,
    /// `<ipam.dataDir>/<name>`.
    pub store_dir: PathBuf,
}

impl BridgeConf {
    /// Reads a delegate document (rendered now, or saved by an earlier ADD,
    /// possibly by flannel's own plugin).
    pub fn from_delegate(d: &Map<String, Value>) -> Result<BridgeConf, ConfigError> {
        let kind = opt_str(d, "type")?.unwrap_or_else(|| "bridge".into());
        if kind != "bridge" {
            return Err(invalid(&format!(
                "delegate type {kind:?} is not supported: this plugin implements \"bridge\""
            )));
        }
        let name = opt_str(d, "name")?.unwrap_or_default();
        validate_network_name(&name)?;
        let bridge = opt_str(d, "bridge")?.unwrap_or_else(|| DEFAULT_BRIDGE.into());
        validate_ifname(&bridge).map_err(|e| invalid(&format!("delegate.bridge: {e}")))?;
        let flag = |key: &str| opt_bool(d, key).map(|b| b.unwrap_or(false));
        let is_default_gateway = flag("isDefaultGateway")?;
        let ipam = match d.get("ipam") {
            Some(Value::Object(m)) => m,
            _ => return Err(invalid("delegate has no 'ipam' object")),
        };
        let (subnet, routes, store_dir) = parse_ipam(ipam, &name)?;
        Ok(BridgeConf {
            mtu: parse_mtu(d)?,
            hairpin: flag("hairpinMode")?,
            // The default route needs the bridge to be the gateway.
            is_gateway: flag("isGateway")? || is_default_gateway,
            is_default_gateway,
            ip_masq: flag("ipMasq")?,
            force_address: flag("forceAddress")?,
            promisc: flag("promiscMode")?,
            subnet,
            routes,
            store_dir,
            bridge,
            name,
        })
    }

    /// The gateway: the subnet's first address, held by the bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet.network()) + 1)
    }

    /// The routes of the result: the IPAM routes, then the default route
    /// when the bridge is the default gateway (as the bridge plugin does).
    pub fn result_routes(&self) -> Result<Vec<Route>, ConfigError> {
        let mut routes = self.routes.clone();
        if self.is_default_gateway {
            let gw = IpAddr::V4(self.gateway());
            let default: IpNet = "0.0.0.0/0".parse().expect("valid");
            if let Some(r) = routes.iter().find(|r| r.dst == default) {
                if r.gw.is_some_and(|g| g != gw) {
                    return Err(invalid(&format!(
                        "isDefaultGateway ineffective because IPAM sets default route via {}",
                        r.gw.expect("checked")
                    )));
                }
            } else {
                routes.push(Route {
                    dst: default,
                    gw: Some(gw),
                });
            }
        }
        Ok(routes)
    }
}

fn parse_mtu(d: &Map<String, Value>) -> Result<u32, ConfigError> {
    let mtu = match d.get("mtu") {
        None | Some(Value::Null) => return Ok(1500),
        Some(v) => v
            .as_u64()
            .ok_or_else(|| decode("delegate.mtu", "not an integer"))?,
    };
    if !(68..=65535).contains(&mtu) {
        return Err(invalid(&format!("invalid MTU {mtu}: must be 68-65535")));
    }
    Ok(mtu as u32)
}

fn parse_ipam(
    ipam: &Map<String, Value>,
    name: &str,
) -> Result<(Ipv4Net, Vec<Route>, PathBuf), ConfigError> {
    let kind = opt_str(ipam, "type")?.unwrap_or_else(|| "host-local".into());
    if kind != "host-local" {
        return Err(invalid(&format!(
            "ipam type {kind:?} is not supported: this plugin implements \"host-local\""
        )));
    }
    let subnet = ipam
        .get("ranges")
        .and_then(|r| r.get(0)?.get(0)?.get("subnet")?.as_str())
        .ok_or_else(|| invalid("ipam has no ranges[0][0].subnet"))?;
    let subnet: Ipv4Net = subnet
        .parse()
        .map_err(|_| invalid(&format!("ipam subnet {subnet:?} is not an IPv4 CIDR")))?;
    let routes = match ipam.get("routes") {
        Some(v) => parse_routes(v)?,
        None => Vec::new(),
    };
    Ok((subnet.trunc(), routes, ipam_base(ipam)?.join(name)))
}

/// `ipam.dataDir`, or host-local's default.
fn ipam_base(ipam: &Map<String, Value>) -> Result<PathBuf, ConfigError> {
    let base = opt_str(ipam, "dataDir")?.unwrap_or_else(|| DEFAULT_IPAM_DIR.into());
    let base = PathBuf::from(base);
    refuse_empty_dir("ipam.dataDir", &base)?;
    Ok(base)
}

/// An empty directory option would put the state wherever the runtime
/// happens to run the plugin (its current directory).
fn refuse_empty_dir(key: &str, dir: &std::path::Path) -> Result<(), ConfigError> {
    if dir.as_os_str().is_empty() {
        return Err(invalid(&format!(
            "{key} must not be empty (it would put state in the current directory)"
        )));
    }
    Ok(())
}

/// The network name names the IPAM directory: nothing path-like allowed.
fn validate_network_name(name: &str) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(invalid("missing network name"));
    }
    crate::env::validate_container_id(name).map_err(|_| {
        invalid(&format!(
            "invalid characters found in network name {name:?}"
        ))
    })
}

fn invalid(msg: &str) -> ConfigError {
    ConfigError::Invalid(msg.to_string())
}

fn opt_str(m: &Map<String, Value>, key: &str) -> Result<Option<String>, ConfigError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(decode(key, "expected a string")),
    }
}

fn opt_bool(m: &Map<String, Value>, key: &str) -> Result<Option<bool>, ConfigError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => as_bool(v, key).map(Some),
    }
}

fn as_bool(v: &Value, key: &str) -> Result<bool, ConfigError> {
    v.as_bool().ok_or_else(|| decode(key, "expected a boolean"))
}

fn take_object(m: &mut Map<String, Value>, key: &str) -> Result<Map<String, Value>, ConfigError> {
    match m.remove(key) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(o)) => Ok(o),
        Some(_) => Err(decode(key, "expected an object")),
    }
}

/// `cni.dev/valid-attachments` (CNI 1.1 GC), or `cni.dev/attachments`.
fn attachments(doc: &Map<String, Value>) -> Result<Option<Vec<(String, String)>>, ConfigError> {
    let Some(list) = doc
        .get("cni.dev/valid-attachments")
        .or_else(|| doc.get("cni.dev/attachments"))
    else {
        return Ok(None);
    };
    let items = list
        .as_array()
        .ok_or_else(|| decode("cni.dev/valid-attachments", "expected an array"))?;
    let pair = |v: &Value| -> Option<(String, String)> {
        Some((
            v.get("containerID")?.as_str()?.to_string(),
            v.get("ifname")?.as_str()?.to_string(),
        ))
    };
    let pairs: Option<Vec<_>> = items.iter().map(pair).collect();
    pairs.map(Some).ok_or_else(|| {
        decode(
            "cni.dev/valid-attachments",
            "expected {containerID, ifname} items",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const KUBE_FLANNEL: &str = r#"{"name":"cbr0","cniVersion":"0.3.1","type":"flannel",
        "delegate":{"hairpinMode":true,"isDefaultGateway":true}}"#;

    fn env(ipmasq: bool) -> SubnetEnv {
        let text = format!(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ={ipmasq}\n"
        );
        SubnetEnv::parse(Path::new("subnet.env"), &text).unwrap()
    }

    #[test]
    fn kube_flannel_delegate_is_flannels() {
        let conf = NetConf::parse(KUBE_FLANNEL.as_bytes()).unwrap();
        assert_eq!(conf.subnet_file, Path::new("/run/flannel/subnet.env"));
        assert_eq!(conf.data_dir, Path::new("/var/lib/cni/flannel"));
        let d = conf.render_delegate(&env(true)).unwrap();
        // Exactly what flannel's plugin saves (Go sorts map keys too).
        let expected = r#"{"cniVersion":"0.3.1","hairpinMode":true,"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.244.3.0/24"}]],"routes":[{"dst":"10.244.0.0/16"}],"type":"host-local"},"isDefaultGateway":true,"isGateway":true,"mtu":1450,"name":"cbr0","type":"bridge"}"#;
        assert_eq!(serde_json::to_string(&d).unwrap(), expected);
        let b = BridgeConf::from_delegate(&d).unwrap();
        assert_eq!(b.bridge, "cni0");
        assert_eq!(b.mtu, 1450);
        assert!(b.hairpin && b.is_gateway && b.is_default_gateway && !b.ip_masq);
        assert_eq!(b.subnet.to_string(), "10.244.3.0/24");
        assert_eq!(b.gateway().to_string(), "10.244.3.1");
        assert_eq!(b.store_dir, Path::new("/var/lib/cni/networks/cbr0"));
        let routes = b.result_routes().unwrap();
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[1].gw, Some("10.244.3.1".parse().unwrap()));
    }

    #[test]
    fn options_override_defaults() {
        let text = r#"{"name":"net1","cniVersion":"1.1.0","subnetFile":"/x/s.env","dataDir":"/x/d",
            "delegate":{"bridge":"br9","mtu":1400,"ipMasq":true,"forceAddress":true,
                "promiscMode":true,"isGateway":false,"unknown":{"a":1}},
            "ipam":{"dataDir":"/x/ipam","routes":[{"dst":"192.168.0.0/16","gw":"10.244.3.9"}]},
            "somethingElse":[1,2]}"#;
        let conf = NetConf::parse(text.as_bytes()).unwrap();
        assert_eq!(conf.ip_masq(None).unwrap(), Some(true));
        let b = BridgeConf::from_delegate(&conf.render_delegate(&env(true)).unwrap()).unwrap();
        assert_eq!((b.bridge.as_str(), b.mtu), ("br9", 1400));
        assert!(b.ip_masq && b.force_address && b.promisc && !b.is_gateway && !b.hairpin);
        assert_eq!(b.store_dir, Path::new("/x/ipam/net1"));
        let dsts: Vec<String> = b.routes.iter().map(|r| r.dst.to_string()).collect();
        assert_eq!(dsts, ["192.168.0.0/16", "10.244.0.0/16"]);
        assert_eq!(b.result_routes().unwrap().len(), 2);
    }

    #[test]
    fn ipmasq_default_is_the_opposite_of_flanneld() {
        let conf = NetConf::parse(KUBE_FLANNEL.as_bytes()).unwrap();
        for flanneld in [true, false] {
            let d = conf.render_delegate(&env(flanneld)).unwrap();
            assert_eq!(d["ipMasq"], Value::Bool(!flanneld));
            assert_eq!(conf.ip_masq(Some(&env(flanneld))).unwrap(), Some(!flanneld));
        }
        assert_eq!(conf.ip_masq(None).unwrap(), None);
    }

    #[test]
    fn bad_configs_are_classified() {
        type IsExpected = fn(&ConfigError) -> bool;
        let cases: [(&str, IsExpected); 9] = [
            ("{", |e| matches!(e, ConfigError::Decode(_))),
            ("[1]", |e| matches!(e, ConfigError::Decode(_))),
            (r#"{"cniVersion":"0.2.0","name":"a"}"#, |e| {
                matches!(e, ConfigError::Version(_))
            }),
            (r#"{"name":"a"}"#, |e| matches!(e, ConfigError::Version(_))),
            (r#"{"cniVersion":"1.0.0"}"#, |e| {
                matches!(e, ConfigError::Invalid(_))
            }),
            (r#"{"cniVersion":"1.0.0","name":"../x"}"#, |e| {
                matches!(e, ConfigError::Invalid(_))
            }),
            (r#"{"cniVersion":"1.0.0","name":"a","delegate":3}"#, |e| {
                matches!(e, ConfigError::Decode(_))
            }),
            (r#"{"cniVersion":"1.0.0","name":"a","dataDir":""}"#, |e| {
                matches!(e, ConfigError::Invalid(_))
            }),
            (
                r#"{"cniVersion":"1.0.0","name":"a","ipam":{"dataDir":""}}"#,
                |e| matches!(e, ConfigError::Invalid(_)),
            ),
        ];
        for (text, is_expected) in cases {
            let err = NetConf::parse(text.as_bytes()).unwrap_err();
            assert!(is_expected(&err), "{text}: {err:?}");
        }
    }

    #[test]
    fn bad_delegates_are_refused() {
        let cases = [
            (r#"{"name":"x"}"#, "must not have 'name'"),
            (r#"{"ipam":{}}"#, "must not have 'ipam'"),
            (r#"{"type":3}"#, "(string) 'type'"),
        ];
        for (delegate, msg) in cases {
            let text = format!(r#"{{"cniVersion":"0.3.1","name":"a","delegate":{delegate}}}"#);
            let conf = NetConf::parse(text.as_bytes()).unwrap();
            let err = conf.render_delegate(&env(true)).unwrap_err();
            assert!(err.to_string().contains(msg), "{err}");
        }
        let render = |delegate: &str| {
            let text = format!(r#"{{"cniVersion":"0.3.1","name":"a","delegate":{delegate}}}"#);
            let conf = NetConf::parse(text.as_bytes()).unwrap();
            BridgeConf::from_delegate(&conf.render_delegate(&env(true)).unwrap())
        };
        assert!(matches!(
            render(r#"{"type":"ipvlan"}"#),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            render(r#"{"mtu":10}"#),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            render(r#"{"mtu":"x"}"#),
            Err(ConfigError::Decode(_))
        ));
        assert!(matches!(
            render(r#"{"bridge":"a/b"}"#),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            render(r#"{"hairpinMode":"yes"}"#),
            Err(ConfigError::Decode(_))
        ));
    }

    #[test]
    fn gc_attachments() {
        let text = r#"{"cniVersion":"1.1.0","name":"a",
            "cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#;
        let conf = NetConf::parse(text.as_bytes()).unwrap();
        assert_eq!(
            conf.valid_attachments,
            Some(vec![("c1".to_string(), "eth0".to_string())])
        );
        let text = r#"{"cniVersion":"1.1.0","name":"a","cni.dev/attachments":[]}"#;
        assert_eq!(
            NetConf::parse(text.as_bytes()).unwrap().valid_attachments,
            Some(vec![])
        );
    }
}
