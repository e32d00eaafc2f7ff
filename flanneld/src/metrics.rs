//! Counters, gauges and a histogram shared by the threads, rendered as
//! OpenMetrics text (which Prometheus scrapes like its own text format).
//!
//! Counters are registered without `_total`: the encoder appends it, so the
//! exposed names are `flanneld_..._total` as they always were.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// What `/metrics` answers with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the reconcile duration buckets, in seconds: a pass over
/// a few peers takes around 100 µs, one over thousands of new peers seconds.
const DURATION_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// 1 once the datapath is programmed and subnet.env written.
    pub ready: Gauge,
    /// Peers the leases ask for.
    pub peers: Gauge,
    /// Peers whose neighbour, FDB entry and route are all in place.
    pub peers_programmed: Gauge,
    pub reconcile_runs: Counter,
    pub reconcile_errors: Counter,
    pub reconcile_ops: Counter,
    pub reconcile_duration: Histogram,
    pub reconcile_last_seconds: Gauge<f64, AtomicU64>,
    pub lease_expiry_unix: Gauge,
    pub lease_acquisitions: Counter,
    pub lease_renewals: Counter,
    pub watch_restarts: Counter,
    /// Times a lease started being skipped, or for another reason.
    pub leases_skipped: Counter,
    /// Leases not used as peers now (invalid, or losing a conflict).
    pub skipped_leases: Gauge,
    pub lease_conflicts: Counter,
    pub lease_overwrites: Counter,
    pub config_changes: Counter,
    pub store_resets: Counter,
    pub firewall_syncs: Counter,
    pub firewall_errors: Counter,
    /// IPs of pods gone without DEL that were released.
    pub ipam_reclaimed: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Metrics {
            registry: Registry::default(),
            ready: Gauge::default(),
            peers: Gauge::default(),
            peers_programmed: Gauge::default(),
            reconcile_runs: Counter::default(),
            reconcile_errors: Counter::default(),
            reconcile_ops: Counter::default(),
            reconcile_duration: Histogram::new(DURATION_BUCKETS),
            reconcile_last_seconds: Gauge::default(),
            lease_expiry_unix: Gauge::default(),
            lease_acquisitions: Counter::default(),
            lease_renewals: Counter::default(),
            watch_restarts: Counter::default(),
            leases_skipped: Counter::default(),
            skipped_leases: Gauge::default(),
            lease_conflicts: Counter::default(),
            lease_overwrites: Counter::default(),
            config_changes: Counter::default(),
            store_resets: Counter::default(),
            firewall_syncs: Counter::default(),
            firewall_errors: Counter::default(),
            ipam_reclaimed: Counter::default(),
        };
        m.register();
        m
    }
}

impl Metrics {
    /// Registers every metric under its exposed name (counters without
    /// `_total`), in the order `/metrics` lists them.
    fn register(&mut self) {
        let r = &mut self.registry;
        let ready_help = "1 once the datapath is programmed and subnet.env written";
        r.register("flanneld_ready", ready_help, self.ready.clone());
        r.register(
            "flanneld_peers",
            "remote nodes in the leases",
            self.peers.clone(),
        );
        r.register(
            "flanneld_peers_programmed",
            "remote nodes whose neighbour, FDB entry and route are in place",
            self.peers_programmed.clone(),
        );
        r.register(
            "flanneld_reconcile_runs",
            "datapath reconcile passes",
            self.reconcile_runs.clone(),
        );
        r.register(
            "flanneld_reconcile_errors",
            "reconcile passes that failed or left an operation undone",
            self.reconcile_errors.clone(),
        );
        r.register(
            "flanneld_reconcile_operations",
            "netlink changes made by reconcile passes",
            self.reconcile_ops.clone(),
        );
        r.register(
            "flanneld_reconcile_duration_seconds",
            "duration of reconcile passes",
            self.reconcile_duration.clone(),
        );
        r.register(
            "flanneld_reconcile_last_duration_seconds",
            "duration of the last reconcile pass",
            self.reconcile_last_seconds.clone(),
        );
        self.register_lease_and_firewall();
        self.register_untrusted();
        self.registry.register(
            "flanneld_ipam_reclaimed",
            "IPs released because their pod's host veth was gone longer than the grace period",
            self.ipam_reclaimed.clone(),
        );
    }

    /// What flanneld refused or repaired of what it read from etcd.
    fn register_untrusted(&mut self) {
        let r = &mut self.registry;
        r.register(
            "flanneld_skipped_leases",
            "leases not used as peers now (invalid, or losing a conflict)",
            self.skipped_leases.clone(),
        );
        let counters = [
            (
                "flanneld_lease_conflicts",
                "times a lease lost a conflict with an older one",
                &self.lease_conflicts,
            ),
            (
                "flanneld_lease_overwrites",
                "times this node's lease key was overwritten or deleted and written back",
                &self.lease_overwrites,
            ),
            (
                "flanneld_config_changes",
                "changes of the network config seen while running (not applied)",
                &self.config_changes,
            ),
            (
                "flanneld_etcd_resets",
                "times etcd was found wiped or restored (lease taken again, peers re-listed)",
                &self.store_resets,
            ),
        ];
        for (name, help, counter) in counters {
            r.register(name, help, counter.clone());
        }
    }

