//! The loop against the in-memory store on tokio's paused clock: what it
//! sends to the reconciler and firewall threads, what it leaves in the
//! store, and its metrics, while the store breaks, compacts, loses our
//! lease or lets it expire.

use prometheus_client::metrics::counter::Counter;
use std::future::Future;
use std::rc::Rc;
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ipnet::Ipv4Net;
use tokio::time::{sleep, Instant};

use super::event_loop::{Boot, Channels, Daemon, Settings, BACKOFF_MAX, RENEW_RETRY};
use crate::backend::reconciler::Target;
use crate::backend::{Shared, Update};
use crate::config::NetworkConfig;
use crate::iface::ExtIface;
use crate::lease::memory::{MemStore, TokioClock};
use crate::lease::{acquire, Clock, LeaseAttrs, LeaseRequest, LeaseStore, VxlanData, LEASE_TTL};
use crate::masq::{FirewallUpdate, Rules};
use crate::metrics::Metrics;

pub(super) const PREFIX: &str = "/coreos.com/network";
pub(super) const OWN: &str = "10.244.1.0/24";
pub(super) const MARGIN: Duration = Duration::from_secs(3600);
pub(super) const HOUR: Duration = Duration::from_secs(3600);

pub(super) type TestDaemon = Daemon<MemStore, Rc<TokioClock>>;

pub(super) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub(super) fn key(subnet: &str) -> String {
    format!("{PREFIX}/subnets/{}", subnet.replace('/', "-"))
}

pub(super) fn attrs(ip: &str, mac_last: u8) -> LeaseAttrs {
    LeaseAttrs::vxlan(
        ip.parse().unwrap(),
        VxlanData {
            vni: 1,
            vtep_mac: [2, 0, 0, 0, 0, mac_last],
        },
    )
}

pub(super) fn ours() -> LeaseAttrs {
    attrs("192.0.2.11", 1)
}

/// Peer `n`: subnet 10.244.N.0/24, public IP 192.0.2.(100+N).
pub(super) fn peer_subnet(n: u8) -> String {
    format!("10.244.{n}.0/24")
}

pub(super) fn put_peer(store: &MemStore, n: u8) {
    let value = attrs(&format!("192.0.2.{}", 100 + n), n).to_json();
    store.insert(&key(&peer_subnet(n)), &value);
}

pub(super) const CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

pub(super) fn config() -> NetworkConfig {
    NetworkConfig::parse(CONFIG).unwrap()
}

/// The loop's surroundings: the store (reading the same clock as the
/// daemon), the other end of its channels.
pub(super) struct Rig {
    pub(super) store: MemStore,
    pub(super) shared: Arc<Shared>,
    targets: Receiver<Update>,
    rules: Receiver<FirewallUpdate>,
    /// The clock's time when the rig was made.
    pub(super) t0: SystemTime,
}

/// A daemon that took `OWN` (as bootstrap would), with peers `peers`.
pub(super) async fn rig(peers: &[u8]) -> (Rig, TestDaemon) {
    rig_with(peers, false).await
}

/// Like [`rig`]; with `reserved`, `OWN` is a permanent reservation for us
/// (a key without an etcd lease), which the daemon takes.
pub(super) async fn rig_with(peers: &[u8], reserved: bool) -> (Rig, TestDaemon) {
    let clock = TokioClock::new();
    let t0 = clock.now();
    let store = MemStore::new(clock.clone());
    store.insert(&crate::lease::config_key(PREFIX), CONFIG);
    if reserved {
        store.insert(&key(OWN), &ours().to_json());
    }
    peers.iter().for_each(|n| put_peer(&store, *n));
    let config = config();
    let req = LeaseRequest {
        prefix: PREFIX,
        config: &config,
        attrs: ours(),
        previous: Some(OWN.parse().unwrap()),
    };
    let own = acquire(&store, &clock, &req).await.unwrap();
    assert_eq!(own.subnet.to_string(), OWN);
    let boot = Boot {
        config,
        ext: ExtIface {
            index: 2,
            name: "eth0".into(),
            addr: "192.0.2.11".parse().unwrap(),
            mtu: 1500,
        },
        attrs: ours(),
        mtu: 1450,
        own,
    };
    let settings = Settings {
        prefix: PREFIX.into(),
        renew_margin: MARGIN,
        ip_masq: true,
        forward_rules: true,
        subnet_file: "/run/flannel/subnet.env".into(),
        graceful_leave: false,
    };
    let (rtx, targets) = channel();
    let (ftx, rules) = channel();
    let shared = Arc::new(Shared::default());
    let channels = Channels {
        reconciler: rtx,
        firewall: ftx,
    };
    let d = Daemon::new(
        settings,
        boot,
        store.clone(),
        clock.clone(),
        shared.clone(),
        channels,
    );
    let rig = Rig {
        store,
        shared,
        targets,
        rules,
        t0,
    };
    (rig, d)
}

