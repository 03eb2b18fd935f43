//! Frameworks (schedulers): subscriptions and their streams, kills, acknowledgements,
//! reconciliation, revive and suppress, teardown.

use std::collections::HashMap;

use marina_proto::agent::v1::{TaskState, TaskStatus};
use marina_proto::master::v1::{self as pb, master_message, scheduler_event};

use super::{
    AgentStatus, FrameworkRecord, Inner, LeaderState, SchedulerSender, is_terminal, master_status, reconciled,
};
use crate::error::MasterError;

impl LeaderState {
    /// Subscribes (or re-subscribes) a framework; its stream replaces any previous one.
    pub(crate) async fn subscribe(
        &self,
        mut info: pb::FrameworkInfo,
        principal: &str,
        stream: SchedulerSender,
        stream_id: u64,
    ) -> Result<String, MasterError> {
        if info.name.trim().is_empty() {
            return Err(MasterError::Invalid("framework name must not be empty".into()));
        }
        if info.framework_id.is_empty() {
            info.framework_id = marina_daemon::ids::prefixed("framework");
        }
        // Who subscribes is who the framework is: the same principal again, or (without
        // TLS) anyone. A framework id is no secret; its certificate is.
        info.principal = principal.to_owned();
        if let Some(known) = self.lock().frameworks.get(&info.framework_id) {
            check_principal("framework", &info.framework_id, &known.info.principal, principal)?;
        }
        let changed = self.lock().frameworks.get(&info.framework_id).is_none_or(|known| known.info != info);
        if changed && let Err(error) = self.registry.put_framework(&info).await {
            self.check_deposed(&error);
            return Err(MasterError::Unrecorded { action: "record the framework", error });
        }
        let framework_id = info.framework_id.clone();
        let subscribed = pb::Subscribed {
            framework_id: framework_id.clone(),
            heartbeat_interval_ms: self.config.scheduler_heartbeat_ms,
            master_id: self.master_id.clone(),
        };
        let _ = stream.try_send(self.scheduler_event(scheduler_event::Kind::Subscribed(subscribed)));
        let mut inner = self.lock();
        // Again, now that nothing can come between the check and the record: another
        // principal may have subscribed this id while the record was written.
        if let Some(known) = inner.frameworks.get(&framework_id) {
            check_principal("framework", &framework_id, &known.info.principal, principal)?;
        }
        let previous = inner.frameworks.remove(&framework_id);
        if let Some((_, old)) = previous.as_ref().and_then(|p| p.stream.as_ref()) {
            let error = pb::Error { message: "superseded by a new subscription of the same framework".into() };
            let _ = old.try_send(self.scheduler_event(scheduler_event::Kind::Error(error)));
        }
        let offers: Vec<String> =
            inner.offers.iter().filter(|(_, o)| o.framework_id == framework_id).map(|(id, _)| id.clone()).collect();
        for offer_id in offers {
            inner.offers.remove(&offer_id);
        }
        tracing::info!(framework = %framework_id, name = %info.name, "framework subscribed");
        inner.frameworks.insert(
            framework_id.clone(),
            FrameworkRecord { info, stream: Some((stream_id, stream)), suppressed: false, refused: HashMap::new() },
        );
        Ok(framework_id)
    }

    pub(crate) fn scheduler_disconnected(&self, framework_id: &str, stream_id: u64) {
        let mut inner = self.lock();
        if self.end_subscription(&mut inner, framework_id, stream_id) {
            tracing::info!(framework = framework_id, "framework disconnected");
        }
    }

    /// Forgets the framework's stream `stream_id` (if still its current one) and the offers
    /// made on it; true if it was.
    pub(super) fn end_subscription(&self, inner: &mut Inner, framework_id: &str, stream_id: u64) -> bool {
        let Some(framework) = inner.frameworks.get_mut(framework_id) else { return false };
        if framework.stream.as_ref().is_none_or(|(id, _)| *id != stream_id) {
            return false;
        }
        framework.stream = None;
        inner.offers.retain(|_, offer| offer.framework_id != framework_id);
        true
    }

    /// `Ok` if `principal` may act as framework `framework_id` (a framework this master does
    /// not know is answered by the call itself).
    pub(crate) fn check_framework_principal(&self, framework_id: &str, principal: &str) -> Result<(), MasterError> {
        match self.lock().frameworks.get(framework_id) {
            Some(known) => check_principal("framework", framework_id, &known.info.principal, principal),
            None => Ok(()),
        }
    }

    pub(super) fn subscribed(&self, inner: &Inner, framework_id: &str) -> Result<(), MasterError> {
        match inner.frameworks.get(framework_id) {
            Some(framework) if framework.stream.is_some() => Ok(()),
            Some(_) => Err(MasterError::NotSubscribed(framework_id.to_owned())),
            None => Err(MasterError::unknown_framework(framework_id)),
        }
    }

