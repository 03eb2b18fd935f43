//! Watch streams: every change to a path (or its subtree) from a start revision, in
//! revision order, each revision exactly once.
//!
//! A watch reads the history backlog and subscribes to the [`WatchHub`] under the same read
//! lock (the state machine publishes under its write lock), so nothing falls between the
//! two. The hub indexes watches by path: a change wakes only the watches it matches, as
//! ZooKeeper's watch manager does, not every watch to filter it (a thousand agents each
//! watching the master election would otherwise all be woken by every write).
//!
//! A watcher whose queue is full misses nothing: the hub stops queueing for it and notes
//! the first revision it did not queue; the watcher delivers what was queued, then re-reads
//! the history from that revision. A watcher that sees the store replaced by a snapshot
//! re-reads the history from where it was; if that part was compacted the stream ends with
//! OUT_OF_RANGE and the client must re-read state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use marina_proto::coord::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::api::node_to_pb;
use crate::error::CoordError;
use crate::node::CoordNode;
use crate::store::{EventKind, RevisionEvents, path_matches};

/// What a watch is sent by the state machine.
#[derive(Debug, Clone)]
pub enum Feed {
    /// A revision that changed what the watch watches.
    Changes(Arc<RevisionEvents>),
    /// The store was replaced by an installed snapshot: re-read history from where you were.
    Reset,
}

/// Every open watch, by the path it watches.
#[derive(Default)]
pub struct WatchHub {
    watches: Mutex<HubWatches>,
    next_id: AtomicU64,
}

#[derive(Default)]
struct HubWatches {
    exact: HashMap<String, Vec<Arc<Subscription>>>,
    recursive: HashMap<String, Vec<Arc<Subscription>>>,
}

impl HubWatches {
    fn by_kind(&mut self, recursive: bool) -> &mut HashMap<String, Vec<Arc<Subscription>>> {
        if recursive { &mut self.recursive } else { &mut self.exact }
    }
}

/// One watch's queue in the hub.
struct Subscription {
    id: u64,
    queue: mpsc::Sender<Feed>,
    /// Set (under the replica's write lock) when a change did not fit the queue; from then
    /// on nothing is queued until the watcher has caught up from history (and cleared it,
    /// under the read lock).
    lagged: AtomicBool,
    /// The first revision not queued (0: re-read from where the watcher was, after a reset).
    lagged_from: AtomicU64,
}

impl Subscription {
    fn offer(&self, feed: Feed, revision: u64) {
        if self.lagged.load(Ordering::Acquire) {
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = self.queue.try_send(feed) {
            self.lagged_from.store(revision, Ordering::Release);
            self.lagged.store(true, Ordering::Release);
        }
    }
}

/// A watch's place in the hub and its queue; it leaves the hub when dropped.
struct Subscribed {
    hub: Arc<WatchHub>,
    path: String,
    recursive: bool,
    subscription: Arc<Subscription>,
    queue: mpsc::Receiver<Feed>,
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        let mut watches = self.hub.watches.lock().expect("watch hub lock");
        let by_path = watches.by_kind(self.recursive);
        if let Some(subscriptions) = by_path.get_mut(&self.path) {
            subscriptions.retain(|s| s.id != self.subscription.id);
            if subscriptions.is_empty() {
                by_path.remove(&self.path);
            }
        }
    }
}

impl WatchHub {
    /// Call under the replica's read lock, with the history read under it. At most `queued`
    /// changes wait for the watcher (`limits.watch_queue`).
    fn subscribe(self: &Arc<Self>, path: &str, recursive: bool, queued: usize) -> Subscribed {
        let (queue, receiver) = mpsc::channel(queued);
        let subscription = Arc::new(Subscription {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            queue,
            lagged: AtomicBool::new(false),
            lagged_from: AtomicU64::new(0),
        });
        let mut watches = self.watches.lock().expect("watch hub lock");
        watches.by_kind(recursive).entry(path.to_owned()).or_default().push(subscription.clone());
        Subscribed { hub: self.clone(), path: path.to_owned(), recursive, subscription, queue: receiver }
    }

    /// Queues `change` for the watches it matches. Call under the replica's write lock.
    pub fn publish(&self, change: &Arc<RevisionEvents>) {
        let watches = self.watches.lock().expect("watch hub lock");
        if watches.exact.is_empty() && watches.recursive.is_empty() {
            return;
        }
        let mut matched: Vec<&Arc<Subscription>> = Vec::new();
        for event in &change.events {
            let path = event.node.path.as_str();
            matched.extend(watches.exact.get(path).into_iter().flatten());
            for watched in self_and_ancestors(path) {
                matched.extend(watches.recursive.get(watched).into_iter().flatten());
            }
        }
        // A change of several paths under one watch wakes it once.
        matched.sort_unstable_by_key(|s| s.id);
        matched.dedup_by_key(|s| s.id);
        for subscription in matched {
            subscription.offer(Feed::Changes(change.clone()), change.revision);
        }
    }

    /// Tells every watch the store was replaced. Call under the replica's write lock.
    pub fn reset(&self) {
        let watches = self.watches.lock().expect("watch hub lock");
        for subscription in watches.exact.values().chain(watches.recursive.values()).flatten() {
            if subscription.lagged.load(Ordering::Acquire) {
                // It catches up anyway: from where it was, not from where it lagged (what
                // the snapshot brought in between was never published).
                subscription.lagged_from.store(0, Ordering::Release);
            } else {
                subscription.offer(Feed::Reset, 0);
            }
        }
    }
}

