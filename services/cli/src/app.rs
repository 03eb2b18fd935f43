//! `marina app ...`: apps as operators look at and change them. Changes that start a
//! deployment (deploy, scale, restart, rollback) follow it to its end unless `--detach`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::follow::{APP_EMBED, EventFeed, Follow, FollowTiming, failures_before, follow, waiting_reason};
use crate::gateway::{Answer, Gateway, GatewayError, absolute_id, app_path};
use crate::output::{self, EXIT_CODES, Table, print_json, say, shorten};

#[derive(Args)]
pub struct AppArgs {
    #[command(subcommand)]
    command: AppCommand,
}

/// How a change that starts a deployment is followed.
#[derive(Args, Clone)]
pub struct FollowArgs {
    #[command(flatten)]
    pub timing: FollowTiming,
    /// Only submit the change; print its deployment id and exit.
    #[arg(long, visible_alias = "detach")]
    pub no_wait: bool,
    /// Print the result as JSON (progress still goes to a terminal's stderr).
    #[arg(long)]
    pub json: bool,
}

impl FollowArgs {
    fn options(&self) -> Follow {
        Follow::new(&self.timing, self.json)
    }
}

#[derive(Subcommand)]
enum AppCommand {
    /// Every app: ID, INSTANCES (running/declared), HEALTHY, STATUS, CPUS, MEM, VERSION.
    #[command(alias = "ls")]
    List {
        #[arg(long)]
        json: bool,
    },
    /// One app: its definition, tasks, last task failure, why it waits, its deployments.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Creates or updates an app from a Marathon app definition (JSON) and follows the
    /// deployment to its end.
    #[command(after_help = EXIT_CODES)]
    Deploy {
        /// The app's JSON file; `-` reads standard input. The file is the whole definition:
        /// fields it leaves out go back to their defaults.
        file: PathBuf,
        /// Override a deployment in progress that holds the app.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        follow: FollowArgs,
    },
    /// Runs an app at N instances.
    #[command(after_help = EXIT_CODES)]
    Scale {
        id: String,
        instances: u32,
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        follow: FollowArgs,
    },
    /// Replaces every task of an app (a rolling restart within its upgradeStrategy).
    #[command(after_help = EXIT_CODES)]
    Restart {
        id: String,
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        follow: FollowArgs,
    },
    /// Deletes an app and kills its tasks, following the deployment until they are gone.
    #[command(alias = "delete", after_help = EXIT_CODES)]
    Rm {
        id: String,
        #[command(flatten)]
        follow: FollowArgs,
    },
    /// The app's stored versions, newest first.
    Versions {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Puts an app back as it was at VERSION (see `marina app versions`).
    #[command(after_help = EXIT_CODES)]
    Rollback {
        id: String,
        version: String,
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        follow: FollowArgs,
    },
}

pub async fn run(gateway: &Gateway, args: AppArgs) -> anyhow::Result<()> {
    match args.command {
        AppCommand::List { json } => list(gateway, json).await,
        AppCommand::Show { id, json } => show(gateway, &id, json).await,
        AppCommand::Deploy { file, force, follow } => deploy(gateway, &file, force, &follow).await,
        AppCommand::Scale { id, instances, force, follow } => {
            let path = format!("{}?force={force}", app_path(&id));
            let body = json!({ "instances": instances });
            change(gateway, &follow, &id, |g| async move { g.call(Method::PUT, &path, Some(&body)).await }).await
        }
        AppCommand::Restart { id, force, follow } => {
            let path = format!("{}/restart?force={force}", app_path(&id));
            change(gateway, &follow, &id, |g| async move { g.call(Method::POST, &path, Some(&json!({}))).await }).await
        }
        AppCommand::Rollback { id, version, force, follow } => {
            let path = format!("{}?force={force}", app_path(&id));
            let body = json!({ "version": version });
            change(gateway, &follow, &id, |g| async move { g.call(Method::PUT, &path, Some(&body)).await }).await
        }
        AppCommand::Rm { id, follow } => remove(gateway, &id, &follow).await,
        AppCommand::Versions { id, json } => versions(gateway, &id, json).await,
    }
}

/// Sends a change, following the deployment it starts: subscribed to the events before the
/// change is sent, so its end cannot pass unseen.
async fn change<F, Fut>(gateway: &Gateway, follow_args: &FollowArgs, id: &str, send: F) -> anyhow::Result<()>
where
    F: FnOnce(Gateway) -> Fut,
    Fut: Future<Output = Result<Answer, GatewayError>>,
{
    // `PUT /v2/apps/{id}` would create a missing app from the change alone: say it is missing.
    if gateway.get_optional(&app_path(id)).await?.is_none() {
        anyhow::bail!("no app {} (see `marina app list`)", absolute_id(id));
    }
    let apps = [absolute_id(id)];
    let (feed, before) = if follow_args.no_wait {
        (None, Default::default())
    } else {
        (Some(EventFeed::subscribe(gateway).await), failures_before(gateway, &apps).await)
    };
    // The app exists: a 404 now is about what the change names (a version), as the gateway says.
    let answer = send(gateway.clone()).await.map_err(locked_hint)?;
    submitted(gateway, feed, before, follow_args, &apps, &answer).await
}

/// After a change was accepted: print its deployment (`--detach`) or follow it.
async fn submitted(
    gateway: &Gateway,
    feed: Option<EventFeed>,
    failures_before: BTreeMap<String, Option<String>>,
    follow_args: &FollowArgs,
    apps: &[String],
    answer: &Answer,
) -> anyhow::Result<()> {
    let Some(deployment) = answer.deployment() else {
        anyhow::bail!("the gateway accepted the change but named no deployment: {}", answer.body);
    };
    let version = answer.body["version"].as_str().unwrap_or_default();
    match feed {
        None => {
            if follow_args.json {
                print_json(&json!({ "deploymentId": deployment, "version": version }));
            } else {
                say!(
                    "deployment {deployment} started (version {version}); follow it with `marina deployment watch {deployment}`"
                );
            }
            Ok(())
        }
        Some(feed) => {
            let options = Follow { failures_before, ..follow_args.options() };
            follow(gateway, Some(feed), &deployment, apps, &options).await
        }
    }
}

/// A 409 on a change: a deployment in progress holds the app; say what to do about it.
fn locked_hint(error: GatewayError) -> anyhow::Error {
    if error.status() == Some(StatusCode::CONFLICT) {
        anyhow::anyhow!(
            "{error}\n  a deployment in progress holds the app: wait for it (`marina deployment list`), or override it with --force"
        )
    } else {
        error.into()
    }
}

fn not_found_is_no_app(error: GatewayError, id: &str) -> anyhow::Error {
    if error.status() == Some(StatusCode::NOT_FOUND) {
        anyhow::anyhow!("no app {} (see `marina app list`): {error}", absolute_id(id))
    } else {
        error.into()
    }
}

// ----- deploy -----------------------------------------------------------------------------------

/// Reads an app definition: a JSON object with an `id`. Errors name the file and the place.
fn read_definition(file: &std::path::Path) -> anyhow::Result<Value> {
    let (name, text) = if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("reading the app from standard input")?;
        ("standard input".to_owned(), text)
    } else {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        (file.display().to_string(), text)
    };
    let app: Value =
        serde_json::from_str(&text).with_context(|| format!("{name} is not JSON (a Marathon app definition)"))?;
    match &app {
        Value::Object(fields) => match fields.get("id") {
            Some(Value::String(id)) if !id.trim_matches('/').is_empty() => Ok(app),
            Some(_) => anyhow::bail!("{name}: \"id\" must name the app, such as \"/web\""),
            None => anyhow::bail!("{name}: the app has no \"id\""),
        },
        Value::Array(_) => anyhow::bail!("{name} holds a list; deploy one app per file"),
        _ => anyhow::bail!("{name}: an app definition is a JSON object"),
    }
}

