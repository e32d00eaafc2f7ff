//! An in-memory lease store with a movable clock, for unit tests of the
//! lease logic and of the daemon's loop. It keeps etcd's semantics where
//! they matter: revisions, leases that expire (deleting their keys, also
//! under an open watch), compare-and-create, a watch that waits for the
//! next change and breaks when the store goes down, a history that can be
//! compacted, listings in pages with a bound on the answer's size, and a
//! wipe that starts the store afresh (as a restore from an empty backup).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;

use super::{
    Clock, Event, EventKind, Header, LeaseStore, Listing, Page, PageRequest, Record, StoreError,
    WatchItem, WatchStream,
};

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct FakeClock(Cell<SystemTime>);

impl FakeClock {
    pub fn new() -> Rc<Self> {
        Rc::new(FakeClock(Cell::new(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        )))
    }

    pub fn advance(&self, d: Duration) {
        self.0.set(self.0.get() + d);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> SystemTime {
        self.0.get()
    }
}

/// Wall-clock time that moves with tokio's clock: paused in a test, it
/// advances with `tokio::time::advance` and auto-advance. One such clock
/// read by both the store (lease expiry) and the daemon (renewals) keeps
/// the two consistent with the daemon's timers.
#[derive(Debug)]
pub struct TokioClock {
    base: SystemTime,
    start: tokio::time::Instant,
}

impl TokioClock {
    pub fn new() -> Rc<Self> {
        Rc::new(TokioClock {
            base: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            start: tokio::time::Instant::now(),
        })
    }
}

impl Clock for TokioClock {
    fn now(&self) -> SystemTime {
        self.base + self.start.elapsed()
    }
}

/// A stored value, the etcd lease it is attached to and the revision that
/// created the key.
#[derive(Debug, Clone)]
struct Kv {
    value: Vec<u8>,
    lease: i64,
    create_revision: i64,
}

#[derive(Default)]
struct Inner {
    revision: i64,
    cluster_id: u64,
    /// Bumped by a wipe: watches opened before it break.
    epoch: u64,
    /// Largest answer to a page request, in value bytes (none: unbounded).
    max_answer: Option<usize>,
    kv: BTreeMap<String, Kv>,
    /// lease id → (expiry, ttl)
    leases: HashMap<i64, (SystemTime, Duration)>,
    next_lease: i64,
    history: Vec<(i64, Event)>,
    compacted: i64,
    /// Number of upcoming creates that lose a race to another node.
    races: usize,
    down: bool,
    /// Revisions watches were opened from, in order.
    watches: Vec<i64>,
    /// Every call (failed or not), with the clock's time.
    calls: Vec<(&'static str, SystemTime)>,
    /// Calls that will fail next, as if the store timed out.
    failures: HashMap<&'static str, usize>,
}

#[derive(Clone)]
pub struct MemStore {
    inner: Rc<RefCell<Inner>>,
    clock: Rc<dyn Clock>,
    /// Wakes the watches on every change.
    changed: Rc<Notify>,
}

pub struct MemWatch {
    store: MemStore,
    next: i64,
    prefix: String,
    epoch: u64,
}

impl MemStore {
    pub fn new(clock: Rc<dyn Clock>) -> Self {
        let inner = Inner {
            cluster_id: 1,
            ..Inner::default()
        };
        MemStore {
            inner: Rc::new(RefCell::new(inner)),
            clock,
            changed: Rc::new(Notify::new()),
        }
    }

    /// Empties the store as a restore from an empty backup does: no keys,
    /// no leases, no history, the revision back at 1, open watches broken;
    /// `cluster_id` is the id the store answers with from now on.
    pub fn wipe(&self, cluster_id: u64) {
        let mut i = self.inner.borrow_mut();
        let (epoch, calls, failures) = (
            i.epoch + 1,
            std::mem::take(&mut i.calls),
            std::mem::take(&mut i.failures),
        );
        let watches = std::mem::take(&mut i.watches);
        *i = Inner {
            revision: 1,
            cluster_id,
            epoch,
            // etcd's lease ids are not reused.
            next_lease: i.next_lease,
            calls,
            failures,
            watches,
            ..Inner::default()
        };
        drop(i);
        self.notify();
    }

