//! Counters and gauges shared by the threads, rendered as Prometheus text.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub struct Metrics {
    pub ready: AtomicBool,
    /// Peers the leases ask for.
    pub peers: AtomicU64,
    /// Peers whose neighbour, FDB entry and route are all in place.
    pub peers_programmed: AtomicU64,
    pub reconcile_runs: AtomicU64,
    pub reconcile_errors: AtomicU64,
    pub reconcile_ops: AtomicU64,
    pub reconcile_seconds_sum_us: AtomicU64,
    pub reconcile_last_us: AtomicU64,
    pub lease_expiry_unix: AtomicI64,
    pub lease_acquisitions: AtomicU64,
    pub lease_renewals: AtomicU64,
    pub watch_restarts: AtomicU64,
    pub leases_skipped: AtomicU64,
    pub firewall_syncs: AtomicU64,
    pub firewall_errors: AtomicU64,
}

struct Line<'a> {
    name: &'a str,
    kind: &'a str,
    help: &'a str,
    value: String,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Relaxed)
    }

    fn lines(&self) -> Vec<Line<'static>> {
        let g = |a: &AtomicU64| a.load(Relaxed).to_string();
        let secs = |us: u64| format!("{:.6}", us as f64 / 1e6);
        let l = |name, kind, help, value| Line {
            name,
            kind,
            help,
            value,
        };
        vec![
            l(
                "flanneld_ready",
                "gauge",
                "1 once the datapath is programmed and subnet.env written",
                u64::from(self.is_ready()).to_string(),
            ),
            l(
                "flanneld_peers",
                "gauge",
                "remote nodes in the leases",
                g(&self.peers),
            ),
            l(
                "flanneld_peers_programmed",
                "gauge",
                "remote nodes whose neighbour, FDB entry and route are in place",
                g(&self.peers_programmed),
            ),
            l(
                "flanneld_reconcile_runs_total",
                "counter",
                "datapath reconcile passes",
                g(&self.reconcile_runs),
            ),
            l(
                "flanneld_reconcile_errors_total",
                "counter",
                "reconcile passes that failed or left an operation undone",
                g(&self.reconcile_errors),
            ),
            l(
                "flanneld_reconcile_operations_total",
                "counter",
                "netlink changes made by reconcile passes",
                g(&self.reconcile_ops),
            ),
            l(
                "flanneld_reconcile_duration_seconds_sum",
                "counter",
                "total time spent reconciling",
                secs(self.reconcile_seconds_sum_us.load(Relaxed)),
            ),
            l(
                "flanneld_reconcile_last_duration_seconds",
                "gauge",
                "duration of the last reconcile pass",
                secs(self.reconcile_last_us.load(Relaxed)),
            ),
            l(
                "flanneld_lease_expiry_timestamp_seconds",
                "gauge",
                "when this node's lease expires (0: permanent or none)",
                self.lease_expiry_unix.load(Relaxed).to_string(),
            ),
            l(
                "flanneld_lease_acquisitions_total",
                "counter",
                "times this node acquired its lease",
                g(&self.lease_acquisitions),
            ),
            l(
                "flanneld_lease_renewals_total",
                "counter",
                "successful lease renewals",
                g(&self.lease_renewals),
            ),
            l(
                "flanneld_watch_restarts_total",
                "counter",
                "times the etcd watch was re-established",
                g(&self.watch_restarts),
            ),
            l(
                "flanneld_leases_skipped_total",
                "counter",
                "malformed or foreign leases ignored",
                g(&self.leases_skipped),
            ),
            l(
                "flanneld_firewall_syncs_total",
                "counter",
                "firewall rule checks",
                g(&self.firewall_syncs),
            ),
            l(
                "flanneld_firewall_errors_total",
                "counter",
                "firewall rule checks that failed",
                g(&self.firewall_errors),
            ),
        ]
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        for line in self.lines() {
            let _ = writeln!(out, "# HELP {} {}", line.name, line.help);
            let _ = writeln!(out, "# TYPE {} {}", line.name, line.kind);
            let _ = writeln!(out, "{} {}", line.name, line.value);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.peers.store(3, Relaxed);
        Metrics::add(&m.reconcile_runs, 2);
        m.reconcile_last_us.store(1500, Relaxed);
        let text = m.render();
        assert!(
            text.contains("# TYPE flanneld_peers gauge\nflanneld_peers 3\n"),
            "{text}"
        );
        assert!(text.contains("flanneld_reconcile_runs_total 2\n"));
        assert!(text.contains("flanneld_reconcile_last_duration_seconds 0.001500\n"));
        assert!(text.contains("flanneld_ready 0\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.split_once(' ').unwrap();
            assert!(name.starts_with("flanneld_"), "{line}");
            value.parse::<f64>().unwrap();
        }
    }
}
