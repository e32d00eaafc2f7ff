//! The loop against what anyone who can write under the prefix may do:
//! overwrite or delete our key, plant invalid or colliding leases, wipe
//! the store, change the network config. Our subnet never moves while our
//! etcd lease lives, and never becomes a peer.

use std::time::Duration;

use tokio::time::sleep;

use super::tests::*;
use crate::lease::{config_key, LeaseStore};

/// Our key's value and etcd lease are ours.
fn holds_own(rig: &Rig, lease: i64) -> bool {
    rig.own_record() == Some((ours().to_json(), lease))
}

/// No target sent since the last call has our subnet as a peer, or
/// another subnet as ours.
fn own_subnet_never_a_peer(rig: &Rig) {
    for t in rig.targets() {
        assert_eq!(t.device.subnet.to_string(), OWN);
        assert!(t.peers.iter().all(|p| p.subnet.to_string() != OWN), "{t:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn own_lease_overwritten_by_another_node_is_written_back() {
    let (rig, mut d) = rig(&[2]).await;
    let lease = d.own().lease_id;
    let theirs = attrs("192.0.2.77", 0x77).to_json();
    during(&mut d, async {
        sleep(ms(10)).await;
        rig.drain();
        rig.store.insert(&key(OWN), &theirs);
        sleep(ms(10)).await;
    })
    .await;
    assert!(holds_own(&rig, lease), "{:?}", rig.own_record());
    assert_eq!(
        (d.own().subnet.to_string(), d.own().lease_id),
        (OWN.into(), lease)
    );
    assert_eq!(rig.metric(|m| &m.lease_overwrites), 1);
    assert_eq!(rig.metric(|m| &m.lease_acquisitions), 1);
    // Nothing changed for the datapath: no target, no firewall rules.
    assert_eq!(rig.targets(), []);
    assert_eq!(rig.rules(), []);
}

#[tokio::test(start_paused = true)]
async fn own_lease_deleted_is_written_back_with_our_etcd_lease() {
    let (rig, mut d) = rig(&[2]).await;
    let lease = d.own().lease_id;
    during(&mut d, async {
        sleep(ms(10)).await;
        rig.drain();
        rig.store.remove(&key(OWN));
        sleep(ms(10)).await;
    })
    .await;
    assert!(holds_own(&rig, lease), "{:?}", rig.own_record());
    assert_eq!(rig.metric(|m| &m.lease_overwrites), 1);
    assert_eq!(rig.metric(|m| &m.lease_acquisitions), 1);
    own_subnet_never_a_peer(&rig);
}

#[tokio::test(start_paused = true)]
async fn own_lease_detached_from_our_etcd_lease_is_attached_again() {
    let (rig, mut d) = rig(&[2]).await;
    let lease = d.own().lease_id;
    during(&mut d, async {
        sleep(ms(10)).await;
        // Our value (and another with our PublicIP), no etcd lease: it would
        // outlive us as a reservation nobody renews.
        rig.store.insert(&key(OWN), &ours().to_json());
        sleep(ms(10)).await;
        assert!(holds_own(&rig, lease));
        // Rewritten again so soon: answered after a short delay.
        rig.store
            .insert(&key(OWN), &attrs("192.0.2.11", 0x55).to_json());
        sleep(ms(10)).await;
        assert!(!holds_own(&rig, lease));
        sleep(ms(200)).await;
    })
    .await;
    assert!(holds_own(&rig, lease), "{:?}", rig.own_record());
    assert_eq!(rig.metric(|m| &m.lease_overwrites), 2);
    // Still renewed as before.
    during(&mut d, sleep(24 * HOUR)).await;
    assert_eq!(rig.call_times("keep_alive"), [23 * HOUR]);
    assert!(holds_own(&rig, lease));
}

#[tokio::test(start_paused = true)]
async fn own_lease_overwritten_during_a_compaction_is_noticed() {
    let (rig, mut d) = rig(&[2]).await;
    let lease = d.own().lease_id;
    during(&mut d, async {
        sleep(ms(10)).await;
        rig.drain();
        rig.store.set_down(true);
        rig.store
            .insert(&key(OWN), &attrs("192.0.2.77", 0x77).to_json());
        rig.store.compact();
        rig.store.set_down(false);
        sleep(ms(200)).await;
    })
    .await;
    assert!(holds_own(&rig, lease), "{:?}", rig.own_record());
    assert_eq!(rig.metric(|m| &m.lease_acquisitions), 1);
    assert_eq!(rig.metric(|m| &m.lease_overwrites), 1);
    own_subnet_never_a_peer(&rig);
}

#[tokio::test(start_paused = true)]
async fn a_reservation_given_to_another_node_is_left_to_it() {
    let (rig, mut d) = rig_with(&[2], true).await;
    assert_eq!(d.own().lease_id, 0);
    let theirs = attrs("192.0.2.77", 0x77).to_json();
    during(&mut d, async {
        sleep(ms(10)).await;
        rig.drain();
        // The administrator gives the reservation to another node.
        rig.store.insert(&key(OWN), &theirs);
        sleep(ms(10)).await;
    })
    .await;
    let new = d.own().subnet;
    assert_ne!(new.to_string(), OWN);
    assert_eq!(rig.own_record(), Some((theirs, 0)));
    assert_eq!(rig.metric(|m| &m.lease_acquisitions), 2);
    assert_eq!(rig.metric(|m| &m.lease_overwrites), 0);
    let t = rig.targets().pop().unwrap();
    assert_eq!(t.device.subnet, new);
    assert_eq!(t.peers.len(), 2, "the other node and peer 2");
}

#[tokio::test(start_paused = true)]
async fn a_key_changed_after_our_etcd_lease_is_gone_is_acquired_anew() {
    let (rig, mut d) = rig(&[2]).await;
    let old = d.own().lease_id;
    during(&mut d, async {
        sleep(ms(10)).await;
        rig.drain();
        // Revoked by someone: the key goes with it.
        rig.store.revoke(old).await.unwrap();
        sleep(ms(10)).await;
    })
    .await;
    let new = d.own().lease_id;
    assert_ne!(new, old);
    assert_eq!(d.own().subnet.to_string(), OWN, "the previous subnet first");
    assert!(holds_own(&rig, new));
    assert_eq!(rig.metric(|m| &m.lease_acquisitions), 2);
    assert_eq!(rig.metric(|m| &m.lease_overwrites), 0);
    own_subnet_never_a_peer(&rig);
}

#[tokio::test(start_paused = true)]
async fn a_writer_that_keeps_overwriting_our_key_is_answered_more_slowly() {
    let (rig, mut d) = rig(&[2]).await;
    let lease = d.own().lease_id;
    let theirs = attrs("192.0.2.77", 0x77).to_json();
    during(&mut d, async {
        sleep(ms(10)).await;
        // Another writer that rewrites the key whenever it sees ours.
        for _ in 0..6000 {
            if holds_own(&rig, lease) {
                rig.store.insert(&key(OWN), &theirs);
            }
            sleep(ms(10)).await;
        }
        assert!(holds_own(&rig, lease) || rig.own_record().is_some());
        sleep(Duration::from_secs(30)).await;
    })
    .await;
    // 60 s of fighting: the first write-back at once, then after 0.1, 0.2,
    // 0.4 ... 10 s: a dozen writes, not thousands.
    let writes = rig.call_times("put_with_lease");
    assert!((8..=16).contains(&writes.len()), "{writes:?}");
    let gaps: Vec<Duration> = writes.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.windows(2).all(|g| g[1] >= g[0]), "{gaps:?}");
    assert!(holds_own(&rig, lease), "ours once the writer stops");
}

#[tokio::test(start_paused = true)]
async fn invalid_leases_are_skipped_and_counted_once_per_change() {
    let (rig, mut d) = rig(&[2]).await;
    let skipped = |rig: &Rig| rig.metric(|m| &m.leases_skipped);
    during(&mut d, async {
        sleep(ms(10)).await;
        rig.drain();
        let bad = [
            ("8.8.8.0/24", attrs("192.0.2.8", 8).to_json()),
            ("10.244.0.0/16", attrs("192.0.2.9", 9).to_json()),
            ("10.244.1.128/25", attrs("192.0.2.10", 10).to_json()),
            ("10.244.7.0/24", attrs("127.0.0.1", 7).to_json()),
            ("10.244.8.0/24", attrs("192.0.2.11", 8).to_json()),
            ("10.244.9.0/24", "[1,2,3]".into()),
        ];
        for (subnet, value) in &bad {
            rig.store.insert(&key(subnet), value);
        }
        sleep(ms(10)).await;
        assert_eq!(skipped(&rig), 6);
        assert_eq!(rig.targets(), [], "no peer came of them");
        // The same values again, and a compaction's re-listing.
        for (subnet, value) in &bad {
            rig.store.insert(&key(subnet), value);
        }
        rig.store.set_down(true);
        rig.store.compact();
        rig.store.set_down(false);
        sleep(ms(200)).await;
        assert_eq!(skipped(&rig), 6);
        // Fixed: a peer, and one fewer skipped.
        rig.store
            .insert(&key("10.244.9.0/24"), &attrs("192.0.2.99", 0x99).to_json());
        sleep(ms(10)).await;
    })
    .await;
    assert_eq!(
        rig.last_peers(),
        Some(vec![peer_subnet(2), "10.244.9.0/24".into()])
    );
    assert_eq!(rig.shared.metrics.skipped_leases.get(), 5);
    own_subnet_never_a_peer(&rig);
}

#[tokio::test(start_paused = true)]
async fn colliding_leases_keep_the_older_and_the_newer_waits() {
    let (rig, mut d) = rig(&[2, 3]).await;
    during(&mut d, async {
        sleep(ms(10)).await;
        rig.drain();
        // Peer 3's VTEP MAC again, under another subnet, written later.
        rig.store
            .insert(&key("10.244.4.0/24"), &attrs("192.0.2.104", 3).to_json());
        sleep(ms(10)).await;
        assert_eq!(rig.targets(), [], "the newer lease loses: nothing changes");
        assert_eq!(rig.metric(|m| &m.lease_conflicts), 1);
        rig.store.remove(&key(&peer_subnet(3)));
        sleep(ms(10)).await;
    })
    .await;
    assert_eq!(
        rig.last_peers(),
        Some(vec![peer_subnet(2), "10.244.4.0/24".into()])
    );
    assert_eq!(rig.shared.metrics.skipped_leases.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_wiped_store_is_noticed_by_its_revision_and_our_lease_taken_again() {
    let (rig, mut d) = rig(&[2]).await;
    during(&mut d, async {
        sleep(ms(10)).await;
        rig.drain();
        // Restored from an empty backup: same cluster, revision back to 1.
        rig.store.wipe(1);
        rig.store.insert(&config_key(PREFIX), CONFIG);
        sleep(ms(500)).await;
        put_peer(&rig.store, 5);
        sleep(ms(10)).await;
    })
    .await;
    assert_eq!(d.own().subnet.to_string(), OWN);
    assert!(holds_own(&rig, d.own().lease_id), "{:?}", rig.store.dump());
    assert_eq!(rig.metric(|m| &m.store_resets), 1);
    assert_eq!(rig.metric(|m| &m.lease_acquisitions), 2);
    assert_eq!(rig.last_peers(), Some(vec![peer_subnet(5)]));
}

#[tokio::test(start_paused = true)]
async fn a_store_of_another_cluster_is_noticed_by_its_id() {
    let (rig, mut d) = rig(&[2]).await;
    during(&mut d, async {
        sleep(ms(10)).await;
        rig.drain();
        rig.store.wipe(2);
        rig.store.set_down(true);
        // Its revision is past ours by the time we reconnect.
        for n in 10..60 {
            put_peer(&rig.store, n);
        }
        rig.store.set_down(false);
        sleep(ms(500)).await;
    })
    .await;
    assert_eq!(rig.metric(|m| &m.store_resets), 1);
    assert!(holds_own(&rig, d.own().lease_id));
    assert_eq!(rig.last_peers().map(|p| p.len()), Some(50));
}

#[tokio::test(start_paused = true)]
async fn config_changes_are_reported_once_and_not_applied() {
    let (rig, mut d) = rig(&[2]).await;
    let changes = |rig: &Rig| rig.metric(|m| &m.config_changes);
    let key = config_key(PREFIX);
    let vni2 = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":2}}"#;
    during(&mut d, async {
        sleep(ms(10)).await;
        rig.drain();
        assert_eq!(changes(&rig), 0, "the running config");
        rig.store.insert(&key, vni2);
        sleep(ms(10)).await;
        assert_eq!(changes(&rig), 1);
        // The same again (a replay, a re-listing): nothing new.
        rig.store.insert(&key, vni2);
        rig.store.set_down(true);
        rig.store.compact();
        rig.store.set_down(false);
        sleep(ms(200)).await;
        assert_eq!(changes(&rig), 1);
        rig.store.insert(
            &key,
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#,
        );
        sleep(ms(10)).await;
        rig.store.insert(&key, CONFIG);
        sleep(ms(10)).await;
        rig.store.remove(&key);
        sleep(ms(10)).await;
    })
    .await;
    assert_eq!(changes(&rig), 3, "VNI, backend type, deletion");
    // The datapath stays as it was started.
    for t in rig.targets() {
        assert_eq!((t.device.vni, t.device.subnet.to_string()), (1, OWN.into()));
    }
}

#[tokio::test(start_paused = true)]
async fn a_wiped_store_past_our_revision_is_noticed_by_our_lease() {
    let (rig, mut d) = rig(&[2]).await;
    let old = d.own().lease_id;
    during(&mut d, async {
        sleep(ms(10)).await;
        // A fresh etcd with the same name and URLs: the same cluster id,
        // and busy enough to be past our revision when we reconnect.
        rig.store.wipe(1);
        rig.store.set_down(true);
        rig.store.insert(&config_key(PREFIX), CONFIG);
        for n in 10..60 {
            put_peer(&rig.store, n);
        }
        rig.store.set_down(false);
        sleep(ms(500)).await;
    })
    .await;
    assert_eq!(d.own().subnet.to_string(), OWN);
    assert_ne!(d.own().lease_id, old);
    assert!(holds_own(&rig, d.own().lease_id), "{:?}", rig.own_record());
    assert_eq!(rig.metric(|m| &m.lease_acquisitions), 2);
    assert_eq!(rig.last_peers().map(|p| p.len()), Some(50));
}
