//! `marina.apps.v1.Apps`: the REST API's capabilities over gRPC, a thin door to the same
//! [`Apps`] service REST calls. App definitions are Marathon JSON, read and validated exactly
//! as REST reads them; a validation failure is INVALID_ARGUMENT with Marathon's error body as
//! the message. Every error becomes its status in one place (`impl From<AppsError> for
//! Status`).

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use marina_proto::apps::v1 as pb;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use crate::Gateway;
use crate::admission::Refused;
use crate::apps::{AppView, Apps, AppsError, KillRequest, UpdateMode, app_id};
use crate::events::Delivery;
use crate::leader::{DeployError, Deployed, Instance};

/// How long a refused write should wait before it is retried, in whole seconds.
pub const RETRY_AFTER_METADATA: &str = "retry-after";
/// The same in milliseconds, under the name gRPC's retry policies read.
const RETRY_PUSHBACK_METADATA: &str = "grpc-retry-pushback-ms";

#[derive(Clone)]
pub struct AppsApi {
    gateway: Arc<Gateway>,
}

impl AppsApi {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }

    fn apps(&self) -> Result<Apps, Status> {
        Ok(Apps::of(&self.gateway)?)
    }

    /// The apps service for a change by the caller of `request` (its address is the
    /// `clientIp` of the change's `api_post_event`, when the transport knows it).
    fn apps_for<T>(&self, request: &Request<T>) -> Result<Apps, Status> {
        Ok(self.apps()?.for_client(request.remote_addr()))
    }
}

impl From<AppsError> for Status {
    fn from(error: AppsError) -> Self {
        match error {
            AppsError::NotLeading => Status::unavailable(error.to_string()),
            AppsError::BadId { .. } | AppsError::Unprocessable(_) => Status::invalid_argument(error.to_string()),
            AppsError::Definition(error) => Status::invalid_argument(error.body().to_string()),
            AppsError::Deploy(error) => error.into(),
            AppsError::NoTask(_) | AppsError::NoVersion { .. } | AppsError::NoGroup(_) | AppsError::NotQueued(_) => {
                Status::not_found(error.to_string())
            }
            AppsError::Overloaded(refused) => overloaded(&refused),
        }
    }
}

/// A write refused at the door: `RESOURCE_EXHAUSTED` with `retry-after` (whole seconds, as
/// REST's header), marked retryable (nothing was done), and `grpc-retry-pushback-ms`, which
/// gRPC clients with a retry policy for the code wait out before retrying.
fn overloaded(refused: &Refused) -> Status {
    let mut status = Status::resource_exhausted(refused.to_string());
    let wait = refused.retry_after();
    let metadata = status.metadata_mut();
    metadata.insert(RETRY_AFTER_METADATA, MetadataValue::from(wait.as_secs()));
    metadata.insert(RETRY_PUSHBACK_METADATA, MetadataValue::from(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)));
    metadata.insert(marina_daemon::leader::RETRYABLE_METADATA, MetadataValue::from_static("1"));
    status
}