async fn deploy(
    gateway: &Gateway,
    file: &std::path::Path,
    force: bool,
    follow_args: &FollowArgs,
) -> anyhow::Result<()> {
    let app = read_definition(file)?;
    let id = absolute_id(app["id"].as_str().unwrap_or_default());
    let current = gateway.get_optional(&format!("{}?embed=app.lastTaskFailure", app_path(&id))).await?;
    let exists = current.is_some();
    let feed = if follow_args.no_wait { None } else { Some(EventFeed::subscribe(gateway).await) };
    // Its last task failure before the change: any other is new, even one before the first poll.
    let before = current.map(|app| app["app"]["lastTaskFailure"]["taskId"].as_str().map(str::to_owned));
    let before = BTreeMap::from([(id.clone(), before.flatten())]);
    let answer = if exists {
        // The file is the whole definition: what it leaves out goes back to its default.
        let path = format!("{}?force={force}&partialUpdate=false", app_path(&id));
        gateway.call(Method::PUT, &path, Some(&app)).await
    } else {
        match gateway.call(Method::POST, &format!("/v2/apps?force={force}"), Some(&app)).await {
            // Created meanwhile by someone else: update it.
            Err(error) if error.status() == Some(StatusCode::CONFLICT) => {
                let path = format!("{}?force={force}&partialUpdate=false", app_path(&id));
                gateway.call(Method::PUT, &path, Some(&app)).await
            }
            other => other,
        }
    }
    .map_err(locked_hint)
    .with_context(|| format!("{} {id} refused", if exists { "updating" } else { "creating" }))?;
    if !follow_args.json {
        eprintln!("{} {id}", if exists { "updating" } else { "creating" });
    }
    submitted(gateway, feed, before, follow_args, &[id], &answer).await
}

