//! Resumable watches: the stream re-opens on another endpoint from the last revision it
//! delivered, so the owner sees every change exactly once, in order, across node failures.
//!
//! A revision can be larger than one message (a recursive delete of a large subtree is one
//! revision): the node then sends it in parts (`WatchRequest.fragment`), each within its
//! message limit, and the watch hands it to its owner only once whole, as one
//! [`WatchEvent`]. A stream that breaks between parts drops them and resumes from that same
//! revision, which the node sends again from its first part: nothing is skipped, nothing
//! repeated.

use std::time::Duration;

use futures::StreamExt;
use marina_proto::coord::error_kind;
use marina_proto::coord::v1 as pb;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::Streaming;

use crate::client::{CoordClient, Node, grpc, rpc};
use crate::error::Error;
use tonic::transport::Channel;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// After a put, the node; before a delete, the node as it was.
    pub node: Node,
}

/// Everything one revision changed under the watched path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub revision: u64,
    pub events: Vec<Event>,
}

pub struct Watch {
    events: mpsc::Receiver<Result<WatchEvent, Error>>,
    /// The store's revision when the watch was first established.
    pub established_at: u64,
    task: JoinHandle<()>,
}

impl Watch {
    /// The next revision's changes; `Err(Compacted)` (final) if the watch fell behind the
    /// retained history; `None` once the watch is dropped.
    pub async fn next(&mut self) -> Option<Result<WatchEvent, Error>> {
        self.events.recv().await
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CoordClient {
    /// Watches `path` (and its subtree when `recursive`) from `start_revision`
    /// (0: from now). Returns once the watch is established: every change after
    /// [`Watch::established_at`] (or from `start_revision`) will be delivered.
    pub async fn watch(&self, path: &str, recursive: bool, start_revision: u64) -> Result<Watch, Error> {
        let request = pb::WatchRequest { path: self.full(path), recursive, start_revision, fragment: true };
        let (stream, established_at) = self.open_watch(request.clone()).await?;
        let next = if start_revision == 0 { established_at.saturating_add(1) } else { start_revision };
        let (sender, events) = mpsc::channel(256);
        let task = tokio::spawn(follow(self.clone(), request, stream, next, sender));
        Ok(Watch { events, established_at, task })
    }

    /// Opens a watch stream and reads its first ("created") message.
    async fn open_watch(&self, request: pb::WatchRequest) -> Result<(Streaming<pb::WatchResponse>, u64), Error> {
        let mut backoff = Duration::from_millis(10);
        loop {
            let mut stream = self.call(false, rpc!(grpc, watch, request.clone())).await?;
            match stream.next().await {
                Some(Ok(created)) => return Ok((stream, created.revision)),
                Some(Err(status)) => {
                    let error = Error::from(status);
                    if matches!(error, Error::Compacted(_) | Error::InvalidArgument(_)) {
                        return Err(error);
                    }
                }
                None => {}
            }
            let (index, _, _) = self.current();
            self.rotate(index);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(250));
        }
    }

    pub(crate) fn event(&self, event: pb::Event) -> Option<Event> {
        let kind = match pb::event::Type::try_from(event.r#type).ok()? {
            pb::event::Type::Put => EventKind::Put,
            pb::event::Type::Delete => EventKind::Delete,
        };
        Some(Event { kind, node: self.node(event.node?) })
    }
}

/// A revision arriving in parts, handed on once whole.
#[derive(Debug, Default)]
struct Reassembly {
    /// The revision whose parts are arriving, while one is.
    revision: Option<u64>,
    events: Vec<pb::Event>,
}

/// What one message of the stream amounts to.
#[derive(Debug, PartialEq)]
enum Step {
    /// Nothing to deliver yet (or ever: a revision already delivered, an empty message).
    Pending,
    /// A whole revision.
    Whole { revision: u64, events: Vec<pb::Event> },
    /// The stream broke its order (a revision began before the previous one ended).
    Broken(String),
}

impl Reassembly {
    /// Takes the next message of the stream; `next` is the first revision not delivered.
    fn push(&mut self, response: pb::WatchResponse, next: u64) -> Step {
        match self.revision {
            Some(revision) if revision != response.revision => {
                return Step::Broken(format!(
                    "revision {} arrived before the last part of revision {revision}",
                    response.revision
                ));
            }
            Some(_) => {}
            None if response.revision < next || (response.events.is_empty() && !response.fragment) => {
                return Step::Pending;
            }
            None => self.revision = Some(response.revision),
        }
        self.events.extend(response.events);
        if response.fragment {
            return Step::Pending;
        }
        let revision = self.revision.take().expect("set above");
        Step::Whole { revision, events: std::mem::take(&mut self.events) }
    }

