//! Resumable watches: the stream re-opens on another endpoint from the last revision it
//! delivered, so the owner sees every change exactly once, in order, across node failures.

use std::time::Duration;

use futures::StreamExt;
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
        let request = pb::WatchRequest { path: self.full(path), recursive, start_revision };
        let (stream, established_at) = self.open_watch(request.clone()).await?;
        let next = if start_revision == 0 { established_at + 1 } else { start_revision };
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

async fn follow(
    client: CoordClient,
    mut request: pb::WatchRequest,
    mut stream: Streaming<pb::WatchResponse>,
    mut next: u64,
    sender: mpsc::Sender<Result<WatchEvent, Error>>,
) {
    loop {
        let message = tokio::select! {
            message = stream.next() => message,
            () = sender.closed() => return,
        };
        match message {
            Some(Ok(response)) => {
                if response.events.is_empty() || response.revision < next {
                    continue;
                }
                next = response.revision + 1;
                let events = response.events.into_iter().filter_map(|event| client.event(event)).collect();
                if sender.send(Ok(WatchEvent { revision: response.revision, events })).await.is_err() {
                    return;
                }
            }
            Some(Err(status)) if matches!(Error::from(status.clone()), Error::Compacted(_)) => {
                let _ = sender.send(Err(Error::from(status))).await;
                return;
            }
            Some(Err(_)) | None => {
                // The node went away (or stopped serving): resume elsewhere from `next`.
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
    }
}
