//! Property tests of what flanneld parses from etcd, which anyone with
//! write access to the prefix controls: lease keys, lease values and the
//! network config. Arbitrary input never panics, what flanneld writes
//! parses back to the same thing, and an accepted config has the
//! properties the rest of the daemon relies on. No root needed.

use std::net::Ipv4Addr;

use flanneld::config::NetworkConfig;
use flanneld::lease::{
    format_mac, judge, parse_mac, subnet_from_key, subnet_key, LeaseAttrs, Rules, VxlanData,
};
use ipnet::Ipv4Net;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// Field names flanneld looks for, so generated objects often hit them.
const FIELDS: &[&str] = &[
    "Network",
    "network",
    "SubnetLen",
    "SubnetMin",
    "SubnetMax",
    "EnableIPv6",
    "Backend",
    "Type",
    "VNI",
    "Port",
    "MTU",
    "DirectRouting",
    "PublicIP",
    "PublicIPv6",
    "BackendType",
    "BackendData",
    "VtepMAC",
];

fn cidr() -> impl Strategy<Value = String> {
    (any::<u32>(), 0u8..=33).prop_map(|(ip, len)| format!("{}/{len}", Ipv4Addr::from(ip)))
}

fn mac_text() -> impl Strategy<Value = String> {
    any::<[u8; 6]>().prop_map(|m| format_mac(&m))
}

/// Strings flanneld might accept, and any others.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("vxlan".to_owned()),
        Just("VXLAN".to_owned()),
        any::<u32>().prop_map(|ip| Ipv4Addr::from(ip).to_string()),
        cidr(),
        mac_text(),
        ".{0,16}",
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(FIELDS).prop_map(str::to_owned),
        1 => "[a-zA-Z]{0,8}",
    ]
}

