//! The agent's own API: its state and its tasks' output (gRPC), `/state` (HTTP JSON), and
//! its metrics.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::routing::get;
use marina_proto::agent::v1 as pb;
use marina_runtime::LogStream;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, IntGauge, Opts};
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
        // 0 asks for the default; nothing gets more than the maximum, so a response always
        // fits the server's encoding limit (set from the same maximum).
        let limit = self.agent.task_logs.read_limit(request.tail_bytes);
        let tail = usize::try_from(limit).unwrap_or(usize::MAX);
        let mut data = match entry.handle() {
            Some(handle) => self
                .agent
                .tasks
                .runtime()
                .logs(&handle, stream, Some(tail))
                .await
                .map_err(|e| Status::internal(e.to_string()))?,
            None => {
                let path = entry.sandbox.join(if stream == LogStream::Stdout { "stdout" } else { "stderr" });
                tokio::task::spawn_blocking(move || read_tail(&path, limit))
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?
                    .map_err(|e| Status::internal(e.to_string()))?
                    .into()
            }
        };
        // Whatever a runtime returns, the response stays within the limit.
        if data.len() > tail {
            data = data.slice(data.len() - tail..);
        }
        Ok(Response::new(pb::ReadTaskLogResponse { data }))
    }
}

/// The last `limit` bytes of the file at `path`; nothing if it was never written.
fn read_tail(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let read = || -> std::io::Result<Vec<u8>> {
        let mut file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        let start = len.saturating_sub(limit);
        file.seek(SeekFrom::Start(start))?;
        // The file may grow meanwhile: stop at the length measured.
        let mut bytes = Vec::new();
        file.take(len - start).read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    match read() {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(error) => Err(std::io::Error::new(error.kind(), format!("{}: {error}", path.display()))),
        read => read,
    }
}

/// `GET /state`: the agent and its tasks as JSON (for operators and scripts).
pub fn http_routes(agent: Arc<Agent>) -> Router {
    Router::new().route("/state", get(state_json)).with_state(agent)
}

/// `/state`'s query: `?task=ID` also answers where that task's sandbox is (`sandbox`), if it
/// is still on disk — also once the task is over and forgotten, until its sandbox is
/// collected, so a failed task's output can still be read.
#[derive(serde::Deserialize)]
struct StateQuery {
    task: Option<String>,
}

async fn state_json(State(agent): State<Arc<Agent>>, Query(query): Query<StateQuery>) -> axum::Json<serde_json::Value> {
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
                "ip_addresses": status.ip_addresses,
                "message": status.message,
                // Where its files are (browse and read them with `/files/…`).
                "sandbox": agent.checkpoint.sandbox_path(&task.task_id).ok().map(|path| path.display().to_string()),
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
        "sandbox": query.task.as_deref().and_then(|task| {
            let path = agent.checkpoint.sandbox_path(task).ok()?;
            path.is_dir().then(|| path.display().to_string())
        }),
    }))
}

/// Agent gauges and counters, read from the live state at scrape time.
struct AgentCollector {
    agent: Arc<Agent>,
    tasks_running: IntGauge,
    tasks_total: IntGauge,
    pending_updates: IntGauge,
    registered: IntGauge,
    checkpoint_failures: IntCounter,
    checkpoint_backlog: IntGauge,
    sandboxes_collected: IntCounter,
    stale_commands: IntCounter,
    fetch_downloads: IntCounter,
    fetch_cache_hits: IntCounter,
    fetch_cache_bytes: IntGauge,
}

impl Collector for AgentCollector {
    fn desc(&self) -> Vec<&Desc> {
        let gauges = [&self.tasks_running, &self.tasks_total, &self.pending_updates, &self.registered];
        let mut descs: Vec<&Desc> = gauges.into_iter().flat_map(|gauge| gauge.desc()).collect();
        descs.extend(self.checkpoint_failures.desc());
        descs.extend(self.checkpoint_backlog.desc());
        descs.extend(self.sandboxes_collected.desc());
        descs.extend(self.stale_commands.desc());
        descs.extend(self.fetch_downloads.desc());
        descs.extend(self.fetch_cache_hits.desc());
        descs.extend(self.fetch_cache_bytes.desc());
        descs
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
        self.checkpoint_backlog.set(i64::try_from(self.agent.checkpoint_backlog()).unwrap_or(i64::MAX));
        // Counters kept elsewhere: catch up with them (they only grow).
        for (counter, value) in [
            (&self.checkpoint_failures, self.agent.checkpoint.failures()),
            (&self.sandboxes_collected, self.agent.gc.collected()),
            (&self.stale_commands, self.agent.stale_commands()),
            (&self.fetch_downloads, self.agent.tasks.fetcher().downloads()),
            (&self.fetch_cache_hits, self.agent.tasks.fetcher().cache_hits()),
        ] {
            counter.inc_by(value.saturating_sub(counter.get()));
        }
        let gauges = [&self.tasks_running, &self.tasks_total, &self.pending_updates, &self.registered];
        let mut families: Vec<MetricFamily> = gauges.into_iter().flat_map(|gauge| gauge.collect()).collect();
        families.extend(self.checkpoint_failures.collect());
        families.extend(self.checkpoint_backlog.collect());
        families.extend(self.sandboxes_collected.collect());
        families.extend(self.stale_commands.collect());
        self.fetch_cache_bytes.set(i64::try_from(self.agent.tasks.fetcher().cache_size()).unwrap_or(i64::MAX));
        families.extend(self.fetch_downloads.collect());
        families.extend(self.fetch_cache_hits.collect());
        families.extend(self.fetch_cache_bytes.collect());
        families
    }
}

pub fn register_metrics(metrics: &marina_daemon::Metrics, agent: Arc<Agent>) {
    let gauge = |name: &str, help: &str| IntGauge::with_opts(Opts::new(name, help)).expect("static metric");
    let counter = |name: &str, help: &str| IntCounter::with_opts(Opts::new(name, help)).expect("static metric");
    metrics.register(AgentCollector {
        agent,
        tasks_running: gauge("marina_agent_tasks_running", "Tasks in state RUNNING."),
        tasks_total: gauge("marina_agent_tasks_active", "Tasks not yet in a terminal state."),
        pending_updates: gauge("marina_agent_pending_status_updates", "Status updates not yet acknowledged."),
        registered: gauge("marina_agent_registered", "1 while registered with a leading master."),
        checkpoint_failures: counter(
            "marina_agent_checkpoint_failures_total",
            "Checkpoint writes that failed (a full disk, an I/O error); what they held is kept in memory and written again.",
        ),
        checkpoint_backlog: gauge(
            "marina_agent_checkpoint_backlog",
            "Status updates, acknowledgements and tasks held in memory because their checkpoint failed, waiting to be written.",
        ),
        sandboxes_collected: counter(
            "marina_agent_sandboxes_collected_total",
            "Sandboxes of finished tasks removed by garbage collection.",
        ),
        stale_commands: counter(
            "marina_agent_stale_commands_refused_total",
            "Commands refused because they came from a deposed master (an epoch older than one obeyed).",
        ),
        fetch_downloads: counter(
            "marina_agent_fetch_downloads_total",
            "Fetch URIs downloaded or copied (cache misses and uncached URIs).",
        ),
        fetch_cache_hits: counter("marina_agent_fetch_cache_hits_total", "Fetch URIs served from the fetch cache."),
        fetch_cache_bytes: gauge("marina_agent_fetch_cache_bytes", "Bytes the fetch cache holds."),
    });
}
