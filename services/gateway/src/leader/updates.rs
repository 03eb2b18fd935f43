//! Status updates from the master: instances' transitions, adoption or killing of tasks
//! the gateway does not know, events, backoff.

use marina_proto::agent::v1::{TaskState, TaskStatus};
use tokio::time::Instant;

use crate::app::{PathId, Timestamp};
use crate::engine::is_terminal;
use crate::events::MarathonEvent;
use crate::model;
use crate::store::{self, Batch};

use super::effects::{Effects, Kill};
use super::{
    DeployError, Health, Instance, InstanceRecord, Leader, State, TaskFailure, back_off, condition_name, now_ts,
    write_failures,
};

impl Leader {
    /// A status update from the master. Returns once it is applied (so it may be
    /// acknowledged).
    pub async fn handle_update(&self, status: TaskStatus) -> Result<(), DeployError> {
        self.metrics.status_updates.inc();
        let now = Instant::now();
        let effects = transition(&mut self.lock(), &status, now, self.events.is_watched());
        if !effects.kills.is_empty() {
            tracing::warn!(task = %status.task_id, "killing a task of no known app");
        }
        self.execute(effects).await?;
        self.converge_now.notify_one();
        Ok(())
    }

    /// What to reconcile: every instance with the agent it was placed on.
    pub fn reconcile_list(&self) -> Vec<(String, String)> {
        self.lock().instances.values().map(|i| (i.record.task_id.clone(), i.record.agent_id.clone())).collect()
    }
}

