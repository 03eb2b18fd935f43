//! Agents: registration and re-registration, heartbeats and links, the status updates they
//! send (forwarded to their frameworks), and what an agent may say about itself.

use std::collections::HashMap;

use marina_proto::agent::v1::{AgentInfo, TaskInfo, TaskReport, TaskState, TaskStatus};
use marina_proto::master::v1::{self as pb, master_message, scheduler_event};

use super::{
    AgentRecord, AgentSender, AgentStatus, Inner, LeaderState, TaskRecord, is_terminal, master_status, reconciled,
};
use crate::error::MasterError;

impl LeaderState {
    /// An agent attached and registered (new) or re-registered (known, with its tasks).
    /// Returns its id; the `Registered` message has been queued on `link`.
    pub(crate) async fn register_agent(
        &self,
        register: pb::Register,
        principal: &str,
        link: AgentSender,
        link_id: u64,
    ) -> Result<String, MasterError> {
        let mut info = register.info.ok_or_else(|| MasterError::Invalid("register without agent info".into()))?;
        // The agent id is bound to the certificate that first registered it: another
        // agent's certificate cannot take its place (and its tasks).
        info.principal = principal.to_owned();
        if let Some(known) = self.lock().agents.get(&info.agent_id) {
            super::frameworks::check_principal("agent", &info.agent_id, &known.info.principal, principal)?;
        }
        check_agent(&info).map_err(MasterError::AgentRefused)?;
        if register.highest_epoch > self.epoch {
            return Err(MasterError::StaleEpoch { agent: register.highest_epoch, master: self.epoch });
        }
        let new = info.agent_id.is_empty();
        if new {
            info.agent_id = marina_daemon::ids::prefixed("agent");
        }
        let changed = {
            let inner = self.lock();
            inner.agents.get(&info.agent_id).is_none_or(|known| known.info != info)
        };
        if changed && let Err(error) = self.registry.put_agent(&info).await {
            self.check_deposed(&error);
            return Err(MasterError::Unrecorded { action: "record the agent", error });
        }
        let agent_id = info.agent_id.clone();
        let registered = pb::Registered {
            agent_id: agent_id.clone(),
            heartbeat_interval_ms: self.config.agent_ping_interval_ms,
            master_id: self.master_id.clone(),
        };
        let mut guard = self.lock();
        let inner = &mut *guard;
        // Again, now that nothing can come between the check and the record: another
        // principal may have registered this id while the record was written.
        if let Some(known) = inner.agents.get(&agent_id) {
            super::frameworks::check_principal("agent", &agent_id, &known.info.principal, principal)?;
        }
        let _ = link.send(self.agent_message(master_message::Kind::Registered(registered)));
        let previous = inner.agents.remove(&agent_id);
        for task_id in previous.iter().flat_map(|p| p.tasks.keys()) {
            inner.task_index.remove(task_id, &agent_id);
        }
        let was_unreachable = previous.as_ref().is_some_and(|p| p.status == AgentStatus::Unreachable);
        let draining = previous.as_ref().is_some_and(|p| p.status == AgentStatus::Draining);
        let mut tasks: HashMap<String, TaskRecord> = HashMap::new();
        for TaskReport { task, status } in register.tasks {
            let (Some(mut task), Some(status)) = (task, status) else { continue };
            // What the agent runs is what it runs, and is kept (left out, a running task
            // would be reported gone and replaced beside itself); but resources that are not
            // numbers (an agent from before the checks) must not enter the accounts' sums.
            if let Some(resources) = &task.resources
                && let Err(problem) = marina_proto::checks::check_resources("resources", resources)
            {
                tracing::warn!(agent = %info.agent_id, task = ?task.task_id, %problem, "a reported task's resources are not counted");
                task.resources = None;
            }
            tasks.insert(task.task_id.clone(), TaskRecord { info: task, status });
        }
        // Tasks this master launched that the agent does not report were never started
        // there (the launch was lost with the connection): they are gone.
        let mut lost = Vec::new();
        if let Some(previous) = &previous {
            for (task_id, record) in &previous.tasks {
                if !tasks.contains_key(task_id) && !is_terminal(record.status.state()) {
                    lost.push(master_status(
                        task_id,
                        &record.info.framework_id,
                        &agent_id,
                        TaskState::TaskGone,
                        "the agent re-registered without this task",
                    ));
                }
            }
        }
        let status = if draining { AgentStatus::Draining } else { AgentStatus::Active };
        tracing::info!(agent = %agent_id, new, tasks = tasks.len(), address = %info.address, "agent registered");
        let forward: Vec<TaskStatus> =
            if was_unreachable { tasks.values().map(|t| reconciled(&t.status)).collect() } else { Vec::new() };
        for task_id in tasks.keys() {
            inner.task_index.add(task_id, &agent_id);
        }
        let heard = inner.stalls.heard_now();
        inner.agents.insert(agent_id.clone(), AgentRecord::new(info, status, Some((link_id, link)), tasks, heard));
        // Explicit reconciliations that waited for this agent.
        let pending = inner.pending_reconcile.remove(&agent_id).unwrap_or_default();
        let mut answers = Vec::new();
        for (framework_id, task_id) in pending {
            answers.push(self.reconcile_one(inner, &framework_id, &task_id, &agent_id));
        }
        for status in forward.into_iter().chain(lost).chain(answers) {
            self.forward_update(inner, status);
        }
        Ok(agent_id)
    }