/// Any JSON document, biased towards flanneld's field names and values.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        (0u64..70_000).prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn rules() -> Rules {
    let config = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
    Rules::new(&NetworkConfig::parse(config).unwrap(), None)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_lease_key_is_read_without_panic(key in ".{0,64}", tail in "[0-9.&:/-]{0,40}") {
        for k in [key.clone(), format!("/coreos.com/network/subnets/{tail}"), tail] {
            if let Some(net) = subnet_from_key(&k) {
                // Only a network address with its length names a subnet.
                prop_assert_eq!(net.addr(), net.network());
                prop_assert_eq!(subnet_from_key(&subnet_key(net)), Some(net));
            }
        }
    }

    #[test]
    fn formatted_lease_keys_parse_back(
        ip in any::<u32>(),
        len in 0u8..=32,
        prefix in "(/[a-z0-9.]{1,10}){1,3}",
    ) {
        let net = Ipv4Net::new(Ipv4Addr::from(ip), len).unwrap().trunc();
        let key = format!("{prefix}/subnets/{}", subnet_key(net));
        prop_assert_eq!(subnet_from_key(&key), Some(net));
        // flannel's dual-stack key: the IPv4 part names the subnet.
        prop_assert_eq!(subnet_from_key(&format!("{key}&fd00:10:244::-64")), Some(net));
    }

    #[test]
    fn any_lease_value_is_judged_without_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        doc in json_value(),
    ) {
        let doc = doc.to_string();
        let rules = rules();
        for value in [&bytes[..], doc.as_bytes()] {
            if let Ok(attrs) = serde_json::from_slice::<LeaseAttrs>(value) {
                let _ = attrs.vxlan_data();
                let again: LeaseAttrs = serde_json::from_str(&attrs.to_json()).unwrap();
                prop_assert_eq!(again, attrs);
            }
            let _ = judge(&rules, "/coreos.com/network/subnets/10.244.2.0-24", value);
        }
    }

    #[test]
    fn formatted_lease_values_parse_back(
        ip in any::<u32>(),
        vni in 0u32..1 << 24,
        mac in any::<[u8; 6]>(),
    ) {
        let data = VxlanData { vni, vtep_mac: mac };
        let attrs = LeaseAttrs::vxlan(Ipv4Addr::from(ip), data);
        let json = attrs.to_json();
        let back: LeaseAttrs = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(back.vxlan_data(), Ok(data));
        prop_assert_eq!(back.to_json(), json);
        prop_assert_eq!(back, attrs);
    }

    #[test]
    fn macs_parse_back_and_nothing_else_parses(mac in any::<[u8; 6]>(), text in ".{0,24}") {
        prop_assert_eq!(parse_mac(&format_mac(&mac)), Some(mac));
        if let Some(parsed) = parse_mac(&text) {
            // Six pairs of hex digits, nothing more.
            prop_assert_eq!(format_mac(&parsed), text.to_ascii_lowercase());
        }
    }

    #[test]
    fn any_network_config_is_read_without_panic(doc in json_value(), text in ".{0,64}") {
        for t in [doc.to_string(), text] {
            if let Ok(c) = NetworkConfig::parse(&t) {
                check_invariants(&c);
            }
        }
    }

    #[test]
    fn accepted_network_configs_keep_their_invariants(
        ip in any::<u32>(),
        prefix in 0u8..=32,
        subnet_len in prop::option::of(0u64..=34),
        min in prop::option::of((any::<u32>(), any::<bool>())),
        max in prop::option::of((any::<u32>(), any::<bool>())),
    ) {
        let network = Ipv4Net::new(Ipv4Addr::from(ip), prefix).unwrap();
        let mut doc = json!({"Network": network.to_string(), "Backend": {"Type": "vxlan"}});
        if let Some(len) = subnet_len {
            doc["SubnetLen"] = json!(len);
        }
        // A bound is either any address or a subnet-aligned one inside the
        // network, so that both rejections and acceptances come up.
        let bound = |(raw, aligned): (u32, bool)| -> String {
            if !aligned {
                return Ipv4Addr::from(raw).to_string();
            }
            let host_bits = 32 - u32::from(prefix);
            let offset = (u64::from(raw) % (1u64 << host_bits)) as u32;
            let len = subnet_len.filter(|l| *l != 0).unwrap_or(24).clamp(1, 32) as u32;
            let mask = u32::MAX << (32 - len);
            Ipv4Addr::from((u32::from(network.network()) + offset) & mask).to_string()
        };
        if let Some(b) = min {
            doc["SubnetMin"] = json!(bound(b));
        }
        if let Some(b) = max {
            doc["SubnetMax"] = json!(bound(b));
        }
        if let Ok(c) = NetworkConfig::parse(&doc.to_string()) {
            check_invariants(&c);
            prop_assert_eq!(c.network, network.trunc());
        }
    }
}

/// What the daemon relies on in an accepted config: a network with room
/// for at least four subnets of `subnet_len`, and leasable bounds that are
/// subnet addresses inside it, in order.
fn check_invariants(c: &NetworkConfig) {
    let net = c.network;
    assert_eq!(net, net.trunc(), "{c:?}");
    assert!(net.prefix_len() <= 28, "{c:?}");
    assert!(
        c.subnet_len >= net.prefix_len() + 2 && c.subnet_len <= 30,
        "{c:?}"
    );
    let size = 1u64 << (32 - u32::from(c.subnet_len));
    for bound in [c.subnet_min, c.subnet_max] {
        assert!(net.contains(&bound), "{c:?}");
        assert_eq!(u64::from(u32::from(bound)) % size, 0, "{c:?}");
    }
    assert!(c.subnet_min <= c.subnet_max, "{c:?}");
    let first = c.subnets().next().expect("at least one subnet");
    assert_eq!(first.network(), c.subnet_min);
    assert!(c.accepts(first) && net.contains(&first), "{c:?}");
    let last = Ipv4Net::new(c.subnet_max, c.subnet_len).unwrap();
    assert!(c.accepts(last) && net.contains(&last), "{c:?}");
}
