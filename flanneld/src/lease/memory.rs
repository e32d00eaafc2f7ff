//! An in-memory lease store with a movable clock, for unit tests of the
//! lease logic. It keeps etcd's semantics where they matter: revisions,
//! leases that expire (deleting their keys), compare-and-create, and a
//! watch history that can be compacted.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use super::{
    Clock, Event, EventKind, LeaseStore, Listing, Record, StoreError, WatchItem, WatchStream,
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

impl Clock for Rc<FakeClock> {
    fn now(&self) -> SystemTime {
        self.0.get()
    }
}

#[derive(Default)]
struct Inner {
    revision: i64,
    kv: BTreeMap<String, (Vec<u8>, i64)>,
    /// lease id → (expiry, ttl)
    leases: HashMap<i64, (SystemTime, Duration)>,
    next_lease: i64,
    history: Vec<(i64, Event)>,
    compacted: i64,
    /// Number of upcoming creates that lose a race to another node.
    races: usize,
    down: bool,
}

#[derive(Clone)]
pub struct MemStore {
    inner: Rc<RefCell<Inner>>,
    clock: Rc<FakeClock>,
}

pub struct MemWatch {
    store: MemStore,
    next: i64,
    prefix: String,
}

impl MemStore {
    pub fn new(clock: Rc<FakeClock>) -> Self {
        MemStore {
            inner: Rc::new(RefCell::new(Inner::default())),
            clock,
        }
    }

    /// The next `n` creates find their key just taken by another node.
    pub fn lose_races(&self, n: usize) {
        self.inner.borrow_mut().races = n;
    }

    /// Makes every call fail as if etcd were unreachable.
    pub fn set_down(&self, down: bool) {
        self.inner.borrow_mut().down = down;
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
            .map(|(k, (v, l))| (k.clone(), (String::from_utf8_lossy(v).into_owned(), *l)))
            .collect()
    }

    /// Writes a key directly (another node's lease), without a lease.
    pub fn insert(&self, key: &str, value: &str) {
        self.inner
            .borrow_mut()
            .write(key, value.as_bytes().to_vec(), 0);
    }

    pub fn remove(&self, key: &str) {
        self.inner.borrow_mut().remove(key);
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
        for id in dead {
            i.revoke(id);
        }
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
        let prev = self
            .kv
            .insert(key.to_owned(), (value.clone(), lease))
            .map(|p| p.0);
        let ev = Event {
            kind: EventKind::Put,
            key: key.to_owned(),
            value,
            prev_value: prev,
        };
        self.history.push((self.revision, ev));
    }

    fn remove(&mut self, key: &str) {
        if let Some((prev, _)) = self.kv.remove(key) {
            self.revision += 1;
            let ev = Event {
                kind: EventKind::Delete,
                key: key.to_owned(),
                value: Vec::new(),
                prev_value: Some(prev),
            };
            self.history.push((self.revision, ev));
        }
    }

    fn revoke(&mut self, id: i64) {
        self.leases.remove(&id);
        let keys: Vec<String> = self
            .kv
            .iter()
            .filter(|(_, (_, l))| *l == id)
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
        self.check()?;
        let i = self.inner.borrow();
        Ok(i.kv.get(key).map(|(v, l)| Record {
            key: key.to_owned(),
            value: v.clone(),
            lease: *l,
        }))
    }

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        self.check()?;
        let i = self.inner.borrow();
        let records =
            i.kv.range(prefix.to_owned()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, (v, l))| Record {
                    key: k.clone(),
                    value: v.clone(),
                    lease: *l,
                })
                .collect();
        Ok(Listing {
            records,
            revision: i.revision,
        })
    }

    async fn create(
        &self,
        key: &str,
        value: &str,
        ttl: Option<Duration>,
    ) -> Result<i64, StoreError> {
        self.check()?;
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
        Ok(id)
    }

    async fn put(&self, key: &str, value: &str, ttl: Option<Duration>) -> Result<i64, StoreError> {
        self.check()?;
        let id = self.grant(ttl);
        self.inner
            .borrow_mut()
            .write(key, value.as_bytes().to_vec(), id);
        Ok(id)
    }

    async fn keep_alive(&self, lease: i64) -> Result<Option<Duration>, StoreError> {
        self.check()?;
        let now = self.clock.now();
        let mut i = self.inner.borrow_mut();
        Ok(i.leases.get_mut(&lease).map(|(exp, ttl)| {
            *exp = now + *ttl;
            *ttl
        }))
    }

    async fn time_to_live(&self, lease: i64) -> Result<Option<Duration>, StoreError> {
        self.check()?;
        let now = self.clock.now();
        let i = self.inner.borrow();
        Ok(i.leases
            .get(&lease)
            .map(|(exp, _)| exp.duration_since(now).unwrap_or_default()))
    }

    async fn revoke(&self, lease: i64) -> Result<(), StoreError> {
        self.check()?;
        self.inner.borrow_mut().revoke(lease);
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.check()?;
        self.inner.borrow_mut().remove(key);
        Ok(())
    }

    async fn watch(&self, prefix: &str, revision: i64) -> Result<MemWatch, StoreError> {
        self.check()?;
        Ok(MemWatch {
            store: self.clone(),
            next: revision,
            prefix: prefix.to_owned(),
        })
    }
}

impl WatchStream for MemWatch {
    /// Everything that happened since the last call (possibly nothing).
    async fn next(&mut self) -> Result<WatchItem, StoreError> {
        self.store.check()?;
        let i = self.store.inner.borrow();
        if self.next <= i.compacted {
            return Ok(WatchItem::Compacted {
                revision: i.compacted,
            });
        }
        let events = i
            .history
            .iter()
            .filter(|(rev, ev)| *rev >= self.next && ev.key.starts_with(&self.prefix))
            .map(|(_, ev)| ev.clone())
            .collect();
        self.next = i.revision + 1;
        Ok(WatchItem::Events {
            revision: i.revision,
            events,
        })
    }
}