/// Applies `status` to the instances in `state` at `now`: a task unknown here is adopted
/// (its app exists) or marked for killing; a known one takes the new state, health and
/// place; a terminal one is forgotten, and a failure the gateway did not cause backs its
/// app off. Events are built only when someone `watched`. Decides without I/O: returns the
/// coord writes, the events, and the kill of a task of no app.
pub(super) fn transition(state: &mut State, status: &TaskStatus, now: Instant, watched: bool) -> Effects {
    let state_of = status.state();
    let mut batch = Batch::default();
    let mut events: Vec<MarathonEvent> = Vec::new();
    let mut kills = Vec::new();
    match state.instances.get_mut(&status.task_id) {
        None => {
            if !is_terminal(state_of) {
                // A task we do not know: adopt it if its app exists, kill it otherwise.
                let app_id = PathId::app_id_of_task(&status.task_id).map(|p| p.to_string());
                match app_id.as_ref().and_then(|id| state.apps.get(id).map(|e| (id.clone(), e))) {
                    Some((id, entry)) if !entry.deleting => {
                        let definition = entry.active.clone().unwrap_or_else(|| entry.definition.clone());
                        let record = InstanceRecord {
                            task_id: status.task_id.clone(),
                            app_id: id,
                            version: model::version(&definition),
                            config_version: model::config_version(&definition),
                            agent_id: status.agent_id.clone(),
                            host: status.host.clone(),
                            ports: status.ports.iter().map(|p| p.host_port).collect(),
                            staged_at: now_ts(),
                        };
                        batch.put(format!("{}/{}", store::INSTANCES, record.task_id), &record);
                        tracing::info!(task = %status.task_id, "adopted a task this gateway had no record of");
                        let mut adopted = Instance {
                            state: state_of,
                            healthy: status.healthy,
                            message: status.message.clone(),
                            ip_addresses: status.ip_addresses.clone(),
                            ..Instance::staging(record, now)
                        };
                        record_health(&mut adopted.health, status);
                        state.instances.insert(adopted);
                    }
                    _ => kills.push(Kill { task_id: status.task_id.clone(), agent_id: status.agent_id.clone() }),
                }
            }
        }
        Some(instance) => {
            let previous_health = instance.healthy;
            let previous_state = instance.state;
            instance.state = state_of;
            instance.message = status.message.clone();
            if status.healthy.is_some() {
                instance.healthy = status.healthy;
            }
            if !status.host.is_empty() {
                instance.record.host = status.host.clone();
            }
            if !status.agent_id.is_empty() {
                instance.record.agent_id = status.agent_id.clone();
            }
            // The master's own statuses (reconciliation of an unreachable agent) carry none.
            if !status.ip_addresses.is_empty() {
                instance.ip_addresses = status.ip_addresses.clone();
            }
            instance.unreachable_since = match state_of {
                TaskState::TaskUnreachable => instance.unreachable_since.or(Some(now)),
                _ => None,
            };
            if state_of == TaskState::TaskRunning && instance.started_at.is_none() {
                instance.started_at = Some(now_ts());
            }
            let app_id = instance.record.app_id.clone();
            if watched {
                events.push(MarathonEvent::StatusUpdate {
                    slave_id: instance.record.agent_id.clone(),
                    task_id: status.task_id.clone(),
                    task_status: state_of.as_str_name(),
                    message: status.message.clone(),
                    app_id: app_id.clone(),
                    host: instance.record.host.clone(),
                    ip_addresses: model::ip_addresses_json(&instance.ip_addresses),
                    ports: instance.record.ports.clone(),
                    version: instance.record.version.clone(),
                });
            }
            if watched && previous_state != state_of {
                events.push(MarathonEvent::InstanceChanged {
                    instance_id: status.task_id.clone(),
                    condition: condition_name(state_of),
                    run_spec_id: app_id.clone(),
                    agent_id: instance.record.agent_id.clone(),
                    host: instance.record.host.clone(),
                    run_spec_version: instance.record.version.clone(),
                });
            }
            if status.reason == marina_proto::reason::HEALTH_KILLED && is_terminal(state_of) {
                events.push(MarathonEvent::UnhealthyInstanceKill {
                    app_id: app_id.clone(),
                    task_id: status.task_id.clone(),
                    instance_id: status.task_id.clone(),
                    version: instance.record.version.clone(),
                    reason: status.message.clone(),
                    host: instance.record.host.clone(),
                    slave_id: instance.record.agent_id.clone(),
                });
            }
            if instance.healthy != previous_health
                && let Some(alive) = instance.healthy
            {
                // The agent reports health when it changes: each report is a check's result.
                record_health(&mut instance.health, status);
                events.push(MarathonEvent::HealthStatusChanged {
                    app_id: app_id.clone(),
                    task_id: status.task_id.clone(),
                    instance_id: status.task_id.clone(),
                    version: instance.record.version.clone(),
                    alive,
                });
                if !alive {
                    // The agent does not say which check failed: the app's first (the only
                    // one, for nearly every app).
                    let check = state
                        .apps
                        .get(&app_id)
                        .map(|entry| entry.active.as_ref().unwrap_or(&entry.definition))
                        .and_then(|app| app.health_checks.first())
                        .and_then(|check| serde_json::to_value(check).ok());
                    events.push(MarathonEvent::FailedHealthCheck {
                        app_id: app_id.clone(),
                        task_id: status.task_id.clone(),
                        instance_id: status.task_id.clone(),
                        health_check: check.unwrap_or_default(),
                    });
                }
            }
            if is_terminal(state_of) {
                let killed_by_us = instance.killing;
                let failed = matches!(
                    state_of,
                    TaskState::TaskFailed
                        | TaskState::TaskError
                        | TaskState::TaskLost
                        | TaskState::TaskGone
                        | TaskState::TaskDropped
                        | TaskState::TaskUnknown
                );
                let failure = TaskFailure {
                    task_id: status.task_id.clone(),
                    state: state_of,
                    message: status.message.clone(),
                    host: instance.record.host.clone(),
                    agent_id: instance.record.agent_id.clone(),
                    version: instance.record.version.clone(),
                    timestamp: Timestamp::now(),
                };
                state.instances.remove(&status.task_id);
                batch.delete(format!("{}/{}", store::INSTANCES, status.task_id));
                if failed && !killed_by_us {
                    back_off(state, &app_id, failure, now);
                }
            } else if state_of == TaskState::TaskRunning && instance.healthy != Some(false) {
                state.backoff.remove(&app_id);
            }
        }
    }
    write_failures(state, &mut batch);
    Effects { kills, writes: batch, events, ..Effects::default() }
}