/// `path`, its parent, and so on up to the root: the paths whose recursive watches see a
/// change of `path`.
fn self_and_ancestors(path: &str) -> impl Iterator<Item = &str> {
    let mut next = Some(path);
    std::iter::from_fn(move || {
        let current = next?;
        next = match current.rfind('/') {
            _ if current == "/" => None,
            Some(0) => Some("/"),
            Some(slash) => Some(&current[..slash]),
            None => None,
        };
        Some(current)
    })
}

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
        (backlog, node.watch_hub.subscribe(&filter.path, filter.recursive, node.limits.watch_queue), (start, first))
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

    async fn follow(&mut self, node: &CoordNode, mut feed: Subscribed) {
        loop {
            let item = tokio::select! {
                item = feed.queue.recv() => item,
                () = self.sender.closed() => return,
                () = node.shutdown.cancelled() => return,
            };
            let delivered = match item {
                Some(Feed::Changes(change)) => self.deliver(&change).await,
                Some(Feed::Reset) => self.catch_up(node, None).await,
                None => return,
            };
            if !delivered || (feed.subscription.lagged.load(Ordering::Acquire) && !self.recover(node, &mut feed).await)
            {
                return;
            }
        }
    }

    /// After changes did not fit the queue: delivers what was queued (every revision before
    /// the first one left out), then the history from that one on.
    async fn recover(&mut self, node: &CoordNode, feed: &mut Subscribed) -> bool {
        while let Ok(item) = feed.queue.try_recv() {
            match item {
                Feed::Changes(change) => {
                    if !self.deliver(&change).await {
                        return false;
                    }
                }
                // The store was replaced before the lag: catch up from where this watch
                // was, as a reset asks.
                Feed::Reset => feed.subscription.lagged_from.store(0, Ordering::Release),
            }
        }
        self.catch_up(node, Some(&feed.subscription)).await
    }

    /// Re-reads history from `next` (queued items that overlap are skipped), or, for a
    /// `lagged` watch, from the first revision it was not queued. Its lag is cleared under
    /// the same read lock: the hub queues for it again from the next revision on.
    async fn catch_up(&mut self, node: &CoordNode, lagged: Option<&Subscription>) -> bool {
        let backlog: Result<Vec<Arc<RevisionEvents>>, _> = {
            let replica = node.replica.read().expect("replica lock");
            let from = match lagged.map(|s| (s.lagged_from.load(Ordering::Acquire), s)) {
                Some((from, subscription)) => {
                    subscription.lagged.store(false, Ordering::Release);
                    from.max(self.next)
                }
                None => self.next,
            };
            replica.store.history_since(from).map(|history| history.cloned().collect())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{NodeRecord, NodeView};
    use crate::store::Event;

    fn change(revision: u64, paths: &[&str]) -> Arc<RevisionEvents> {
        let events = paths
            .iter()
            .map(|path| Event {
                kind: EventKind::Put,
                node: NodeView { path: (*path).to_owned(), record: NodeRecord::default() },
            })
            .collect();
        Arc::new(RevisionEvents { revision, events })
    }

    fn queued(subscribed: &mut Subscribed) -> Vec<u64> {
        std::iter::from_fn(|| subscribed.queue.try_recv().ok())
            .map(|feed| match feed {
                Feed::Changes(change) => change.revision,
                Feed::Reset => 0,
            })
            .collect()
    }

    #[test]
    fn a_change_is_queued_only_for_the_watches_it_matches_and_once_each() {
        assert_eq!(self_and_ancestors("/a/b").collect::<Vec<_>>(), ["/a/b", "/a", "/"]);
        assert_eq!(self_and_ancestors("/a").collect::<Vec<_>>(), ["/a", "/"]);
        assert_eq!(self_and_ancestors("/").collect::<Vec<_>>(), ["/"]);

        let hub = Arc::new(WatchHub::default());
        let mut exact_a = hub.subscribe("/a", false, 8);
        let mut under_a = hub.subscribe("/a", true, 8);
        let mut exact_ax = hub.subscribe("/a/x", false, 8);
        let mut under_b = hub.subscribe("/b", true, 8);
        let mut everything = hub.subscribe("/", true, 8);
        let mut sibling = hub.subscribe("/ab", true, 8);
        hub.publish(&change(1, &["/a/x", "/a/y"]));
        hub.publish(&change(2, &["/a"]));
        hub.publish(&change(3, &["/b/z"]));
        assert_eq!(queued(&mut exact_a), [2]);
        assert_eq!(queued(&mut under_a), [1, 2], "two paths of one revision wake it once");
        assert_eq!(queued(&mut exact_ax), [1]);
        assert_eq!(queued(&mut under_b), [3]);
        assert_eq!(queued(&mut everything), [1, 2, 3]);
        assert!(queued(&mut sibling).is_empty(), "/ab is not under /a");

        drop(under_b);
        assert!(!hub.watches.lock().unwrap().recursive.contains_key("/b"), "a dropped watch leaves the hub");
    }

    #[test]
    fn a_full_queue_stops_queueing_and_remembers_the_first_revision_left_out() {
        let hub = Arc::new(WatchHub::default());
        let mut watch = hub.subscribe("/a", true, 8);
        for revision in 1..=11 {
            hub.publish(&change(revision, &["/a/x"]));
        }
        assert!(watch.subscription.lagged.load(Ordering::Acquire));
        assert_eq!(watch.subscription.lagged_from.load(Ordering::Acquire), 9);
        assert_eq!(queued(&mut watch), (1..=8).collect::<Vec<u64>>(), "nothing after the first change left out");

        // A snapshot installed while it lags: it catches up from where it was instead.
        hub.reset();
        assert_eq!(watch.subscription.lagged_from.load(Ordering::Acquire), 0);
    }
}