    /// Page answers holding more than `bytes` of values fail as too large.
    pub fn limit_answers(&self, bytes: usize) {
        self.inner.borrow_mut().max_answer = Some(bytes);
    }

    /// Revisions the watches were opened from, in order.
    pub fn watches(&self) -> Vec<i64> {
        self.inner.borrow().watches.clone()
    }

    /// When `call` (`"list"`, `"keep_alive"`, …) was made, failed or not.
    pub fn calls(&self, call: &str) -> Vec<SystemTime> {
        let i = self.inner.borrow();
        i.calls
            .iter()
            .filter(|(c, _)| *c == call)
            .map(|(_, t)| *t)
            .collect()
    }

    /// The next `n` calls of `call` fail as if the store timed out.
    pub fn fail_next(&self, call: &'static str, n: usize) {
        self.inner.borrow_mut().failures.insert(call, n);
    }

    /// The current revision.
    pub fn revision(&self) -> i64 {
        self.inner.borrow().revision
    }

    fn notify(&self) {
        self.changed.notify_waiters();
    }

    /// The next `n` creates find their key just taken by another node.
    pub fn lose_races(&self, n: usize) {
        self.inner.borrow_mut().races = n;
    }

    /// Makes every call fail as if etcd were unreachable, and breaks the
    /// open watches.
    pub fn set_down(&self, down: bool) {
        self.inner.borrow_mut().down = down;
        self.notify();
    }

    /// Forgets history up to the current revision.
    pub fn compact(&self) {
        let mut i = self.inner.borrow_mut();
        i.compacted = i.revision;
        i.history.clear();
    }

    /// A snapshot of the keys, for assertions: key → (value, lease id).
    pub fn dump(&self) -> BTreeMap<String, (String, i64)> {
        self.expire();
        let i = self.inner.borrow();
        i.kv.iter()
            .map(|(k, kv)| {
                let value = String::from_utf8_lossy(&kv.value).into_owned();
                (k.clone(), (value, kv.lease))
            })
            .collect()
    }

    /// Writes a key directly (another node's lease), without a lease,
    /// even while the store is down for its clients.
    pub fn insert(&self, key: &str, value: &str) {
        self.inner
            .borrow_mut()
            .write(key, value.as_bytes().to_vec(), 0);
        self.notify();
    }

    /// Writes several keys in one revision, as a transaction does.
    pub fn insert_all(&self, kvs: &[(String, String)]) {
        let mut i = self.inner.borrow_mut();
        i.revision += 1;
        let rev = i.revision;
        for (k, v) in kvs {
            i.write_at(rev, k, v.as_bytes().to_vec(), 0);
        }
        drop(i);
        self.notify();
    }

    pub fn remove(&self, key: &str) {
        self.inner.borrow_mut().remove(key);
        self.notify();
    }

    /// Records a call and says whether it fails.
    fn call(&self, call: &'static str) -> Result<(), StoreError> {
        let now = self.clock.now();
        self.inner.borrow_mut().calls.push((call, now));
        self.check()?;
        let mut i = self.inner.borrow_mut();
        match i.failures.get_mut(call) {
            Some(n) if *n > 0 => {
                *n -= 1;
                Err(StoreError::Unavailable(format!("{call} timed out")))
            }
            _ => Ok(()),
        }
    }

    fn check(&self) -> Result<(), StoreError> {
        self.expire();
        match self.inner.borrow().down {
            true => Err(StoreError::Unavailable("store is down".into())),
            false => Ok(()),
        }
    }

    /// Drops expired leases and their keys, as etcd does.
    fn expire(&self) {
        let now = self.clock.now();
        let mut i = self.inner.borrow_mut();
        let dead: Vec<i64> = i
            .leases
            .iter()
            .filter(|(_, (exp, _))| *exp <= now)
            .map(|(id, _)| *id)
            .collect();
        let expired = !dead.is_empty();
        for id in dead {
            i.revoke(id);
        }
        drop(i);
        if expired {
            self.notify();
        }
    }