/// Runs the loop while `script` runs; returns what `script` returns.
pub(super) async fn during<T>(d: &mut TestDaemon, script: impl Future<Output = T>) -> T {
    tokio::select! {
        biased;
        out = script => out,
        () = d.run(std::future::pending()) => unreachable!("the loop returned"),
    }
}

impl Rig {
    /// The targets sent since the last call.
    pub(super) fn targets(&self) -> Vec<Target> {
        let updates = self.targets.try_iter();
        (updates.filter_map(|u| match u {
            Update::Target(t) => Some(*t),
            _ => None,
        }))
        .collect()
    }

    /// The peer subnets of the last target sent since the last call.
    pub(super) fn last_peers(&self) -> Option<Vec<String>> {
        let t = self.targets().pop()?;
        Some(t.peers.iter().map(|p| p.subnet.to_string()).collect())
    }

    pub(super) fn rules(&self) -> Vec<Rules> {
        let updates = self.rules.try_iter();
        (updates.filter_map(|u| match u {
            FirewallUpdate::Rules(r) => Some(r),
            FirewallUpdate::Stop => None,
        }))
        .collect()
    }

    /// Forgets what was sent so far.
    pub(super) fn drain(&self) {
        self.targets();
        self.rules();
    }

    pub(super) fn metric(&self, f: impl Fn(&Metrics) -> &Counter) -> u64 {
        f(&self.shared.metrics).get()
    }

    /// Our key's value and lease id in the store.
    pub(super) fn own_record(&self) -> Option<(String, i64)> {
        self.store.dump().get(&key(OWN)).cloned()
    }

    /// When the calls `call` were made, from the rig's making.
    pub(super) fn call_times(&self, call: &str) -> Vec<Duration> {
        let calls = self.store.calls(call).into_iter();
        calls.map(|t| t.duration_since(self.t0).unwrap()).collect()
    }
}

pub(super) fn subnets(ns: &[u8]) -> Vec<String> {
    ns.iter().map(|n| peer_subnet(*n)).collect()
}

#[tokio::test(start_paused = true)]
async fn start_lists_peers_then_sends_rules_and_target() {
    let (rig, mut d) = rig(&[2, 3]).await;
    rig.store.insert(&key("10.244.9.0/24"), "{not json");
    let revision = rig.store.revision();
    during(&mut d, sleep(ms(10))).await;
    let own: Ipv4Net = OWN.parse().unwrap();
    let cluster: Ipv4Net = "10.244.0.0/16".parse().unwrap();
    assert_eq!(
        rig.rules(),
        [Rules {
            cluster,
            subnet: own,
            masq: true,
            forward: true,
            enable_nftables: false,
        }]
    );
    let targets = rig.targets();
    assert_eq!(targets.len(), 1);
    let t = &targets[0];
    let dev = &t.device;
    assert_eq!(
        (dev.vni, dev.port, dev.link, dev.local.to_string(), dev.mtu),
        (1, 8472, 2, "192.0.2.11".into(), 1450)
    );
    assert_eq!(
        (dev.mac, dev.subnet, t.cluster),
        ([2, 0, 0, 0, 0, 1], own, cluster)
    );
    let peers: Vec<String> = t.peers.iter().map(|p| p.subnet.to_string()).collect();
    assert_eq!(peers, subnets(&[2, 3]));
    assert_eq!(t.peers[0].public_ip.to_string(), "192.0.2.102");
    assert_eq!(
        t.subnet_env.to_string(),
        subnet_env::SubnetEnv::for_lease(cluster, own, 1450, true).to_string()
    );
    assert_eq!(rig.metric(|m| &m.leases_skipped), 1);
    assert_eq!(rig.metric(|m| &m.lease_acquisitions), 1);
    let expiry = rig.shared.metrics.lease_expiry_unix.get();
    let want = rig.t0 + LEASE_TTL;
    assert_eq!(
        expiry as u64,
        want.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    );
    // Watching from right after the listing.
    assert_eq!(rig.store.watches(), [revision + 1]);
}

