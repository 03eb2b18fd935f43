//! Sessions: created with a TTL, kept alive over a stream to the leader, and reported lost
//! to their owner the moment the client can no longer be sure the quorum still holds them.
//!
//! The client's deadline is measured from when each acknowledged keep-alive was *sent*, so
//! it always falls before the leader's (which runs from when it was received): an owner
//! that steps down on `Lost` has stopped acting before anyone else can take over.

use std::collections::VecDeque;
use std::time::Duration;

use futures::StreamExt;
use marina_proto::coord::v1 as pb;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::{CoordClient, grpc, rpc};
use crate::error::Error;
use tonic::transport::Channel;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    Alive,
    /// Final: the session expired, was closed, or could not be confirmed within its TTL.
    /// Its ephemeral nodes are (or will shortly be) gone.
    Lost,
}

/// A live session. Dropping it stops the keep-alives (the quorum then ends it after the
/// TTL, or the disconnect grace); [`Session::close`] ends it at once.
pub struct Session {
    id: u64,
    /// What proves this client owns the session (to keep it alive, and to close it).
    secret: bytes::Bytes,
    ttl: Duration,
    client: CoordClient,
    state: watch::Receiver<SessionState>,
    valid_until: watch::Receiver<(Instant, u64)>,
    keep_alive: JoinHandle<()>,
}

impl CoordClient {
    /// Opens a session. With a non-zero `disconnect_grace`, the quorum also ends it that
    /// long after its keep-alive stream closes (a killed process) instead of after the TTL.
    pub async fn create_session(&self, ttl: Duration, disconnect_grace: Duration) -> Result<Session, Error> {
        let sent = Instant::now();
        // Saturating: a truncated huge duration could land inside the allowed range.
        let millis = |duration: Duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        let request = pb::CreateSessionRequest { ttl_ms: millis(ttl), disconnect_grace_ms: millis(disconnect_grace) };
        let response = self.call(true, rpc!(grpc, create_session, request)).await?;
        let (id, secret) = (response.session_id, response.secret);
        let (state_tx, state) = watch::channel(SessionState::Alive);
        let (valid_tx, valid_until) = watch::channel((after(sent, ttl), 0));
        let request = pb::KeepAliveRequest { session_id: id, secret: secret.clone() };
        let keep_alive = tokio::spawn(keep_alive(self.clone(), request, ttl, state_tx, valid_tx));
        tracing::debug!(session = id, ?ttl, "session created");
        Ok(Session { id, secret, ttl, client: self.clone(), state, valid_until, keep_alive })
    }
}

impl Session {
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn is_alive(&self) -> bool {
        *self.state.borrow() == SessionState::Alive
    }

    /// Until when the quorum is known to hold this session (the last acknowledged
    /// keep-alive's send time plus the TTL). Advances with every acknowledgement.
    pub fn valid_until(&self) -> Instant {
        self.valid_until.borrow().0
    }

    /// How many keep-alives the quorum has acknowledged so far.
    pub fn acknowledged(&self) -> u64 {
        self.valid_until.borrow().1
    }

    /// Subscribe to state changes (Alive → Lost, once).
    pub fn state(&self) -> watch::Receiver<SessionState> {
        self.state.clone()
    }

    /// Resolves when the session is lost.
    pub async fn lost(&self) {
        let mut state = self.state.clone();
        let _ = state.wait_for(|state| *state == SessionState::Lost).await;
    }

    /// Ends the session now: its ephemeral nodes are deleted in one revision.
    pub async fn close(self) -> Result<(), Error> {
        self.keep_alive.abort();
        let request = pb::CloseSessionRequest { session_id: self.id, secret: self.secret.clone() };
        self.client.call(true, rpc!(grpc, close_session, request)).await?;
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.keep_alive.abort();
    }
}

/// `at + duration`, saturating (about 30 years ahead) instead of overflowing: the TTL is
/// the caller's, the renewed one the node's.
fn after(at: Instant, duration: Duration) -> Instant {
    const NEVER: Duration = Duration::from_secs(30 * 365 * 24 * 3600);
    at.checked_add(duration).or_else(|| at.checked_add(NEVER)).unwrap_or(at)
}

async fn keep_alive(
    client: CoordClient,
    request: pb::KeepAliveRequest,
    ttl: Duration,
    state: watch::Sender<SessionState>,
    valid_until: watch::Sender<(Instant, u64)>,
) {
    let mut deadline = valid_until.borrow().0;
    let period = (ttl / 3).max(Duration::from_millis(10));
    let session_id = request.session_id;
    'connect: loop {
        if Instant::now() >= deadline {
            break;
        }
        let (index, address, channel) = client.current();
        let (requests, outbound) = mpsc::channel(8);
        let mut pending: VecDeque<Instant> = VecDeque::new();
        // Queued before the stream opens, so the node has something to answer at once.
        let _ = requests.try_send(request.clone());
        pending.push_back(Instant::now());
        let mut keep_alive_client = grpc(channel);
        let open = keep_alive_client.keep_alive(ReceiverStream::new(outbound));
        let mut responses = match tokio::time::timeout_at(deadline, open).await {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => {
                match marina_daemon::leader::leader_hint(&status) {
                    Some(leader) if leader != address => client.prefer(&leader),
                    _ => client.rotate(index),
                }
                tokio::time::sleep_until(deadline.min(Instant::now() + Duration::from_millis(20))).await;
                continue;
            }
            Err(_deadline) => break,
        };
        let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break 'connect,
                _ = ticker.tick() => {
                    if requests.send(request.clone()).await.is_err() {
                        continue 'connect;
                    }
                    pending.push_back(Instant::now());
                }
                message = responses.next() => match message {
                    Some(Ok(reply)) => {
                        let sent = pending.pop_front().unwrap_or_else(Instant::now);
                        if reply.expired {
                            tracing::warn!(session = session_id, "session expired on the quorum");
                            break 'connect;
                        }
                        deadline = deadline.max(after(sent, Duration::from_millis(reply.ttl_ms.max(1))));
                        valid_until.send_modify(|(until, acknowledged)| {
                            *until = deadline;
                            *acknowledged += 1;
                        });
                    }
                    Some(Err(status)) => {
                        match marina_daemon::leader::leader_hint(&status) {
                            Some(leader) if leader != address => client.prefer(&leader),
                            _ => client.rotate(index),
                        }
                        continue 'connect;
                    }
                    None => {
                        client.rotate(index);
                        continue 'connect;
                    }
                }
            }
        }
    }
    tracing::warn!(session = session_id, "session lost");
    let _ = state.send(SessionState::Lost);
}
