use super::*;

const NET: &str = "10.244.0.0/16";
const OWN_KEY: &str = "/p/subnets/10.244.1.0-24";
const OWN_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

fn lease(ip: &str, vni: u32, mac: &str) -> Vec<u8> {
    format!(r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":{vni},"VtepMAC":"{mac}"}}}}"#)
        .into_bytes()
}

fn rules() -> Rules {
    let config = NetworkConfig::parse(&format!(
        r#"{{"Network":"{NET}","Backend":{{"Type":"vxlan"}}}}"#
    ))
    .unwrap();
    Rules::new(
        &config,
        Some(Own {
            key: OWN_KEY.into(),
            subnet: "10.244.1.0/24".parse().unwrap(),
            public_ip: "192.0.2.11".parse().unwrap(),
            vtep_mac: OWN_MAC,
        }),
    )
}

fn key(subnet: &str) -> String {
    format!("/p/subnets/{subnet}")
}

fn good() -> Vec<u8> {
    lease("192.0.2.2", 1, "02:00:00:00:00:02")
}

fn reason(k: &str, value: &[u8]) -> SkipReason {
    judge(&rules(), k, value).unwrap_err()
}

#[test]
fn a_valid_lease_is_a_peer() {
    let p = judge(&rules(), &key("10.244.2.0-24"), &good()).unwrap();
    assert_eq!(
        (p.subnet.to_string(), p.public_ip.to_string(), p.vtep_mac),
        (
            "10.244.2.0/24".into(),
            "192.0.2.2".into(),
            [2, 0, 0, 0, 0, 2]
        )
    );
    // flannel's dual-stack key names the same subnet.
    assert!(judge(&rules(), &key("10.244.2.0-24&fc00::-64"), &good()).is_ok());
}

#[test]
fn keys_outside_the_network_config_are_skipped() {
    use SkipReason as R;
    let net = |s: &str| s.parse::<Ipv4Net>().unwrap();
    let cases = [
        ("garbage", R::BadKey),
        ("10.244.2.0-99", R::BadKey),
        ("10.244.3.1-24", R::Misaligned("10.244.3.1-24".into())),
        ("8.8.8.0-24", R::OutsideNetwork(net("8.8.8.0/24"))),
        ("128.0.0.0-1", R::OutsideNetwork(net("128.0.0.0/1"))),
        ("0.0.0.0-0", R::OutsideNetwork(net("0.0.0.0/0"))),
        ("10.244.0.0-16", R::WrongLength(net("10.244.0.0/16"))),
        ("10.244.2.0-25", R::WrongLength(net("10.244.2.0/25"))),
        ("10.244.1.128-25", R::WrongLength(net("10.244.1.128/25"))),
        ("10.244.1.5-32", R::WrongLength(net("10.244.1.5/32"))),
        (
            "10.244.1.0-24&fc00::-64",
            R::OverlapsOwn(net("10.244.1.0/24")),
        ),
    ];
    for (k, want) in cases {
        assert_eq!(reason(&key(k), &good()), want, "{k}");
    }
    assert_eq!(reason(OWN_KEY, &good()), R::Own);
}

#[test]
fn bad_values_are_skipped() {
    use SkipReason as R;
    let k = key("10.244.2.0-24");
    let with = |ip: &str, mac: &str| lease(ip, 1, mac);
    let ok_mac = "02:00:00:00:00:02";
    let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    let cases: Vec<(Vec<u8>, SkipReason)> = vec![
        (b"[1,2]".to_vec(), R::NotAnObject),
        (b"\"text\"".to_vec(), R::NotAnObject),
        (b"null".to_vec(), R::NotAnObject),
        (
            br#"{"PublicIP":"192.0.2.2","BackendType":"host-gw"}"#.to_vec(),
            R::WrongBackend("host-gw".into()),
        ),
        (lease("192.0.2.2", 7, ok_mac), R::ForeignVni(7)),
        (
            with("127.0.0.1", ok_mac),
            R::BadPublicIp(ip("127.0.0.1"), IpProblem::Loopback),
        ),
        (
            with("0.0.0.0", ok_mac),
            R::BadPublicIp(ip("0.0.0.0"), IpProblem::Unspecified),
        ),
        (
            with("239.1.1.1", ok_mac),
            R::BadPublicIp(ip("239.1.1.1"), IpProblem::Multicast),
        ),
        (
            with("255.255.255.255", ok_mac),
            R::BadPublicIp(ip("255.255.255.255"), IpProblem::Broadcast),
        ),
        (
            with("192.0.2.11", ok_mac),
            R::BadPublicIp(ip("192.0.2.11"), IpProblem::Ours),
        ),
        (
            with("10.244.9.9", ok_mac),
            R::BadPublicIp(ip("10.244.9.9"), IpProblem::InsideNetwork),
        ),
        (
            with("192.0.2.2", "00:00:00:00:00:00"),
            R::BadMac([0; 6], MacProblem::Zero),
        ),
        (
            with("192.0.2.2", "01:00:5e:00:00:01"),
            R::BadMac([1, 0, 0x5e, 0, 0, 1], MacProblem::Multicast),
        ),
        (
            with("192.0.2.2", "ff:ff:ff:ff:ff:ff"),
            R::BadMac([0xff; 6], MacProblem::Multicast),
        ),
        (
            with("192.0.2.2", "02:00:00:00:00:01"),
            R::BadMac(OWN_MAC, MacProblem::Ours),
        ),
        (vec![b' '; MAX_VALUE + 1], R::TooLarge(MAX_VALUE + 1)),
    ];
    for (value, want) in cases {
        let text = String::from_utf8_lossy(&value)
            .chars()
            .take(80)
            .collect::<String>();
        assert_eq!(reason(&k, &value), want, "{text}");
    }
    assert!(matches!(reason(&k, b"{not json"), R::BadValue(_)));
    assert!(matches!(
        reason(&k, br#"{"PublicIP":"::1"}"#),
        R::BadValue(_)
    ));
    assert_eq!(
        R::BadMac(OWN_MAC, MacProblem::Ours).to_string(),
        "VtepMAC 02:00:00:00:00:01 is this node's own"
    );
}

fn set() -> PeerSet {
    PeerSet::new(rules())
}

fn subnets(s: &PeerSet) -> Vec<String> {
    s.peers().iter().map(|p| p.subnet.to_string()).collect()
}

fn skipped_keys(notes: &[Note]) -> Vec<&str> {
    notes
        .iter()
        .filter_map(|n| match n {
            Note::Skipped { key, .. } => Some(key.as_str()),
            Note::Used { .. } => None,
        })
        .collect()
}

#[test]
fn each_verdict_is_reported_once_per_change() {
    let mut s = set();
    let bad = key("10.244.9.0-24");
    s.put(&key("10.244.2.0-24"), &good(), 5);
    s.put(&bad, b"[]", 6);
    s.put(OWN_KEY, &lease("192.0.2.11", 1, "02:00:00:00:00:01"), 2);
    let first = s.settle();
    assert!(first.changed);
    assert_eq!(
        skipped_keys(&first.notes),
        [bad.as_str()],
        "own lease is silent"
    );
    assert_eq!(subnets(&s), ["10.244.2.0/24"]);
    // The same events again (a replay), and a re-listing of the same
    // leases: nothing new.
    s.put(&bad, b"[]", 6);
    assert_eq!(s.settle(), Settled::default());
    let records: Vec<Record> = [
        (key("10.244.2.0-24"), good(), 5),
        (bad.clone(), b"[]".to_vec(), 6),
    ]
    .into_iter()
    .map(|(key, value, create_revision)| Record {
        key,
        value,
        lease: 0,
        create_revision,
    })
    .collect();
    s.reset(&records);
    assert_eq!(s.settle(), Settled::default());
    // Another reason for the same key is news; so is a fixed one.
    s.put(&bad, b"junk", 6);
    assert_eq!(skipped_keys(&s.settle().notes), [bad.as_str()]);
    let fixed = key("10.244.8.0-24");
    s.put(&fixed, b"[]", 7);
    s.settle();
    s.put(&fixed, &lease("192.0.2.8", 1, "02:00:00:00:00:08"), 7);
    let now = s.settle();
    assert_eq!(now.notes, [Note::Used { key: fixed.clone() }]);
    assert!(now.changed);
    // A deleted lease is forgotten silently, and reported again if it
    // comes back as bad as before.
    s.delete(&bad);
    assert_eq!(s.settle(), Settled::default());
    s.put(&bad, b"junk", 9);
    assert_eq!(skipped_keys(&s.settle().notes), [bad.as_str()]);
    assert_eq!(s.skipped_count(), 1);
}

#[test]
fn the_older_of_two_colliding_leases_wins_and_the_other_waits() {
    let mut s = set();
    let (older, newer, third) = (
        key("10.244.5.0-24"),
        key("10.244.2.0-24"),
        key("10.244.3.0-24"),
    );
    // Same VTEP MAC: the older lease wins although its key sorts later.
    let mac = "02:00:00:00:00:55";
    s.put(&older, &lease("192.0.2.5", 1, mac), 10);
    s.put(&newer, &lease("192.0.2.2", 1, mac), 20);
    s.put(&third, &lease("192.0.2.3", 1, "02:00:00:00:00:03"), 30);
    let settled = s.settle();
    assert_eq!(subnets(&s), ["10.244.3.0/24", "10.244.5.0/24"]);
    assert_eq!(
        settled.notes,
        [Note::Skipped {
            key: newer.clone(),
            reason: SkipReason::Conflict {
                winner: older.clone(),
                clash: Clash::VtepMac
            }
        }]
    );
    assert_eq!(
        s.skipped()
            .map(|(_, why)| why.to_string())
            .collect::<Vec<_>>(),
        [format!(
            "has the same VTEP MAC as {older}, which is older and wins"
        )]
    );
    // The winner leaves: the waiting lease becomes a peer, once.
    s.delete(&older);
    let settled = s.settle();
    assert_eq!(settled.notes, [Note::Used { key: newer.clone() }]);
    assert_eq!(subnets(&s), ["10.244.2.0/24", "10.244.3.0/24"]);
    // Ties go by key; two keys for one subnet collide on the subnet.
    let mut t = set();
    let dual = key("10.244.2.0-24&fc00::-64");
    t.put(&dual, &lease("192.0.2.9", 1, "02:00:00:00:00:09"), 4);
    t.put(&newer, &lease("192.0.2.2", 1, "02:00:00:00:00:02"), 4);
    t.settle();
    assert_eq!(t.peers()[0].public_ip.to_string(), "192.0.2.2");
    let (loser, why) = t.skipped().next().unwrap();
    assert_eq!(loser, dual);
    assert!(matches!(
        why,
        SkipReason::Conflict {
            clash: Clash::Subnet,
            ..
        }
    ));
}
