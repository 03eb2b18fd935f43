//! The master's gRPC services (`AgentLink`, `Scheduler`, `Operator`) and HTTP endpoints
//! (`/master/state`, `/master/redirect`). A standby answers every request with a redirect
//! to the leader.

use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::Stream;
use marina_daemon::stream::OnDrop;
use marina_daemon::tls::{Caller, Identity, Role};
use marina_proto::agent::v1::TaskStatus;
use marina_proto::master::v1::{self as pb, agent_message};
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tonic::{Request, Response as GrpcResponse, Status, Streaming};

use crate::Master;
use crate::leader::LeaderState;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;
type GrpcResult<T> = Result<GrpcResponse<T>, Status>;

#[derive(Clone)]
pub struct AgentLinkApi {
    master: Arc<Master>,
}

impl AgentLinkApi {
    pub fn new(master: Arc<Master>) -> Self {
        Self { master }
    }
}

#[tonic::async_trait]
impl pb::agent_link_server::AgentLink for AgentLinkApi {
    type AttachStream = BoxStream<pb::MasterMessage>;

    async fn attach(&self, request: Request<Streaming<pb::AgentMessage>>) -> GrpcResult<Self::AttachStream> {
        let leader = self.master.leader()?;
        let principal = principal(&request);
        let mut inbound = request.into_inner();
        let register = match inbound.message().await? {
            Some(pb::AgentMessage { kind: Some(agent_message::Kind::Register(register)) }) => register,
            _ => return Err(Status::invalid_argument("the first message on an agent link must be Register")),
        };
        let link_id = leader.next_stream_id();
        let (link, commands) = tokio::sync::mpsc::unbounded_channel();
        let agent_id = leader.register_agent(register, &principal, link, link_id).await?;
        let reader_leader = leader.clone();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    message = inbound.message() => message,
                    () = reader_leader.ended.cancelled() => break,
                };
                match message {
                    Ok(Some(pb::AgentMessage { kind: Some(kind) })) => match kind {
                        agent_message::Kind::Heartbeat(_) => reader_leader.heartbeat(&agent_id, link_id),
                        agent_message::Kind::Update(status) => {
                            reader_leader.heartbeat(&agent_id, link_id);
                            reader_leader.status_update(&agent_id, status);
                        }
                        agent_message::Kind::Register(_) => {
                            tracing::warn!(agent = %agent_id, "ignoring a second Register on one link")
                        }
                    },
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            reader_leader.agent_disconnected(&agent_id, link_id);
        });
        Ok(GrpcResponse::new(Box::pin(UnboundedReceiverStream::new(commands))))
    }
}

#[derive(Clone)]
pub struct SchedulerApi {
    master: Arc<Master>,
}

impl SchedulerApi {
    pub fn new(master: Arc<Master>) -> Self {
        Self { master }
    }
}

/// A request naming a framework.
trait NamesFramework {
    fn framework_id(&self) -> &str;
}

macro_rules! names_framework {
    ($($message:ty),*) => {$(
        impl NamesFramework for $message {
            fn framework_id(&self) -> &str {
                &self.framework_id
            }
        }
    )*};
}

names_framework!(
    pb::AcceptRequest,
    pb::DeclineRequest,
    pb::KillRequest,
    pb::AcknowledgeRequest,
    pb::ReconcileRequest,
    pb::ReviveRequest,
    pb::SuppressRequest,
    pb::TeardownRequest
);

/// The identity of the certificate a request came with (empty without TLS): what
/// frameworks and agents are bound to. Gateways are one framework whichever of them leads
/// (Marathon's instances shared one principal): their principal is their role, not their id.
fn principal<T>(request: &Request<T>) -> String {
    let Some(identity) = Caller::of(request).identity().cloned() else { return String::new() };
    match identity.role {
        Role::Gateway => Identity::new(Role::Gateway, None).to_string(),
        _ => identity.to_string(),
    }
}

impl SchedulerApi {
    /// The leader, once it is sure the caller may act as the framework the request names.
    fn framework<T: NamesFramework>(&self, request: &Request<T>) -> Result<Arc<LeaderState>, Status> {
        let leader = self.master.leader()?;
        leader.check_framework_principal(request.get_ref().framework_id(), &principal(request))?;
        Ok(leader)
    }
}

#[tonic::async_trait]
impl pb::scheduler_server::Scheduler for SchedulerApi {
    type SubscribeStream = BoxStream<pb::SchedulerEvent>;

    async fn subscribe(&self, request: Request<pb::SubscribeRequest>) -> GrpcResult<Self::SubscribeStream> {
        let leader = self.master.leader()?;
        let principal = principal(&request);
        let info = request
            .into_inner()
            .framework
            .ok_or_else(|| Status::invalid_argument("subscribe without framework info"))?;
        let (events, stream) = tokio::sync::mpsc::channel(self.master.config.scheduler_queue_events);
        let stream_id = leader.next_stream_id();
        let framework_id = leader.subscribe(info, &principal, events, stream_id).await?;
        let stream =
            OnDrop::new(ReceiverStream::new(stream), move || leader.scheduler_disconnected(&framework_id, stream_id));
        Ok(GrpcResponse::new(Box::pin(stream)))
    }

    async fn accept(&self, request: Request<pb::AcceptRequest>) -> GrpcResult<pb::AcceptResponse> {
        self.framework(&request)?.accept(request.into_inner())?;
        Ok(GrpcResponse::new(pb::AcceptResponse {}))
    }