#[tokio::test(start_paused = true)]
async fn every_watch_response_is_one_target_with_all_its_events() {
    let (rig, mut d) = rig(&[2]).await;
    during(&mut d, async {
        sleep(ms(10)).await;
        rig.drain();
        put_peer(&rig.store, 3);
        sleep(ms(10)).await;
        assert_eq!(rig.last_peers(), Some(subnets(&[2, 3])));
        // A transaction of three puts: one response, one target.
        let kvs: Vec<(String, String)> = (4..=6)
            .map(|n| {
                (
                    key(&peer_subnet(n)),
                    attrs(&format!("192.0.2.{}", 100 + n), n).to_json(),
                )
            })
            .collect();
        rig.store.insert_all(&kvs);
        sleep(ms(10)).await;
        let targets = rig.targets();
        assert_eq!(targets.len(), 1);
        assert_eq!(targets[0].peers.len(), 5);
        rig.store.remove(&key(&peer_subnet(2)));
        sleep(ms(10)).await;
        assert_eq!(rig.last_peers(), Some(subnets(&[3, 4, 5, 6])));
        // The same value again changes nothing: no target.
        put_peer(&rig.store, 3);
        sleep(ms(10)).await;
        assert_eq!(rig.targets(), []);
    })
    .await;
    assert_eq!(
        rig.store.calls("list").len(),
        2,
        "acquisition and start only"
    );
}

#[tokio::test(start_paused = true)]
async fn broken_watch_resumes_after_the_last_revision_with_backoff() {
    let (rig, mut d) = rig(&[2]).await;
    let restarts = || rig.metric(|m| &m.watch_restarts);
    during(&mut d, async {
        sleep(ms(10)).await;
        let seen = rig.store.revision();
        let down_at = Instant::now();
        rig.store.set_down(true);
        // Written by others while we cannot reach the store.
        put_peer(&rig.store, 3);
        rig.store.remove(&key(&peer_subnet(2)));
        // Attempts at 0, 0.1, 0.3, 0.7, 1.5, 3.1, 6.3 s (the delay doubles
        // from 100 ms), then every 5 s.
        let mut counts = Vec::new();
        for at in [50, 150, 350, 750, 1550, 3150, 6350, 11350, 16350] {
            tokio::time::sleep_until(down_at + ms(at)).await;
            counts.push(restarts());
        }
        assert_eq!(counts, [1, 2, 3, 4, 5, 6, 7, 8, 9]);
        rig.store.set_down(false);
        tokio::time::sleep_until(down_at + ms(16350) + BACKOFF_MAX).await;
        assert_eq!(rig.last_peers(), Some(subnets(&[3])));
        assert_eq!(*rig.store.watches().last().unwrap(), seen + 1);
        // After a response, the delays start over.
        let again = Instant::now();
        rig.store.set_down(true);
        let before = restarts();
        tokio::time::sleep_until(again + ms(150)).await;
        assert_eq!(restarts() - before, 2);
    })
    .await;
    assert_eq!(rig.store.calls("list").len(), 2, "resumed, not re-listed");
}