    pub(crate) fn kill(&self, request: pb::KillRequest) -> Result<(), MasterError> {
        let mut inner = self.lock();
        self.subscribed(&inner, &request.framework_id)?;
        let found = inner
            .task_index
            .agents(&request.task_id)
            .iter()
            .filter(|id| request.agent_id.is_empty() || **id == request.agent_id)
            .filter_map(|id| Some((id, inner.agents.get(id)?)))
            // Another framework's task of that id is, for this one, no task at all.
            .filter(|(_, agent)| agent.tasks.get(&request.task_id).is_none_or(|t| t.belongs_to(&request.framework_id)))
            .map(|(id, agent)| (id.clone(), agent.status, agent.link.clone()))
            .next();
        let answer = match found {
            Some((_, _, Some((_, link)))) => {
                let kill = pb::KillTask {
                    task_id: request.task_id.clone(),
                    framework_id: request.framework_id.clone(),
                    grace_period_seconds: request.grace_period_seconds,
                };
                let _ = link.send(self.agent_message(master_message::Kind::Kill(kill)));
                None
            }
            Some((agent_id, AgentStatus::Unreachable, None)) => Some(master_status(
                &request.task_id,
                &request.framework_id,
                &agent_id,
                TaskState::TaskUnreachable,
                "the task's agent is unreachable; it will be killed if the agent returns",
            )),
            // Connected again shortly: the scheduler retries kills it does not see complete.
            Some((_, _, None)) => None,
            None => Some(master_status(
                &request.task_id,
                &request.framework_id,
                &request.agent_id,
                TaskState::TaskUnknown,
                "the master does not know this task",
            )),
        };
        if let Some(status) = answer {
            self.forward_update(&mut inner, status);
        }
        Ok(())
    }

