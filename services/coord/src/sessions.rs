//! Session liveness, decided by the leader alone.
//!
//! Keep-alives never touch the log: the leader keeps each session's deadline in memory and,
//! when one passes, proposes `EndSession`, which deletes the session's ephemerals in the same
//! entry. A newly elected leader cannot know when clients last reached its predecessor, so
//! it gives every session a fresh TTL.
//!
//! Sessions created with a disconnect grace also end `grace` after their last keep-alive
//! stream closed with no other attached: a killed client (its socket closed by the kernel)
//! releases its ephemerals within the grace instead of the whole TTL. A frozen or partitioned
//! client keeps its stream open and is bounded by the TTL as usual.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::ServerState;
use prometheus::IntCounter;
use tokio::time::Instant;

use crate::command::{Command, EndReason};
use crate::error::CoordError;
use crate::proposer::{Proposer, ReadBarrier};
use crate::state_machine::SharedReplica;
use crate::types::Raft;

/// How often the leader looks for expired sessions.
const EXPIRY_TICK: Duration = Duration::from_millis(25);

/// `now + duration`, saturating far in the future instead of overflowing. TTLs and graces
/// come from the replicated store: the API keeps new ones within `limits.session_ttl_*`,
/// but a session created under another node's (or an earlier) configuration keeps its own,
/// and a deadline must never panic the leader.
fn after(now: Instant, duration: Duration) -> Instant {
    /// About 30 years: "never", while far from any overflow.
    const NEVER: Duration = Duration::from_secs(30 * 365 * 24 * 3600);
    now.checked_add(duration).or_else(|| now.checked_add(NEVER)).unwrap_or(now)
}

/// A duration in whole milliseconds, saturating at `u64::MAX`.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[derive(Debug, Clone, Copy)]
struct Liveness {
    deadline: Instant,
    ttl: Duration,
    grace: Duration,
    /// Keep-alive streams currently attached to this session on this leader.
    attached: u32,
    /// An `EndSession` is in flight.
    ending: bool,
}

#[derive(Default)]
struct TrackerState {
    /// The term in which this node, as leader, last reset every deadline; `None` when not
    /// leading (keep-alives are then refused with a leader hint).
    leading_term: Option<u64>,
    sessions: HashMap<u64, Liveness>,
}

#[derive(Clone)]
pub struct SessionTracker {
    state: Arc<Mutex<TrackerState>>,
    replica: SharedReplica,
    expired: IntCounter,
}

/// What a keep-alive learned.
pub enum KeepAlive {
    Alive { ttl_ms: u64 },
    Expired,
}

impl SessionTracker {
    pub fn new(replica: SharedReplica, metrics: &marina_daemon::Metrics) -> Self {
        let expired = IntCounter::new("marina_coord_sessions_expired_total", "Sessions ended by this node as leader.")
            .expect("static metric");
        metrics.register(expired.clone());
        Self { state: Arc::default(), replica, expired }
    }

    /// Records a keep-alive. Fails with `NotLeader` unless this node leads and has taken
    /// over the sessions of its term.
    pub fn keep_alive(&self, session_id: u64) -> Result<KeepAlive, CoordError> {
        {
            let mut state = self.state.lock().expect("session tracker lock");
            if state.leading_term.is_none() {
                return Err(CoordError::NotLeader { leader: None });
            }
            if let Some(liveness) = state.sessions.get_mut(&session_id) {
                if liveness.ending {
                    return Ok(KeepAlive::Expired);
                }
                liveness.deadline = after(Instant::now(), liveness.ttl);
                return Ok(KeepAlive::Alive { ttl_ms: millis(liveness.ttl) });
            }
        }
        // Not tracked yet (created moments ago): ask the store. The tracker lock is not held
        // here: lock order is always replica, then tracker.
        let Some((ttl, grace)) = self.session_timing(session_id) else {
            return Ok(KeepAlive::Expired);
        };
        let liveness = Liveness { deadline: after(Instant::now(), ttl), ttl, grace, attached: 0, ending: false };
        self.state.lock().expect("session tracker lock").sessions.entry(session_id).or_insert(liveness);
        Ok(KeepAlive::Alive { ttl_ms: millis(ttl) })
    }

    /// A keep-alive stream started carrying this session.
    pub fn attach(&self, session_id: u64) {
        if let Some(liveness) = self.state.lock().expect("session tracker lock").sessions.get_mut(&session_id) {
            liveness.attached += 1;
        }
    }

    /// A keep-alive stream carrying this session ended.
    pub fn detach(&self, session_id: u64) {
        let mut state = self.state.lock().expect("session tracker lock");
        if let Some(liveness) = state.sessions.get_mut(&session_id) {
            liveness.attached = liveness.attached.saturating_sub(1);
            if liveness.attached == 0 && !liveness.grace.is_zero() {
                liveness.deadline = liveness.deadline.min(after(Instant::now(), liveness.grace));
            }
        }
    }

