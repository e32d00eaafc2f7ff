//! The reclaim policy, without a kernel or a disk: which reservations
//! [`decide`] names, pass after pass, and the stores as they are read.

use std::collections::HashMap;
use std::fs;
use std::time::{Duration, Instant};

use super::*;

const GRACE: Duration = Duration::from_secs(60);

fn res(ip: u8, id: &str) -> Reservation {
    Reservation {
        network: "cbr0".into(),
        ip: Ipv4Addr::new(10, 244, 1, ip),
        container_id: id.into(),
        ifname: "eth0".into(),
    }
}

fn links(present: &[&Reservation], unknown: &[&str]) -> Links {
    let mut l = Links::default();
    for r in present {
        l.names.insert(r.host_veth());
        l.pod_veths.push(r.host_veth());
    }
    for name in unknown {
        l.names.insert(name.to_string());
        l.pod_veths.push(name.to_string());
    }
    l.names.insert("cni0".into());
    l
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Runs passes at `t0 + at[i]` with the same reservations and links,
/// carrying the map over; returns the IPs' last octets each pass names.
fn passes(all: &[Reservation], links: &Links, at: &[u64]) -> Vec<Vec<u8>> {
    let t0 = Instant::now();
    let mut since = HashMap::new();
    at.iter()
        .map(|s| {
            let d = decide(all, links, t0 + secs(*s), GRACE, &since);
            since = d.absent_since;
            d.reclaim
                .iter()
                .map(|c| c.reservation.ip.octets()[3])
                .collect()
        })
        .collect()
}

#[test]
fn a_reservation_goes_once_its_veth_is_absent_longer_than_the_grace_period() {
    let (live, gone) = (res(2, "live"), res(3, "gone"));
    let all = [live.clone(), gone.clone()];
    let l = links(&[&live], &[]);
    let none: Vec<u8> = Vec::new();
    assert_eq!(
        passes(&all, &l, &[0, 30, 60, 61, 70]),
        [none.clone(), none.clone(), none, vec![3], vec![3]]
    );
    let t0 = Instant::now();
    let first = decide(&all, &l, t0, GRACE, &HashMap::new());
    assert_eq!(first.absent_since, HashMap::from([(gone.clone(), t0)]));
    let later = decide(&all, &l, t0 + secs(90), GRACE, &first.absent_since);
    assert_eq!(
        later.reclaim,
        [Candidate {
            reservation: gone,
            absent_for: secs(90),
        }]
    );
}

#[test]
fn a_veth_seen_again_restarts_the_grace_period() {
    let r = res(2, "flap");
    let t0 = Instant::now();
    let absent = links(&[], &[]);
    let first = decide(
        std::slice::from_ref(&r),
        &absent,
        t0,
        GRACE,
        &HashMap::new(),
    );
    // The veth appears (the ADD finished): forgotten.
    let back = decide(
        std::slice::from_ref(&r),
        &links(&[&r], &[]),
        t0 + secs(40),
        GRACE,
        &first.absent_since,
    );
    assert!(back.absent_since.is_empty() && back.reclaim.is_empty());
    // Gone again at 50 s: counted from 50 s, not from 0.
    let again = decide(
        std::slice::from_ref(&r),
        &absent,
        t0 + secs(50),
        GRACE,
        &back.absent_since,
    );
    let at_100 = decide(
        std::slice::from_ref(&r),
        &absent,
        t0 + secs(100),
        GRACE,
        &again.absent_since,
    );
    assert!(at_100.reclaim.is_empty());
    let at_111 = decide(&[r], &absent, t0 + secs(111), GRACE, &at_100.absent_since);
    assert_eq!(at_111.reclaim.len(), 1);
    assert_eq!(at_111.reclaim[0].absent_for, secs(61));
}

#[test]
fn a_reservation_handed_to_another_pod_starts_afresh() {
    // The IP was released and reserved again by another container: a
    // different reservation, with its own grace period.
    let t0 = Instant::now();
    let old = res(2, "old");
    let first = decide(&[old], &Links::default(), t0, GRACE, &HashMap::new());
    let new = res(2, "new");
    let d = decide(
        std::slice::from_ref(&new),
        &Links::default(),
        t0 + secs(90),
        GRACE,
        &first.absent_since,
    );
    assert!(d.reclaim.is_empty());
    assert_eq!(d.absent_since, HashMap::from([(new, t0 + secs(90))]));
}

#[test]
fn an_unknown_pod_veth_pauses_reclaiming_until_it_goes() {
    // A pod attached by the reference bridge plugin: random veth name,
    // so its reservation looks absent.
    let (ours, theirs) = (res(2, "ours"), res(3, "theirs"));
    let all = [ours.clone(), theirs];
    let t0 = Instant::now();
    let blocked = links(&[&ours], &["veth5f3a9c21"]);
    let d = decide(&all, &blocked, t0, GRACE, &HashMap::new());
    let d = decide(&all, &blocked, t0 + secs(600), GRACE, &d.absent_since);
    assert!(d.reclaim.is_empty());
    assert_eq!(d.unknown_veths, ["veth5f3a9c21"]);
    // Still tracked: once the unknown veth is gone, it goes at once.
    let d = decide(
        &all,
        &links(&[&ours], &[]),
        t0 + secs(601),
        GRACE,
        &d.absent_since,
    );
    assert!(d.unknown_veths.is_empty());
    assert_eq!(d.reclaim.len(), 1);
    assert_eq!(d.reclaim[0].absent_for, secs(601));
    // Links that are not pod veths (a bridge, the node's NIC) do not count.
    let mut l = links(&[&ours], &[]);
    l.names.insert("eth0".into());
    assert!(decide(&all, &l, t0, GRACE, &HashMap::new())
        .unknown_veths
        .is_empty());
}

#[test]
fn an_ownerless_file_goes_like_any_other() {
    // An ADD killed between creating the IP's file and writing its owner.
    let r = res(9, "");
    let all = [r];
    assert_eq!(passes(&all, &Links::default(), &[0, 61]), [vec![], vec![9]]);
}

#[test]
fn links_are_read_as_pod_veths_only_when_bridged_to_another_namespace() {
    let link = |name: &str, kind: Option<&str>, master: Option<u32>, nsid: Option<i32>| Link {
        index: 1,
        name: name.into(),
        mac: None,
        mtu: 1500,
        master,
        up: true,
        promisc: false,
        kind: kind.map(str::to_owned),
        peer_index: Some(2),
        peer_netnsid: nsid,
        vxlan: None,
    };
    let l = Links::new(&[
        link("vethpod", Some("veth"), Some(3), Some(0)),
        link("vethloose", Some("veth"), None, Some(0)),
        link("vethlocal", Some("veth"), Some(3), None),
        link("cni0", Some("bridge"), None, None),
        link("eth0", None, None, None),
    ]);
    assert_eq!(l.pod_veths, ["vethpod"]);
    assert_eq!(l.names.len(), 5);
}

#[test]
fn reservations_are_read_from_every_store() {
    let dir = std::env::temp_dir().join(format!("reclaim-scan-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("cbr0")).unwrap();
    fs::create_dir_all(dir.join("net2")).unwrap();
    fs::write(dir.join("cbr0/10.244.1.3"), "b\r\neth0").unwrap();
    fs::write(dir.join("cbr0/10.244.1.2"), "a\r\neth0").unwrap();
    fs::write(dir.join("cbr0/last_reserved_ip.0"), "10.244.1.3").unwrap();
    fs::write(dir.join("cbr0/lock"), "").unwrap();
    fs::write(dir.join("net2/10.9.0.2"), "c").unwrap();
    fs::write(dir.join("stray-file"), "").unwrap();
    let found = reservations(&dir).unwrap();
    let brief: Vec<(&str, String, &str, &str)> = found
        .iter()
        .map(|r| {
            let ip = r.ip.to_string();
            (
                r.network.as_str(),
                ip,
                r.container_id.as_str(),
                r.ifname.as_str(),
            )
        })
        .collect();
    assert_eq!(
        brief,
        [
            ("cbr0", "10.244.1.2".into(), "a", "eth0"),
            ("cbr0", "10.244.1.3".into(), "b", "eth0"),
            ("net2", "10.9.0.2".into(), "c", ""),
        ]
    );
    assert!(reservations(&dir.join("none")).unwrap().is_empty());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn passes_come_at_most_every_10_s_and_twice_per_grace_period() {
    let s = |grace| Settings {
        ipam_dir: "/x".into(),
        cni_data_dir: "/y".into(),
        grace,
    };
    assert_eq!(s(secs(60)).interval(), secs(10));
    assert_eq!(s(secs(2)).interval(), secs(1));
    assert_eq!(
        s(Duration::from_millis(10)).interval(),
        Duration::from_millis(100)
    );
}
