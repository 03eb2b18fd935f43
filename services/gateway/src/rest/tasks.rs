//! `/v2/tasks`: every app's tasks (JSON, or Marathon's `text/plain` endpoints list), and
//! killing tasks by id.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use marina_proto::agent::v1::TaskState;
use serde::Deserialize;
use serde_json::{Value, json};

use super::apps::{refuse_scale_and_wipe, service_ports, task_json};
use super::{Flags, Reply, deployed, invalid_json, json_list, off_runtime, service, wants_text};
use crate::Gateway;
use crate::app::AppDefinition;
use crate::apps::{AppView, Apps, KillRequest};

/// Every app's definition by id, for the tasks' service ports and health results.
fn definitions(apps: &Apps) -> BTreeMap<String, AppDefinition> {
    apps.definitions().into_iter().map(|app| (app.id.to_string(), app)).collect()
}

/// `GET /v2/tasks`: JSON, filtered by `status` (and `status[]`), or the endpoints list when
/// the caller asks for `text/plain`.
pub(super) async fn list(State(gateway): State<Arc<Gateway>>, headers: HeaderMap, Query(flags): Query<Flags>) -> Reply {
    let apps = service(&gateway)?;
    let text = wants_text(&headers);
    off_runtime(move || {
        if text {
            return Ok(endpoints_text_response(&apps.list()));
        }
        let definitions = definitions(&apps);
        let wanted: Vec<TaskState> = flags.status.iter().filter_map(|status| task_state(status)).collect();
        let tasks = apps.tasks(None);
        let listed = tasks
            .iter()
            .filter(|i| wanted.is_empty() || wanted.contains(&i.state))
            .map(|i| task_json(i, definitions.get(&i.record.app_id)));
        Ok(json_list("tasks", listed))
    })
    .await
}

/// The task state a `status` names, as Marathon reads it (`TasksResource.toTaskState`):
/// `running` or `staging`, in any case. Marathon ignores any other value — and with no
/// known one left, lists every task — so a `status=killed` lists them all, here too.
fn task_state(status: &str) -> Option<TaskState> {
    match status.to_lowercase().as_str() {
        "running" => Some(TaskState::TaskRunning),
        "staging" => Some(TaskState::TaskStaging),
        _ => None,
    }
}

/// [`endpoints_text`] as a `text/plain` answer.
pub(super) fn endpoints_text_response(views: &[AppView]) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], endpoints_text(views)).into_response()
}

/// Marathon's `text/plain` task list (its `EndpointsHelper.appsToEndpointString`), read by the
/// HAProxy bridge scripts: for each app (in id order) one line per service port, tab-separated,
/// `{id}\t{servicePort}\t{host}:{hostPort}\t{host}:{hostPort}\t...\n` over its running tasks,
/// where `{id}` is the app's id with its slashes as `_` (`/prod/web` → `prod_web`); an app
/// without service ports has the one line `{id}\t \t{host}\t{host}\t...\n`. The host port is
/// the task's host port for that service port (with port mappings, the one of that mapping);
/// a task without one is left out. A port mapping without a host port (a container network)
/// lists nothing: Marathon lists `{taskIp}:{containerPort}` there for the networks named in a
/// filter, which Marina does not read.
pub(super) fn endpoints_text(views: &[AppView]) -> String {
    let mut text = String::new();
    for view in views {
        let running: Vec<(&str, &[u32])> = view
            .instances
            .iter()
            .filter(|i| i.state == TaskState::TaskRunning && !i.killing)
            .map(|i| (i.record.host.as_str(), i.record.ports.as_slice()))
            .collect();
        app_endpoints(&mut text, &view.app, &running);
    }
    text
}

/// One app's lines of [`endpoints_text`], given its running tasks' hosts and host ports.
fn app_endpoints(text: &mut String, app: &AppDefinition, running: &[(&str, &[u32])]) {
    let id = app.id.safe_path();
    let ports = service_ports(app);
    if ports.is_empty() {
        let _ = write!(text, "{id}\t \t");
        for (host, _) in running {
            let _ = write!(text, "{host}\t");
        }
        text.push('\n');
        return;
    }
    let mappings = app.port_mappings();
    for (index, port) in ports.iter().enumerate() {
        let _ = write!(text, "{id}\t{port}\t");
        // Which of a task's host ports serves this service port, if any.
        let host_port_index = match mappings {
            None => Some(index),
            Some(mappings) => mappings
                .get(index)
                .filter(|mapping| mapping.host_port.is_some())
                .map(|_| mappings[..index].iter().filter(|m| m.host_port.is_some()).count()),
        };
        for (host, host_ports) in running {
            if let Some(host_port) = host_port_index.and_then(|at| host_ports.get(at)) {
                let _ = write!(text, "{host}:{host_port}\t");
            }
        }
        text.push('\n');
    }
}