    /// Acknowledgements of status updates: each goes to its agent (which then forgets the
    /// update); a terminal task whose last update is acknowledged is forgotten here too.
    pub(crate) fn acknowledge(&self, request: pb::AcknowledgeRequest) -> Result<(), MasterError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        self.subscribed(inner, &request.framework_id)?;
        let single = (!request.task_id.is_empty()).then_some(pb::UpdateAcknowledgement {
            agent_id: request.agent_id,
            task_id: request.task_id,
            uuid: request.uuid,
        });
        let mut unknown_agent = None;
        for ack in single.into_iter().chain(request.more) {
            let Some(agent) = inner.agents.get_mut(&ack.agent_id) else {
                unknown_agent = Some(ack.agent_id);
                continue;
            };
            // Only a task's own framework acknowledges its updates (an acknowledgement makes
            // the agent forget the update, so another's would lose it for its owner).
            if agent.tasks.get(&ack.task_id).is_some_and(|task| !task.belongs_to(&request.framework_id)) {
                tracing::warn!(task = %ack.task_id, framework = %request.framework_id, "acknowledgement of another framework's task ignored");
                continue;
            }
            // A terminal task whose last update is acknowledged is done with.
            if agent
                .tasks
                .get(&ack.task_id)
                .is_some_and(|task| task.status.uuid == ack.uuid && is_terminal(task.status.state()))
            {
                agent.tasks.remove(&ack.task_id);
                agent.tasks_changed();
                inner.task_index.remove(&ack.task_id, &ack.agent_id);
            }
            if let Some((_, link)) = &agent.link {
                let update = pb::AcknowledgeUpdate { task_id: ack.task_id, uuid: ack.uuid };
                let _ = link.send(self.agent_message(master_message::Kind::Acknowledge(update)));
            }
        }
        match unknown_agent {
            Some(agent_id) => Err(MasterError::unknown_agent(&agent_id)),
            None => Ok(()),
        }
    }

    pub(crate) fn reconcile(&self, request: pb::ReconcileRequest) -> Result<(), MasterError> {
        let mut inner = self.lock();
        self.subscribed(&inner, &request.framework_id)?;
        let framework_id = request.framework_id.clone();
        let answers: Vec<TaskStatus> = if request.tasks.is_empty() {
            // Implicit: everything the master knows of this framework.
            inner
                .agents
                .values()
                .flat_map(|agent| agent.tasks.values())
                .filter(|task| task.info.framework_id == framework_id || task.status.framework_id == framework_id)
                .map(|task| reconciled(&task.status))
                .collect()
        } else {
            let mut answers = Vec::new();
            for task in request.tasks {
                let waiting = !task.agent_id.is_empty()
                    && inner.agents.get(&task.agent_id).is_some_and(|a| a.status == AgentStatus::Reregistering)
                    && !inner.agents[&task.agent_id].tasks.contains_key(&task.task_id);
                if waiting {
                    inner
                        .pending_reconcile
                        .entry(task.agent_id.clone())
                        .or_default()
                        .push((framework_id.clone(), task.task_id));
                } else {
                    answers.push(self.reconcile_one(&inner, &framework_id, &task.task_id, &task.agent_id));
                }
            }
            answers
        };
        for status in answers {
            self.forward_update(&mut inner, status);
        }
        Ok(())
    }

    /// The latest state of one task, as reconciliation reports it.
    pub(super) fn reconcile_one(
        &self,
        inner: &Inner,
        framework_id: &str,
        task_id: &str,
        agent_hint: &str,
    ) -> TaskStatus {
        for (agent_id, agent) in &inner.agents {
            if !agent_hint.is_empty() && agent_id != agent_hint {
                continue;
            }
            if let Some(task) = agent.tasks.get(task_id).filter(|task| task.belongs_to(framework_id)) {
                if agent.status == AgentStatus::Unreachable {
                    return master_status(
                        task_id,
                        framework_id,
                        agent_id,
                        TaskState::TaskUnreachable,
                        "agent unreachable",
                    );
                }
                return reconciled(&task.status);
            }
        }
        match inner.agents.get(agent_hint).map(|agent| agent.status) {
            Some(AgentStatus::Unreachable | AgentStatus::Reregistering) => master_status(
                task_id,
                framework_id,
                agent_hint,
                TaskState::TaskUnreachable,
                "the task's agent is unreachable",
            ),
            Some(_) => master_status(
                task_id,
                framework_id,
                agent_hint,
                TaskState::TaskGone,
                "the agent does not run this task",
            ),
            None => master_status(
                task_id,
                framework_id,
                agent_hint,
                TaskState::TaskUnknown,
                "the master does not know this task",
            ),
        }
    }

    pub(crate) fn revive(&self, framework_id: &str) -> Result<(), MasterError> {
        let mut inner = self.lock();
        self.subscribed(&inner, framework_id)?;
        let framework = inner.frameworks.get_mut(framework_id).expect("checked above");
        framework.suppressed = false;
        framework.refused.clear();
        self.allocate_soon.notify_one();
        Ok(())
    }

    pub(crate) fn suppress(&self, framework_id: &str) -> Result<(), MasterError> {
        let mut inner = self.lock();
        self.subscribed(&inner, framework_id)?;
        inner.frameworks.get_mut(framework_id).expect("checked above").suppressed = true;
        let offers: Vec<String> =
            inner.offers.iter().filter(|(_, o)| o.framework_id == framework_id).map(|(id, _)| id.clone()).collect();
        for offer_id in offers {
            self.rescind(&mut inner, &offer_id);
        }
        Ok(())
    }

    /// Removes a framework: its tasks are killed and its record deleted.
    pub(crate) async fn teardown(&self, framework_id: &str) -> Result<(), MasterError> {
        {
            let inner = self.lock();
            if !inner.frameworks.contains_key(framework_id) {
                return Err(MasterError::unknown_framework(framework_id));
            }
        }
        if let Err(error) = self.registry.remove_framework(framework_id).await {
            self.check_deposed(&error);
            return Err(MasterError::Unrecorded { action: "remove the framework", error });
        }
        let mut inner = self.lock();
        for agent in inner.agents.values() {
            let Some((_, link)) = &agent.link else { continue };
            for task in agent.tasks.values().filter(|t| t.info.framework_id == framework_id) {
                let kill = pb::KillTask {
                    task_id: task.info.task_id.clone(),
                    framework_id: framework_id.to_owned(),
                    grace_period_seconds: 0,
                };
                let _ = link.send(self.agent_message(master_message::Kind::Kill(kill)));
            }
        }
        if let Some(framework) = inner.frameworks.remove(framework_id)
            && let Some((_, stream)) = framework.stream
        {
            let error = pb::Error { message: "the framework was torn down".into() };
            let _ = stream.try_send(self.scheduler_event(scheduler_event::Kind::Error(error)));
        }
        inner.offers.retain(|_, offer| offer.framework_id != framework_id);
        Ok(())
    }
}

/// `Ok` if a caller with `principal` may act as the `kind` `id`, bound to `bound` (empty:
/// recorded without TLS, so bound to no one yet).
pub(crate) fn check_principal(kind: &str, id: &str, bound: &str, principal: &str) -> Result<(), MasterError> {
    if bound.is_empty() || bound == principal {
        return Ok(());
    }
    let caller = if principal.is_empty() { "a caller without a certificate" } else { principal };
    Err(MasterError::NotYours(format!("{kind} {id} belongs to {bound}; {caller} may not act as it")))
}
