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
//!
//! No watch message exceeds `limits.max_watch_message_bytes` (4 MiB by default, what every
//! gRPC client decodes by default) or `server.max_encoding_message_bytes`, whichever is
//! smaller: a revision too large for one (a recursive delete of a large subtree) goes to a
//! watcher that asked for fragments in consecutive parts, each but the last marked
//! `fragment`; one that did not is told which limit it met. A client that sees its stream
//! break mid-revision resumes from that revision and gets all of it again.
//!
//! Watch streams are bounded per node (`limits.max_watches`) and per client connection
//! (`limits.max_watches_per_client`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use marina_proto::coord::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::api::node_to_pb;
use crate::config::Limits;
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

/// The watch streams open on this node, in all and by client connection.
#[derive(Default)]
pub struct WatchSlots {
    /// Read lock-free by status and metrics; changed only under `by_client`'s lock.
    open: AtomicUsize,
    /// Open streams per client connection (peer `ip:port`); a client with none has no entry,
    /// so the map holds only connections that have watches open.
    by_client: Mutex<HashMap<SocketAddr, usize>>,
}

impl WatchSlots {
    /// Open watch streams on this node.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Open watch streams of one client connection.
    pub fn of_client(&self, client: SocketAddr) -> usize {
        self.by_client.lock().expect("watch slots lock").get(&client).copied().unwrap_or(0)
    }

    /// A slot for one more watch of `client` (None: a connection whose peer address is
    /// unknown, bounded by the node-wide limit alone), or the limit it would exceed.
    fn acquire(self: &Arc<Self>, client: Option<SocketAddr>, limits: &Limits) -> Result<WatchSlot, CoordError> {
        let mut by_client = self.by_client.lock().expect("watch slots lock");
        if self.open.load(Ordering::Relaxed) >= limits.max_watches {
            return Err(CoordError::TooManyWatches { limit: limits.max_watches });
        }
        if let Some(client) = client {
            let count = by_client.entry(client).or_insert(0);
            if *count >= limits.max_watches_per_client {
                return Err(CoordError::TooManyClientWatches { client, limit: limits.max_watches_per_client });
            }
            *count += 1;
        }
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(WatchSlot { slots: self.clone(), client })
    }
}