impl From<DeployError> for Status {
    fn from(error: DeployError) -> Self {
        match error {
            DeployError::NotFound(_) | DeployError::NoDeployment(_) => Status::not_found(error.to_string()),
            DeployError::Exists(_) => Status::already_exists(error.to_string()),
            DeployError::Locked(ref ids) => {
                Status::failed_precondition(format!("{error} Deployments: {}", ids.join(", ")))
            }
            DeployError::Invalid(_) | DeployError::Refused(_) => Status::invalid_argument(error.to_string()),
            DeployError::Deposed { .. } | DeployError::Unavailable(_) => Status::unavailable(error.to_string()),
        }
    }
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

fn app_message(view: &AppView) -> pb::App {
    let live: Vec<&Instance> = view.live().collect();
    let running = live.iter().filter(|i| i.state == marina_proto::agent::v1::TaskState::TaskRunning).count();
    pb::App {
        id: view.app.id.to_string(),
        json: view.app.to_json().to_string(),
        instances: view.app.instances.max(0) as u32,
        tasks_running: running as u32,
        tasks_staged: (live.len() - running) as u32,
        tasks_healthy: live.iter().filter(|i| i.healthy == Some(true)).count() as u32,
        tasks_unhealthy: live.iter().filter(|i| i.healthy == Some(false)).count() as u32,
        version: view.app.version.map(|v| v.to_string()).unwrap_or_default(),
        deployment_ids: view.deployments.clone(),
    }
}

/// An optional id: empty means none.
fn optional_app_id(raw: &str) -> Result<Option<crate::app::PathId>, AppsError> {
    if raw.is_empty() { Ok(None) } else { app_id(raw).map(Some) }
}

type GrpcResult<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl pb::apps_server::Apps for AppsApi {
    async fn create_app(&self, request: Request<pb::CreateAppRequest>) -> GrpcResult<pb::DeploymentResult> {
        let (deployed, _) = self.apps_for(&request)?.create(request.get_ref().json.as_bytes(), false).await?;
        Ok(Response::new(result(deployed)))
    }

    async fn get_app(&self, request: Request<pb::GetAppRequest>) -> GrpcResult<pb::App> {
        let apps = self.apps()?;
        let view = apps.get(&app_id(&request.get_ref().id)?)?;
        Ok(Response::new(app_message(&view)))
    }

    async fn list_apps(&self, request: Request<pb::ListAppsRequest>) -> GrpcResult<pb::ListAppsResponse> {
        let prefix = request.into_inner().id_prefix;
        let apps = self
            .apps()?
            .list()
            .iter()
            .filter(|view| view.app.id.to_string().starts_with(&prefix))
            .map(app_message)
            .collect();
        Ok(Response::new(pb::ListAppsResponse { apps }))
    }

    async fn update_app(&self, request: Request<pb::UpdateAppRequest>) -> GrpcResult<pb::DeploymentResult> {
        let apps = self.apps_for(&request)?;
        let request = request.into_inner();
        let mode = if request.partial { UpdateMode::Patch } else { UpdateMode::Replace };
        let updated = apps.update(&app_id(&request.id)?, request.json.as_bytes(), mode, request.force).await?;
        Ok(Response::new(result(updated.deployed)))
    }

    async fn delete_app(&self, request: Request<pb::DeleteAppRequest>) -> GrpcResult<pb::DeploymentResult> {
        let apps = self.apps_for(&request)?;
        let deployed = apps.delete(&app_id(&request.get_ref().id)?, request.get_ref().force).await?;
        Ok(Response::new(result(deployed)))
    }

    async fn scale_app(&self, request: Request<pb::ScaleAppRequest>) -> GrpcResult<pb::DeploymentResult> {
        let apps = self.apps_for(&request)?;
        let request = request.into_inner();
        let deployed = apps.scale(&app_id(&request.id)?, i64::from(request.instances), request.force).await?;
        Ok(Response::new(result(deployed)))
    }

    async fn restart_app(&self, request: Request<pb::RestartAppRequest>) -> GrpcResult<pb::DeploymentResult> {
        let apps = self.apps_for(&request)?;
        let deployed = apps.restart(&app_id(&request.get_ref().id)?, request.get_ref().force).await?;
        Ok(Response::new(result(deployed)))
    }

    async fn list_tasks(&self, request: Request<pb::ListTasksRequest>) -> GrpcResult<pb::ListTasksResponse> {
        let apps = self.apps()?;
        let app = optional_app_id(&request.get_ref().app_id)?;
        let tasks = apps.tasks(app.as_ref()).iter().map(task).collect();
        Ok(Response::new(pb::ListTasksResponse { tasks }))
    }

    async fn kill_tasks(&self, request: Request<pb::KillTasksRequest>) -> GrpcResult<pb::KillTasksResponse> {
        let apps = self.apps()?;
        let request = request.into_inner();
        let killed = apps
            .kill(KillRequest {
                app: optional_app_id(&request.app_id)?,
                task_ids: request.task_ids,
                host: (!request.host.is_empty()).then_some(request.host),
                scale: request.scale,
                force: request.force,
            })
            .await?;
        Ok(Response::new(pb::KillTasksResponse {
            killed: killed.tasks.iter().map(task).collect(),
            deployment: killed.deployment.map(result),
        }))
    }

    async fn list_deployments(
        &self,
        _request: Request<pb::ListDeploymentsRequest>,
    ) -> GrpcResult<pb::ListDeploymentsResponse> {
        let deployments = self
            .apps()?
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
        let rollback = self.apps()?.cancel_deployment(&request.id, request.force).await?;
        Ok(Response::new(pb::CancelDeploymentResponse { rollback: rollback.map(result) }))
    }

    type WatchEventsStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send + 'static>>;

    async fn watch_events(&self, request: Request<pb::WatchEventsRequest>) -> GrpcResult<Self::WatchEventsStream> {
        self.apps()?;
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_refused_write_is_resource_exhausted_with_retry_after() {
        let refused =
            Refused::WaitedTooLong { waited: Duration::from_millis(500), retry_after: Duration::from_secs(2) };
        let status = Status::from(AppsError::from(refused.clone()));
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(status.message(), refused.to_string());
        let metadata = |key: &str| status.metadata().get(key).and_then(|value| value.to_str().ok()).map(str::to_owned);
        assert_eq!(metadata(RETRY_AFTER_METADATA).as_deref(), Some("2"));
        assert_eq!(metadata(RETRY_PUSHBACK_METADATA).as_deref(), Some("2000"));
        assert!(marina_daemon::leader::is_retryable(&status), "nothing was done: safe to retry");
    }
}