// ----- reading ----------------------------------------------------------------------------------

/// How long a task failure of an app's current version marks it `failing` even when all its
/// instances run.
const RECENT_FAILURE: Duration = Duration::from_secs(30);

/// What an app is doing, in a word or a few: running, deploying, waiting: <why>, failing:
/// <its last failure>, suspended.
fn status(app: &Value, queued: Option<&Value>) -> String {
    let instances = app["instances"].as_u64().unwrap_or(0);
    let running = app["tasksRunning"].as_u64().unwrap_or(0);
    let deploying = app["deployments"].as_array().is_some_and(|d| !d.is_empty());
    if instances == 0 && running == 0 && !deploying {
        return "suspended".to_owned();
    }
    let failure = &app["lastTaskFailure"];
    let of_this_version =
        failure["message"].is_string() && (failure["version"] == app["version"] || !failure["version"].is_string());
    // A crash-looping app runs all its instances now and then, for a moment: a failure of
    // this version that recent still makes it failing.
    let failed_recently =
        of_this_version && output::elapsed_since(&failure["timestamp"]).is_some_and(|ago| ago < RECENT_FAILURE);
    let healthy_enough = app["healthChecks"].as_array().is_none_or(Vec::is_empty)
        || app["tasksHealthy"].as_u64().unwrap_or(0) >= instances;
    if running >= instances && healthy_enough && !deploying && !failed_recently {
        return "running".to_owned();
    }
    // A failure of the current version while short of instances (or just now): it is
    // failing, unless offers are what holds it up.
    let failing = of_this_version && (running < instances || failed_recently);
    let backing_off = queued.is_some_and(|q| q["delay"]["timeLeftSeconds"].as_u64().unwrap_or(0) > 0);
    if failing && (backing_off || queued.and_then(waiting_reason).is_none()) {
        return format!("failing: {}", output::string(&failure["message"]));
    }
    if let Some(why) = queued.and_then(waiting_reason) {
        return format!("waiting: {why}");
    }
    if failing {
        return format!("failing: {}", output::string(&failure["message"]));
    }
    "deploying".to_owned()
}

fn queue_entry<'a>(queue: &'a Value, id: &Value) -> Option<&'a Value> {
    queue["queue"].as_array()?.iter().find(|entry| entry["app"]["id"] == *id)
}

async fn list(gateway: &Gateway, json: bool) -> anyhow::Result<()> {
    let apps = gateway.get("/v2/apps?embed=apps.counts&embed=apps.deployments&embed=apps.lastTaskFailure").await?;
    if json {
        print_json(&apps);
        return Ok(());
    }
    let queue = gateway.get("/v2/queue").await?;
    let mut table = Table::new(&["ID", "INSTANCES", "HEALTHY", "STATUS", "CPUS", "MEM", "VERSION"]);
    for app in apps["apps"].as_array().into_iter().flatten() {
        let has_checks = app["healthChecks"].as_array().is_some_and(|c| !c.is_empty());
        table.row(vec![
            output::string(&app["id"]),
            format!("{}/{}", output::number(&app["tasksRunning"]), output::number(&app["instances"])),
            if has_checks { output::number(&app["tasksHealthy"]) } else { "-".to_owned() },
            shorten(&status(app, queue_entry(&queue, &app["id"])), 70),
            output::number(&app["cpus"]),
            output::number(&app["mem"]),
            output::string(&app["version"]),
        ]);
    }
    table.print_or("no apps; deploy one with `marina app deploy app.json`");
    Ok(())
}