    pub(crate) fn heartbeat(&self, agent_id: &str, link_id: u64) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        if let Some(agent) = inner.agents.get_mut(agent_id)
            && agent.link.as_ref().is_some_and(|(id, _)| *id == link_id)
        {
            agent.heard = inner.stalls.heard_now();
        }
    }

    pub(crate) fn agent_disconnected(&self, agent_id: &str, link_id: u64) {
        let mut inner = self.lock();
        if let Some(agent) = inner.agents.get_mut(agent_id)
            && agent.link.as_ref().is_some_and(|(id, _)| *id == link_id)
        {
            tracing::info!(agent = agent_id, "agent link closed; waiting for it to reconnect");
            agent.link = None;
        }
        // Offers on an agent that cannot be reached cannot be used.
        let offers: Vec<String> =
            inner.offers.iter().filter(|(_, o)| o.agent_id == agent_id).map(|(id, _)| id.clone()).collect();
        for offer_id in offers {
            self.rescind(&mut inner, &offer_id);
        }
    }

    /// A status update from an agent: recorded, then routed to its framework.
    pub(crate) fn status_update(&self, agent_id: &str, mut status: TaskStatus) {
        self.metrics.status_updates.inc();
        // Routing continues the trace the agent sent the update in; the framework gets this
        // span's context.
        let span = tracing::info_span!(
            parent: None,
            "master.status_update",
            task_id = %status.task_id,
            state = status.state().as_str_name(),
        );
        marina_daemon::trace::set_parent(&span, &status.trace_context);
        let _routing = span.enter();
        status.trace_context = marina_daemon::trace::carrier();
        let mut guard = self.lock();
        let inner = &mut *guard;
        let Some(agent) = inner.agents.get_mut(agent_id) else { return };
        match agent.tasks.get_mut(&status.task_id) {
            Some(task) => {
                // Only a task that ends (or comes back) changes what the agent has in use.
                if is_terminal(task.status.state()) != is_terminal(status.state()) {
                    agent.usage = None;
                }
                task.status = status.clone();
            }
            None => {
                agent.tasks_changed();
                let info = TaskInfo {
                    task_id: status.task_id.clone(),
                    framework_id: status.framework_id.clone(),
                    ..Default::default()
                };
                agent.tasks.insert(status.task_id.clone(), TaskRecord { info, status: status.clone() });
                inner.task_index.add(&status.task_id, agent_id);
            }
        }
        self.forward_update(inner, status);
    }

    /// Sends a status to its framework's stream, if it is connected (an unacknowledged
    /// update is resent by the agent later; a status of the master's own, such as a
    /// reconciliation answer, is not: the scheduler's next reconciliation asks again).
    ///
    /// A status is never dropped from a connected stream: one that does not fit (the
    /// scheduler stopped reading, or asked for more answers at once than its queue holds,
    /// `scheduler_queue_events`) ends the subscription instead. The scheduler sees its
    /// stream end once it has read what is queued, subscribes again and reconciles — so
    /// even the master's own statuses, which nobody would resend, reach it.
    pub(super) fn forward_update(&self, inner: &mut Inner, status: TaskStatus) {
        let Some(framework) = inner.frameworks.get_mut(&status.framework_id) else { return };
        let Some((stream_id, stream)) = &framework.stream else { return };
        if let Err(tokio::sync::mpsc::error::TrySendError::Full(_)) =
            stream.try_send(self.scheduler_event(scheduler_event::Kind::Update(status)))
        {
            let (framework_id, stream_id) = (framework.info.framework_id.clone(), *stream_id);
            self.metrics.scheduler_overflows.inc();
            tracing::error!(
                framework = %framework_id,
                queued = self.config.scheduler_queue_events,
                "the scheduler's event queue is full: ending its subscription (it subscribes again and reconciles)"
            );
            self.end_subscription(inner, &framework_id, stream_id);
        }
    }
}

/// Most attributes an agent may advertise; each is matched by constraints for every offer.
pub(super) const MAX_AGENT_ATTRIBUTES: usize = 1000;

/// Longest hostname, address, attribute name or value an agent may give (bytes).
pub(super) const MAX_AGENT_STRING: usize = 1024;

/// What an agent describes of itself is used for placement arithmetic, offers and paths:
/// its id, resources and attributes must be bounded.
pub fn check_agent(info: &AgentInfo) -> Result<(), String> {
    use marina_proto::checks;
    if !info.agent_id.is_empty() {
        checks::check_id(&info.agent_id).map_err(|error| format!("agent id {:?} {error}", info.agent_id))?;
    }
    checks::check_resources("resources", &info.resources.clone().unwrap_or_default())?;
    if info.attributes.len() > MAX_AGENT_ATTRIBUTES {
        return Err(format!("{} attributes; at most {MAX_AGENT_ATTRIBUTES} are allowed", info.attributes.len()));
    }
    let strings = [("hostname", &info.hostname), ("address", &info.address), ("runtime", &info.runtime)];
    let attributes =
        info.attributes.iter().flat_map(|a| [("an attribute name", &a.name), ("an attribute value", &a.value)]);
    for (what, value) in strings.into_iter().chain(attributes) {
        if value.len() > MAX_AGENT_STRING || value.chars().any(char::is_control) {
            return Err(format!("{what} is longer than {MAX_AGENT_STRING} bytes or holds control characters"));
        }
    }
    Ok(())
}
