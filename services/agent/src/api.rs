//! The agent's own API: its state and its tasks' output (gRPC), `/state` (HTTP JSON), and
//! its metrics.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use marina_proto::agent::v1 as pb;
use marina_runtime::LogStream;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGauge, Opts};
use tonic::{Request, Response, Status};

use crate::Agent;
use crate::tasks::is_terminal;

#[derive(Clone)]
pub struct AgentApi {
    agent: Arc<Agent>,
}

impl AgentApi {
    pub fn new(agent: Arc<Agent>) -> Self {
        Self { agent }
    }
}

pub fn state(agent: &Agent) -> pb::AgentState {
    let master = agent.attached_master();
    pb::AgentState {
        info: Some(agent.info()),
        tasks: agent.tasks.reports(),
        pending_updates: agent.updates.pending_count() as u64,
        master: master.address,
        master_epoch: master.epoch,
    }
}

#[tonic::async_trait]
impl pb::agent_server::Agent for AgentApi {
    async fn get_state(&self, _request: Request<pb::GetStateRequest>) -> Result<Response<pb::AgentState>, Status> {
        Ok(Response::new(state(&self.agent)))
    }

    async fn read_task_log(
        &self,
        request: Request<pb::ReadTaskLogRequest>,
    ) -> Result<Response<pb::ReadTaskLogResponse>, Status> {
        let request = request.into_inner();
        let stream = match request.stream.as_str() {
            "" | "stdout" => LogStream::Stdout,
            "stderr" => LogStream::Stderr,
            other => return Err(Status::invalid_argument(format!("stream {other:?} is not stdout or stderr"))),
        };
        let entry = self
            .agent
            .tasks
            .get(&request.task_id)
            .ok_or_else(|| Status::not_found(format!("task {} is not on this agent", request.task_id)))?;
        let tail = (request.tail_bytes > 0).then_some(request.tail_bytes as usize);
        let data = match entry.handle() {
            Some(handle) => self
                .agent
                .tasks
                .runtime()
                .logs(&handle, stream, tail)
                .await
                .map_err(|e| Status::internal(e.to_string()))?,
            None => {
                let name = if stream == LogStream::Stdout { "stdout" } else { "stderr" };
                let bytes = std::fs::read(entry.sandbox.join(name)).unwrap_or_default();
                let start = tail.map_or(0, |tail| bytes.len().saturating_sub(tail));
                bytes[start..].to_vec().into()
            }
        };
        Ok(Response::new(pb::ReadTaskLogResponse { data }))
    }
}

/// `GET /state`: the agent and its tasks as JSON (for operators and scripts).
pub fn http_routes(agent: Arc<Agent>) -> Router {
    Router::new().route("/state", get(state_json)).with_state(agent)
}

async fn state_json(State(agent): State<Arc<Agent>>) -> axum::Json<serde_json::Value> {
    let info = agent.info();
    let master = agent.attached_master();
    let tasks: Vec<serde_json::Value> = agent
        .tasks
        .reports()
        .into_iter()
        .map(|report| {
            let task = report.task.unwrap_or_default();
            let status = report.status.unwrap_or_default();
            serde_json::json!({
                "id": task.task_id,
                "framework_id": task.framework_id,
                "name": task.name,
                "state": status.state().as_str_name(),
                "healthy": status.healthy,
                "container_id": status.container_id,
                "message": status.message,
            })
        })
        .collect();
    axum::Json(serde_json::json!({
        "id": info.agent_id,
        "hostname": info.hostname,
        "address": info.address,
        "runtime": info.runtime,
        "version": info.version,
        "master": { "address": master.address, "epoch": master.epoch, "registered": master.registered },
        "pending_updates": agent.updates.pending_count(),
        "tasks": tasks,
    }))
}

/// Agent gauges, read from the live state at scrape time.
struct AgentCollector {
    agent: Arc<Agent>,
    tasks_running: IntGauge,
    tasks_total: IntGauge,
    pending_updates: IntGauge,
    registered: IntGauge,
}

impl Collector for AgentCollector {
    fn desc(&self) -> Vec<&Desc> {
        [&self.tasks_running, &self.tasks_total, &self.pending_updates, &self.registered]
            .into_iter()
            .flat_map(|gauge| gauge.desc())
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let reports = self.agent.tasks.reports();
        let running = reports
            .iter()
            .filter(|r| r.status.as_ref().is_some_and(|s| s.state() == pb::TaskState::TaskRunning))
            .count();
        let active = reports.iter().filter(|r| r.status.as_ref().is_some_and(|s| !is_terminal(s.state()))).count();
        self.tasks_running.set(running as i64);
        self.tasks_total.set(active as i64);
        self.pending_updates.set(self.agent.updates.pending_count() as i64);
        self.registered.set(i64::from(self.agent.attached_master().registered));
        [&self.tasks_running, &self.tasks_total, &self.pending_updates, &self.registered]
            .into_iter()
            .flat_map(|gauge| gauge.collect())
            .collect()
    }
}

pub fn register_metrics(metrics: &marina_daemon::Metrics, agent: Arc<Agent>) {
    let gauge = |name: &str, help: &str| IntGauge::with_opts(Opts::new(name, help)).expect("static metric");
    metrics.register(AgentCollector {
        agent,
        tasks_running: gauge("marina_agent_tasks_running", "Tasks in state RUNNING."),
        tasks_total: gauge("marina_agent_tasks_active", "Tasks not yet in a terminal state."),
        pending_updates: gauge("marina_agent_pending_status_updates", "Status updates not yet acknowledged."),
        registered: gauge("marina_agent_registered", "1 while registered with a leading master."),
    });
}
