use std::rc::Rc;
use std::time::Duration;

use super::*;
use crate::lease::memory::{FakeClock, MemStore};
use crate::lease::{EventKind, VxlanData, WatchItem, WatchStream};

const PREFIX: &str = "/coreos.com/network";
const HOUR: Duration = Duration::from_secs(3600);

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
        .block_on(f)
}

fn config(net: &str) -> NetworkConfig {
    NetworkConfig::parse(&format!(
        r#"{{"Network":"{net}","Backend":{{"Type":"vxlan"}}}}"#
    ))
    .unwrap()
}

fn attrs(ip: &str, mac_last: u8) -> LeaseAttrs {
    LeaseAttrs::vxlan(
        ip.parse().unwrap(),
        VxlanData {
            vni: 1,
            vtep_mac: [2, 0, 0, 0, 0, mac_last],
        },
    )
}

struct Fixture {
    clock: Rc<FakeClock>,
    store: MemStore,
    config: NetworkConfig,
}

impl Fixture {
    fn new(net: &str) -> Self {
        let clock = FakeClock::new();
        Fixture {
            store: MemStore::new(clock.clone()),
            clock,
            config: config(net),
        }
    }

    fn acquire(&self, attrs: LeaseAttrs, previous: Option<&str>) -> Result<OwnLease, LeaseError> {
        let req = LeaseRequest {
            prefix: PREFIX,
            config: &self.config,
            attrs,
            previous: previous.map(|p| p.parse().unwrap()),
        };
        block_on(acquire(&self.store, &self.clock, &req))
    }
}

#[test]
fn acquires_a_free_subnet_with_a_24h_lease() {
    let f = Fixture::new("10.244.0.0/16");
    let own = f.acquire(attrs("192.0.2.11", 1), None).unwrap();
    assert_eq!(own.origin, Origin::New);
    assert!(f.config.accepts(own.subnet), "{}", own.subnet);
    let dump = f.store.dump();
    let (value, lease) = &dump[&own.key];
    assert_eq!(
        own.key,
        format!("{PREFIX}/subnets/{}", subnet_key(own.subnet))
    );
    assert_eq!(value, &attrs("192.0.2.11", 1).to_json());
    assert_eq!(*lease, own.lease_id);
    let ttl = block_on(f.store.time_to_live(own.lease_id))
        .unwrap()
        .unwrap();
    assert_eq!(ttl, LEASE_TTL);
    assert_eq!(own.expires, Some(f.clock.now() + LEASE_TTL));
}

#[test]
fn restart_reuses_the_lease_without_rewriting_it() {
    let f = Fixture::new("10.244.0.0/16");
    let first = f.acquire(attrs("192.0.2.11", 1), None).unwrap();
    let before = block_on(f.store.list(PREFIX)).unwrap().revision;
    f.clock.advance(HOUR);
    let again = f.acquire(attrs("192.0.2.11", 1), None).unwrap();
    assert_eq!(again.origin, Origin::Reused);
    assert_eq!(
        (again.subnet, again.lease_id),
        (first.subnet, first.lease_id)
    );
    // Nothing written: peers see no event.
    assert_eq!(block_on(f.store.list(PREFIX)).unwrap().revision, before);
    assert_eq!(again.expires, Some(f.clock.now() + LEASE_TTL));

    // A new VTEP MAC rewrites the same subnet.
    let moved = f.acquire(attrs("192.0.2.11", 2), None).unwrap();
    assert_eq!(moved.subnet, first.subnet);
    assert_eq!(
        f.store.dump()[&first.key].0,
        attrs("192.0.2.11", 2).to_json()
    );
}

#[test]
fn previous_subnet_env_is_reused_when_free() {
    let f = Fixture::new("10.244.0.0/16");
    let own = f
        .acquire(attrs("192.0.2.11", 1), Some("10.244.77.0/24"))
        .unwrap();
    assert_eq!(
        (own.subnet.to_string().as_str(), own.origin),
        ("10.244.77.0/24", Origin::Previous)
    );

    // Held by someone else: a different subnet.
    let other = f
        .acquire(attrs("192.0.2.12", 2), Some("10.244.77.0/24"))
        .unwrap();
    assert_ne!(other.subnet, own.subnet);
    assert_eq!(other.origin, Origin::New);

    // Outside the config: ignored.
    let third = f
        .acquire(attrs("192.0.2.13", 3), Some("10.99.0.0/24"))
        .unwrap();
    assert!(f.config.accepts(third.subnet));
}