/// One open watch stream's place in [`WatchSlots`]; released when the stream's task ends.
struct WatchSlot {
    slots: Arc<WatchSlots>,
    client: Option<SocketAddr>,
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut by_client = self.slots.by_client.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(client) = self.client
            && let Some(count) = by_client.get_mut(&client)
        {
            *count -= 1;
            if *count == 0 {
                by_client.remove(&client);
            }
        }
        self.slots.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Bytes of a `WatchResponse` besides its events: the revision and compact revision (at
/// most 11 bytes each with their tags) and the fragment flag (2), rounded up.
const RESPONSE_FIXED_BYTES: usize = 32;

struct Filter {
    path: String,
    recursive: bool,
    /// The client reassembles revisions sent in parts (`WatchRequest.fragment`).
    fragment: bool,
    /// The largest message sent: `min(limits.max_watch_message_bytes,
    /// server.max_encoding_message_bytes)`.
    max_message_bytes: usize,
    /// The key that sets `max_message_bytes`, for errors.
    limit_key: &'static str,
}

impl Filter {
    /// The events of `change` this watch reports, as the messages to send: none if no event
    /// matches, one if they fit, else (for a watcher that takes fragments) as many as it
    /// takes to keep each within `max_message_bytes`.
    fn select(&self, change: &RevisionEvents) -> Result<Vec<pb::WatchResponse>, CoordError> {
        let mut parts = Vec::new();
        let mut events = Vec::new();
        let mut bytes = RESPONSE_FIXED_BYTES;
        for event in change.events.iter().filter(|event| path_matches(&self.path, self.recursive, &event.node.path)) {
            let event = pb::Event {
                r#type: match event.kind {
                    EventKind::Put => pb::event::Type::Put,
                    EventKind::Delete => pb::event::Type::Delete,
                } as i32,
                node: Some(node_to_pb(event.node.clone())),
            };
            let size = prost::encoding::message::encoded_len(2, &event);
            if self.fragment && !events.is_empty() && bytes + size > self.max_message_bytes {
                parts.push(pb::WatchResponse {
                    revision: change.revision,
                    events: std::mem::take(&mut events),
                    compact_revision: 0,
                    fragment: true,
                });
                bytes = RESPONSE_FIXED_BYTES;
            }
            // One event alone larger than a message: only a node stored under a larger
            // `max_value_bytes` than this node's can be (validation keeps the limit above
            // the largest node).
            if size + RESPONSE_FIXED_BYTES > self.max_message_bytes {
                return Err(CoordError::ResponseTooLarge {
                    what: format!("the event of {} at revision {}", event_path(&event), change.revision),
                    bytes: size + RESPONSE_FIXED_BYTES,
                    key: self.limit_key,
                    limit: self.max_message_bytes,
                    hint: "",
                });
            }
            bytes += size;
            events.push(event);
        }
        if events.is_empty() {
            return Ok(parts);
        }
        if bytes > self.max_message_bytes {
            // Only a watcher that takes no fragments gets here: the revision goes whole or not
            // at all (it would otherwise see a part as the whole revision).
            return Err(CoordError::ResponseTooLarge {
                what: format!("revision {} ({} events under {})", change.revision, events.len(), self.path),
                bytes,
                key: self.limit_key,
                limit: self.max_message_bytes,
                hint: "; watch with fragment = true to receive a revision this large in parts",
            });
        }
        parts.push(pb::WatchResponse { revision: change.revision, events, compact_revision: 0, fragment: false });
        Ok(parts)
    }
}

fn event_path(event: &pb::Event) -> &str {
    event.node.as_ref().map_or("", |node| node.path.as_str())
}

/// Opens a watch stream for `client` (the peer address of its connection, when known).
pub fn open(
    node: &Arc<CoordNode>,
    request: pb::WatchRequest,
    client: Option<SocketAddr>,
) -> Result<ReceiverStream<Result<pb::WatchResponse, Status>>, CoordError> {
    let slot = node.watches.acquire(client, &node.limits)?;
    let (max_message_bytes, limit_key) = node.limits.watch_message_bytes(&node.server);
    let filter = Filter {
        path: request.path,
        recursive: request.recursive,
        fragment: request.fragment,
        max_message_bytes,
        limit_key,
    };
    let (backlog, feed, first) = {
        let replica = node.replica.read().expect("replica lock");
        let current = replica.store.revision();
        let start = if request.start_revision == 0 { current.saturating_add(1) } else { request.start_revision };
        let backlog: Vec<Arc<RevisionEvents>> = replica.store.history_since(start)?.cloned().collect();
        let first = pb::WatchResponse {
            revision: current,
            events: Vec::new(),
            compact_revision: replica.store.oldest_revision().saturating_sub(1),
            fragment: false,
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

    /// Delivers one revision (in one message or several) if it is new to this watcher; false
    /// when the client is gone or the stream ended.
    async fn deliver(&mut self, change: &RevisionEvents) -> bool {
        if change.revision < self.next {
            return true;
        }
        self.next = change.revision.saturating_add(1);
        match self.filter.select(change) {
            Ok(parts) => {
                for part in parts {
                    if !self.send(part).await {
                        return false;
                    }
                }
                true
            }
            Err(error) => {
                tracing::warn!(path = %self.filter.path, %error, "ending a watch: a revision does not fit a message");
                let _ = self.sender.send(Err(Status::from(error))).await;
                false
            }
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

    fn filter(path: &str, fragment: bool, max_message_bytes: usize) -> Filter {
        let limits = Limits { max_watch_message_bytes: max_message_bytes, ..Limits::default() };
        let (max_message_bytes, limit_key) = limits.watch_message_bytes(&crate::config::Config::default().server);
        Filter { path: path.to_owned(), recursive: true, fragment, max_message_bytes, limit_key }
    }

    #[test]
    fn a_revision_larger_than_a_message_is_split_for_watchers_that_take_fragments() {
        // 200 deletes of 100-byte nodes under /big, interleaved with 200 under /other.
        let events: Vec<Event> = (0..400)
            .map(|i| Event {
                kind: EventKind::Delete,
                node: NodeView {
                    path: format!("/{}/{i:05}", if i % 2 == 0 { "big" } else { "other" }),
                    record: NodeRecord { data: vec![7u8; 100].into(), mod_revision: 9, ..NodeRecord::default() },
                },
            })
            .collect();
        let change = RevisionEvents { revision: 9, events };
        let parts = filter("/big", true, 2048).select(&change).unwrap();
        assert!(parts.len() >= 10, "{} parts", parts.len());
        for (index, part) in parts.iter().enumerate() {
            assert_eq!(part.revision, 9);
            assert!(
                prost::Message::encoded_len(part) <= 2048,
                "part {index} is {} bytes",
                prost::Message::encoded_len(part)
            );
            assert_eq!(part.fragment, index + 1 < parts.len(), "every part but the last says more follow");
        }
        let delivered: Vec<String> =
            parts.iter().flat_map(|part| &part.events).map(|event| event.node.as_ref().unwrap().path.clone()).collect();
        let expected: Vec<String> = (0..400).step_by(2).map(|i| format!("/big/{i:05}")).collect();
        assert_eq!(delivered, expected, "every matching event once, in order");

        // Fitting in one message: one, unmarked, with or without fragments.
        for fragment in [true, false] {
            let parts = filter("/big", fragment, 1 << 20).select(&change).unwrap();
            assert_eq!(parts.len(), 1);
            assert!(!parts[0].fragment);
        }
        assert!(filter("/none", true, 2048).select(&change).unwrap().is_empty());

        // A watcher that takes no fragments is never sent part of a revision as if it were all.
        match filter("/big", false, 2048).select(&change) {
            Err(error @ CoordError::ResponseTooLarge { .. }) => {
                let message = error.to_string();
                assert!(
                    message.contains("limits.max_watch_message_bytes = 2048") && message.contains("fragment"),
                    "{message}"
                );
            }
            other => panic!("expected ResponseTooLarge, got {other:?}"),
        }
    }

    #[test]
    fn watch_slots_bound_each_client_and_the_node() {
        let limits = Limits { max_watches: 4, max_watches_per_client: 2, ..Limits::default() };
        let slots = Arc::new(WatchSlots::default());
        let (a, b): (SocketAddr, SocketAddr) = ("127.0.0.1:1000".parse().unwrap(), "127.0.0.1:1001".parse().unwrap());
        let a1 = slots.acquire(Some(a), &limits).unwrap();
        let _a2 = slots.acquire(Some(a), &limits).unwrap();
        match slots.acquire(Some(a), &limits) {
            Err(error @ CoordError::TooManyClientWatches { .. }) => {
                let message = error.to_string();
                assert!(message.contains("limits.max_watches_per_client = 2") && message.contains("127.0.0.1:1000"));
            }
            other => panic!("expected TooManyClientWatches, got {:?}", other.map(|_| ())),
        }
        // Another client still has its own allowance; one with no known address only the node's.
        let _b1 = slots.acquire(Some(b), &limits).unwrap();
        let _unknown = slots.acquire(None, &limits).unwrap();
        assert!(matches!(slots.acquire(Some(b), &limits), Err(CoordError::TooManyWatches { limit: 4 })));
        assert_eq!((slots.open(), slots.of_client(a), slots.of_client(b)), (4, 2, 1));
        drop(a1);
        assert_eq!((slots.open(), slots.of_client(a)), (3, 1));
        let _a3 = slots.acquire(Some(a), &limits).unwrap();
        drop(_b1);
        assert!(!slots.by_client.lock().unwrap().contains_key(&b), "a client with no watches leaves the map");
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
