//! `GET /api/v1/nodes?watch=true`: a chunked stream of JSON lines
//! `{"type": …, "object": …}`, as the API server sends it.
//!
//! - From `resourceVersion` N: every change after N. Without a version (or
//!   "0"): first a synthetic ADDED for each current Node. A compacted N
//!   gets one ERROR event carrying a 410 Expired Status, then the end of
//!   the stream (HTTP 200, as the watch cache answers).
//! - `sendInitialEvents=true` (streaming lists): the synthetic ADDEDs, then
//!   a BOOKMARK annotated `k8s.io/initial-events-end`.
//! - `allowWatchBookmarks=true`: a BOOKMARK with the latest version every
//!   bookmark interval, and when a test asks for one.
//! - `timeoutSeconds` ends the stream normally.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::{interval_at, sleep, Instant};

use super::selector::Selector;
use super::status::ApiError;
use super::store::EventType;
use super::Shared;

/// Without `timeoutSeconds`, a watch ends after this long.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// The query of one watch request.
#[derive(Debug, Clone)]
pub struct WatchRequest {
    /// `None`: start with the current state (no version, or "0").
    pub from: Option<u64>,
    pub selector: Selector,
    pub timeout: Option<Duration>,
    pub bookmarks: bool,
    pub send_initial_events: bool,
}

/// A response body fed by the task producing the events.
pub struct StreamBody(mpsc::Receiver<Bytes>);

impl Body for StreamBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

/// Starts the event stream of `req`; it ends at the timeout, on an error
/// event, or when the client goes away.
pub fn start(shared: Arc<Shared>, req: WatchRequest) -> StreamBody {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let mut watch = Watch {
            changes: shared.changes.subscribe(),
            bookmark_epoch: shared.bookmark_epoch.load(Ordering::SeqCst),
            expire_epoch: shared.expire_epoch.load(Ordering::SeqCst),
            last: 0,
            shared,
            tx,
        };
        // A closed channel means the client left: nothing more to do.
        let _ = watch.run(&req).await;
    });
    StreamBody(rx)
}

struct Watch {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Bytes>,
    changes: tokio::sync::watch::Receiver<()>,
    bookmark_epoch: u64,
    expire_epoch: u64,
    /// Every change up to this version has been looked at.
    last: u64,
}

/// The client hung up.
struct Gone;

impl Watch {
    async fn run(&mut self, req: &WatchRequest) -> Result<(), Gone> {
        if !self.begin(req).await? {
            return Ok(());
        }
        let deadline = sleep(req.timeout.unwrap_or(DEFAULT_TIMEOUT));
        tokio::pin!(deadline);
        let period = self.shared.bookmark_interval;
        let mut ticks = interval_at(Instant::now() + period, period);
        loop {
            tokio::select! {
                () = &mut deadline => return Ok(()),
                () = self.tx.closed() => return Err(Gone),
                _ = ticks.tick(), if req.bookmarks => self.bookmark(None).await?,
                changed = self.changes.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    if !self.catch_up(req).await? {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// The initial events; false when the stream ended with an error.
    async fn begin(&mut self, req: &WatchRequest) -> Result<bool, Gone> {
        let initial = {
            let store = self.shared.store();
            self.last = store.resource_version();
            match req.from {
                None | Some(0) => Ok(store.nodes(&req.selector)),
                Some(rv) if rv > store.resource_version() => Err(
                    ApiError::too_large_resource_version(rv, store.resource_version()),
                ),
                Some(rv) => store.events_after(rv).map(|_| {
                    self.last = rv;
                    Vec::new()
                }),
            }
        };
        match initial {
            Err(e) => {
                self.send("ERROR", e.to_status()).await?;
                Ok(false)
            }
            Ok(nodes) => {
                for node in nodes {
                    self.send(EventType::Added.as_str(), node).await?;
                }
                if req.send_initial_events && req.bookmarks {
                    self.bookmark(Some("k8s.io/initial-events-end")).await?;
                }
                // Changes made while the initial events were sent.
                self.catch_up(req).await
            }
        }
    }

    /// Sends the events after `last`, and the bookmark a test asked for;
    /// false when the stream ended with an error (history compacted, or a
    /// test expired every open watch).
    async fn catch_up(&mut self, req: &WatchRequest) -> Result<bool, Gone> {
        let bookmark = self.shared.bookmark_epoch.load(Ordering::SeqCst);
        if self.shared.expire_epoch.load(Ordering::SeqCst) != self.expire_epoch {
            let at = self.last;
            let error = ApiError::expired(format!("too old resource version: {at} ({})", at + 1));
            self.send("ERROR", error.to_status()).await?;
            return Ok(false);
        }
        let events = {
            let store = self.shared.store();
            let events = store.events_after(self.last);
            self.last = store.resource_version();
            events
        };
        let events = match events {
            Ok(events) => events,
            Err(error) => {
                self.send("ERROR", error.to_status()).await?;
                return Ok(false);
            }
        };
        for event in events {
            if let Some((kind, object)) = event.filtered(&req.selector) {
                self.send(kind.as_str(), object).await?;
            }
        }
        if bookmark != self.bookmark_epoch {
            self.bookmark_epoch = bookmark;
            if req.bookmarks {
                self.bookmark(None).await?;
            }
        }
        Ok(true)
    }

    async fn bookmark(&mut self, annotation: Option<&str>) -> Result<(), Gone> {
        let mut metadata = json!({"resourceVersion": self.last.to_string()});
        if let Some(key) = annotation {
            metadata["annotations"] = json!({ key: "true" });
        }
        let object = json!({"kind": "Node", "apiVersion": "v1", "metadata": metadata});
        self.send("BOOKMARK", object).await
    }

    async fn send(&self, kind: &str, object: Value) -> Result<(), Gone> {
        let mut line = serde_json::to_vec(&json!({"type": kind, "object": object}))
            .expect("JSON values serialize");
        line.push(b'\n');
        self.tx.send(Bytes::from(line)).await.map_err(|_| Gone)
    }
}
