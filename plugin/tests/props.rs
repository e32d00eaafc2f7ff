//! Property tests of the config parser: arbitrary input never panics, and
//! every valid config (a kube-flannel-style conflist entry with any mix of
//! options and unknown fields) parses to exactly the fields it holds.

use std::path::PathBuf;

use flannel_cni::config::{peek_version, BridgeConf, NetConf};
use flannel_cni::spec::SUPPORTED_VERSIONS;
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use subnet_env::SubnetEnv;

fn config() -> ProptestConfig {
    ProptestConfig::with_cases(256)
}

/// Any JSON document, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
        // Keys and values the parser looks at, so they get hit.
        prop::sample::select(vec![
            "cniVersion",
            "name",
            "dataDir",
            "subnetFile",
            "delegate",
            "ipam",
            "type",
            "bridge",
            "mtu",
            "routes",
            "1.0.0",
            "0.3.1",
            "cbr0",
            "",
        ])
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "cniVersion",
            "name",
            "type",
            "dataDir",
            "subnetFile",
            "delegate",
            "ipam",
            "bridge",
            "mtu",
            "hairpinMode",
            "isDefaultGateway",
            "isGateway",
            "ipMasq",
            "routes",
            "dst",
            "gw",
            "ranges",
            "subnet",
            "prevResult",
            "runtimeConfig",
            "cni.dev/valid-attachments",
            "containerID",
            "ifname",
        ])
        .prop_map(String::from),
        "[a-z]{1,8}",
    ]
}

fn subnet_env() -> SubnetEnv {
    let text = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
    SubnetEnv::parse(std::path::Path::new("subnet.env"), text).unwrap()
}

/// Parsing, rendering and reading back the delegate: errors allowed,
/// panics not.
fn exercise(bytes: &[u8]) {
    let _ = peek_version(bytes);
    if let Ok(conf) = NetConf::parse(bytes) {
        let _ = conf.store_dir();
        let _ = conf.ip_masq(None);
        if let Ok(d) = conf.render_delegate(&subnet_env()) {
            if let Ok(bc) = BridgeConf::from_delegate(&d) {
                let _ = bc.result_routes();
            }
        }
    }
}

/// Options a user may set, as generated.
#[derive(Debug, Clone)]
struct Options {
    version: &'static str,
    name: String,
    data_dir: String,
    ipam_dir: String,
    bridge: String,
    mtu: u32,
    flags: [bool; 5],
    unknown: Vec<(String, Value)>,
}

fn options() -> impl Strategy<Value = Options> {
    (
        prop::sample::select(SUPPORTED_VERSIONS.to_vec()),
        "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,20}",
        "/[a-z0-9/]{1,20}",
        "/[a-z0-9/]{1,20}",
        "[a-z][a-z0-9]{0,14}",
        68u32..=65535,
        any::<[bool; 5]>(),
        prop::collection::vec(("x-[a-z]{1,8}", any_json()), 0..4),
    )
        .prop_map(
            |(version, name, data_dir, ipam_dir, bridge, mtu, flags, unknown)| Options {
                version,
                name,
                data_dir,
                ipam_dir,
                bridge,
                mtu,
                flags,
                unknown,
            },
        )
}

/// The plugin entry of a conflist as libcni hands it over (name and
/// cniVersion copied in), with unknown fields at every level.
fn entry(o: &Options) -> Value {
    let [hairpin, default_gw, masq, force, promisc] = o.flags;
    let mut delegate = json!({
        "bridge": o.bridge, "mtu": o.mtu, "hairpinMode": hairpin,
        "isDefaultGateway": default_gw, "ipMasq": masq, "forceAddress": force,
        "promiscMode": promisc,
    });
    let mut doc = json!({
        "cniVersion": o.version, "name": o.name, "type": "flannel",
        "dataDir": o.data_dir, "subnetFile": "/run/x/subnet.env",
        "ipam": {"dataDir": o.ipam_dir},
    });
    for (k, v) in &o.unknown {
        doc[k] = v.clone();
        delegate[k] = v.clone();
    }
    doc["delegate"] = delegate;
    doc
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        exercise(&bytes);
    }

    #[test]
    fn arbitrary_json_never_panics(doc in any_json()) {
        exercise(doc.to_string().as_bytes());
    }

    #[test]
    fn arbitrary_conflist_entries_never_panic(doc in any_json(), o in options()) {
        let mut e = entry(&o);
        e["delegate"]["bridge"] = doc.clone();
        exercise(e.to_string().as_bytes());
        let mut e = entry(&o);
        e["ipam"] = doc;
        exercise(e.to_string().as_bytes());
    }

    #[test]
    fn valid_configs_round_trip(o in options()) {
        let conf = NetConf::parse(entry(&o).to_string().as_bytes()).unwrap();
        prop_assert_eq!(conf.version.as_str(), o.version);
        prop_assert_eq!(&conf.name, &o.name);
        prop_assert_eq!(&conf.data_dir, &PathBuf::from(&o.data_dir));
        prop_assert_eq!(conf.store_dir().unwrap(), PathBuf::from(&o.ipam_dir).join(&o.name));
        let d: Map<String, Value> = conf.render_delegate(&subnet_env()).unwrap();
        let bc = BridgeConf::from_delegate(&d).unwrap();
        let [hairpin, default_gw, masq, force, promisc] = o.flags;
        prop_assert_eq!(&bc.bridge, &o.bridge);
        prop_assert_eq!(bc.mtu, o.mtu);
        prop_assert_eq!(
            (bc.hairpin, bc.is_default_gateway, bc.ip_masq, bc.force_address, bc.promisc),
            (hairpin, default_gw, masq, force, promisc)
        );
        prop_assert!(bc.is_gateway);
        prop_assert_eq!(bc.subnet.to_string(), "10.244.3.0/24");
        prop_assert_eq!(&bc.store_dir, &PathBuf::from(&o.ipam_dir).join(&o.name));
        // What DEL reads back from the saved config is what ADD used.
        let saved: Map<String, Value> = serde_json::from_slice(&serde_json::to_vec(&d).unwrap()).unwrap();
        prop_assert_eq!(BridgeConf::from_delegate(&saved).unwrap(), bc);
    }
}