    /// Starts tracking a session this leader just created.
    pub fn created(&self, session_id: u64, ttl_ms: u64, grace_ms: u64) {
        let ttl = Duration::from_millis(ttl_ms);
        let liveness = Liveness {
            deadline: after(Instant::now(), ttl),
            ttl,
            grace: Duration::from_millis(grace_ms),
            attached: 0,
            ending: false,
        };
        self.state.lock().expect("session tracker lock").sessions.insert(session_id, liveness);
    }

    fn session_timing(&self, session_id: u64) -> Option<(Duration, Duration)> {
        let replica = self.replica.read().expect("replica lock");
        replica
            .store
            .sessions()
            .get(&session_id)
            .map(|s| (Duration::from_millis(s.ttl_ms), Duration::from_millis(s.disconnect_grace_ms)))
    }

    /// The leader's loop: take over sessions on election, end the expired ones.
    pub async fn run(self, raft: Raft, proposer: Proposer, reads: ReadBarrier, shutdown: marina_daemon::Shutdown) {
        let mut tick = tokio::time::interval(EXPIRY_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => return,
            }
            let (state, term) = {
                let metrics = raft.metrics();
                let metrics = metrics.borrow();
                (metrics.state, metrics.current_term)
            };
            if state != ServerState::Leader {
                let mut tracker = self.state.lock().expect("session tracker lock");
                tracker.leading_term = None;
                tracker.sessions.clear();
                continue;
            }
            let leading = self.state.lock().expect("session tracker lock").leading_term;
            if leading != Some(term) {
                // Everything committed by earlier leaders must be applied before the session
                // table is trusted.
                if reads.wait().await.is_err() {
                    continue;
                }
                self.take_over(term);
            }
            for session_id in self.expired() {
                let tracker = self.clone();
                let proposer = proposer.clone();
                tokio::spawn(async move {
                    let command = Command::EndSession { session_id, reason: EndReason::Expired };
                    match proposer.propose(command).await {
                        Ok(_) => {
                            tracker.expired.inc();
                            tracing::info!(session_id, "session expired");
                            tracker.state.lock().expect("session tracker lock").sessions.remove(&session_id);
                        }
                        Err(error) => {
                            tracing::warn!(session_id, %error, "ending an expired session failed; will retry");
                            if let Some(liveness) =
                                tracker.state.lock().expect("session tracker lock").sessions.get_mut(&session_id)
                            {
                                liveness.ending = false;
                            }
                        }
                    }
                });
            }
        }
    }

    /// A new leadership: every session gets a fresh TTL from now.
    fn take_over(&self, term: u64) {
        let now = Instant::now();
        let sessions: HashMap<u64, Liveness> = {
            let replica = self.replica.read().expect("replica lock");
            replica
                .store
                .sessions()
                .iter()
                .map(|(id, session)| {
                    let ttl = Duration::from_millis(session.ttl_ms);
                    let grace = Duration::from_millis(session.disconnect_grace_ms);
                    (*id, Liveness { deadline: after(now, ttl), ttl, grace, attached: 0, ending: false })
                })
                .collect()
        };
        tracing::info!(term, sessions = sessions.len(), "leading: took over sessions with fresh TTLs");
        let mut state = self.state.lock().expect("session tracker lock");
        state.sessions = sessions;
        state.leading_term = Some(term);
    }

    /// Sessions past their deadline, marked as ending. Also drops sessions the store no
    /// longer has (closed by their clients) and adopts ones it has that are not tracked.
    fn expired(&self) -> Vec<u64> {
        let now = Instant::now();
        let replica = self.replica.read().expect("replica lock");
        let sessions = replica.store.sessions();
        let mut state = self.state.lock().expect("session tracker lock");
        state.sessions.retain(|id, _| sessions.contains_key(id));
        for (id, session) in sessions {
            state.sessions.entry(*id).or_insert_with(|| {
                let ttl = Duration::from_millis(session.ttl_ms);
                let grace = Duration::from_millis(session.disconnect_grace_ms);
                Liveness { deadline: after(now, ttl), ttl, grace, attached: 0, ending: false }
            });
        }
        let mut expired = Vec::new();
        for (id, liveness) in state.sessions.iter_mut() {
            if !liveness.ending && liveness.deadline <= now {
                liveness.ending = true;
                expired.push(*id);
            }
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_saturate_instead_of_overflowing() {
        let now = Instant::now();
        assert_eq!(after(now, Duration::from_millis(500)), now + Duration::from_millis(500));
        // A TTL no configuration allows today (`u64::MAX` ms, or `Duration::MAX`): far away,
        // and no panic.
        for huge in [Duration::from_millis(u64::MAX), Duration::MAX] {
            assert!(after(now, huge) > now + Duration::from_secs(365 * 24 * 3600));
        }
        assert_eq!(millis(Duration::MAX), u64::MAX);
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
    }
}
