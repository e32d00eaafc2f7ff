//! Every operation against the real kernel, each test in network
//! namespaces of its own (unshared by the test thread, so they vanish with
//! it, pass or fail). Needs root, as CI has; a normal user's run skips them.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::Command;

use flannel_netlink::{
    parse_mac, Batch, Event, Handle, Monitor, Netns, Nexthop, Route, VethSpec, VxlanSpec,
};
use ipnet::IpNet;

// The harness's root check (`require_root!`), compiled in: this crate's
// tests do not depend on the harness.
#[macro_use]
#[path = "../../tests/src/root.rs"]
mod root;

/// Moves the calling thread into a fresh, unnamed network namespace.
fn fresh_netns() -> Netns {
    // SAFETY: affects only this thread (test threads are separate).
    assert_eq!(
        unsafe { libc::unshare(libc::CLONE_NEWNET) },
        0,
        "unshare: need root"
    );
    Netns::current().unwrap()
}

/// `ip -j ARGS` run inside the calling thread's namespace.
fn ip_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", this_thread_ns().display()))
        .args(["ip", "-j"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

fn this_thread_ns() -> PathBuf {
    let tid = unsafe { libc::gettid() };
    PathBuf::from(format!("/proc/{}/task/{tid}/ns/net", std::process::id()))
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn bridge_veth_addresses_and_routes() {
    require_root!();
    let pod = fresh_netns();
    let _node = fresh_netns();
    let mut h = Handle::new().unwrap();
    h.add_bridge("br-t", Some(1400), parse_mac("0a:58:0a:f4:01:01"))
        .unwrap();
    let br = h.link("br-t").unwrap().expect("bridge exists");
    assert_eq!((br.kind.as_deref(), br.mtu), (Some("bridge"), 1400));
    assert_eq!(br.mac, parse_mac("0a:58:0a:f4:01:01"));

    let spec = VethSpec {
        name: "veth-t".into(),
        mtu: Some(1400),
        mac: None,
        master: None,
        up: false,
        peer_name: "eth0".into(),
        peer_netns: &pod,
        peer_mac: parse_mac("0a:58:0a:f4:01:02"),
    };
    h.add_veth(&spec).unwrap();
    let host = h.link("veth-t").unwrap().unwrap();
    h.set_master(host.index, br.index).unwrap();
    h.set_hairpin(host.index, true).unwrap();
    h.set_up(host.index).unwrap();
    h.set_up(br.index).unwrap();
    let host = h.link_by_index(host.index).unwrap().unwrap();
    assert_eq!((host.master, host.up), (Some(br.index), true));
    let br_mac = h.link("br-t").unwrap().unwrap().mac;
    assert_eq!(
        br_mac,
        parse_mac("0a:58:0a:f4:01:01"),
        "a port must not change it"
    );
    let ports = ip_json(&["-d", "link", "show", "veth-t"]);
    assert_eq!(
        ports[0]["linkinfo"]["info_slave_data"]["hairpin"], true,
        "{ports}"
    );

    h.add_addr(br.index, net("10.244.1.1/24")).unwrap();
    h.add_addr(br.index, net("10.244.1.1/24")).unwrap(); // idempotent
    let addrs = h.addrs(Some(br.index)).unwrap();
    assert_eq!(
        addrs.iter().map(|a| a.net).collect::<Vec<_>>(),
        vec![net("10.244.1.1/24")]
    );

    // The pod end: created in the pod netns under its final name.
    let mut p = Handle::in_netns(&pod).unwrap();
    let eth0 = p.link("eth0").unwrap().expect("peer created in pod netns");
    assert_eq!(eth0.mac, parse_mac("0a:58:0a:f4:01:02"));
    assert_eq!(eth0.mtu, 1400);
    assert_eq!(host.peer_index, Some(eth0.index));
    assert!(
        h.link("eth0").unwrap().is_none(),
        "peer must not exist in the node"
    );
    p.set_up(eth0.index).unwrap();
    p.add_addr(eth0.index, net("10.244.1.2/24")).unwrap();
    let r = Route::new(net("10.244.0.0/16"))
        .via(ip("10.244.1.1"))
        .dev(eth0.index);
    p.add_route(&r).unwrap();
    let err = p.add_route(&r).unwrap_err();
    assert!(err.is_exists(), "{err}");
    p.replace_route(&r).unwrap();
    let routes = p.routes(false).unwrap();
    let found = routes
        .iter()
        .find(|x| x.dst == net("10.244.0.0/16"))
        .expect("route listed");
    assert_eq!(
        (found.gateway, found.oif),
        (Some(ip("10.244.1.1")), Some(eth0.index))
    );
    p.del_route(&r).unwrap();
    assert!(p.del_route(&r).unwrap_err().is_not_found());

    h.del_link(host.index).unwrap();
    assert!(
        p.link("eth0").unwrap().is_none(),
        "deleting one end removes both"
    );
    assert!(h.del_link(host.index).unwrap_err().is_not_found());
}

#[test]
fn vxlan_neigh_fdb_and_onlink_route() {
    require_root!();
    let _ns = fresh_netns();
    let mut h = Handle::new().unwrap();
    let lo = h.link("lo").unwrap().unwrap();
    h.set_up(lo.index).unwrap();
    h.add_addr(lo.index, net("192.0.2.11/32")).unwrap();
    let spec = VxlanSpec {
        name: "flannel.1".into(),
        vni: 1,
        port: 8472,
        local: Some(Ipv4Addr::new(192, 0, 2, 11)),
        link: Some(lo.index),
        mtu: Some(1450),
        mac: parse_mac("c6:d2:32:6f:8f:44"),
        learning: false,
    };
    h.add_vxlan(&spec).unwrap();
    assert!(h.add_vxlan(&spec).unwrap_err().is_exists());
    let vx = h.link("flannel.1").unwrap().unwrap();
    let info = vx.vxlan.clone().expect("vxlan info");
    assert_eq!((info.vni, info.port, info.learning), (1, 8472, false));
    assert_eq!((info.local, info.link), (spec.local, Some(lo.index)));
    assert_eq!(vx.mac, spec.mac);
    h.set_up(vx.index).unwrap();
    h.add_addr(vx.index, net("10.244.1.0/32")).unwrap();

    let mac = parse_mac("aa:bb:cc:dd:ee:01").unwrap();
    h.replace_neigh(vx.index, ip("10.244.2.0"), mac).unwrap();
    h.replace_fdb(vx.index, mac, ip("192.0.2.12")).unwrap();
    let route = Route::new(net("10.244.2.0/24"))
        .via(ip("10.244.2.0"))
        .dev(vx.index)
        .onlink();
    h.replace_route(&route).unwrap();

    let neighs = h.neighs(Some(vx.index)).unwrap();
    assert!(neighs
        .iter()
        .any(|n| n.ip == ip("10.244.2.0") && n.mac == Some(mac) && n.permanent));
    let fdb = h.fdb(Some(vx.index)).unwrap();
    assert!(
        fdb.iter()
            .any(|f| f.mac == mac && f.dst == Some(ip("192.0.2.12"))),
        "{fdb:?}"
    );
    let shown = ip_json(&["route", "show", "10.244.2.0/24"]);
    assert_eq!(shown[0]["gateway"], "10.244.2.0", "{shown}");
    assert!(
        shown[0]["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "onlink"),
        "{shown}"
    );

    h.del_fdb(vx.index, mac, Some(ip("192.0.2.12"))).unwrap();
    h.del_neigh(vx.index, ip("10.244.2.0")).unwrap();
    assert!(h
        .del_neigh(vx.index, ip("10.244.2.0"))
        .unwrap_err()
        .is_not_found());
    assert!(!h.fdb(Some(vx.index)).unwrap().iter().any(|f| f.mac == mac));
}

#[test]
fn batch_programs_and_reports_each_request() {
    require_root!();
    let _ns = fresh_netns();
    let mut h = Handle::new().unwrap();
    let lo = h.link("lo").unwrap().unwrap();
    h.set_up(lo.index).unwrap();
    h.add_addr(lo.index, net("192.0.2.11/32")).unwrap();
    h.add_vxlan(&VxlanSpec {
        name: "vx0".into(),
        vni: 7,
        port: 8472,
        local: Some(Ipv4Addr::new(192, 0, 2, 11)),
        link: Some(lo.index),
        mtu: None,
        mac: None,
        learning: false,
    })
    .unwrap();
    let vx = h.link("vx0").unwrap().unwrap();
    h.set_up(vx.index).unwrap();

    let peers = 600u32; // more than two chunks
    let mut batch = Batch::new();
    for i in 0..peers {
        let (hi, lo_) = ((i >> 8) as u8, i as u8);
        let mac = [0x0a, 0x58, 0, 0, hi, lo_];
        let gw = IpAddr::V4(Ipv4Addr::new(10, 100 + hi, lo_, 0));
        batch.replace_neigh(vx.index, gw, mac);
        batch.replace_fdb(
            vx.index,
            mac,
            IpAddr::V4(Ipv4Addr::new(192, 0, 3 + hi, lo_)),
        );
        let dst = IpNet::new(gw, 24).unwrap();
        batch.replace_route(&Route::new(dst).via(gw).dev(vx.index).onlink());
    }
    // One bad request in the middle fails alone.
    batch.del_route(&Route::new(net("10.99.0.0/24")).dev(vx.index));
    let results = h.run(batch);
    assert_eq!(results.len(), peers as usize * 3 + 1);
    let failed: Vec<_> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_err())
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].1.as_ref().unwrap_err().is_not_found());
    assert!(failed[0]
        .1
        .as_ref()
        .unwrap_err()
        .to_string()
        .contains("delete route 10.99.0.0/24"));

    let routes = h.routes(false).unwrap();
    assert_eq!(
        routes
            .iter()
            .filter(|r| r.oif == Some(vx.index) && r.onlink)
            .count(),
        peers as usize
    );
    let neighs = h.neighs(Some(vx.index)).unwrap();
    assert_eq!(
        neighs
            .iter()
            .filter(|n| n.ip.is_ipv4() && n.permanent)
            .count(),
        peers as usize
    );
    assert_eq!(
        h.fdb(Some(vx.index))
            .unwrap()
            .iter()
            .filter(|f| f.dst.is_some())
            .count(),
        peers as usize
    );
}

/// A VXLAN device `name` that is up, on `lo` (192.0.2.11); its index.
fn vxlan_up(h: &mut Handle, name: &str) -> u32 {
    let lo = h.link("lo").unwrap().unwrap();
    h.set_up(lo.index).unwrap();
    h.add_addr(lo.index, net("192.0.2.11/32")).unwrap();
    h.add_vxlan(&VxlanSpec {
        name: name.into(),
        vni: 1,
        port: 8472,
        local: Some(Ipv4Addr::new(192, 0, 2, 11)),
        link: Some(lo.index),
        mtu: Some(1450),
        mac: None,
        learning: false,
    })
    .unwrap();
    let index = h.link(name).unwrap().unwrap().index;
    h.set_up(index).unwrap();
    index
}

fn has_flag(v: &serde_json::Value, flag: &str) -> bool {
    v["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == flag))
}

/// `ip -j route get DST`: where the kernel would send a packet.
fn route_get(dst: &str) -> (String, String) {
    let got = ip_json(&["route", "get", dst]);
    let field = |k: &str| got[0][k].as_str().unwrap_or_default().to_string();
    (field("gateway"), field("dev"))
}

#[test]
fn nexthop_objects_and_routes_through_them() {
    require_root!();
    let _ns = fresh_netns();
    let mut h = Handle::new().unwrap();
    let vx = vxlan_up(&mut h, "flannel.1");
    let id = 4_000_000_001;
    let nh = Nexthop::new(id)
        .via(ip("10.244.2.0"))
        .dev(vx)
        .onlink()
        .protocol(241);
    h.replace_nexthop(&nh).unwrap();
    h.replace_nexthop(&nh).unwrap(); // idempotent
    assert_eq!(h.nexthops().unwrap(), vec![nh.clone()]);
    let shown = ip_json(&["nexthop", "show", "id", &id.to_string()]);
    assert_eq!(
        (
            &shown[0]["gateway"],
            &shown[0]["dev"],
            &shown[0]["protocol"]
        ),
        (&"10.244.2.0".into(), &"flannel.1".into(), &"241".into()),
        "{shown}"
    );
    assert!(has_flag(&shown[0], "onlink"), "{shown}");

    // A plain onlink route, as flannel installs it, replaced in place by
    // one through the nexthop: the same forwarding either way.
    let plain = Route::new(net("10.244.2.0/24"))
        .via(ip("10.244.2.0"))
        .dev(vx)
        .onlink();
    h.add_route(&plain).unwrap();
    let before = route_get("10.244.2.7");
    let through = Route::new(net("10.244.2.0/24")).nhid(id);
    h.replace_route(&through).unwrap();
    assert_eq!(route_get("10.244.2.7"), before);
    assert_eq!(before, ("10.244.2.0".into(), "flannel.1".into()));
    let shown = ip_json(&["route", "show", "10.244.2.0/24"]);
    assert_eq!(shown.as_array().unwrap().len(), 1, "{shown}");
    assert_eq!(shown[0]["nhid"], id, "{shown}");
    // The kernel's compat mode still shows gateway, device and onlink.
    assert_eq!(
        (&shown[0]["gateway"], &shown[0]["dev"]),
        (&"10.244.2.0".into(), &"flannel.1".into()),
        "{shown}"
    );
    assert!(has_flag(&shown[0], "onlink"), "{shown}");
    let dumped = h.routes(false).unwrap();
    let r = dumped.iter().find(|r| r.dst == through.dst).unwrap();
    assert_eq!(
        (r.nhid, r.gateway, r.oif, r.onlink),
        (Some(id), Some(ip("10.244.2.0")), Some(vx), true)
    );

    // Replacing the nexthop moves the route with it, untouched.
    h.replace_nexthop(&nh.clone().via(ip("10.244.2.1")))
        .unwrap();
    assert_eq!(route_get("10.244.2.7").0, "10.244.2.1");

    // A route as dumped deletes (the gateway it shows is not sent).
    h.del_route(r).unwrap();
    assert!(h.del_route(r).unwrap_err().is_not_found());
    // Deleting the nexthop takes the routes using it along.
    h.replace_route(&through).unwrap();
    h.del_nexthop(id).unwrap();
    let left = h.routes(false).unwrap();
    assert!(!left.iter().any(|r| r.dst == through.dst), "{left:?}");
    assert!(h.del_nexthop(id).unwrap_err().is_not_found());
    assert_eq!(h.nexthops().unwrap(), vec![]);
}

#[test]
fn batch_of_nexthops_and_routes() {
    require_root!();
    let _ns = fresh_netns();
    let mut h = Handle::new().unwrap();
    let vx = vxlan_up(&mut h, "vx0");
    // Somebody else's nexthop, which must survive.
    let other = Nexthop::new(7).via(ip("10.99.9.0")).dev(vx).onlink();
    h.replace_nexthop(&other).unwrap();
    let peers = 300u32; // more than one chunk of each
    let mut batch = Batch::new();
    for i in 0..peers {
        let gw = IpAddr::V4(Ipv4Addr::new(10, 100 + (i >> 8) as u8, i as u8, 0));
        batch.replace_nexthop(&Nexthop::new(1000 + i).via(gw).dev(vx).onlink());
    }
    for i in 0..peers {
        let gw = IpAddr::V4(Ipv4Addr::new(10, 100 + (i >> 8) as u8, i as u8, 0));
        batch.replace_route(&Route::new(IpNet::new(gw, 24).unwrap()).nhid(1000 + i));
    }
    // A route naming a nexthop that does not exist fails alone.
    batch.replace_route(&Route::new(net("10.99.0.0/24")).nhid(999));
    let results = h.run(batch);
    assert_eq!(results.len(), peers as usize * 2 + 1);
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    let text = failed[0].to_string();
    assert!(
        text.contains("replace route 10.99.0.0/24 nhid 999"),
        "{text}"
    );

    let nhs = h.nexthops().unwrap();
    assert_eq!(nhs.len(), peers as usize + 1);
    assert!(nhs.contains(&other));
    let routes = h.routes(false).unwrap();
    let through: Vec<_> = routes.iter().filter(|r| r.nhid.is_some()).collect();
    assert_eq!(through.len(), peers as usize);
    assert!(through
        .iter()
        .all(|r| r.gateway == Some(r.dst.network()) && r.oif == Some(vx)));

    let mut batch = Batch::new();
    for r in &through {
        batch.del_route(r);
    }
    for i in 0..peers {
        batch.del_nexthop(1000 + i);
    }
    assert!(h.run(batch).iter().all(Result::is_ok));
    assert_eq!(h.nexthops().unwrap(), vec![other]);
}

#[test]
fn monitor_sees_deletions() {
    require_root!();
    let _ns = fresh_netns();
    let mut h = Handle::new().unwrap();
    let mut monitor = Monitor::new().unwrap();
    h.add_bridge("br-m", None, None).unwrap();
    let br = h.link("br-m").unwrap().unwrap();
    h.set_up(br.index).unwrap();
    h.replace_nexthop(&Nexthop::new(5).dev(br.index)).unwrap();
    h.del_nexthop(5).unwrap();
    h.del_link(br.index).unwrap();
    let mut seen = Vec::new();
    while !seen.contains(&Event::Link {
        index: br.index,
        deleted: true,
    }) {
        seen.extend(monitor.recv().unwrap());
        assert!(seen.len() < 100, "{seen:?}");
    }
    assert!(seen.contains(&Event::Nexthop { deleted: true }), "{seen:?}");
}

#[test]
fn a_file_that_is_not_a_netns_is_refused() {
    let err = Netns::open(std::path::Path::new("/etc/hostname"))
        .err()
        .expect("must fail");
    assert!(err.to_string().contains("not a namespace file"), "{err}");
    let err = Netns::open(std::path::Path::new("/proc/self/ns/uts"))
        .err()
        .expect("must fail");
    assert!(err.to_string().contains("not a network namespace"), "{err}");
    assert!(Netns::open(std::path::Path::new("/proc/self/ns/net")).is_ok());
}