    /// How long until the next lease expires.
    fn next_expiry(&self) -> Option<Duration> {
        let now = self.clock.now();
        let i = self.inner.borrow();
        let first = i.leases.values().map(|(exp, _)| *exp).min()?;
        Some(first.duration_since(now).unwrap_or_default())
    }

    fn grant(&self, ttl: Option<Duration>) -> i64 {
        let Some(ttl) = ttl else { return 0 };
        let mut i = self.inner.borrow_mut();
        i.next_lease += 1;
        let id = i.next_lease;
        i.leases.insert(id, (self.clock.now() + ttl, ttl));
        id
    }
}

impl Inner {
    fn write(&mut self, key: &str, value: Vec<u8>, lease: i64) {
        self.revision += 1;
        self.write_at(self.revision, key, value, lease);
    }

    fn write_at(&mut self, revision: i64, key: &str, value: Vec<u8>, lease: i64) {
        let create_revision = self.kv.get(key).map_or(revision, |kv| kv.create_revision);
        let kv = Kv {
            value: value.clone(),
            lease,
            create_revision,
        };
        let prev = self.kv.insert(key.to_owned(), kv).map(|p| p.value);
        let ev = Event {
            kind: EventKind::Put,
            key: key.to_owned(),
            value,
            prev_value: prev,
            lease,
            create_revision,
            mod_revision: revision,
        };
        self.history.push((revision, ev));
    }

    fn remove(&mut self, key: &str) {
        if let Some(prev) = self.kv.remove(key) {
            self.revision += 1;
            let ev = Event {
                kind: EventKind::Delete,
                key: key.to_owned(),
                value: Vec::new(),
                prev_value: Some(prev.value),
                lease: 0,
                create_revision: 0,
                mod_revision: self.revision,
            };
            self.history.push((self.revision, ev));
        }
    }

    fn record(key: &str, kv: &Kv) -> Record {
        Record {
            key: key.to_owned(),
            value: kv.value.clone(),
            lease: kv.lease,
            create_revision: kv.create_revision,
        }
    }

    fn header(&self) -> Header {
        Header {
            revision: self.revision,
            cluster_id: self.cluster_id,
        }
    }

