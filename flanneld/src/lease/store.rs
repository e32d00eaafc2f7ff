//! The storage behind leases: etcd in production, memory in unit tests.
//!
//! Design note: nothing read from the store is trusted. Records carry what
//! the daemon needs to tell a forged or colliding lease from a real one
//! (the etcd lease a key is attached to, the revision that created it),
//! listings come in pages at one revision so no amount of data under the
//! prefix can stop a listing, and every answer says which store answered
//! at which revision ([`Header`]), so a store that was wiped or restored
//! from a backup is noticed.

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
    /// A write named an etcd lease that no longer exists.
    #[error("etcd lease not found")]
    NoLease,
    /// An answer was larger than the client accepts: ask for less.
    #[error("answer too large: {0}")]
    TooLarge(String),
}

/// Which store answered, and at which revision. A store wiped and started
/// afresh, or restored from a backup, answers with a lower revision than
/// one already seen, or with another cluster id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub revision: i64,
    /// 0: unknown (never compared).
    pub cluster_id: u64,
}

/// A key with its value, the id of the etcd lease it is attached to (0:
/// none, a permanent reservation) and the revision that created it (what
/// makes one of two colliding leases the older).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: String,
    pub value: Vec<u8>,
    pub lease: i64,
    pub create_revision: i64,
}

#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub records: Vec<Record>,
    /// The store revision of this snapshot: watch from `revision + 1`.
    pub revision: i64,
    pub cluster_id: u64,
}

impl Listing {
    pub fn header(&self) -> Header {
        Header {
            revision: self.revision,
            cluster_id: self.cluster_id,
        }
    }
}

/// One page of a listing: keys from `from` (inclusive) up to the end of
/// `prefix`, at most `limit` of them, at `revision` (0: the latest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest<'a> {
    pub prefix: &'a str,
    pub from: &'a [u8],
    pub limit: usize,
    pub revision: i64,
}

#[derive(Debug, Clone, Default)]
pub struct Page {
    pub records: Vec<Record>,
    pub header: Header,
    /// Where the next page starts (the last key and a NUL byte, as raw
    /// bytes: keys that are not UTF-8 must not loop); `None`: this was the last.
    pub next: Option<Vec<u8>>,
}

/// Keys per page; a page whose answer is too large is asked again with
/// half as many, and the pages after it grow back.
pub const PAGE_KEYS: usize = 500;

/// Lists every key under `prefix` page by page, all pages at the revision
/// of the first, so the listing is one consistent snapshot.
pub async fn list_paged<S: LeaseStore + ?Sized>(
    store: &S,
    prefix: &str,
) -> Result<Listing, StoreError> {
    let mut listing = Listing::default();
    let mut from = prefix.as_bytes().to_vec();
    let mut limit = PAGE_KEYS;
    loop {
        let req = PageRequest {
            prefix,
            from: &from,
            limit,
            revision: listing.revision,
        };
        let page = match store.range(&req).await {
            // A few huge values (written by anyone who can write under the
            // prefix) must not make the listing fail for good.
            Err(StoreError::TooLarge(_)) if limit > 1 => {
                limit /= 2;
                continue;
            }
            other => other?,
        };
        if listing.revision == 0 {
            (listing.revision, listing.cluster_id) = (page.header.revision, page.header.cluster_id);
        }
        listing.records.extend(page.records);
        limit = (limit * 2).min(PAGE_KEYS);
        match page.next {
            Some(next) => from = next,
            None => return Ok(listing),
        }
    }
}

/// The end of a prefix range: the smallest key greater than every key
/// starting with `prefix` (etcd's convention).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
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
    /// The etcd lease the key is now attached to (0 for none or a delete).
    pub lease: i64,
    /// The revision that created the key (0 for a delete).
    pub create_revision: i64,
    /// The revision of this change.
    pub mod_revision: i64,
}

/// One watch response: every event at once (a transaction can hold many).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchItem {
    Events {
        /// Every event up to this revision has been delivered: a watch
        /// reopened after it loses nothing.
        revision: i64,
        events: Vec<Event>,
    },
    /// The requested revision is gone: re-list and diff.
    Compacted { revision: i64 },
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
    /// One page of a listing (see [`list_paged`]).
    async fn range(&self, req: &PageRequest<'_>) -> Result<Page, StoreError>;
    /// Every key under `prefix`, as one snapshot, in pages.
    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        list_paged(self, prefix).await
    }
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
    /// Writes `key` unconditionally, attached to the existing etcd lease
    /// `lease` (0: none); [`StoreError::NoLease`] when that lease is gone.
    async fn put_with_lease(&self, key: &str, value: &str, lease: i64) -> Result<(), StoreError>;
    /// Refreshes a lease once; `None` when it no longer exists.
    async fn keep_alive(&self, lease: i64) -> Result<Option<Duration>, StoreError>;
    /// Remaining time of a lease; `None` when it no longer exists.
    async fn time_to_live(&self, lease: i64) -> Result<Option<Duration>, StoreError>;
    async fn revoke(&self, lease: i64) -> Result<(), StoreError>;
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Watches every key under `prefix` from `revision` on, with previous
    /// values. Returns once the watch is in place, with where the store
    /// was then.
    async fn watch(&self, prefix: &str, revision: i64)
        -> Result<(Self::Watch, Header), StoreError>;
}

#[allow(async_fn_in_trait)]
pub trait WatchStream {
    /// The next response; an error means the stream is broken (reconnect).
    async fn next(&mut self) -> Result<WatchItem, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b""), vec![0]);
    }
}
