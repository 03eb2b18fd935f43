//! Status updates from the master: instances' transitions, adoption or killing of tasks
//! the gateway does not know, events, backoff.

use marina_proto::agent::v1::{TaskState, TaskStatus};
use marina_proto::master::v1 as master;
use tokio::time::Instant;

use crate::app::{PathId, Timestamp};
use crate::engine::is_terminal;
use crate::events::MarathonEvent;
use crate::model;
use crate::store::{self, Batch};

use super::{DeployError, Instance, InstanceRecord, Leader, TaskFailure, back_off, condition_name, now_ts};

impl Leader {
    /// A status update from the master. Returns once it is applied (so it may be
    /// acknowledged).
    pub async fn handle_update(&self, status: TaskStatus) -> Result<(), DeployError> {
        self.metrics.status_updates.inc();
        let state_of = status.state();
        let now = Instant::now();
        let mut batch = Batch::default();
        let mut events: Vec<MarathonEvent> = Vec::new();
        let mut kill_orphan = false;
        {
            let mut guard = self.lock();
            let state = &mut *guard;
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
                                state.instances.insert(Instance {
                                    state: state_of,
                                    healthy: status.healthy,
                                    message: status.message.clone(),
                                    ..Instance::staging(record, now)
                                });
                            }
                            _ => kill_orphan = true,
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
                    instance.unreachable_since = match state_of {
                        TaskState::TaskUnreachable => instance.unreachable_since.or(Some(now)),
                        _ => None,
                    };
                    if state_of == TaskState::TaskRunning && instance.started_at.is_none() {
                        instance.started_at = Some(now_ts());
                    }
                    let app_id = instance.record.app_id.clone();
                    let watched = self.events.is_watched();
                    if watched {
                        events.push(MarathonEvent::StatusUpdate {
                            slave_id: instance.record.agent_id.clone(),
                            task_id: status.task_id.clone(),
                            task_status: state_of.as_str_name(),
                            message: status.message.clone(),
                            app_id: app_id.clone(),
                            host: instance.record.host.clone(),
                            ip_addresses: Vec::new(),
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
                        events.push(MarathonEvent::HealthStatusChanged {
                            app_id: app_id.clone(),
                            task_id: status.task_id.clone(),
                            instance_id: status.task_id.clone(),
                            version: instance.record.version.clone(),
                            alive,
                        });
                        if !alive {
                            events.push(MarathonEvent::FailedHealthCheck {
                                app_id: app_id.clone(),
                                task_id: status.task_id.clone(),
                                instance_id: status.task_id.clone(),
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
        }
        if kill_orphan {
            tracing::warn!(task = %status.task_id, "killing a task of no known app");
            let session = self.master.borrow().clone();
            if let Some(session) = session {
                let request = master::KillRequest {
                    framework_id: session.framework_id.clone(),
                    task_id: status.task_id.clone(),
                    agent_id: status.agent_id.clone(),
                    grace_period_seconds: 0,
                };
                let _ = session.client.clone().kill(request).await;
            }
        }
        self.apply(batch).await?;
        for event in events {
            self.events.publish(event);
        }
        self.converge_now.notify_one();
        Ok(())
    }

    /// What to reconcile: every instance with the agent it was placed on.
    pub fn reconcile_list(&self) -> Vec<(String, String)> {
        self.lock().instances.values().map(|i| (i.record.task_id.clone(), i.record.agent_id.clone())).collect()
    }
}