#[derive(Deserialize)]
struct TaskIds {
    ids: Vec<String>,
}

/// `POST /v2/tasks/delete`: kills exactly the tasks named.
pub(super) async fn kill(State(gateway): State<Arc<Gateway>>, Query(flags): Query<Flags>, body: Bytes) -> Reply {
    let apps = service(&gateway)?;
    refuse_scale_and_wipe(&flags)?;
    let ids: TaskIds = serde_json::from_slice(&body).map_err(|e| invalid_json(&e))?;
    let request = KillRequest { task_ids: ids.ids, scale: flags.scale, force: flags.force, ..KillRequest::default() };
    let killed = apps.kill(request).await?;
    Ok(match killed.deployment {
        Some(result) => deployed(StatusCode::OK, &result),
        None => {
            let definitions = definitions(&apps);
            let tasks: Vec<Value> = killed
                .tasks
                .iter()
                .map(|instance| task_json(instance, definitions.get(&instance.record.app_id)))
                .collect();
            axum::Json(json!({ "tasks": tasks })).into_response()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(json: &str) -> AppDefinition {
        crate::app::parse_app(json.as_bytes(), None).unwrap()
    }

    fn lines(app: &AppDefinition, running: &[(&str, &[u32])]) -> String {
        let mut text = String::new();
        app_endpoints(&mut text, app, running);
        text
    }

    #[test]
    fn host_networking_lists_each_service_port_with_the_tasks_host_ports() {
        let web = app(r#"{"id": "/prod/web", "cmd": "x", "portDefinitions": [{"port": 10001}, {"port": 10002}]}"#);
        let text = lines(&web, &[("h1", &[31000, 31001]), ("h2", &[31005, 31006])]);
        assert_eq!(text, "prod_web\t10001\th1:31000\th2:31005\t\nprod_web\t10002\th1:31001\th2:31006\t\n");
        assert_eq!(lines(&web, &[]), "prod_web\t10001\t\nprod_web\t10002\t\n");
        assert_eq!(
            lines(&web, &[("h1", &[31000])]),
            "prod_web\t10001\th1:31000\t\nprod_web\t10002\t\n",
            "no such host port"
        );
    }

    #[test]
    fn an_app_without_service_ports_lists_its_hosts() {
        let worker = app(r#"{"id": "/worker", "cmd": "x", "portDefinitions": []}"#);
        assert_eq!(lines(&worker, &[("h1", &[]), ("h2", &[])]), "worker\t \th1\th2\t\n");
    }

    #[test]
    fn port_mappings_use_the_host_port_of_their_own_mapping() {
        let mut bridged = app(
            r#"{"id": "/b", "container": {"type": "DOCKER", "docker": {"image": "nginx", "network": "BRIDGE", "portMappings": [
                {"containerPort": 80, "hostPort": 0, "servicePort": 10001},
                {"containerPort": 81, "hostPort": 0, "servicePort": 10002},
                {"containerPort": 82, "hostPort": 0, "servicePort": 10003}]}}}"#,
        );
        // A mapping with no host port (on a container network): its tasks have no host port
        // for it, so the later mappings' host ports come one place earlier.
        bridged.container.as_mut().unwrap().port_mappings.as_mut().unwrap()[1].host_port = None;
        let text = lines(&bridged, &[("h1", &[31000, 31002])]);
        assert_eq!(
            text, "b\t10001\th1:31000\t\nb\t10002\t\nb\t10003\th1:31002\t\n",
            "the second mapping has no host port"
        );
    }

    #[test]
    fn statuses_are_read_as_marathon_reads_them() {
        assert_eq!(task_state("running"), Some(TaskState::TaskRunning));
        assert_eq!(task_state("RUNNING"), Some(TaskState::TaskRunning));
        assert_eq!(task_state("Staging"), Some(TaskState::TaskStaging));
        assert_eq!(task_state("killed"), None);
        assert_eq!(task_state("TASK_RUNNING"), None);
    }
}
