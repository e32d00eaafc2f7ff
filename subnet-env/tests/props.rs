//! Property tests of the subnet.env parser: arbitrary bytes never panic,
//! and every valid file flanneld can write parses back to its values.

use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use proptest::prelude::*;
use subnet_env::SubnetEnv;

/// A cluster network and one of its subnets, neither loopback, multicast
/// nor unspecified, as flanneld leases them.
fn valid_env() -> impl Strategy<Value = SubnetEnv> {
    (
        1u8..=223,
        any::<u32>(),
        8u8..=24,
        0u8..=6,
        68u32..=65535,
        any::<bool>(),
    )
        .prop_filter("not loopback", |(first, ..)| *first != 127)
        .prop_map(|(first, rest, prefix, extra, mtu, ipmasq)| {
            let addr = Ipv4Addr::from((u32::from(first) << 24) | (rest & 0x00ff_ffff));
            let network = Ipv4Net::new(addr, prefix).unwrap().trunc();
            let sub_len = (prefix + extra).min(30);
            // A subnet of `network` chosen by the random bits.
            let offset = (rest << prefix) >> prefix >> (32 - sub_len) << (32 - sub_len);
            let base = u32::from(network.network()) | offset;
            let lease = Ipv4Net::new(Ipv4Addr::from(base), sub_len).unwrap().trunc();
            SubnetEnv::for_lease(network, lease, mtu, ipmasq)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = SubnetEnv::parse(Path::new("f"), &String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn arbitrary_lines_never_panic(
        lines in prop::collection::vec(
            (prop::sample::select(vec![
                "FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_MTU", "FLANNEL_IPMASQ", "X", "",
            ]), "[0-9./a-z\"= ]{0,20}"),
            0..8,
        )
    ) {
        let text: String = lines.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        let _ = SubnetEnv::parse(Path::new("f"), &text);
    }

    #[test]
    fn formatted_values_parse_back(env in valid_env()) {
        let text = env.to_string();
        prop_assert_eq!(SubnetEnv::parse(Path::new("f"), &text).unwrap(), env);
    }
}