#[test]
fn lost_races_are_retried_then_reported() {
    let f = Fixture::new("10.244.0.0/16");
    f.store.lose_races(3);
    let own = f.acquire(attrs("192.0.2.11", 1), None).unwrap();
    // Three racers took three subnets; ours is a fourth.
    let dump = f.store.dump();
    assert_eq!(dump.len(), 4);
    assert_eq!(dump[&own.key].0, attrs("192.0.2.11", 1).to_json());

    f.store.lose_races(100);
    let err = f.acquire(attrs("192.0.2.12", 2), None).unwrap_err();
    assert!(matches!(err, LeaseError::Races(10)), "{err}");
}

#[test]
fn renewal_keeps_the_lease_alive() {
    let f = Fixture::new("10.244.0.0/16");
    let own = f.acquire(attrs("192.0.2.11", 1), None).unwrap();
    for _ in 0..3 {
        f.clock.advance(23 * HOUR);
        let r = block_on(renew(&f.store, &f.clock, &own)).unwrap();
        assert_eq!(r, Renewal::Renewed(f.clock.now() + LEASE_TTL));
    }
    assert!(f.store.dump().contains_key(&own.key));
}

#[test]
fn expiry_loses_the_lease_and_reacquire_gets_the_subnet_back() {
    let f = Fixture::new("10.244.0.0/16");
    let own = f.acquire(attrs("192.0.2.11", 1), None).unwrap();
    f.clock.advance(25 * HOUR);
    assert!(f.store.dump().is_empty(), "expired lease removed its key");
    assert_eq!(
        block_on(renew(&f.store, &f.clock, &own)).unwrap(),
        Renewal::Lost
    );
    let back = f
        .acquire(attrs("192.0.2.11", 1), Some(&own.subnet.to_string()))
        .unwrap();
    assert_eq!((back.subnet, back.origin), (own.subnet, Origin::Previous));
}

#[test]
fn deleted_lease_shows_in_the_watch_and_is_taken_again() {
    let f = Fixture::new("10.244.0.0/16");
    let own = f.acquire(attrs("192.0.2.11", 1), None).unwrap();
    let rev = block_on(f.store.list(PREFIX)).unwrap().revision;
    let (mut watch, header) = block_on(
        f.store
            .watch(&crate::lease::subnets_prefix(PREFIX), rev + 1),
    )
    .unwrap();
    assert_eq!(header.revision, rev);
    f.store.remove(&own.key);
    let WatchItem::Events { events, .. } = block_on(watch.next()).unwrap() else {
        panic!()
    };
    assert_eq!(
        (events[0].kind, events[0].key.as_str()),
        (EventKind::Delete, own.key.as_str())
    );
    assert!(events[0].prev_value.is_some());
    let back = f
        .acquire(attrs("192.0.2.11", 1), Some(&own.subnet.to_string()))
        .unwrap();
    assert_eq!(back.subnet, own.subnet);
    assert!(f.store.dump().contains_key(&own.key));
}

#[test]
fn exhausted_pool_is_a_clear_error() {
    // A /28 split in /30s: SubnetMin .4 ... SubnetMax .12 = 3 leasable subnets.
    let f = Fixture::new("10.1.2.0/28");
    for (i, s) in ["10.1.2.4-30", "10.1.2.8-30", "10.1.2.12-30"]
        .iter()
        .enumerate()
    {
        f.store.insert(
            &format!("{PREFIX}/subnets/{s}"),
            &attrs(&format!("192.0.2.{i}"), i as u8).to_json(),
        );
    }
    let err = f.acquire(attrs("192.0.2.11", 3), None).unwrap_err();
    assert!(matches!(err, LeaseError::Exhausted { .. }));
    assert_eq!(
        err.to_string(),
        "no free subnet left in 10.1.2.4 ... 10.1.2.12 (every /30 is leased)"
    );
}