/// Takes a status's health (if it has one) as a check's result, at the time the agent
/// reported it (or now, for a status without a time).
fn record_health(health: &mut Health, status: &TaskStatus) {
    let at = if status.timestamp > 0.0 && status.timestamp.is_finite() {
        Timestamp::from_millis((status.timestamp * 1000.0) as i64)
    } else {
        Timestamp::now()
    };
    match status.healthy {
        Some(true) => health.succeeded(at),
        Some(false) => health.failed(at, &status.message),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leader::fixtures::{state_with, status, web};

    const TASK: &str = "web.8f14e45f-ceea-467f-a0e6-0d1e8b2b7a10";

    /// `state` with `TASK` launched and running.
    fn running() -> State {
        let mut state = state_with(&[web(1, "x")]);
        let adopted = transition(&mut state, &status(TASK, TaskState::TaskRunning), Instant::now(), false);
        assert!(adopted.kills.is_empty());
        state
    }

    fn types(transition: &Effects) -> Vec<&'static str> {
        transition.events.iter().map(MarathonEvent::event_type).collect()
    }

    #[test]
    fn a_running_task_of_a_known_app_is_adopted_and_recorded() {
        let mut state = state_with(&[web(1, "x")]);
        let adopted = transition(&mut state, &status(TASK, TaskState::TaskRunning), Instant::now(), true);
        assert!(adopted.kills.is_empty());
        assert_eq!(adopted.writes.describe(), [format!("put /gateway/instances/{TASK}")]);
        let instance = state.instances.get(TASK).expect("adopted");
        assert_eq!((instance.record.app_id.as_str(), instance.state), ("/web", TaskState::TaskRunning));
        assert_eq!(instance.record.host, "h1");
    }

    #[test]
    fn a_tasks_addresses_are_kept_from_its_updates_and_announced() {
        let mut state = state_with(&[web(1, "x")]);
        let mut running = status(TASK, TaskState::TaskRunning);
        running.ip_addresses = vec!["172.18.0.5".into()];
        transition(&mut state, &running, Instant::now(), false);
        assert_eq!(state.instances.get(TASK).expect("adopted").ip_addresses, ["172.18.0.5"]);
        // A status without addresses (the master's, for an unreachable agent) keeps them.
        let unreachable = transition(&mut state, &status(TASK, TaskState::TaskUnreachable), Instant::now(), true);
        assert_eq!(state.instances.get(TASK).unwrap().ip_addresses, ["172.18.0.5"]);
        let MarathonEvent::StatusUpdate { ip_addresses, .. } = &unreachable.events[0] else {
            panic!("{:?}", unreachable.events)
        };
        assert_eq!(*ip_addresses, [serde_json::json!({"ipAddress": "172.18.0.5", "protocol": "IPv4"})]);
    }

    #[test]
    fn a_tasks_agent_is_known_while_it_runs_and_after_it_failed() {
        let mut state = running();
        assert_eq!(crate::leader::agent_of_task(&state, TASK).as_deref(), Some("agent-1"));
        assert_eq!(crate::leader::agent_of_task(&state, "web.other"), None);
        // Its sandbox outlives it: the app's last failure still names its agent.
        transition(&mut state, &status(TASK, TaskState::TaskFailed), Instant::now(), false);
        assert!(state.instances.get(TASK).is_none());
        assert_eq!(crate::leader::agent_of_task(&state, TASK).as_deref(), Some("agent-1"));
    }

    #[test]
    fn a_task_of_no_app_is_to_be_killed_and_a_finished_one_is_let_be() {
        let mut state = state_with(&[web(1, "x")]);
        let orphan = "gone.8f14e45f-ceea-467f-a0e6-0d1e8b2b7a10";
        let running = transition(&mut state, &status(orphan, TaskState::TaskRunning), Instant::now(), true);
        assert_eq!(running.kills, [Kill { task_id: orphan.into(), agent_id: "agent-1".into() }]);
        assert!(running.writes.is_empty() && running.events.is_empty());
        let finished = transition(&mut state, &status(orphan, TaskState::TaskFinished), Instant::now(), true);
        assert!(finished.is_empty(), "nothing to do for a finished task of no app");
        assert!(state.instances.get(orphan).is_none());
    }

    #[test]
    fn a_failure_the_gateway_did_not_cause_is_forgotten_and_backs_the_app_off() {
        let mut state = running();
        let now = Instant::now();
        let failed = transition(&mut state, &status(TASK, TaskState::TaskFailed), now, true);
        // The instance's record goes; the app's last failure is kept (across failovers).
        let writes = [format!("delete /gateway/instances/{TASK}"), "put /gateway/failures/web".to_owned()];
        assert_eq!(failed.writes.describe(), writes);
        assert!(state.failures_unwritten.is_empty(), "written with the transition");
        assert_eq!(types(&failed), ["status_update_event", "instance_changed_event"]);
        assert!(state.instances.get(TASK).is_none(), "a terminal task is forgotten");
        let backoff = &state.backoff["/web"];
        assert_eq!(backoff.failures, 1);
        assert!(backoff.until.is_some_and(|until| until >= now + std::time::Duration::from_secs(59)));
        let failure = &state.failures["/web"];
        assert_eq!((failure.task_id.as_str(), failure.message.as_str()), (TASK, "why"));
    }

    #[test]
    fn a_task_the_gateway_killed_does_not_back_its_app_off() {
        let mut state = running();
        state.instances.get_mut(TASK).unwrap().killing = true;
        let killed = transition(&mut state, &status(TASK, TaskState::TaskKilled), Instant::now(), false);
        assert!(killed.events.is_empty(), "no one watches: no events are built");
        assert!(state.instances.get(TASK).is_none());
        assert!(!state.backoff.contains_key("/web") && !state.failures.contains_key("/web"));
    }

    #[test]
    fn health_results_are_kept_with_their_times_and_a_failure_names_its_check() {
        let checked = crate::leader::fixtures::app(
            r#"{"id": "/web", "cmd": "x", "cpus": 0.1, "mem": 32,
                "healthChecks": [{"protocol": "COMMAND", "command": {"value": "false"}}]}"#,
        );
        let mut state = state_with(&[checked]);
        transition(&mut state, &status(TASK, TaskState::TaskRunning), Instant::now(), false);
        let report = |healthy: bool, seconds: f64, message: &str| {
            let mut update = status(TASK, TaskState::TaskRunning);
            update.healthy = Some(healthy);
            update.timestamp = seconds;
            update.message = message.into();
            update
        };
        let at = |seconds: i64| Some(Timestamp::from_millis(seconds * 1000));
        let failed =
            transition(&mut state, &report(false, 1000.0, "health check failed: exit 1"), Instant::now(), true);
        let failure = failed.events.iter().find_map(|event| match event {
            MarathonEvent::FailedHealthCheck { health_check, task_id, .. } => Some((health_check, task_id)),
            _ => None,
        });
        let (check, task_id) = failure.expect("a failed_health_check_event");
        assert_eq!((check["protocol"].as_str(), task_id.as_str()), (Some("COMMAND"), TASK), "the app's check");
        let health = &state.instances.get(TASK).unwrap().health;
        assert_eq!((health.last_failure, health.consecutive_failures, health.alive()), (at(1000), 1, false));
        assert_eq!(health.last_failure_cause.as_deref(), Some("health check failed: exit 1"));
        assert_eq!(health.first_success, None);
        transition(&mut state, &report(true, 1010.0, ""), Instant::now(), false);
        transition(&mut state, &report(true, 1020.0, ""), Instant::now(), false);
        let health = &state.instances.get(TASK).unwrap().health;
        assert_eq!((health.first_success, health.last_success), (at(1010), at(1010)), "a repeat is no new result");
        assert_eq!((health.consecutive_failures, health.alive()), (0, true));
        transition(&mut state, &report(false, 1030.0, "again"), Instant::now(), false);
        let health = &state.instances.get(TASK).unwrap().health;
        assert_eq!((health.first_success, health.last_failure, health.alive()), (at(1010), at(1030), false));
    }

    #[test]
    fn health_changes_are_announced_and_a_health_kill_is_named() {
        let mut state = running();
        let mut sick = status(TASK, TaskState::TaskRunning);
        sick.healthy = Some(false);
        let unhealthy = transition(&mut state, &sick, Instant::now(), true);
        assert_eq!(
            types(&unhealthy),
            ["status_update_event", "health_status_changed_event", "failed_health_check_event"]
        );
        let mut killed = status(TASK, TaskState::TaskKilled);
        killed.reason = marina_proto::reason::HEALTH_KILLED.into();
        let health_kill = transition(&mut state, &killed, Instant::now(), true);
        assert!(types(&health_kill).contains(&"unhealthy_instance_kill_event"), "{:?}", types(&health_kill));
    }
}