    fn revoke(&mut self, id: i64) {
        self.leases.remove(&id);
        let keys: Vec<String> = self
            .kv
            .iter()
            .filter(|(_, kv)| kv.lease == id)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.remove(&k);
        }
    }
}

impl LeaseStore for MemStore {
    type Watch = MemWatch;

    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        self.call("get")?;
        let i = self.inner.borrow();
        Ok(i.kv.get(key).map(|kv| Inner::record(key, kv)))
    }

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        self.call("list")?;
        super::list_paged(self, prefix).await
    }

    /// A page as etcd answers it. There is no history of values to answer
    /// at an older revision: a page asked at a revision that is no longer
    /// the current one fails, as etcd does once it is compacted.
    async fn range(&self, req: &PageRequest<'_>) -> Result<Page, StoreError> {
        self.call("range")?;
        let i = self.inner.borrow();
        if req.revision != 0 && req.revision != i.revision {
            return Err(StoreError::Unavailable("required revision is gone".into()));
        }
        let from = String::from_utf8_lossy(req.from).into_owned();
        let mut keys =
            i.kv.range(from..)
                .take_while(|(k, _)| k.starts_with(req.prefix));
        let records: Vec<Record> = (&mut keys)
            .take(req.limit)
            .map(|(k, kv)| Inner::record(k, kv))
            .collect();
        let size: usize = records.iter().map(|r| r.value.len()).sum();
        if i.max_answer.is_some_and(|max| size > max) {
            return Err(StoreError::TooLarge(format!("{size} bytes")));
        }
        let more = keys.next().is_some();
        let next =
            (more.then(|| records.last()).flatten()).map(|r| format!("{}\0", r.key).into_bytes());
        Ok(Page {
            records,
            header: i.header(),
            next,
        })
    }

    async fn create(
        &self,
        key: &str,
        value: &str,
        ttl: Option<Duration>,
    ) -> Result<i64, StoreError> {
        self.call("create")?;
        {
            let mut i = self.inner.borrow_mut();
            if i.races > 0 {
                i.races -= 1;
                let racer = r#"{"PublicIP":"198.51.100.99","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:99"}}"#;
                i.write(key, racer.as_bytes().to_vec(), 0);
            }
            if i.kv.contains_key(key) {
                return Err(StoreError::Exists);
            }
        }
        let id = self.grant(ttl);
        self.inner
            .borrow_mut()
            .write(key, value.as_bytes().to_vec(), id);
        self.notify();
        Ok(id)
    }

    async fn put(&self, key: &str, value: &str, ttl: Option<Duration>) -> Result<i64, StoreError> {
        self.call("put")?;
        let id = self.grant(ttl);
        self.inner
            .borrow_mut()
            .write(key, value.as_bytes().to_vec(), id);
        self.notify();
        Ok(id)
    }

    async fn put_with_lease(&self, key: &str, value: &str, lease: i64) -> Result<(), StoreError> {
        self.call("put_with_lease")?;
        let mut i = self.inner.borrow_mut();
        if lease != 0 && !i.leases.contains_key(&lease) {
            return Err(StoreError::NoLease);
        }
        i.write(key, value.as_bytes().to_vec(), lease);
        drop(i);
        self.notify();
        Ok(())
    }

    async fn keep_alive(&self, lease: i64) -> Result<Option<Duration>, StoreError> {
        self.call("keep_alive")?;
        let now = self.clock.now();
        let mut i = self.inner.borrow_mut();
        Ok(i.leases.get_mut(&lease).map(|(exp, ttl)| {
            *exp = now + *ttl;
            *ttl
        }))
    }

    async fn time_to_live(&self, lease: i64) -> Result<Option<Duration>, StoreError> {
        self.call("time_to_live")?;
        let now = self.clock.now();
        let i = self.inner.borrow();
        Ok(i.leases
            .get(&lease)
            .map(|(exp, _)| exp.duration_since(now).unwrap_or_default()))
    }

    async fn revoke(&self, lease: i64) -> Result<(), StoreError> {
        self.call("revoke")?;
        self.inner.borrow_mut().revoke(lease);
        self.notify();
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.call("delete")?;
        self.inner.borrow_mut().remove(key);
        self.notify();
        Ok(())
    }

    async fn watch(&self, prefix: &str, revision: i64) -> Result<(MemWatch, Header), StoreError> {
        self.call("watch")?;
        let mut i = self.inner.borrow_mut();
        i.watches.push(revision);
        let watch = MemWatch {
            store: self.clone(),
            next: revision,
            prefix: prefix.to_owned(),
            epoch: i.epoch,
        };
        Ok((watch, i.header()))
    }
}

impl MemWatch {
    /// What happened from the watch's revision on, if anything did.
    fn poll(&mut self) -> Result<Option<WatchItem>, StoreError> {
        self.store.check()?;
        let i = self.store.inner.borrow();
        if i.epoch != self.epoch {
            return Err(StoreError::Unavailable("the store restarted".into()));
        }
        if self.next <= i.compacted {
            return Ok(Some(WatchItem::Compacted {
                revision: i.compacted,
            }));
        }
        let events: Vec<Event> = i
            .history
            .iter()
            .filter(|(rev, ev)| *rev >= self.next && ev.key.starts_with(&self.prefix))
            .map(|(_, ev)| ev.clone())
            .collect();
        self.next = i.revision + 1;
        Ok((!events.is_empty()).then_some(WatchItem::Events {
            revision: i.revision,
            events,
        }))
    }
}

impl WatchStream for MemWatch {
    /// Waits for the next change under the prefix (a lease expiring is
    /// one), as etcd's watch does; fails once the store is down.
    async fn next(&mut self) -> Result<WatchItem, StoreError> {
        loop {
            let changed = self.store.changed.clone();
            // Registered before looking, so no change is missed.
            let notified = changed.notified();
            if let Some(item) = self.poll()? {
                return Ok(item);
            }
            match self.store.next_expiry() {
                Some(wait) => tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep(wait) => {}
                },
                None => notified.await,
            }
        }
    }
}
