//! Watch streams: every change to a path (or its subtree) from a start revision, in
//! revision order, each revision exactly once.
//!
//! A watch reads the history backlog and subscribes to the state machine's feed under the
//! same read lock (the state machine publishes under its write lock), so nothing falls
//! between the two. A watcher that falls behind the feed, or sees the store replaced by a
//! snapshot, re-reads the history from where it was; if that part was compacted the stream
//! ends with OUT_OF_RANGE and the client must re-read state.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use marina_proto::coord::v1 as pb;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::api::node_to_pb;
use crate::error::CoordError;
use crate::node::CoordNode;
use crate::state_machine::Feed;
use crate::store::{EventKind, RevisionEvents, path_matches};

/// Counts open watches; released when the stream's task ends.
struct WatchSlot(Arc<AtomicUsize>);

impl WatchSlot {
    fn acquire(counter: &Arc<AtomicUsize>, limit: usize) -> Result<Self, CoordError> {
        let previous = counter.fetch_add(1, Ordering::AcqRel);
        if previous >= limit {
            counter.fetch_sub(1, Ordering::AcqRel);
            return Err(CoordError::TooManyWatches { limit });
        }
        Ok(Self(counter.clone()))
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Filter {
    path: String,
    recursive: bool,
}

impl Filter {
    /// The events of `change` this watch reports, as a response (None if none match).
    fn select(&self, change: &RevisionEvents) -> Option<pb::WatchResponse> {
        let events: Vec<pb::Event> = change
            .events
            .iter()
            .filter(|event| path_matches(&self.path, self.recursive, &event.node.path))
            .map(|event| pb::Event {
                r#type: match event.kind {
                    EventKind::Put => pb::event::Type::Put,
                    EventKind::Delete => pb::event::Type::Delete,
                } as i32,
                node: Some(node_to_pb(event.node.clone())),
            })
            .collect();
        (!events.is_empty()).then(|| pb::WatchResponse { revision: change.revision, events, compact_revision: 0 })
    }
}

pub fn open(
    node: &Arc<CoordNode>,
    request: pb::WatchRequest,
) -> Result<ReceiverStream<Result<pb::WatchResponse, Status>>, CoordError> {
    let slot = WatchSlot::acquire(&node.watches, node.limits.max_watches)?;
    let filter = Filter { path: request.path, recursive: request.recursive };
    let (backlog, feed, first) = {
        let replica = node.replica.read().expect("replica lock");
        let current = replica.store.revision();
        let start = if request.start_revision == 0 { current + 1 } else { request.start_revision };
        let backlog: Vec<Arc<RevisionEvents>> = replica.store.history_since(start)?.cloned().collect();
        let first = pb::WatchResponse {
            revision: current,
            events: Vec::new(),
            compact_revision: replica.store.oldest_revision().saturating_sub(1),
        };
        (backlog, node.feed.subscribe(), (start, first))
    };
    let (sender, receiver) = mpsc::channel(256);
    let node = node.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let (start, created) = first;
        let mut watcher = Watcher { filter, next: start, sender };
        if !watcher.send(created).await {
            return;
        }
        for change in backlog {
            if !watcher.deliver(&change).await {
                return;
            }
        }
        watcher.follow(&node, feed).await;
    });
    Ok(ReceiverStream::new(receiver))
}

struct Watcher {
    filter: Filter,
    /// The next revision to deliver.
    next: u64,
    sender: mpsc::Sender<Result<pb::WatchResponse, Status>>,
}

impl Watcher {
    async fn send(&mut self, response: pb::WatchResponse) -> bool {
        self.sender.send(Ok(response)).await.is_ok()
    }

    /// Delivers one revision if it is new to this watcher; false when the client is gone.
    async fn deliver(&mut self, change: &RevisionEvents) -> bool {
        if change.revision < self.next {
            return true;
        }
        self.next = change.revision + 1;
        match self.filter.select(change) {
            Some(response) => self.send(response).await,
            None => true,
        }
    }

    async fn follow(&mut self, node: &CoordNode, mut feed: broadcast::Receiver<Feed>) {
        loop {
            let item = tokio::select! {
                item = feed.recv() => item,
                () = self.sender.closed() => return,
                () = node.shutdown.cancelled() => return,
            };
            let delivered = match item {
                Ok(Feed::Changes(change)) => self.deliver(&change).await,
                Ok(Feed::Reset) | Err(broadcast::error::RecvError::Lagged(_)) => self.catch_up(node).await,
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if !delivered {
                return;
            }
        }
    }

    /// Re-reads history from `next`; the feed's queued items that overlap are skipped.
    async fn catch_up(&mut self, node: &CoordNode) -> bool {
        let backlog: Result<Vec<Arc<RevisionEvents>>, _> = {
            let replica = node.replica.read().expect("replica lock");
            replica.store.history_since(self.next).map(|history| history.cloned().collect())
        };
        match backlog {
            Ok(backlog) => {
                for change in backlog {
                    if !self.deliver(&change).await {
                        return false;
                    }
                }
                true
            }
            Err(compacted) => {
                let _ = self.sender.send(Err(Status::from(CoordError::Compacted(compacted)))).await;
                false
            }
        }
    }
}
