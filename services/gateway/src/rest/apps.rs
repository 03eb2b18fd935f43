//! `/v2/apps`: apps, their tasks and versions, restarts.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{
    Flags, Peer, Reply, deployed, invalid_json, json_list, message, off_runtime, service, service_for, wants_text,
};
use crate::Gateway;
use crate::app::{AppDefinition, PathId, Timestamp};
use crate::apps::{AppSelector, AppView, Apps, AppsError, KillRequest, LabelSelectors, UpdateMode, app_id, group_id};
use crate::leader::{Instance, TaskFailure};

// ----- shapes -----------------------------------------------------------------------------------

/// A task as Marathon shows it; `app` gives its service ports and health-check results.
pub(super) fn task_json(instance: &Instance, app: Option<&AppDefinition>) -> Value {
    let mut task = json!({
        "id": instance.record.task_id,
        "appId": instance.record.app_id,
        "host": instance.record.host,
        "ports": instance.record.ports,
        "servicePorts": app.map(service_ports).unwrap_or_default(),
        "slaveId": instance.record.agent_id,
        "state": instance.state.as_str_name(),
        "stagedAt": instance.record.staged_at,
        "startedAt": instance.started_at,
        "version": instance.record.version,
        "ipAddresses": crate::model::ip_addresses_json(&instance.ip_addresses),
        "localVolumes": [],
    });
    // Marathon's `Health`, one per health check of the app, once the task has a result (the
    // agent runs every check and reports one health for the task, as Mesos does: each
    // check's entry is the same). Times are when the agent reported them; none is `null`.
    if let Some(app) = app.filter(|a| !a.health_checks.is_empty())
        && instance.healthy.is_some()
    {
        let health = &instance.health;
        let result = json!({
            "alive": health.alive(),
            "consecutiveFailures": health.consecutive_failures,
            "firstSuccess": health.first_success,
            "lastSuccess": health.last_success,
            "lastFailure": health.last_failure,
            "lastFailureCause": health.last_failure_cause,
            "taskId": instance.record.task_id,
            "instanceId": instance.record.task_id,
        });
        task["healthCheckResults"] = json!(vec![result; app.health_checks.len()]);
    }
    task
}

pub(super) fn service_ports(app: &AppDefinition) -> Vec<u32> {
    match app.port_mappings() {
        Some(mappings) => mappings.iter().map(|m| u32::from(m.service_port)).collect(),
        None => app.port_definitions.iter().map(|p| u32::from(p.port)).collect(),
    }
}

/// An app with counts and deployments, and (`embed_tasks`) its tasks: what `GET /v2/apps`
/// shows without embeds, with `embed=apps.tasks`. (No last failure or readiness: those need
/// the apps service, see [`AppInfo`].)
pub(super) fn app_json(view: &AppView, embed_tasks: bool) -> Value {
    let embeds = Embeds { tasks: embed_tasks, counts: true, deployments: true, ..Embeds::default() };
    app_info_json(view, embeds, None, &[], Timestamp::now())
}

/// Which extras an app's JSON embeds: Marathon's `AppInfo.Embed`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Embeds {
    /// `tasks`: the app's tasks (as `/v2/tasks` shows them).
    pub tasks: bool,
    /// `tasksStaged`, `tasksRunning`, `tasksHealthy`, `tasksUnhealthy`.
    pub counts: bool,
    /// `deployments`: `[{"id"}]` of the deployments in progress that touch the app.
    pub deployments: bool,
    /// `readinessCheckResults`: the readiness of its new instances, while a deployment waits
    /// for them.
    pub readiness: bool,
    /// `lastTaskFailure` (absent if none).
    pub last_task_failure: bool,
    /// `taskStats`.
    pub task_stats: bool,
}

