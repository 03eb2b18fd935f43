//! What the leader's decisions ask of the world, and the one executor that carries it out.
//!
//! Decisions (`convergence::round`, `offers::decide`, `updates::transition`, …) change the
//! state under its lock and return [`Effects`]; [`Leader::execute`] performs them outside the
//! lock, in an order that keeps every failover safe: kills first (idempotent, and they
//! depend on nothing coord holds), then the coord writes (fenced by the epoch), and only
//! once those are committed the state changes that wait for them and the events — so no
//! event ever announces what a failover could still lose.

use marina_proto::master::v1 as master;

use crate::events::MarathonEvent;
use crate::store::Batch;

use super::{DeployError, Leader, MasterSession};

/// A task to kill, on the agent it was placed on (empty if unknown: the master finds it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Kill {
    pub task_id: String,
    pub agent_id: String,
}

/// Offers to decline, and for how long the master should not offer them again.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Decline {
    pub offer_ids: Vec<String>,
    pub refuse_seconds: f64,
}

/// What a decision asks to be done beyond the state it changed.
#[derive(Default)]
pub(super) struct Effects {
    /// Tasks to kill through the master.
    pub kills: Vec<Kill>,
    /// Coord writes, fenced by the leader's epoch.
    pub writes: Batch,
    /// Apps to drop from the state once `writes` are committed (their deletion was
    /// recorded; until then a failover could still need them).
    pub forget_apps: Vec<String>,
    /// Events to publish once `writes` are committed.
    pub events: Vec<MarathonEvent>,
    /// Offers to give back.
    pub declines: Vec<Decline>,
}

impl Effects {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.kills.is_empty()
            && self.writes.is_empty()
            && self.forget_apps.is_empty()
            && self.events.is_empty()
            && self.declines.is_empty()
    }
}

impl Leader {
    /// Carries out `effects` (see the module's order). A failed coord write is returned —
    /// after the kills and declines, which stand either way — and then neither the state
    /// changes that wait for it nor its events happen.
    pub(super) async fn execute(&self, effects: Effects) -> Result<(), DeployError> {
        let Effects { kills, writes, forget_apps, events, declines } = effects;
        let session = self.master.borrow().clone();
        if let Some(session) = &session {
            send_kills(session, &kills).await;
            for decline in declines {
                let request = master::DeclineRequest {
                    framework_id: session.framework_id.clone(),
                    offer_ids: decline.offer_ids,
                    filters: Some(master::Filters { refuse_seconds: decline.refuse_seconds }),
                };
                // An offer not declined expires at the master; nothing is lost.
                let _ = session.client.clone().decline(request).await;
            }
        }
        self.apply(writes).await?;
        if !forget_apps.is_empty() {
            let mut state = self.lock();
            for id in &forget_apps {
                state.apps.remove(id);
                state.backoff.remove(id);
                state.instances.touch(id);
            }
        }
        for event in events {
            self.events.publish(event);
        }
        Ok(())
    }
}

/// Sends each kill to the master. One not delivered is retried by convergence (an instance
/// whose kill went unanswered is killed again).
async fn send_kills(session: &MasterSession, kills: &[Kill]) {
    for kill in kills {
        let request = master::KillRequest {
            framework_id: session.framework_id.clone(),
            task_id: kill.task_id.clone(),
            agent_id: kill.agent_id.clone(),
            grace_period_seconds: 0,
        };
        if let Err(status) = session.client.clone().kill(request).await {
            tracing::warn!(task = %kill.task_id, %status, "kill not delivered; will retry");
        }
    }
}