async fn show(gateway: &Gateway, id: &str, json: bool) -> anyhow::Result<()> {
    let path = format!("{}?{APP_EMBED}", app_path(id));
    let app = gateway
        .get_optional(&path)
        .await?
        .with_context(|| format!("no app {} (see `marina app list`)", absolute_id(id)))?;
    let app = &app["app"];
    let queue = gateway.get("/v2/queue").await?;
    let queued = queue_entry(&queue, &app["id"]);
    let deployments = gateway.get("/v2/deployments").await?;
    let own: Vec<&Value> = deployments
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["affectedApps"].as_array().is_some_and(|apps| apps.contains(&app["id"])))
        .collect();
    if json {
        print_json(&json!({ "app": app, "queue": queued, "deployments": own }));
        return Ok(());
    }
    let field = |name: &str, value: String| say!("{:<13}{value}", format!("{name}:"));
    field("id", output::string(&app["id"]));
    field("status", status(app, queued));
    field(
        "instances",
        format!(
            "{} running, {} staged, {} healthy, {} unhealthy of {} declared",
            output::number(&app["tasksRunning"]),
            output::number(&app["tasksStaged"]),
            output::number(&app["tasksHealthy"]),
            output::number(&app["tasksUnhealthy"]),
            output::number(&app["instances"]),
        ),
    );
    if let Some(cmd) = app["cmd"].as_str() {
        field("cmd", cmd.to_owned());
    }
    if let Some(args) = app["args"].as_array().filter(|a| !a.is_empty()) {
        field("args", args.iter().map(output::string).collect::<Vec<_>>().join(" "));
    }
    let image = app["container"]["docker"]["image"].as_str().or(app["container"]["image"].as_str());
    if let Some(image) = image {
        field("image", format!("{image} ({})", output::string(&app["container"]["type"])));
    }
    field(
        "resources",
        format!(
            "cpus {}, mem {} MB, disk {} MB",
            output::number(&app["cpus"]),
            output::number(&app["mem"]),
            output::number(&app["disk"])
        ),
    );
    let ports: Vec<String> =
        app["portDefinitions"].as_array().into_iter().flatten().map(|p| output::number(&p["port"])).collect();
    if !ports.is_empty() {
        field("ports", ports.join(", "));
    }
    for (name, key) in [("health", "healthChecks"), ("readiness", "readinessChecks"), ("constraints", "constraints")] {
        if let Some(items) = app[key].as_array().filter(|a| !a.is_empty()) {
            field(name, items.iter().map(Value::to_string).collect::<Vec<_>>().join(", "));
        }
    }
    if let Some(labels) = app["labels"].as_object().filter(|l| !l.is_empty()) {
        field(
            "labels",
            labels.iter().map(|(k, v)| format!("{k}={}", output::string(v))).collect::<Vec<_>>().join(", "),
        );
    }
    field("version", output::string(&app["version"]));

    let tasks: Vec<&Value> = app["tasks"].as_array().into_iter().flatten().collect();
    say!("\ntasks:");
    if tasks.is_empty() {
        say!("  none");
    } else {
        let mut table = Table::new(&["TASK", "HOST", "PORTS", "STATE", "AGE", "VERSION"]);
        for task in tasks {
            let cells = crate::task::TaskCells::of(task);
            table.row(vec![
                output::string(&task["id"]),
                output::string(&task["host"]),
                cells.ports,
                cells.state,
                cells.age,
                output::string(&task["version"]),
            ]);
        }
        for line in table.render().lines() {
            say!("  {line}");
        }
    }
    let failure = &app["lastTaskFailure"];
    if failure.is_object() {
        say!(
            "\nlast task failure: {} {} ago on {} ({}, version {})\n  {}",
            output::string(&failure["state"]).trim_start_matches("TASK_").to_lowercase(),
            output::age(&failure["timestamp"]),
            output::string(&failure["host"]),
            output::string(&failure["taskId"]),
            output::string(&failure["version"]),
            output::string(&failure["message"]),
        );
    }
    if let Some(entry) = queued {
        say!(
            "\nqueue: {} instance(s) waiting to launch since {}: {}",
            output::number(&entry["count"]),
            output::string(&entry["since"]),
            waiting_reason(entry).unwrap_or_else(|| "offers are being matched".into()),
        );
    }
    if !own.is_empty() {
        say!("\ndeployments:");
        for deployment in own {
            say!("  {}  {}", output::string(&deployment["id"]), crate::deployment::step_summary(deployment));
        }
    }
    Ok(())
}