#[test]
fn reservation_and_incompatible_leases() {
    let f = Fixture::new("10.244.0.0/16");
    // A key without an etcd lease carrying our IP: a permanent reservation.
    let key = format!("{PREFIX}/subnets/10.244.9.0-24");
    f.store.insert(&key, &attrs("192.0.2.11", 1).to_json());
    let own = f.acquire(attrs("192.0.2.11", 1), None).unwrap();
    assert_eq!(
        (own.subnet.to_string().as_str(), own.lease_id, own.expires),
        ("10.244.9.0/24", 0, None)
    );
    assert_eq!(
        block_on(renew(&f.store, &f.clock, &own)).unwrap(),
        Renewal::Permanent
    );

    // Our lease, but the wrong size for the config: deleted, a new one taken.
    let g = Fixture::new("10.244.0.0/16");
    let odd = format!("{PREFIX}/subnets/10.244.8.0-23");
    g.store.insert(&odd, &attrs("192.0.2.11", 1).to_json());
    let own = g.acquire(attrs("192.0.2.11", 1), None).unwrap();
    assert_eq!(own.subnet.prefix_len(), 24);
    assert!(!g.store.dump().contains_key(&odd));
}

#[test]
fn unreachable_store_is_an_error_not_a_panic() {
    let f = Fixture::new("10.244.0.0/16");
    f.store.set_down(true);
    let err = f.acquire(attrs("192.0.2.11", 1), None).unwrap_err();
    assert!(
        matches!(err, LeaseError::Store(StoreError::Unavailable(_))),
        "{err}"
    );
}

#[test]
fn a_planted_lease_with_our_public_ip_is_not_taken() {
    let f = Fixture::new("10.244.0.0/16");
    let first = f.acquire(attrs("192.0.2.11", 1), None).unwrap();
    // Planted later under another subnet, with our PublicIP.
    let planted = format!("{PREFIX}/subnets/10.244.200.0-24");
    let value = attrs("192.0.2.11", 9).to_json();
    f.store.insert(&planted, &value);
    // A restart that knows its subnet (subnet.env): ours, as it was.
    let again = f
        .acquire(attrs("192.0.2.11", 1), Some(&first.subnet.to_string()))
        .unwrap();
    assert_eq!(
        (again.subnet, again.origin, again.lease_id),
        (first.subnet, Origin::Reused, first.lease_id)
    );
    // One that does not: the older of the two.
    let blind = f.acquire(attrs("192.0.2.11", 1), None).unwrap();
    assert_eq!(blind.subnet, first.subnet);
    assert_eq!(f.store.dump()[&planted], (value, 0), "left alone");

    // Planted before we ever started: subnet.env still decides.
    let g = Fixture::new("10.244.0.0/16");
    g.store.insert(&planted, &attrs("192.0.2.11", 9).to_json());
    let ours = format!("{PREFIX}/subnets/10.244.77.0-24");
    g.store.insert(&ours, &attrs("192.0.2.11", 1).to_json());
    let own = g
        .acquire(attrs("192.0.2.11", 1), Some("10.244.77.0/24"))
        .unwrap();
    assert_eq!(own.key, ours);
    assert_eq!(g.store.dump().len(), 2);
}

#[test]
fn listings_come_in_pages_at_one_revision_and_survive_huge_values() {
    let f = Fixture::new("10.244.0.0/16");
    let prefix = crate::lease::subnets_prefix(PREFIX);
    for i in 0..1200 {
        f.store.insert(&format!("{prefix}k{i:04}"), "{}");
    }
    let huge = " ".repeat(5000);
    for i in 0..3 {
        f.store.insert(&format!("{prefix}k{i:04}x"), &huge);
    }
    f.store.insert(&format!("{PREFIX}/config"), "{}");
    let revision = f.store.revision();
    // Answers of more than 12 000 bytes of values fail as too large.
    f.store.limit_answers(12_000);
    let listing = block_on(f.store.list(&prefix)).unwrap();
    let keys: Vec<&str> = listing.records.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys.len(), 1203);
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "in order, once each");
    assert!(keys.iter().all(|k| k.starts_with(&prefix)));
    assert_eq!(listing.revision, revision);
    // Halved from 500 keys down to 3 for the huge values, then growing
    // back to 500 keys a page.
    let pages = f.store.calls("range").len();
    assert!((10..30).contains(&pages), "{pages} pages");
    // One value the store cannot send at all is an error, not a loop.
    f.store.limit_answers(100);
    let err = block_on(f.store.list(&prefix)).unwrap_err();
    assert!(matches!(err, StoreError::TooLarge(_)), "{err}");
}