#[tokio::test(start_paused = true)]
async fn compaction_relists_and_converges() {
    let (rig, mut d) = rig(&[2, 3]).await;
    during(&mut d, async {
        sleep(ms(10)).await;
        rig.drain();
        rig.store.set_down(true);
        put_peer(&rig.store, 4);
        rig.store.remove(&key(&peer_subnet(2)));
        rig.store.compact();
        let compacted = rig.store.revision();
        rig.store.set_down(false);
        sleep(ms(200)).await;
        assert_eq!(rig.last_peers(), Some(subnets(&[3, 4])));
        assert_eq!(
            rig.store.calls("list").len(),
            3,
            "acquisition, start, compaction"
        );
        assert_eq!(*rig.store.watches().last().unwrap(), compacted + 1);
        // And the watch goes on from there.
        put_peer(&rig.store, 5);
        sleep(ms(10)).await;
        assert_eq!(rig.last_peers(), Some(subnets(&[3, 4, 5])));
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn lease_is_renewed_by_the_margin_before_it_expires() {
    let (rig, mut d) = rig(&[2]).await;
    during(&mut d, sleep(70 * HOUR)).await;
    let times = rig.call_times("keep_alive");
    assert_eq!(times, [23 * HOUR, 46 * HOUR, 69 * HOUR]);
    assert_eq!(rig.metric(|m| &m.lease_renewals), 3);
    assert_eq!(rig.metric(|m| &m.lease_acquisitions), 1, "never lost");
    let expires = rig.t0 + 69 * HOUR + LEASE_TTL;
    assert_eq!(d.own().expires, Some(expires));
    let secs = expires
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(rig.shared.metrics.lease_expiry_unix.get() as u64, secs);
    let ttl = rig.store.time_to_live(d.own().lease_id).await.unwrap();
    assert_eq!(ttl, Some(LEASE_TTL - HOUR));
}

#[tokio::test(start_paused = true)]
async fn failed_renewal_is_retried_after_the_retry_delay() {
    let (rig, mut d) = rig(&[2]).await;
    rig.store.fail_next("keep_alive", 2);
    during(&mut d, sleep(24 * HOUR)).await;
    let times = rig.call_times("keep_alive");
    let due = 23 * HOUR;
    assert_eq!(times, [due, due + RENEW_RETRY, due + 2 * RENEW_RETRY]);
    assert_eq!(rig.metric(|m| &m.lease_renewals), 1);
    assert_eq!(rig.metric(|m| &m.lease_acquisitions), 1);
    assert_eq!(
        d.own().expires,
        Some(rig.t0 + due + 2 * RENEW_RETRY + LEASE_TTL)
    );
}

#[tokio::test(start_paused = true)]
async fn lease_that_expires_while_renewals_fail_is_taken_again() {
    let (rig, mut d) = rig(&[2]).await;
    during(&mut d, async {
        sleep(22 * HOUR).await;
        rig.store.set_down(true);
        sleep(2 * HOUR + 30 * 60 * ms(1000)).await;
        assert_eq!(rig.own_record(), None, "expired");
        rig.store.set_down(false);
        sleep(ms(6000)).await;
    })
    .await;
    let times = rig.call_times("keep_alive");
    assert_eq!(
        times[..3],
        [
            23 * HOUR,
            23 * HOUR + RENEW_RETRY,
            23 * HOUR + 2 * RENEW_RETRY
        ]
    );
    assert!(
        times.windows(2).all(|w| w[1] - w[0] == RENEW_RETRY),
        "{times:?}"
    );
    assert_eq!(rig.metric(|m| &m.lease_renewals), 0);
    assert_eq!(rig.metric(|m| &m.lease_acquisitions), 2);
    assert_eq!(d.own().subnet.to_string(), OWN);
    let (value, lease) = rig.own_record().expect("taken again");
    assert_eq!((value, lease), (ours().to_json(), d.own().lease_id));
    let t = rig.targets().pop().unwrap();
    assert_eq!(
        (t.device.subnet.to_string(), t.peers.len()),
        (OWN.into(), 1)
    );
}

#[tokio::test(start_paused = true)]
async fn repairs_back_off_on_their_own() {
    let (rig, mut d) = rig(&[2]).await;
    during(&mut d, async {
        sleep(ms(10)).await;
        // The watch's delay climbs to its maximum.
        rig.store.set_down(true);
        sleep(20 * ms(1000)).await;
        put_peer(&rig.store, 3);
        rig.store.compact();
        rig.store.fail_next("list", 3);
        let lists = rig.store.calls("list").len();
        rig.store.set_down(false);
        sleep(10 * ms(1000)).await;
        let relists = &rig.call_times("list")[lists..];
        let gaps: Vec<Duration> = relists.windows(2).map(|w| w[1] - w[0]).collect();
        // The re-listing's own delays, from the minimum.
        assert_eq!(gaps, [ms(100), ms(200), ms(400)]);
        assert_eq!(rig.last_peers(), Some(subnets(&[2, 3])));
    })
    .await;
}