    async fn decline(&self, request: Request<pb::DeclineRequest>) -> GrpcResult<pb::Ack> {
        self.framework(&request)?.decline(request.into_inner())?;
        Ok(GrpcResponse::new(pb::Ack {}))
    }

    async fn kill(&self, request: Request<pb::KillRequest>) -> GrpcResult<pb::Ack> {
        self.framework(&request)?.kill(request.into_inner())?;
        Ok(GrpcResponse::new(pb::Ack {}))
    }

    async fn acknowledge(&self, request: Request<pb::AcknowledgeRequest>) -> GrpcResult<pb::Ack> {
        self.framework(&request)?.acknowledge(request.into_inner())?;
        Ok(GrpcResponse::new(pb::Ack {}))
    }

    async fn reconcile(&self, request: Request<pb::ReconcileRequest>) -> GrpcResult<pb::Ack> {
        self.framework(&request)?.reconcile(request.into_inner())?;
        Ok(GrpcResponse::new(pb::Ack {}))
    }

    async fn revive(&self, request: Request<pb::ReviveRequest>) -> GrpcResult<pb::Ack> {
        self.framework(&request)?.revive(&request.into_inner().framework_id)?;
        Ok(GrpcResponse::new(pb::Ack {}))
    }

    async fn suppress(&self, request: Request<pb::SuppressRequest>) -> GrpcResult<pb::Ack> {
        self.framework(&request)?.suppress(&request.into_inner().framework_id)?;
        Ok(GrpcResponse::new(pb::Ack {}))
    }

    async fn teardown(&self, request: Request<pb::TeardownRequest>) -> GrpcResult<pb::Ack> {
        self.framework(&request)?.teardown(&request.into_inner().framework_id).await?;
        Ok(GrpcResponse::new(pb::Ack {}))
    }
}

#[derive(Clone)]
pub struct OperatorApi {
    master: Arc<Master>,
}

impl OperatorApi {
    pub fn new(master: Arc<Master>) -> Self {
        Self { master }
    }
}

#[tonic::async_trait]
impl pb::operator_server::Operator for OperatorApi {
    async fn get_state(&self, _request: Request<pb::GetStateRequest>) -> GrpcResult<pb::MasterState> {
        Ok(GrpcResponse::new(self.master.leader()?.state()))
    }

    async fn drain_agent(&self, request: Request<pb::DrainAgentRequest>) -> GrpcResult<pb::Ack> {
        self.master.leader()?.drain(&request.into_inner().agent_id)?;
        Ok(GrpcResponse::new(pb::Ack {}))
    }
}

pub fn http_routes(master: Arc<Master>) -> Router {
    Router::new().route("/master/state", get(state_json)).route("/master/redirect", get(redirect)).with_state(master)
}

/// 307 to the leader (or to itself when it leads); 503 when no leader is known.
async fn redirect(State(master): State<Arc<Master>>) -> Response {
    match master.leader_address() {
        Some(address) => {
            (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, format!("http://{address}/master/redirect"))])
                .into_response()
        }
        None => (StatusCode::SERVICE_UNAVAILABLE, "no leading master is known\n").into_response(),
    }
}

async fn state_json(State(master): State<Arc<Master>>) -> axum::Json<serde_json::Value> {
    let role = master.role.borrow().clone();
    let Some(leader) = role else {
        return axum::Json(serde_json::json!({
            "id": master.id,
            "elected": false,
            "leader": master.leader_address(),
        }));
    };
    let state = leader.state();
    let agents: Vec<serde_json::Value> = state
        .agents
        .iter()
        .map(|agent| {
            let info = agent.info.clone().unwrap_or_default();
            let total = info.resources.clone().unwrap_or_default();
            let used = agent.used.clone().unwrap_or_default();
            serde_json::json!({
                "id": info.agent_id,
                "hostname": info.hostname,
                "address": info.address,
                "runtime": info.runtime,
                "status": agent.status,
                "last_heartbeat": agent.last_heartbeat,
                "resources": { "cpus": total.cpus, "mem": total.mem_mb, "disk": total.disk_mb },
                "used_resources": { "cpus": used.cpus, "mem": used.mem_mb, "disk": used.disk_mb },
                "attributes": info.attributes.iter().map(|a| (a.name.clone(), a.value.clone())).collect::<std::collections::BTreeMap<_, _>>(),
            })
        })
        .collect();
    let frameworks: Vec<serde_json::Value> = state
        .frameworks
        .iter()
        .map(|framework| {
            let info = framework.info.clone().unwrap_or_default();
            serde_json::json!({ "id": info.framework_id, "name": info.name, "connected": framework.connected, "tasks": framework.tasks })
        })
        .collect();
    let tasks: Vec<serde_json::Value> = state.tasks.iter().map(task_json).collect();
    axum::Json(serde_json::json!({
        "id": state.master_id,
        "elected": true,
        "leader": state.leader_address,
        "epoch": state.epoch,
        "agents": agents,
        "frameworks": frameworks,
        "tasks": tasks,
    }))
}

fn task_json(status: &TaskStatus) -> serde_json::Value {
    serde_json::json!({
        "id": status.task_id,
        "framework_id": status.framework_id,
        "agent_id": status.agent_id,
        "state": status.state().as_str_name(),
        "healthy": status.healthy,
        "host": status.host,
        "ports": status.ports.iter().map(|p| p.host_port).collect::<Vec<_>>(),
    })
}
