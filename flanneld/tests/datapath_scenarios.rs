//! Root test: every datapath scenario runs against the real kernel, in a
//! fresh namespace with a veth as the public interface, and against the
//! in-memory kernel the unit tests use. Both must pass every check and go
//! through the same states, so the fake stays true to the kernel.

use flannel_netlink::{format_mac, Handle};
use flanneld::backend::fake::FakeKernel;
use flanneld::backend::scenarios::{
    self, Dev, Disturb, Env, ExtraRoute, Scenario, Trace, LOCAL, LOCAL_PREFIX, NIC,
};
use flanneld::backend::{Datapath, KernelDatapath, Op, RouteMode};
use harness::Netns;

const DEV: &str = "flannel.1";

/// A namespace whose `eth0` (one end of a veth) has the scenarios' public
/// address, and a datapath on it.
fn kernel() -> (Netns, KernelDatapath, Env) {
    let ns = Netns::new("fl-scn");
    ns.ip(&format!("link add {NIC} type veth peer name {NIC}p"));
    ns.ip(&format!("addr add {LOCAL}/{LOCAL_PREFIX} dev {NIC}"));
    ns.ip(&format!("link set {NIC} up"));
    ns.ip(&format!("link set {NIC}p up"));
    let handle = ns.run_in(Handle::new).expect("enter the namespace");
    let mut dp = KernelDatapath::new(handle.expect("netlink socket"));
    let nic = dp.link(NIC).unwrap().expect("veth").index;
    (ns, dp, Env { nic })
}

/// Makes the change with iproute2, as an administrator would; a permanent
/// FDB entry as flannel writes it (state NUD_PERMANENT, through netlink).
fn disturb(ns: &Netns, dp: &mut KernelDatapath, d: &Disturb) {
    match d {
        Disturb::DelRoute(dst) => drop(ns.ip(&format!("route del {dst}"))),
        Disturb::DelNeigh(ip) => drop(ns.ip(&format!("neigh del {ip} dev {DEV}"))),
        Disturb::DelFdb(mac) => {
            drop(ns.sh(&["bridge", "fdb", "del", &format_mac(mac), "dev", DEV, "self"]))
        }
        Disturb::DelNexthops => drop(ns.ip("nexthop flush protocol 241")),
        Disturb::DelDevice => drop(ns.ip(&format!("link del {DEV}"))),
        Disturb::SetDown => drop(ns.ip(&format!("link set {DEV} down"))),
        Disturb::SetMtu(mtu) => drop(ns.ip(&format!("link set {DEV} mtu {mtu}"))),
        Disturb::AddAddr(net) => drop(ns.ip(&format!("addr add {net} dev {DEV}"))),
        Disturb::AddNeigh { ip, mac, permanent } => {
            let nud = if *permanent { "permanent" } else { "reachable" };
            let mac = format_mac(mac);
            drop(ns.ip(&format!(
                "neigh replace {ip} lladdr {mac} dev {DEV} nud {nud}"
            )))
        }
        Disturb::AddFdb {
            mac,
            dst,
            permanent: true,
        } => {
            let index = dp.link(DEV).unwrap().expect("device").index;
            let op = Op::ReplaceFdb {
                mac: *mac,
                dst: *dst,
            };
            dp.apply(index, &[op]).pop().unwrap().unwrap();
        }
        Disturb::AddFdb { mac, dst, .. } => {
            let (mac, dst) = (format_mac(mac), dst.to_string());
            let args = [
                "fdb", "add", &mac, "dev", DEV, "dst", &dst, "self", "dynamic",
            ];
            drop(ns.sh(&[&["bridge"][..], &args].concat()));
        }
        Disturb::AddRoute(r) => drop(ns.ip(&format!("route add {}", route_args(r)))),
    }
}

fn route_args(r: &ExtraRoute) -> String {
    let mut args = r.dst.to_string();
    if let Some(via) = r.via {
        args += &format!(" via {via}");
    }
    args += match r.dev {
        Dev::Vxlan => " dev flannel.1",
        Dev::Nic => " dev eth0",
    };
    if r.onlink {
        args += " onlink";
    }
    if let Some(m) = r.metric {
        args += &format!(" metric {m}");
    }
    if let Some(src) = r.src {
        args += &format!(" src {src}");
    }
    args
}

/// The traces of `s` on the real kernel and on the fake one.
fn both(s: &Scenario, mode: RouteMode) -> (Trace, Trace) {
    let (ns, mut dp, env) = kernel();
    let real = scenarios::run(s, &mut dp, &env, mode, &mut |dp, d| disturb(&ns, dp, d));
    let real = real.unwrap_or_else(|e| panic!("kernel, {mode:?}: {e}"));
    let mut fake = FakeKernel::with_nic(NIC, env.nic);
    let faked = scenarios::run(s, &mut fake, &env, mode, &mut |k, d| k.disturb(d, env.nic));
    let faked = faked.unwrap_or_else(|e| panic!("fake kernel, {mode:?}: {e}"));
    (real, faked)
}

fn assert_kernels_agree(mode: RouteMode) {
    for s in scenarios::all() {
        let (real, fake) = both(&s, mode);
        assert_eq!(real, fake, "{} ({mode:?}): kernel, then fake", s.name);
    }
}

#[test]
fn kernel_and_fake_agree_with_nexthop_routes() {
    harness::require_root!();
    assert_kernels_agree(RouteMode::Nexthop);
}

#[test]
fn kernel_and_fake_agree_with_plain_routes() {
    harness::require_root!();
    assert_kernels_agree(RouteMode::Plain);
}
