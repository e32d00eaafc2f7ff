//! Watching a namespace's kernel objects change, the way a user would with
//! `ip monitor` and `bridge monitor fdb`.
//!
//! A monitor that is not subscribed yet sees nothing, which a test counting
//! changes would take for "nothing changed". So [`Monitor::start`] returns
//! only once both monitors reported a canary: a bridge of its own, with an
//! address, a neighbour and an FDB entry, made (again, until seen) and then
//! deleted. Every line about the canary names its bridge and is left out.
//!
//! Nor does it start while the kernel is still busy with duplicate address
//! detection of an IPv6 address: its end, ~1–2 s after a device came up,
//! is reported as a change (the address and its local route) that nothing
//! under test made.

use std::time::Duration;

use crate::{try_wait_until, wait_until, Netns, Proc};

/// How long the monitors may take to report the canary.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one canary gets to be reported before it is made again.
const CANARY_WAIT: Duration = Duration::from_millis(500);

/// `ip -o monitor OBJECTS` and `bridge monitor fdb` running in a namespace,
/// both proven subscribed. Stopped on drop.
#[derive(Debug)]
pub struct Monitor {
    ip: Proc,
    fdb: Proc,
    canary: String,
}

impl Monitor {
    /// Starts the monitors in `ns`, `ip` watching `objects` (e.g. `route`,
    /// `neigh`, `link`, `address`), and returns once both reported the
    /// canary.
    pub fn start(ns: &Netns, objects: &[&str]) -> Monitor {
        let what = format!("duplicate address detection to end in {}", ns.name());
        wait_until(SUBSCRIBE_TIMEOUT, &what, || !in_dad(ns));
        let mut ip = ns.cmd("ip");
        ip.args(["-o", "monitor"]).args(objects);
        let mut fdb = ns.cmd("bridge");
        fdb.args(["monitor", "fdb"]);
        let monitor = Monitor {
            ip: Proc::spawn(&mut ip),
            fdb: Proc::spawn(&mut fdb),
            canary: crate::unique("cnr"),
        };
        wait_until(SUBSCRIBE_TIMEOUT, "the monitors to report a canary", || {
            monitor.make_canary(ns);
            try_wait_until(CANARY_WAIT, || monitor.saw_canary()).is_some()
        });
        ns.ip(&format!("link del {}", monitor.canary));
        monitor
    }

    /// (Re)creates the canary bridge with an address (hence routes), a
    /// neighbour and an FDB entry: a change for every object watched.
    fn make_canary(&self, ns: &Netns) {
        let br = &self.canary;
        let _ = ns.exec(&["ip", "link", "del", br]);
        ns.ip(&format!("link add {br} type bridge"));
        ns.ip(&format!("link set {br} up"));
        ns.ip(&format!("addr add 198.51.100.1/24 dev {br}"));
        ns.ip(&format!(
            "neigh replace 198.51.100.2 lladdr 02:00:5e:00:53:02 dev {br} nud permanent"
        ));
        ns.sh(&[
            "bridge",
            "fdb",
            "add",
            "02:00:5e:00:53:01",
            "dev",
            br,
            "self",
            "local",
        ]);
    }

    fn saw_canary(&self) -> bool {
        let seen = |log: String| log.lines().any(|l| mentions(l, &self.canary));
        seen(self.ip.log()) && seen(self.fdb.log())
    }

    /// Every change reported so far (`ip -o monitor` lines, then `bridge
    /// monitor fdb` lines), the canary's left out.
    pub fn lines(&self) -> Vec<String> {
        let (ip, fdb) = (self.ip.log(), self.fdb.log());
        ip.lines()
            .chain(fdb.lines())
            .filter(|l| !mentions(l, &self.canary))
            .map(str::to_string)
            .collect()
    }
}

/// True while an IPv6 address in `ns` is tentative (and DAD has not failed).
fn in_dad(ns: &Netns) -> bool {
    let links = ns.ip_json(&["-6", "addr", "show"]);
    let links = links.as_array().cloned().unwrap_or_default();
    links
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .any(|a| a["tentative"] == true && a["dadfailed"] != true)
}

/// True when `line` names the device `dev` (as a word: `dev X`, `X:`).
fn mentions(line: &str, dev: &str) -> bool {
    line.split(|c: char| c.is_whitespace() || c == ':' || c == '@')
        .any(|word| word == dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_is_mentioned_as_a_word_only() {
        assert!(mentions(
            "Deleted 9: cnr0abcd1: <BROADCAST> mtu 1500",
            "cnr0abcd1"
        ));
        assert!(mentions(
            "198.51.100.2 dev cnr0abcd1 lladdr 02:00:5e:00:53:02 PERMANENT",
            "cnr0abcd1"
        ));
        assert!(!mentions(
            "10.244.2.0 dev cnr0abcd12 lladdr 02:00:5e:00:53:02",
            "cnr0abcd1"
        ));
    }
}
