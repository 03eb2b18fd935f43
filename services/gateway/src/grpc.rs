//! `marina.apps.v1.Apps`: the REST API's capabilities over gRPC. App definitions are
//! Marathon JSON, read and validated exactly as REST reads them; a validation failure is
//! INVALID_ARGUMENT with Marathon's error body as the message.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use marina_proto::apps::v1 as pb;
use tonic::{Request, Response, Status};

use crate::Gateway;
use crate::app::{self, AppDefinition, AppError, PathId};
use crate::engine::is_terminal;
use crate::events::Delivery;
use crate::leader::{Change, DeployError, Deployed, Instance, Leader};

#[derive(Clone)]
pub struct AppsApi {
    gateway: Arc<Gateway>,
}

impl AppsApi {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }

    fn leader(&self) -> Result<Arc<Leader>, Status> {
        self.gateway.leader().ok_or_else(|| Status::unavailable("this gateway does not lead; retry"))
    }
}

fn app_status(error: AppError) -> Status {
    Status::invalid_argument(error.body().to_string())
}

impl From<DeployError> for Status {
    fn from(error: DeployError) -> Self {
        deploy_status(error)
    }
}

fn deploy_status(error: DeployError) -> Status {
    match error {
        DeployError::NotFound(_) | DeployError::NoDeployment(_) => Status::not_found(error.to_string()),
        DeployError::Exists(_) => Status::already_exists(error.to_string()),
        DeployError::Locked(ref ids) => Status::failed_precondition(format!("{error} Deployments: {}", ids.join(", "))),
        DeployError::Invalid(_) | DeployError::Refused(_) => Status::invalid_argument(error.to_string()),
        DeployError::Deposed { .. } | DeployError::Unavailable(_) => Status::unavailable(error.to_string()),
    }
}

fn id(raw: &str) -> Result<String, Status> {
    PathId::parse(raw)
        .map(|p| p.to_string())
        .map_err(|e| Status::invalid_argument(format!("invalid app id {raw:?}: {e}")))
}

fn result(deployed: Deployed) -> pb::DeploymentResult {
    pb::DeploymentResult { deployment_id: deployed.deployment_id, version: deployed.version }
}

fn task(instance: &Instance) -> pb::Task {
    pb::Task {
        id: instance.record.task_id.clone(),
        app_id: instance.record.app_id.clone(),
        agent_id: instance.record.agent_id.clone(),
        host: instance.record.host.clone(),
        ports: instance.record.ports.clone(),
        state: instance.state.as_str_name().to_owned(),
        healthy: instance.healthy,
        version: instance.record.version.clone(),
        staged_at: instance.record.staged_at.clone(),
        started_at: instance.started_at.clone().unwrap_or_default(),
    }
}

fn app_message(app: &AppDefinition, instances: &[Instance], deployments: Vec<String>) -> pb::App {
    let live: Vec<&Instance> = instances.iter().filter(|i| !is_terminal(i.state)).collect();
    let running = live.iter().filter(|i| i.state == marina_proto::agent::v1::TaskState::TaskRunning).count();
    pb::App {
        id: app.id.to_string(),
        json: app.to_json().to_string(),
        instances: app.instances.max(0) as u32,
        tasks_running: running as u32,
        tasks_staged: (live.len() - running) as u32,
        tasks_healthy: live.iter().filter(|i| i.healthy == Some(true)).count() as u32,
        tasks_unhealthy: live.iter().filter(|i| i.healthy == Some(false)).count() as u32,
        version: app.version.map(|v| v.to_string()).unwrap_or_default(),
        deployment_ids: deployments,
    }
}