async fn remove(gateway: &Gateway, id: &str, follow_args: &FollowArgs) -> anyhow::Result<()> {
    let feed = if follow_args.no_wait { None } else { Some(EventFeed::subscribe(gateway).await) };
    let answer =
        gateway.call(Method::DELETE, &app_path(id), None).await.map_err(|error| not_found_is_no_app(error, id))?;
    let Some(deployment) = answer.deployment() else {
        anyhow::bail!("the gateway deleted {} but named no deployment: {}", absolute_id(id), answer.body);
    };
    match feed {
        None if follow_args.json => print_json(&answer.body),
        None => say!("deleting {}; its tasks are being killed (deployment {deployment})", absolute_id(id)),
        Some(feed) => {
            let options = Follow { deleting: true, ..follow_args.options() };
            follow(gateway, Some(feed), &deployment, &[absolute_id(id)], &options).await?;
        }
    }
    Ok(())
}

async fn versions(gateway: &Gateway, id: &str, json: bool) -> anyhow::Result<()> {
    let body = gateway
        .call(Method::GET, &format!("{}/versions", app_path(id)), None)
        .await
        .map_err(|error| not_found_is_no_app(error, id))?
        .body;
    if json {
        print_json(&body);
        return Ok(());
    }
    let current =
        gateway.get(&app_path(id)).await.ok().and_then(|app| app["app"]["version"].as_str().map(str::to_owned));
    for version in body["versions"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        if Some(version) == current.as_deref() {
            say!("{version}  (current)");
        } else {
            say!("{version}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_apps_status_says_what_it_is_doing() {
        let app = |extra: Value| {
            let mut app = json!({ "instances": 2, "tasksRunning": 2, "deployments": [], "version": "v2" });
            for (k, v) in extra.as_object().unwrap() {
                app[k] = v.clone();
            }
            app
        };
        assert_eq!(status(&app(json!({})), None), "running");
        assert_eq!(status(&app(json!({ "instances": 0, "tasksRunning": 0 })), None), "suspended");
        assert_eq!(status(&app(json!({ "tasksRunning": 1, "deployments": [{ "id": "d" }] })), None), "deploying");
        let failure = json!({ "message": "exited 3", "version": "v2" });
        assert_eq!(
            status(
                &app(json!({ "tasksRunning": 0, "deployments": [{ "id": "d" }], "lastTaskFailure": failure })),
                None
            ),
            "failing: exited 3"
        );
        // All running at this moment, but a task of this version failed just now.
        let just_now = json!({ "message": "exited 3", "version": "v2", "timestamp": "2999-01-01T00:00:00.000Z" });
        assert_eq!(status(&app(json!({ "lastTaskFailure": just_now })), None), "failing: exited 3");
        let long_ago = json!({ "message": "exited 3", "version": "v2", "timestamp": "2000-01-01T00:00:00.000Z" });
        assert_eq!(status(&app(json!({ "lastTaskFailure": long_ago })), None), "running");
        let queued = json!({ "delay": { "timeLeftSeconds": 0 }, "processedOffersSummary": { "rejectSummaryLastOffers": [
            { "reason": "NoCapableRuntime", "declined": 2 } ] } });
        assert_eq!(
            status(&app(json!({ "tasksRunning": 0, "deployments": [{ "id": "d" }] })), Some(&queued)),
            "waiting: NoCapableRuntime (2 offers declined)"
        );
    }
}
