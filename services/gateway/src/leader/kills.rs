//! Killing tasks on request: which ones, the deployment that scales their apps down, and
//! the kills sent to the master.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::time::Instant;

use crate::engine::is_terminal;

use super::effects::{Effects, Kill};
use super::{Change, DeployError, Deployed, Instance, Leader, State};

impl Leader {
    /// Kills tasks: those of `app_id` (all of them when `task_ids` is empty), or, with no
    /// app, exactly `task_ids` — an empty list then kills nothing, never every task of every
    /// app. With `scale`, the app's instance count drops so they are not replaced (a
    /// deployment); otherwise they are replaced.
    pub async fn kill_tasks(
        self: &Arc<Self>,
        app_id: Option<&str>,
        task_ids: &[String],
        host: Option<&str>,
        scale: bool,
        force: bool,
    ) -> Result<(Vec<Instance>, Option<Deployed>), DeployError> {
        if app_id.is_none() && task_ids.is_empty() {
            return Ok((Vec::new(), None));
        }
        let chosen: Vec<Instance> = {
            let state = self.lock();
            if let Some(app_id) = app_id
                && state.apps.get(app_id).is_none_or(|e| e.deleting)
            {
                return Err(DeployError::NotFound(app_id.to_owned()));
            }
            state
                .instances
                .values()
                .filter(|i| app_id.is_none_or(|app| i.record.app_id == app))
                .filter(|i| task_ids.is_empty() || task_ids.contains(&i.record.task_id))
                .filter(|i| host.is_none_or(|host| i.record.host == host))
                .filter(|i| !is_terminal(i.state))
                .cloned()
                .collect()
        };
        let mut deployed = None;
        if scale {
            let mut per_app: BTreeMap<String, i64> = BTreeMap::new();
            for instance in &chosen {
                *per_app.entry(instance.record.app_id.clone()).or_default() += 1;
            }
            if !per_app.is_empty() {
                // Scaled from the definition under the deployment lock, so a concurrent
                // update is kept rather than overwritten.
                let scaled = self.deploy_derived(force, |leader| {
                    let state = leader.lock();
                    Ok::<_, DeployError>(
                        per_app
                            .into_iter()
                            .filter_map(|(id, count)| {
                                let mut scaled = state.apps.get(&id).filter(|e| !e.deleting)?.definition.clone();
                                scaled.instances = (scaled.instances - count).max(0);
                                Some(Change::to(&id, Some(scaled)))
                            })
                            .collect(),
                    )
                });
                deployed = Some(scaled.await?);
            }
        }
        let ids: Vec<String> = chosen.iter().map(|i| i.record.task_id.clone()).collect();
        let kills = mark_killing(&mut self.lock(), &ids, Instant::now());
        // Kills write nothing to coord: this cannot fail.
        let _ = self.execute(Effects { kills, ..Effects::default() }).await;
        self.converge_now.notify_one();
        Ok((chosen, deployed))
    }
}

/// Makes every kill under way due again: the next convergence round (a full one) sends
/// them. For a new subscription to the master: kills sent while no master was subscribed,
/// or to one that was losing its leadership, may never have reached an agent, and would
/// otherwise wait out the retry delay (10 s) — the time a deployment then stands still.
pub(super) fn make_kills_due(state: &mut State) {
    let killing: Vec<String> =
        state.instances.values().filter(|i| i.killing).map(|i| i.record.task_id.clone()).collect();
    for task_id in killing {
        if let Some(instance) = state.instances.get_mut(&task_id) {
            instance.kill_sent = None;
        }
    }
    state.next_full_round = None;
}

impl Leader {
    /// See [`make_kills_due`]; the round runs at once.
    pub fn resend_kills(&self) {
        make_kills_due(&mut self.lock());
        self.converge_now.notify_one();
    }
}

/// Marks the instances `task_ids` (those still known) as being killed at `now`, and returns
/// their kills. One whose kill goes unanswered is killed again by a later convergence round.
pub(super) fn mark_killing(state: &mut State, task_ids: &[String], now: Instant) -> Vec<Kill> {
    task_ids
        .iter()
        .filter_map(|task_id| {
            let instance = state.instances.get_mut(task_id)?;
            instance.killing = true;
            instance.kill_sent = Some(now);
            Some(Kill { task_id: task_id.clone(), agent_id: instance.record.agent_id.clone() })
        })
        .collect()
}