type GrpcResult<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl pb::apps_server::Apps for AppsApi {
    async fn create_app(&self, request: Request<pb::CreateAppRequest>) -> GrpcResult<pb::DeploymentResult> {
        let leader = self.leader()?;
        let app = app::parse_app(request.get_ref().json.as_bytes(), None).map_err(app_status)?;
        let app_id = app.id.to_string();
        let deployed = leader
            .deploy_derived(false, |leader| match leader.app(&app_id) {
                Some(_) => Err(DeployError::Exists(app_id.clone())),
                None => Ok(vec![Change::to(&app_id, Some(app))]),
            })
            .await
            .map_err(deploy_status)?;
        Ok(Response::new(result(deployed)))
    }

    async fn get_app(&self, request: Request<pb::GetAppRequest>) -> GrpcResult<pb::App> {
        let app_id = id(&request.get_ref().id)?;
        let (app, instances, deployments) =
            self.leader()?.app(&app_id).ok_or_else(|| Status::not_found(format!("App '{app_id}' does not exist")))?;
        Ok(Response::new(app_message(&app, &instances, deployments)))
    }

    async fn list_apps(&self, request: Request<pb::ListAppsRequest>) -> GrpcResult<pb::ListAppsResponse> {
        let prefix = request.into_inner().id_prefix;
        let apps = self
            .leader()?
            .apps()
            .into_iter()
            .filter(|(app, _, _)| app.id.to_string().starts_with(&prefix))
            .map(|(app, instances, deployments)| app_message(&app, &instances, deployments))
            .collect();
        Ok(Response::new(pb::ListAppsResponse { apps }))
    }

    async fn update_app(&self, request: Request<pb::UpdateAppRequest>) -> GrpcResult<pb::DeploymentResult> {
        let leader = self.leader()?;
        let request = request.into_inner();
        let path = PathId::parse(&request.id).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let app_id = path.to_string();
        let deployed = leader
            .deploy_derived(request.force, |leader| {
                let target = match leader.app(&app_id).map(|(app, _, _)| app) {
                    Some(existing) if request.partial => {
                        app::apply_patch(&existing, request.json.as_bytes()).map_err(app_status)?
                    }
                    None if request.partial => return Err(Status::not_found(format!("App '{app_id}' does not exist"))),
                    _ => app::parse_app_at(request.json.as_bytes(), &path).map_err(app_status)?,
                };
                Ok(vec![Change::to(&app_id, Some(target))])
            })
            .await?;
        Ok(Response::new(result(deployed)))
    }

    async fn delete_app(&self, request: Request<pb::DeleteAppRequest>) -> GrpcResult<pb::DeploymentResult> {
        let leader = self.leader()?;
        let app_id = id(&request.get_ref().id)?;
        leader.app(&app_id).ok_or_else(|| Status::not_found(format!("App '{app_id}' does not exist")))?;
        let deployed =
            leader.deploy(vec![Change::to(&app_id, None)], request.get_ref().force).await.map_err(deploy_status)?;
        Ok(Response::new(result(deployed)))
    }

    async fn scale_app(&self, request: Request<pb::ScaleAppRequest>) -> GrpcResult<pb::DeploymentResult> {
        let leader = self.leader()?;
        let app_id = id(&request.get_ref().id)?;
        let deployed = leader
            .deploy_derived(request.get_ref().force, |leader| {
                let (mut app, _, _) = leader.app(&app_id).ok_or_else(|| DeployError::NotFound(app_id.clone()))?;
                app.instances = i64::from(request.get_ref().instances);
                Ok(vec![Change::to(&app_id, Some(app))])
            })
            .await
            .map_err(deploy_status)?;
        Ok(Response::new(result(deployed)))
    }

    async fn restart_app(&self, request: Request<pb::RestartAppRequest>) -> GrpcResult<pb::DeploymentResult> {
        let leader = self.leader()?;
        let app_id = id(&request.get_ref().id)?;
        let deployed = leader
            .deploy_derived(request.get_ref().force, |leader| {
                let (app, _, _) = leader.app(&app_id).ok_or_else(|| DeployError::NotFound(app_id.clone()))?;
                Ok(vec![Change { id: app_id.clone(), target: Some(app), restart: true }])
            })
            .await
            .map_err(deploy_status)?;
        Ok(Response::new(result(deployed)))
    }

    async fn list_tasks(&self, request: Request<pb::ListTasksRequest>) -> GrpcResult<pb::ListTasksResponse> {
        let app_id = request.into_inner().app_id;
        let app_id = if app_id.is_empty() { None } else { Some(id(&app_id)?) };
        let tasks = self
            .leader()?
            .instances()
            .iter()
            .filter(|i| !is_terminal(i.state) && app_id.as_ref().is_none_or(|a| &i.record.app_id == a))
            .map(task)
            .collect();
        Ok(Response::new(pb::ListTasksResponse { tasks }))
    }

    async fn kill_tasks(&self, request: Request<pb::KillTasksRequest>) -> GrpcResult<pb::KillTasksResponse> {
        let request = request.into_inner();
        let app_id = if request.app_id.is_empty() { None } else { Some(id(&request.app_id)?) };
        let host = (!request.host.is_empty()).then_some(request.host.as_str());
        let (killed, deployment) = self
            .leader()?
            .kill_tasks(app_id.as_deref(), &request.task_ids, host, request.scale, request.force)
            .await
            .map_err(deploy_status)?;
        Ok(Response::new(pb::KillTasksResponse {
            killed: killed.iter().map(task).collect(),
            deployment: deployment.map(result),
        }))
    }

    async fn list_deployments(
        &self,
        _request: Request<pb::ListDeploymentsRequest>,
    ) -> GrpcResult<pb::ListDeploymentsResponse> {
        let deployments = self
            .leader()?
            .deployments()
            .into_iter()
            .map(|d| pb::Deployment {
                current_actions: d
                    .steps
                    .get(d.current_step)
                    .map(|step| {
                        step.iter()
                            .map(|a| pb::DeploymentAction { action: a.action.clone(), app: a.app.clone() })
                            .collect()
                    })
                    .unwrap_or_default(),
                current_step: (d.current_step + 1).min(d.steps.len()) as u32,
                total_steps: d.steps.len() as u32,
                affected_apps: d.affected_apps,
                version: d.version,
                id: d.id,
            })
            .collect();
        Ok(Response::new(pb::ListDeploymentsResponse { deployments }))
    }

    async fn cancel_deployment(
        &self,
        request: Request<pb::CancelDeploymentRequest>,
    ) -> GrpcResult<pb::CancelDeploymentResponse> {
        let request = request.into_inner();
        let rollback = self.leader()?.cancel_deployment(&request.id, request.force).await.map_err(deploy_status)?;
        Ok(Response::new(pb::CancelDeploymentResponse { rollback: rollback.map(result) }))
    }

    type WatchEventsStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send + 'static>>;

    async fn watch_events(&self, request: Request<pb::WatchEventsRequest>) -> GrpcResult<Self::WatchEventsStream> {
        self.leader()?;
        let wanted = request.into_inner().event_types;
        let shutdown = self.gateway.shutdown.clone();
        let stream = self
            .gateway
            .events
            .deliveries(wanted)
            .map(|delivery| match delivery {
                Delivery::Event(event) => {
                    Ok(pb::Event { event_type: event.event_type.to_owned(), json: event.json.to_string() })
                }
                Delivery::Lagged(missed) => Err(Status::data_loss(format!(
                    "this stream fell behind and missed {missed} events; watch again and re-read the state"
                ))),
            })
            .take_until(async move { shutdown.cancelled().await });
        Ok(Response::new(Box::pin(stream)))
    }
}