impl Embeds {
    /// Marathon's `InfoEmbedResolver.resolveApp`. Each `embed` is read with or without any of
    /// the prefixes `apps.`, `app.`, `group.apps.` (so one written for another endpoint still
    /// works); `tasks` brings `deployments` along and `failures` means `tasks`,
    /// `lastTaskFailure` and `deployments` (both deprecated, kept by Marathon); unknown ones
    /// are ignored.
    pub(super) fn resolve(embed: &[String]) -> Self {
        let mut embeds = Embeds::default();
        for value in embed {
            let name =
                ["group.apps.", "apps.", "app."].iter().find_map(|prefix| value.strip_prefix(prefix)).unwrap_or(value);
            match name {
                "tasks" => (embeds.tasks, embeds.deployments) = (true, true),
                "failures" => (embeds.tasks, embeds.last_task_failure, embeds.deployments) = (true, true, true),
                "counts" => embeds.counts = true,
                "deployments" => embeds.deployments = true,
                "readiness" => embeds.readiness = true,
                "lastTaskFailure" => embeds.last_task_failure = true,
                "taskStats" => embeds.task_stats = true,
                _ => {}
            }
        }
        embeds
    }

    /// `GET /v2/apps`: counts and deployments always (Marathon: "additional embeds are
    /// deprecated"), the rest as asked.
    pub(super) fn for_list(embed: &[String]) -> Self {
        Embeds { counts: true, deployments: true, ..Embeds::resolve(embed) }
    }

    /// `GET /v2/apps/{id}` (and `/v2/apps/{group}/*`): counts, tasks, deployments and the last
    /// task failure always, readiness and task statistics as asked.
    pub(super) fn for_app(embed: &[String]) -> Self {
        Embeds { counts: true, tasks: true, deployments: true, last_task_failure: true, ..Embeds::resolve(embed) }
    }
}

/// Apps as Marathon shows them with a set of embeds; what the embeds need beyond each app's
/// view (its last failure, the readiness results of deployments in progress) is read once per
/// request.
pub(super) struct AppInfo<'a> {
    apps: &'a Apps,
    embeds: Embeds,
    /// The current deployment step's readiness results, by app (empty unless embedded).
    readiness: HashMap<String, Vec<Value>>,
    now: Timestamp,
}

impl<'a> AppInfo<'a> {
    pub(super) fn new(apps: &'a Apps, embeds: Embeds) -> Self {
        let mut readiness: HashMap<String, Vec<Value>> = HashMap::new();
        if embeds.readiness {
            // What Marathon shows here are its deployments' readiness results: those of the
            // actions in their current step, as `/v2/deployments` shows them.
            for deployment in apps.deployments_json() {
                for action in deployment["currentActions"].as_array().into_iter().flatten() {
                    if let (Some(app), Some(results)) =
                        (action["app"].as_str(), action["readinessCheckResults"].as_array())
                    {
                        readiness.entry(app.to_owned()).or_default().extend(results.iter().cloned());
                    }
                }
            }
        }
        AppInfo { apps, embeds, readiness, now: Timestamp::now() }
    }

    pub(super) fn json(&self, view: &AppView) -> Value {
        let failure = if self.embeds.last_task_failure { self.apps.last_failure(&view.app.id) } else { None };
        let readiness = self.readiness.get(&view.app.id.to_string()).map_or(&[][..], Vec::as_slice);
        app_info_json(view, self.embeds, failure.as_ref(), readiness, self.now)
    }
}

