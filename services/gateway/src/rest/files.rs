//! `/v2/tasks/{taskId}/files/{browse,read,download}?path=…`: a task's sandbox files, a
//! Marina extension of Marathon's API (Mesos' files API by task id, with paths relative to
//! the task's sandbox). The leader serves them from the task's agent ([`crate::sandboxes`]);
//! a standby forwards them to it, as every `/v2/` request.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{Reply, message};
use crate::Gateway;
use crate::sandboxes::{Operation, SandboxError, relative_path};

#[derive(Deserialize, Default)]
pub(super) struct FilesQuery {
    /// Relative to the task's sandbox; absent or empty: the sandbox itself.
    path: Option<String>,
    offset: Option<String>,
    length: Option<String>,
}

pub(super) async fn browse(
    State(gateway): State<Arc<Gateway>>,
    Path(task_id): Path<String>,
    query: Result<Query<FilesQuery>, QueryRejection>,
) -> Reply {
    let query = read(query)?;
    serve(&gateway, &task_id, query.path.as_deref().unwrap_or_default(), Operation::Browse).await
}

pub(super) async fn read_file(
    State(gateway): State<Arc<Gateway>>,
    Path(task_id): Path<String>,
    query: Result<Query<FilesQuery>, QueryRejection>,
) -> Reply {
    let query = read(query)?;
    let path = file_path(&query)?;
    let operation = Operation::read(query.offset.as_deref(), query.length.as_deref())?;
    serve(&gateway, &task_id, path, operation).await
}

pub(super) async fn download(
    State(gateway): State<Arc<Gateway>>,
    Path(task_id): Path<String>,
    query: Result<Query<FilesQuery>, QueryRejection>,
) -> Reply {
    let query = read(query)?;
    let path = file_path(&query)?;
    serve(&gateway, &task_id, path, Operation::Download).await
}

fn read(query: Result<Query<FilesQuery>, QueryRejection>) -> Result<FilesQuery, Response> {
    query.map(|Query(query)| query).map_err(|rejection| message(StatusCode::BAD_REQUEST, rejection.body_text()))
}

/// A file's path: required, and inside the sandbox (checked here, before the task is looked
/// up, so a bad path is a 400 whatever the task).
fn file_path(query: &FilesQuery) -> Result<&str, SandboxError> {
    let path = query.path.as_deref().unwrap_or_default();
    if relative_path(path)?.is_empty() {
        return Err(SandboxError::BadRequest("path: name a file in the task's sandbox".into()));
    }
    Ok(path)
}

async fn serve(gateway: &Gateway, task_id: &str, path: &str, operation: Operation) -> Reply {
    relative_path(path)?;
    let leader = gateway.leader().ok_or(SandboxError::NotLeading)?;
    Ok(gateway.sandboxes.serve(&leader, task_id, path, operation).await?)
}

/// Marathon's statuses and `{"message"}` bodies; an agent's refusal (400, 403, 404) as the
/// agent answered it.
impl IntoResponse for SandboxError {
    fn into_response(self) -> Response {
        let status = match &self {
            SandboxError::BadRequest(_) => StatusCode::BAD_REQUEST,
            SandboxError::NoTask(_) | SandboxError::NoSandbox { .. } => StatusCode::NOT_FOUND,
            SandboxError::NotLeading
            | SandboxError::NoMaster
            | SandboxError::Master { .. }
            | SandboxError::UnknownAgent { .. }
            | SandboxError::Unreachable { .. }
            | SandboxError::NoAnswer { .. } => StatusCode::SERVICE_UNAVAILABLE,
            SandboxError::Agent { status, message, .. } if status.is_client_error() => {
                return super::message(*status, message.clone());
            }
            SandboxError::Agent { .. } | SandboxError::BadAnswer { .. } => StatusCode::BAD_GATEWAY,
        };
        message(status, self.to_string())
    }
}

impl From<SandboxError> for Response {
    fn from(error: SandboxError) -> Self {
        error.into_response()
    }
}