    /// The stream ended: the parts of an incomplete revision are dropped (the resumed stream
    /// starts from that revision and sends all of it). Returns the revision and how many
    /// events were dropped, if any were pending.
    fn reset(&mut self) -> Option<(u64, usize)> {
        let dropped = self.revision.take().map(|revision| (revision, self.events.len()));
        self.events.clear();
        dropped
    }
}

async fn follow(
    client: CoordClient,
    mut request: pb::WatchRequest,
    mut stream: Streaming<pb::WatchResponse>,
    mut next: u64,
    sender: mpsc::Sender<Result<WatchEvent, Error>>,
) {
    let mut partial = Reassembly::default();
    loop {
        let message = tokio::select! {
            message = stream.next() => message,
            () = sender.closed() => return,
        };
        match message {
            Some(Ok(response)) => match partial.push(response, next) {
                Step::Pending => continue,
                Step::Whole { revision, events } => {
                    next = revision.saturating_add(1);
                    let events = events.into_iter().filter_map(|event| client.event(event)).collect();
                    if sender.send(Ok(WatchEvent { revision, events })).await.is_err() {
                        return;
                    }
                    continue;
                }
                Step::Broken(reason) => {
                    tracing::warn!(path = %request.path, %reason, "watch: stream out of order; resuming");
                }
            },
            Some(Err(status)) if is_final(&status) => {
                let _ = sender.send(Err(Error::from(status))).await;
                return;
            }
            Some(Err(_)) | None => {}
        }
        // The node went away (or stopped serving), or its stream broke: resume elsewhere
        // from `next`, the first revision not delivered whole.
        if let Some((revision, events)) = partial.reset() {
            tracing::debug!(revision, events, "watch: dropping a partly received revision; it is sent again");
        }
        let (index, _, _) = client.current();
        client.rotate(index);
        request.start_revision = next;
        loop {
            match client.open_watch(request.clone()).await {
                Ok((resumed, _)) => {
                    stream = resumed;
                    break;
                }
                Err(error @ Error::Compacted(_)) => {
                    let _ = sender.send(Err(error)).await;
                    return;
                }
                Err(error) => {
                    tracing::debug!(%error, "watch: no endpoint answered; retrying");
                    if sender.is_closed() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// Whether a watch's error ends it for good: its start was compacted (the owner must
/// re-read), or a single event is larger than the node sends (a node stored under a larger
/// `max_value_bytes` than the serving node allows): resuming would meet it again.
fn is_final(status: &tonic::Status) -> bool {
    matches!(Error::from(status.clone()), Error::Compacted(_))
        || status.metadata().get(error_kind::METADATA).is_some_and(|kind| kind == error_kind::RESPONSE_TOO_LARGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(revision: u64, paths: &[&str], fragment: bool) -> pb::WatchResponse {
        let events = paths
            .iter()
            .map(|path| pb::Event {
                r#type: pb::event::Type::Delete as i32,
                node: Some(pb::Node { path: (*path).to_owned(), ..Default::default() }),
            })
            .collect();
        pb::WatchResponse { revision, events, compact_revision: 0, fragment }
    }

    fn paths(step: &Step) -> Vec<&str> {
        match step {
            Step::Whole { events, .. } => events.iter().map(|e| e.node.as_ref().unwrap().path.as_str()).collect(),
            other => panic!("not a whole revision: {other:?}"),
        }
    }

    #[test]
    fn a_revision_in_parts_is_delivered_once_whole() {
        let mut partial = Reassembly::default();
        assert_eq!(partial.push(part(5, &["/a", "/b"], true), 5), Step::Pending);
        assert_eq!(partial.push(part(5, &["/c"], true), 5), Step::Pending);
        let whole = partial.push(part(5, &["/d"], false), 5);
        assert_eq!(paths(&whole), ["/a", "/b", "/c", "/d"]);
        assert!(matches!(whole, Step::Whole { revision: 5, .. }));
        // A revision in one message, as from a node that needs no split.
        assert_eq!(paths(&partial.push(part(6, &["/e"], false), 6)), ["/e"]);
        // An empty (created) message, and revisions already delivered, deliver nothing.
        assert_eq!(partial.push(part(6, &[], false), 7), Step::Pending);
        assert_eq!(partial.push(part(6, &["/e"], false), 7), Step::Pending);
    }

    /// The stream breaks after two parts of revision 9: they are dropped, and the resumed
    /// stream's full copy of revision 9 is delivered, once, with every event.
    #[test]
    fn a_break_mid_revision_drops_the_parts_and_the_resumed_revision_comes_whole() {
        let mut partial = Reassembly::default();
        assert_eq!(partial.push(part(9, &["/a"], true), 9), Step::Pending);
        assert_eq!(partial.push(part(9, &["/b"], true), 9), Step::Pending);
        assert_eq!(partial.reset(), Some((9, 2)));
        assert_eq!(partial.reset(), None);
        for (paths_of_part, fragment) in [(&["/a"][..], true), (&["/b"][..], true)] {
            assert_eq!(partial.push(part(9, paths_of_part, fragment), 9), Step::Pending);
        }
        assert_eq!(paths(&partial.push(part(9, &["/c"], false), 9)), ["/a", "/b", "/c"]);
    }

    #[test]
    fn a_revision_starting_before_the_last_ends_is_a_broken_stream() {
        let mut partial = Reassembly::default();
        assert_eq!(partial.push(part(3, &["/a"], true), 3), Step::Pending);
        assert!(matches!(partial.push(part(4, &["/b"], false), 3), Step::Broken(_)));
    }
}