/// An app's JSON with `embeds` (Marathon's `AppInfo` writer: the definition, then each
/// embedded extra; an extra not embedded is absent).
fn app_info_json(
    view: &AppView,
    embeds: Embeds,
    failure: Option<&TaskFailure>,
    readiness: &[Value],
    now: Timestamp,
) -> Value {
    use marina_proto::agent::v1::TaskState;
    let mut json = view.app.to_json();
    // Marathon 1.9+ writes every app's role; Marina has none, which is Mesos' default role.
    if json.get("role").is_none() {
        json["role"] = json!(MARATHON_DEFAULT_ROLE);
    }
    let live: Vec<&Instance> = view.live().collect();
    if embeds.counts {
        let count = |keep: &dyn Fn(&Instance) -> bool| live.iter().filter(|i| keep(i)).count();
        json["tasksStaged"] = json!(count(&|i| matches!(i.state, TaskState::TaskStaging | TaskState::TaskStarting)));
        json["tasksRunning"] = json!(count(&|i| i.state == TaskState::TaskRunning));
        json["tasksHealthy"] = json!(count(&|i| i.healthy == Some(true)));
        json["tasksUnhealthy"] = json!(count(&|i| i.healthy == Some(false)));
    }
    if embeds.deployments {
        json["deployments"] = json!(view.deployments.iter().map(|id| json!({ "id": id })).collect::<Vec<_>>());
    }
    if embeds.readiness {
        json["readinessCheckResults"] = json!(readiness);
    }
    if embeds.tasks {
        json["tasks"] = json!(live.iter().map(|i| task_json(i, Some(&view.app))).collect::<Vec<_>>());
    }
    if embeds.last_task_failure
        && let Some(failure) = failure
    {
        json["lastTaskFailure"] = task_failure_json(&view.app.id.to_string(), failure);
    }
    if embeds.task_stats {
        let tasks: Vec<ForStats> = live.iter().map(|instance| ForStats::of(instance, now)).collect();
        json["taskStats"] = task_stats_json(&view.app, &tasks);
    }
    json
}

/// The role Marathon gives an app that names none (`--mesos_role`'s default).
pub(super) const MARATHON_DEFAULT_ROLE: &str = "*";

/// What `taskStats` needs of an instance (Marathon's `TaskForStatistics`).
#[derive(Debug, Clone, PartialEq)]
struct ForStats {
    /// The app version it was launched with.
    version: Option<Timestamp>,
    staged: bool,
    running: bool,
    healthy: Option<bool>,
    /// Seconds since it started running, if it did.
    life_time: Option<f64>,
}

impl ForStats {
    fn of(instance: &Instance, now: Timestamp) -> Self {
        use marina_proto::agent::v1::TaskState;
        ForStats {
            version: Timestamp::parse(&instance.record.version).ok(),
            staged: matches!(instance.state, TaskState::TaskStaging | TaskState::TaskStarting),
            running: instance.state == TaskState::TaskRunning,
            healthy: instance.healthy,
            life_time: instance
                .started_at
                .as_deref()
                .and_then(|started| Timestamp::parse(started).ok())
                .map(|started| (now.as_millis() - started.as_millis()) as f64 / 1000.0),
        }
    }
}

/// Marathon's `taskStats` (`TaskStatsByVersion`) of the app's live instances: statistics of
/// all of them (`totalSummary`), and — as every stored app has `versionInfo` — of those
/// launched since the last scaling or restart (`startedAfterLastScaling`: version at or after
/// `lastScalingAt`), with the latest configuration (`withLatestConfig`: at or after
/// `lastConfigChangeAt`) and with an older one (`withOutdatedConfig`). A group with no
/// instance is left out. Each is `{"stats": {"counts": {staged, running, healthy, unhealthy},
/// "lifeTime": {averageSeconds, medianSeconds}}}`, the life time (seconds since each running
/// instance started) only if one has started.
fn task_stats_json(app: &AppDefinition, tasks: &[ForStats]) -> Value {
    let stats = |keep: &dyn Fn(&ForStats) -> bool| -> Option<Value> {
        let some: Vec<&ForStats> = tasks.iter().filter(|t| keep(t)).collect();
        if some.is_empty() {
            return None;
        }
        let count = |test: &dyn Fn(&ForStats) -> bool| some.iter().filter(|t| test(t)).count();
        let mut stats = json!({ "counts": {
            "staged": count(&|t| t.staged),
            "running": count(&|t| t.running),
            "healthy": count(&|t| t.healthy == Some(true)),
            "unhealthy": count(&|t| t.healthy == Some(false)),
        }});
        let mut life_times: Vec<f64> = some.iter().filter_map(|t| t.life_time).collect();
        if !life_times.is_empty() {
            life_times.sort_by(f64::total_cmp);
            stats["lifeTime"] = json!({
                "averageSeconds": life_times.iter().sum::<f64>() / life_times.len() as f64,
                "medianSeconds": life_times[life_times.len() / 2],
            });
        }
        Some(json!({ "stats": stats }))
    };
    let mut by_version = serde_json::Map::new();
    let mut put = |key: &str, value: Option<Value>| {
        if let Some(value) = value {
            by_version.insert(key.to_owned(), value);
        }
    };
    if let Some(info) = app.version_info {
        put("startedAfterLastScaling", stats(&|t| t.version.is_some_and(|v| v >= info.last_scaling_at)));
        put("withLatestConfig", stats(&|t| t.version.is_some_and(|v| v >= info.last_config_change_at)));
        put("withOutdatedConfig", stats(&|t| t.version.is_some_and(|v| v < info.last_config_change_at)));
    }
    put("totalSummary", stats(&|_| true));
    Value::Object(by_version)
}

