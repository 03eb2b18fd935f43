//! Running for leadership for the life of a service, with the election recipe: hold a
//! session, join, and while leading run a *term* (the service's leader state); end the term
//! the instant the session is lost or a fenced write finds the leadership gone; rejoin with
//! a new session; on shutdown (or abdication) resign first, so the next candidate takes
//! over at once. Masters and gateways both run this loop.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::client::CoordClient;
use crate::election::{Election, ElectionState, Fence};
use crate::error::Error;

/// How long a stopping leader tries to resign before leaving it to its session's expiry.
const RESIGN_TIMEOUT: Duration = Duration::from_secs(3);

/// A leadership term: what a service runs while it leads.
pub trait Term: Send + Sync + 'static {
    /// Stop acting as leader, now.
    fn end(&self);
}

pub struct Candidacy {
    /// The election directory, e.g. `/master/members`.
    pub dir: String,
    /// This candidate's description (its member node's data).
    pub data: Vec<u8>,
    pub session_ttl: Duration,
    pub disconnect_grace: Duration,
}

/// Runs until `shutdown`. `start(epoch, fence, deposed)` begins a term when this candidate
/// wins; the term must cancel `deposed` when it finds itself fenced off. `current` always
/// holds the running term, if any. `abdicate` makes a leader resign and stand again.
pub async fn run<T, F, Fut>(
    client: CoordClient,
    candidacy: Candidacy,
    mut start: F,
    current: watch::Sender<Option<Arc<T>>>,
    abdicate: Arc<Notify>,
    shutdown: CancellationToken,
) where
    T: Term,
    F: FnMut(u64, Fence, CancellationToken) -> Fut,
    Fut: Future<Output = Result<Arc<T>, Error>>,
{
    let mut backoff = Duration::from_millis(100);
    let end_term = |current: &watch::Sender<Option<Arc<T>>>| {
        if let Some(term) = current.send_replace(None) {
            tracing::warn!(dir = %candidacy.dir, "leadership ended: stopping at once");
            term.end();
        }
    };
    while !shutdown.is_cancelled() {
        let session = match client.create_session(candidacy.session_ttl, candidacy.disconnect_grace).await {
            Ok(session) => session,
            Err(error) => {
                tracing::warn!(%error, "cannot open a coord session; retrying");
                sleep_or(backoff, &shutdown).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let election = match Election::join(&client, &session, &candidacy.dir, candidacy.data.clone()).await {
            Ok(election) => election,
            Err(error) => {
                tracing::warn!(%error, "cannot join the election; retrying");
                sleep_or(backoff, &shutdown).await;
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let mut state = election.state();
        let deposed = CancellationToken::new();
        loop {
            let observed = *state.borrow_and_update();
            match observed {
                ElectionState::Leading { epoch } if current.borrow().is_none() => {
                    // Its own trace: how long a new leader takes to be ready, on a dashboard.
                    let span = tracing::info_span!(parent: None, "election.take_over", dir = %candidacy.dir, epoch);
                    match start(epoch, election.fence().clone(), deposed.clone()).instrument(span).await {
                        Ok(term) => {
                            tracing::info!(dir = %candidacy.dir, epoch, "leading");
                            current.send_replace(Some(term));
                        }
                        Err(error) => {
                            tracing::error!(%error, "cannot take over; resigning");
                            let _ = election.resign().await;
                            break;
                        }
                    }
                }
                ElectionState::Leading { .. } => {}
                ElectionState::Standby => end_term(&current),
                ElectionState::Lost => {
                    end_term(&current);
                    break;
                }
            }
            tokio::select! {
                changed = state.changed() => if changed.is_err() { break },
                () = deposed.cancelled() => {
                    end_term(&current);
                    let _ = election.resign().await;
                    break;
                }
                () = abdicate.notified() => {
                    tracing::info!(dir = %candidacy.dir, "abdicating");
                    end_term(&current);
                    let _ = election.resign().await;
                    let _ = session.close().await;
                    break;
                }
                () = shutdown.cancelled() => {
                    end_term(&current);
                    // Resigning first hands leadership over without waiting for a timeout;
                    // bounded, so a stop never hangs on an unreachable quorum.
                    let resign = async {
                        election.resign().await?;
                        session.close().await
                    };
                    match tokio::time::timeout(RESIGN_TIMEOUT, resign).await {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => tracing::warn!(%error, "resigning failed; the session's expiry will hand over"),
                        Err(_) => tracing::warn!("resigning timed out; the session's expiry will hand over"),
                    }
                    return;
                }
            }
        }
    }
}

async fn sleep_or(delay: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        () = shutdown.cancelled() => {}
    }
}
