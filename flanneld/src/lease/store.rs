//! The storage behind leases: etcd in production, memory in unit tests.

use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// A compare-and-create found the key already there.
    #[error("key already exists")]
    Exists,
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store answered and refused (credentials, permissions): the text
    /// says why and what to change.
    #[error("{0}")]
    Refused(String),
}

/// A key with its value and the id of the etcd lease it is attached to
/// (0: none, a permanent reservation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: String,
    pub value: Vec<u8>,
    pub lease: i64,
}

#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub records: Vec<Record>,
    /// The store revision of this snapshot: watch from `revision + 1`.
    pub revision: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub key: String,
    /// The new value (empty for a delete).
    pub value: Vec<u8>,
    /// The value before the change, when the store kept it.
    pub prev_value: Option<Vec<u8>>,
}

/// One watch response: every event at once (a transaction can hold many).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchItem {
    Events {
        revision: i64,
        events: Vec<Event>,
    },
    /// The requested revision is gone: re-list and diff.
    Compacted {
        revision: i64,
    },
}

/// Wall-clock time, injectable so tests can move it.
pub trait Clock {
    fn now(&self) -> SystemTime;
}

impl<C: Clock + ?Sized> Clock for std::rc::Rc<C> {
    fn now(&self) -> SystemTime {
        (**self).now()
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

// The daemon runs on a single-threaded runtime, so these futures need not be
// `Send`; `async fn` keeps the trait readable.
#[allow(async_fn_in_trait)]
pub trait LeaseStore {
    type Watch: WatchStream;

    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError>;
    async fn list(&self, prefix: &str) -> Result<Listing, StoreError>;
    /// Creates `key` only if it does not exist (`Version(key) == 0`),
    /// attached to a fresh lease of `ttl` (none: permanent). Returns the
    /// lease id.
    async fn create(
        &self,
        key: &str,
        value: &str,
        ttl: Option<Duration>,
    ) -> Result<i64, StoreError>;
    /// Writes `key` unconditionally, attached to a fresh lease of `ttl`.
    async fn put(&self, key: &str, value: &str, ttl: Option<Duration>) -> Result<i64, StoreError>;
    /// Refreshes a lease once; `None` when it no longer exists.
    async fn keep_alive(&self, lease: i64) -> Result<Option<Duration>, StoreError>;
    /// Remaining time of a lease; `None` when it no longer exists.
    async fn time_to_live(&self, lease: i64) -> Result<Option<Duration>, StoreError>;
    async fn revoke(&self, lease: i64) -> Result<(), StoreError>;
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Watches every key under `prefix` from `revision` on, with previous values.
    async fn watch(&self, prefix: &str, revision: i64) -> Result<Self::Watch, StoreError>;
}

#[allow(async_fn_in_trait)]
pub trait WatchStream {
    /// The next response; an error means the stream is broken (reconnect).
    async fn next(&mut self) -> Result<WatchItem, StoreError>;
}