    fn register_lease_and_firewall(&mut self) {
        let r = &mut self.registry;
        r.register(
            "flanneld_lease_expiry_timestamp_seconds",
            "when this node's lease expires (0: permanent or none)",
            self.lease_expiry_unix.clone(),
        );
        let counters = [
            (
                "flanneld_lease_acquisitions",
                "times this node acquired its lease",
                &self.lease_acquisitions,
            ),
            (
                "flanneld_lease_renewals",
                "successful lease renewals",
                &self.lease_renewals,
            ),
            (
                "flanneld_watch_restarts",
                "times the etcd watch was re-established",
                &self.watch_restarts,
            ),
            (
                "flanneld_leases_skipped",
                "times a lease started being skipped (or for another reason)",
                &self.leases_skipped,
            ),
            (
                "flanneld_firewall_syncs",
                "firewall rule checks",
                &self.firewall_syncs,
            ),
            (
                "flanneld_firewall_errors",
                "firewall rule checks that failed",
                &self.firewall_errors,
            ),
        ];
        for (name, help, counter) in counters {
            r.register(name, help, counter.clone());
        }
    }

    pub fn add(counter: &Counter, n: u64) {
        counter.inc_by(n);
    }

    pub fn set(gauge: &Gauge, value: i64) {
        gauge.set(value);
    }

    /// Records one reconcile pass's duration.
    pub fn observe_pass(&self, took: Duration) {
        let secs = took.as_secs_f64();
        self.reconcile_duration.observe(secs);
        self.reconcile_last_seconds.set(secs);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.get() == 1
    }

    /// The OpenMetrics text exposition (version 1.0.0), ending in `# EOF`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `name value` of every sample line.
    fn samples(text: &str) -> Vec<(String, f64)> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (name, value) = l.rsplit_once(' ').unwrap();
                (name.to_owned(), value.parse().unwrap())
            })
            .collect()
    }

    fn value(text: &str, name: &str) -> f64 {
        let found = samples(text).into_iter().find(|(n, _)| n == name);
        found.unwrap_or_else(|| panic!("no {name} in\n{text}")).1
    }

    #[test]
    fn exposes_the_same_names_and_types() {
        let text = Metrics::default().render();
        let types: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .collect();
        assert_eq!(
            types,
            [
                "flanneld_ready gauge",
                "flanneld_peers gauge",
                "flanneld_peers_programmed gauge",
                "flanneld_reconcile_runs counter",
                "flanneld_reconcile_errors counter",
                "flanneld_reconcile_operations counter",
                "flanneld_reconcile_duration_seconds histogram",
                "flanneld_reconcile_last_duration_seconds gauge",
                "flanneld_lease_expiry_timestamp_seconds gauge",
                "flanneld_lease_acquisitions counter",
                "flanneld_lease_renewals counter",
                "flanneld_watch_restarts counter",
                "flanneld_leases_skipped counter",
                "flanneld_firewall_syncs counter",
                "flanneld_firewall_errors counter",
                "flanneld_skipped_leases gauge",
                "flanneld_lease_conflicts counter",
                "flanneld_lease_overwrites counter",
                "flanneld_config_changes counter",
                "flanneld_etcd_resets counter",
                "flanneld_ipam_reclaimed counter",
            ]
        );
        let names: Vec<String> = samples(&text)
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| !n.contains("_duration_seconds_"))
            .collect();
        assert_eq!(
            names,
            [
                "flanneld_ready",
                "flanneld_peers",
                "flanneld_peers_programmed",
                "flanneld_reconcile_runs_total",
                "flanneld_reconcile_errors_total",
                "flanneld_reconcile_operations_total",
                "flanneld_reconcile_last_duration_seconds",
                "flanneld_lease_expiry_timestamp_seconds",
                "flanneld_lease_acquisitions_total",
                "flanneld_lease_renewals_total",
                "flanneld_watch_restarts_total",
                "flanneld_leases_skipped_total",
                "flanneld_firewall_syncs_total",
                "flanneld_firewall_errors_total",
                "flanneld_skipped_leases",
                "flanneld_lease_conflicts_total",
                "flanneld_lease_overwrites_total",
                "flanneld_config_changes_total",
                "flanneld_etcd_resets_total",
                "flanneld_ipam_reclaimed_total",
            ]
        );
        assert!(text.contains("# HELP flanneld_peers remote nodes in the leases.\n"));
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn renders_values() {
        let m = Metrics::default();
        Metrics::set(&m.peers, 3);
        Metrics::set(&m.ready, 1);
        Metrics::set(&m.lease_expiry_unix, 1_714_557_600);
        Metrics::add(&m.reconcile_runs, 2);
        m.observe_pass(Duration::from_micros(1500));
        let text = m.render();
        assert!(m.is_ready());
        assert!(text.contains("# TYPE flanneld_peers gauge\nflanneld_peers 3\n"));
        assert_eq!(value(&text, "flanneld_ready"), 1.0);
        assert_eq!(value(&text, "flanneld_reconcile_runs_total"), 2.0);
        assert_eq!(
            value(&text, "flanneld_lease_expiry_timestamp_seconds"),
            1_714_557_600.0
        );
        assert_eq!(
            value(&text, "flanneld_reconcile_last_duration_seconds"),
            0.0015
        );
    }

    #[test]
    fn reconcile_durations_form_a_histogram() {
        let m = Metrics::default();
        for us in [50, 1500, 1500, 20_000_000] {
            m.observe_pass(Duration::from_micros(us));
        }
        let text = m.render();
        let name = "flanneld_reconcile_duration_seconds";
        let bucket = |le: &str| value(&text, &format!("{name}_bucket{{le=\"{le}\"}}"));
        assert_eq!(bucket("0.0001"), 1.0);
        assert_eq!(bucket("0.001"), 1.0);
        assert_eq!(bucket("0.0025"), 3.0);
        assert_eq!(bucket("10.0"), 3.0);
        assert_eq!(bucket("+Inf"), 4.0);
        assert_eq!(value(&text, &format!("{name}_count")), 4.0);
        let sum = value(&text, &format!("{name}_sum"));
        assert!((sum - 20.00305).abs() < 1e-9, "{sum}");
    }
}