/// Marathon's `lastTaskFailure`.
fn task_failure_json(app_id: &str, failure: &TaskFailure) -> Value {
    json!({
        "appId": app_id,
        "host": failure.host,
        "message": failure.message,
        "state": failure.state.as_str_name(),
        "taskId": failure.task_id,
        "timestamp": failure.timestamp,
        "version": failure.version,
        "slaveId": failure.agent_id,
    })
}

// ----- request targets --------------------------------------------------------------------------

/// `/v2/apps/{id}[/tasks[/{taskId}] | /versions[/{v}] | /restart]`: which one.
pub(super) enum AppPath {
    App(String),
    Tasks(String),
    Task(String, String),
    Versions(String),
    Version(String, String),
    Restart(String),
}

impl AppPath {
    pub(super) fn read(rest: &str) -> Self {
        let rest = format!("/{}", rest.trim_matches('/'));
        if let Some(id) = rest.strip_suffix("/restart") {
            return AppPath::Restart(id.to_owned());
        }
        if let Some(id) = rest.strip_suffix("/tasks") {
            return AppPath::Tasks(id.to_owned());
        }
        if let Some(id) = rest.strip_suffix("/versions") {
            return AppPath::Versions(id.to_owned());
        }
        // `/tasks/web` is the app `/tasks/web` (only an app's last segment may not be a
        // reserved word), not task `web` of the root.
        if let Some((id, task)) = rest.rsplit_once("/tasks/")
            && !id.is_empty()
        {
            return AppPath::Task(id.to_owned(), task.to_owned());
        }
        if let Some((id, version)) = rest.rsplit_once("/versions/")
            && !id.is_empty()
        {
            return AppPath::Version(id.to_owned(), version.to_owned());
        }
        AppPath::App(rest)
    }

    /// The app the target names.
    pub(super) fn id(&self) -> Result<PathId, AppsError> {
        match self {
            AppPath::App(id) | AppPath::Tasks(id) | AppPath::Versions(id) | AppPath::Restart(id) => app_id(id),
            AppPath::Task(id, _) | AppPath::Version(id, _) => app_id(id),
        }
    }
}

