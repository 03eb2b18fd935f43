//! What operators ask of the leader: draining an agent, the cluster's state.

use marina_proto::master::v1::{self as pb, master_message};

use super::{AgentStatus, LeaderState, is_terminal, now_seconds, used};
use crate::error::MasterError;

impl LeaderState {
    /// Stops offering an agent and kills its tasks so their schedulers move them.
    pub(crate) fn drain(&self, agent_id: &str) -> Result<(), MasterError> {
        let mut inner = self.lock();
        let Some(agent) = inner.agents.get_mut(agent_id) else {
            return Err(MasterError::unknown_agent(agent_id));
        };
        agent.status = AgentStatus::Draining;
        if let Some((_, link)) = &agent.link {
            for task in agent.tasks.values().filter(|t| !is_terminal(t.status.state())) {
                let kill = pb::KillTask {
                    task_id: task.info.task_id.clone(),
                    framework_id: task.info.framework_id.clone(),
                    grace_period_seconds: 0,
                };
                let _ = link.send(self.agent_message(master_message::Kind::Kill(kill)));
            }
        }
        let offers: Vec<String> =
            inner.offers.iter().filter(|(_, o)| o.agent_id == agent_id).map(|(id, _)| id.clone()).collect();
        for offer_id in offers {
            self.rescind(&mut inner, &offer_id);
        }
        tracing::info!(agent = agent_id, "agent draining");
        Ok(())
    }

    pub fn state(&self) -> pb::MasterState {
        let inner = self.lock();
        let agents = inner
            .agents
            .values()
            .map(|agent| pb::AgentSummary {
                info: Some(agent.info.clone()),
                status: agent.status.as_str().into(),
                used: Some(used(agent)),
                last_heartbeat: now_seconds() - agent.heard.at.elapsed().as_secs_f64(),
            })
            .collect();
        let frameworks = inner
            .frameworks
            .values()
            .map(|framework| pb::FrameworkSummary {
                info: Some(framework.info.clone()),
                connected: framework.stream.is_some(),
                tasks: inner
                    .agents
                    .values()
                    .flat_map(|a| a.tasks.values())
                    .filter(|t| t.info.framework_id == framework.info.framework_id && !is_terminal(t.status.state()))
                    .count() as u64,
            })
            .collect();
        let tasks = inner.agents.values().flat_map(|a| a.tasks.values()).map(|t| t.status.clone()).collect();
        pb::MasterState {
            master_id: self.master_id.clone(),
            leader_address: self.address.clone(),
            epoch: self.epoch,
            elected: true,
            agents,
            frameworks,
            tasks,
        }
    }
}