fn method_not_allowed() -> Response {
    message(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
}

/// The app a target names when it must name the app itself (not its tasks or versions).
fn the_app(rest: &str) -> Result<PathId, Response> {
    match AppPath::read(rest) {
        target @ AppPath::App(_) => Ok(target.id()?),
        _ => Err(method_not_allowed()),
    }
}

// ----- handlers ---------------------------------------------------------------------------------

/// `GET /v2/apps`: the apps the `id`, `cmd` and `label` filters keep, with counts,
/// deployments and the `embed`s asked for.
pub(super) async fn list(State(gateway): State<Arc<Gateway>>, Query(flags): Query<Flags>) -> Reply {
    let apps = service(&gateway)?;
    let selector = selector(&flags)?;
    off_runtime(move || {
        let info = AppInfo::new(&apps, Embeds::for_list(&flags.embed));
        Ok(json_list("apps", apps.select(&selector).map(|view| info.json(&view))))
    })
    .await
}

/// The list's filters; a label selector that does not parse is Marathon's 422.
fn selector(flags: &Flags) -> Result<AppSelector, Response> {
    let labels = flags
        .label
        .as_deref()
        .map(LabelSelectors::parse)
        .transpose()
        .map_err(|error| AppsError::Unprocessable(error.to_string()))?;
    Ok(AppSelector { id: flags.id.clone(), cmd: flags.cmd.clone(), labels })
}

/// `/v2/apps/*`, `/v2/apps/{group}/*` (Marathon's listing of a group's apps, `{"*": [...]}`):
/// the group's path, `""` for the root.
fn group_listing(rest: &str) -> Option<&str> {
    let rest = rest.trim_start_matches('/');
    if rest == "*" {
        return Some("");
    }
    rest.strip_suffix("/*")
}

pub(super) async fn create(
    State(gateway): State<Arc<Gateway>>,
    peer: Peer,
    Query(flags): Query<Flags>,
    body: Bytes,
) -> Reply {
    let (result, view) = service_for(&gateway, peer)?.create(&body, flags.force).await?;
    let id = view.app.id.to_string();
    let mut response = (StatusCode::CREATED, axum::Json(app_json(&view, true))).into_response();
    if let Ok(value) = HeaderValue::from_str(&format!("/v2/apps{id}")) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    if let Ok(value) = HeaderValue::from_str(&result.deployment_id) {
        response.headers_mut().insert("Marathon-Deployment-Id", value);
    }
    Ok(response)
}

pub(super) async fn get_path(
    State(gateway): State<Arc<Gateway>>,
    Path(rest): Path<String>,
    headers: HeaderMap,
    Query(flags): Query<Flags>,
) -> Reply {
    let apps = service(&gateway)?;
    if let Some(group) = group_listing(&rest) {
        let group = group_id(group)?;
        let info = AppInfo::new(&apps, Embeds::for_app(&flags.embed));
        let listed: Vec<Value> = apps
            .group(&group)?
            .iter()
            .filter(|view| group.contains(&view.app.id))
            .map(|view| info.json(view))
            .collect();
        return Ok(axum::Json(json!({ "*": listed })).into_response());
    }
    let target = AppPath::read(&rest);
    if let AppPath::Task(..) | AppPath::Restart(_) = target {
        return Err(method_not_allowed());
    }
    let id = target.id()?;
    match target {
        AppPath::App(_) => {
            let view = apps.get(&id)?;
            let json = AppInfo::new(&apps, Embeds::for_app(&flags.embed)).json(&view);
            Ok(axum::Json(json!({ "app": json })).into_response())
        }
        AppPath::Tasks(_) if wants_text(&headers) => {
            let view = apps.get(&id)?;
            Ok(super::tasks::endpoints_text_response(&[view]))
        }
        AppPath::Tasks(_) => {
            let view = apps.get(&id)?;
            let tasks: Vec<Value> = view.live().map(|i| task_json(i, Some(&view.app))).collect();
            Ok(axum::Json(json!({ "tasks": tasks })).into_response())
        }
        AppPath::Versions(_) => Ok(axum::Json(json!({ "versions": apps.versions(&id).await? })).into_response()),
        AppPath::Version(_, version) => Ok(axum::Json(apps.version(&id, &version).await?).into_response()),
        AppPath::Task(..) | AppPath::Restart(_) => Err(method_not_allowed()),
    }
}

pub(super) async fn post_path(
    State(gateway): State<Arc<Gateway>>,
    peer: Peer,
    Path(rest): Path<String>,
    Query(flags): Query<Flags>,
) -> Reply {
    let apps = service_for(&gateway, peer)?;
    let target = AppPath::read(&rest);
    let AppPath::Restart(_) = target else {
        return Err(method_not_allowed());
    };
    let result = apps.restart(&target.id()?, flags.force).await?;
    Ok(deployed(StatusCode::OK, &result))
}

/// PUT: by default (Marathon's `partialUpdate=true`) the given fields update the app;
/// `partialUpdate=false` replaces it. A missing app is created. `{"version": V}` rolls
/// back to stored version V.
pub(super) async fn put(
    State(gateway): State<Arc<Gateway>>,
    peer: Peer,
    Path(rest): Path<String>,
    Query(flags): Query<Flags>,
    body: Bytes,
) -> Reply {
    let apps = service_for(&gateway, peer)?;
    let mode = if flags.partial_update.unwrap_or(true) { UpdateMode::PatchOrCreate } else { UpdateMode::Replace };
    let updated = apps.update(&the_app(&rest)?, &body, mode, flags.force).await?;
    Ok(deployed(if updated.created { StatusCode::CREATED } else { StatusCode::OK }, &updated.deployed))
}

pub(super) async fn patch(
    State(gateway): State<Arc<Gateway>>,
    peer: Peer,
    Path(rest): Path<String>,
    Query(flags): Query<Flags>,
    body: Bytes,
) -> Reply {
    let apps = service_for(&gateway, peer)?;
    let updated = apps.update(&the_app(&rest)?, &body, UpdateMode::Patch, flags.force).await?;
    Ok(deployed(StatusCode::OK, &updated.deployed))
}

/// `PUT /v2/apps`: several apps updated (or created) in one deployment.
pub(super) async fn update_many(
    State(gateway): State<Arc<Gateway>>,
    peer: Peer,
    Query(flags): Query<Flags>,
    body: Bytes,
) -> Reply {
    let apps = service_for(&gateway, peer)?;
    let items: Vec<Value> = serde_json::from_slice(&body).map_err(|e| invalid_json(&e))?;
    let result = apps.update_many(items, flags.partial_update.unwrap_or(true), flags.force).await?;
    Ok(deployed(StatusCode::OK, &result))
}

/// `DELETE /v2/apps/{id}` deletes the app, overriding a deployment that holds it unless
/// `force=false` (Marathon's `@DefaultValue("true")`: go-marathon's delete sends no `force`);
/// `DELETE /v2/apps/{id}/tasks[/{taskId}]` kills tasks, `force` false by default.
pub(super) async fn delete_path(
    State(gateway): State<Arc<Gateway>>,
    peer: Peer,
    Path(rest): Path<String>,
    Query(flags): Query<Flags>,
) -> Reply {
    let apps = service_for(&gateway, peer)?;
    let target = AppPath::read(&rest);
    if let AppPath::Versions(_) | AppPath::Version(..) | AppPath::Restart(_) = target {
        return Err(method_not_allowed());
    }
    let id = target.id()?;
    match target {
        AppPath::App(_) => Ok(deployed(StatusCode::OK, &apps.delete(&id, flags.force_or(true)).await?)),
        AppPath::Tasks(_) | AppPath::Task(..) => {
            refuse_scale_and_wipe(&flags)?;
            let view = apps.get(&id)?;
            // `/tasks` kills every task of the app (on `host`, if given); `/tasks/{id}` one.
            let one = match target {
                AppPath::Task(_, task_id) => Some(task_id),
                _ => None,
            };
            let request = KillRequest {
                app: Some(id),
                task_ids: one.iter().cloned().collect(),
                host: if one.is_none() { flags.host.clone() } else { None },
                scale: flags.scale,
                force: flags.force,
            };
            let killed = apps.kill(request).await?;
            let answer = |instance: &Instance| task_json(instance, Some(&view.app));
            Ok(match (killed.deployment, one) {
                (Some(result), _) => deployed(StatusCode::OK, &result),
                (None, None) => {
                    let tasks: Vec<Value> = killed.tasks.iter().map(answer).collect();
                    axum::Json(json!({ "tasks": tasks })).into_response()
                }
                (None, Some(_)) => axum::Json(json!({ "task": killed.tasks.first().map(answer) })).into_response(),
            })
        }
        AppPath::Versions(_) | AppPath::Version(..) | AppPath::Restart(_) => Err(method_not_allowed()),
    }
}

/// Marathon's 400 for a kill asking both to scale down and to wipe (`wipe` is otherwise
/// accepted and kills as a plain kill does).
pub(super) fn refuse_scale_and_wipe(flags: &Flags) -> Result<(), Response> {
    if flags.scale && flags.wipe {
        return Err(message(StatusCode::BAD_REQUEST, "You cannot use scale and wipe at the same time."));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::VersionInfo;

    fn embeds(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| (*v).to_owned()).collect()
    }

    fn at(text: &str) -> Timestamp {
        Timestamp::parse(text).unwrap()
    }

    /// `/web` as stored: scaled at 12:00, its configuration last changed at 11:00.
    fn web() -> AppDefinition {
        let mut app = crate::app::parse_app(br#"{"id": "/web", "cmd": "sleep 1", "instances": 3}"#, None).unwrap();
        app.version = Some(at("2026-01-01T12:00:00.000Z"));
        app.version_info = Some(VersionInfo {
            last_scaling_at: at("2026-01-01T12:00:00.000Z"),
            last_config_change_at: at("2026-01-01T11:00:00.000Z"),
        });
        app
    }

    fn task(version: &str, running: bool, healthy: Option<bool>, life_time: Option<f64>) -> ForStats {
        ForStats { version: Some(at(version)), staged: !running, running, healthy, life_time }
    }

    #[test]
    fn embeds_resolve_with_any_prefix_and_marathons_implications() {
        assert_eq!(Embeds::resolve(&embeds(&[])), Embeds::default());
        let tasks = Embeds::resolve(&embeds(&["apps.tasks"]));
        assert!(tasks.tasks && tasks.deployments && !tasks.counts, "tasks brings deployments: {tasks:?}");
        for prefixed in ["apps.taskStats", "app.taskStats", "group.apps.taskStats", "taskStats"] {
            assert!(Embeds::resolve(&embeds(&[prefixed])).task_stats, "{prefixed}");
        }
        let failures = Embeds::resolve(&embeds(&["apps.failures"]));
        assert!(failures.tasks && failures.last_task_failure && failures.deployments);
        let all = Embeds::resolve(&embeds(&[
            "apps.counts",
            "apps.readiness",
            "apps.lastTaskFailure",
            "apps.deployments",
            "apps.nonsense",
            "apps.tasks,apps.counts",
        ]));
        assert!(
            all.counts && all.readiness && all.last_task_failure && all.deployments && !all.tasks && !all.task_stats
        );
    }

    #[test]
    fn each_endpoint_has_marathons_defaults() {
        let list = Embeds::for_list(&[]);
        assert_eq!(list, Embeds { counts: true, deployments: true, ..Embeds::default() });
        let one = Embeds::for_app(&[]);
        assert_eq!(
            one,
            Embeds { counts: true, tasks: true, deployments: true, last_task_failure: true, ..Embeds::default() }
        );
        assert!(Embeds::for_list(&embeds(&["apps.readiness"])).readiness);
        assert!(Embeds::for_app(&embeds(&["app.taskStats"])).task_stats);
    }

    #[test]
    fn an_app_shows_only_what_is_embedded() {
        let view = AppView { app: web(), instances: Vec::new(), deployments: vec!["d1".into()] };
        let failure = TaskFailure {
            task_id: "web.1".into(),
            state: marina_proto::agent::v1::TaskState::TaskFailed,
            message: "exit 1".into(),
            host: "h1".into(),
            agent_id: "agent-1".into(),
            version: "2026-01-01T12:00:00.000Z".into(),
            timestamp: at("2026-01-01T12:05:00.000Z"),
        };
        let now = at("2026-01-01T13:00:00.000Z");
        let bare = app_info_json(&view, Embeds::default(), Some(&failure), &[], now);
        for absent in ["tasksRunning", "deployments", "tasks", "readinessCheckResults", "lastTaskFailure", "taskStats"]
        {
            assert!(bare.get(absent).is_none(), "{absent}: {bare}");
        }
        assert_eq!(bare["id"], "/web");
        assert_eq!(bare["role"], "*");
        let all = Embeds {
            tasks: true,
            counts: true,
            deployments: true,
            readiness: true,
            last_task_failure: true,
            task_stats: true,
        };
        let full = app_info_json(&view, all, Some(&failure), &[json!({ "taskId": "web.2", "ready": false })], now);
        assert_eq!(full["tasksStaged"], 0);
        assert_eq!(full["tasksUnhealthy"], 0);
        assert_eq!(full["deployments"], json!([{ "id": "d1" }]));
        assert_eq!(full["tasks"], json!([]));
        assert_eq!(full["readinessCheckResults"][0]["taskId"], "web.2");
        assert_eq!(full["lastTaskFailure"]["taskId"], "web.1");
        assert_eq!(full["lastTaskFailure"]["appId"], "/web");
        assert_eq!(full["taskStats"], json!({}), "no instance, no statistics");
        let no_failure = app_info_json(&view, all, None, &[], now);
        assert!(no_failure.get("lastTaskFailure").is_none(), "absent when there is none, as Marathon");
        assert_eq!(app_json(&view, false)["tasksRunning"], 0);
        assert!(app_json(&view, false).get("tasks").is_none() && app_json(&view, true)["tasks"].is_array());
    }

    #[test]
    fn task_stats_group_instances_by_the_version_they_run() {
        let tasks = [
            // Launched before the last configuration change: outdated.
            task("2026-01-01T10:00:00.000Z", true, Some(true), Some(30.0)),
            // The current configuration, launched before the last scaling.
            task("2026-01-01T11:00:00.000Z", true, Some(false), Some(10.0)),
            // Launched by the last scaling, still staging.
            task("2026-01-01T12:00:00.000Z", false, None, None),
        ];
        let stats = task_stats_json(&web(), &tasks);
        assert_eq!(
            stats["totalSummary"],
            json!({ "stats": {
                "counts": { "staged": 1, "running": 2, "healthy": 1, "unhealthy": 1 },
                "lifeTime": { "averageSeconds": 20.0, "medianSeconds": 30.0 },
            }})
        );
        assert_eq!(stats["withOutdatedConfig"]["stats"]["counts"]["running"], 1);
        assert_eq!(stats["withOutdatedConfig"]["stats"]["lifeTime"]["medianSeconds"], 30.0);
        assert_eq!(
            stats["withLatestConfig"]["stats"]["counts"],
            json!({ "staged": 1, "running": 1, "healthy": 0, "unhealthy": 1 })
        );
        assert_eq!(
            stats["startedAfterLastScaling"],
            json!({ "stats": { "counts": { "staged": 1, "running": 0, "healthy": 0, "unhealthy": 0 } } }),
            "no life time when none started"
        );
        let current = task_stats_json(&web(), &tasks[1..2]);
        assert!(
            current.get("withOutdatedConfig").is_none() && current.get("startedAfterLastScaling").is_none(),
            "{current}"
        );
        let mut unversioned = web();
        unversioned.version_info = None;
        let unversioned = task_stats_json(&unversioned, &tasks);
        let keys: Vec<&String> = unversioned.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["totalSummary"]);
    }

    #[test]
    fn group_listings_are_told_from_apps() {
        assert_eq!(group_listing("*"), Some(""));
        assert_eq!(group_listing("/*"), Some(""));
        assert_eq!(group_listing("prod/*"), Some("prod"));
        assert_eq!(group_listing("prod/web/*"), Some("prod/web"));
        assert_eq!(group_listing("prod/web"), None);
        assert_eq!(group_listing("prod*"), None);
    }
}
