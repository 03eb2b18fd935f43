//! `marina task ...`: tasks, killing them, and their output (the sandbox's `stdout` and
//! `stderr`, read through the gateway's files API as Mesos' `files/read` reads them).

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use crate::gateway::{Gateway, GatewayError, absolute_id, app_path, encode};
use crate::output::{self, Table, print_json, say};

#[derive(Args)]
pub struct TaskArgs {
    #[command(subcommand)]
    command: TaskCommand,
}

#[derive(Subcommand)]
enum TaskCommand {
    /// Tasks of every app, or of one: TASK, APP, HOST, PORTS, STATE, HEALTH, AGE.
    #[command(alias = "ls")]
    List {
        /// Only this app's tasks.
        app: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Kills a task; its app starts another unless --scale.
    Kill {
        task: String,
        /// Lower the app's instances by one instead of replacing the task.
        #[arg(long)]
        scale: bool,
        #[arg(long)]
        json: bool,
    },
    /// Prints a task's output (its sandbox's stdout, or stderr).
    Logs(LogsArgs),
}

#[derive(Args)]
struct LogsArgs {
    /// An app (its newest running task, or --task) or a task id.
    target: String,
    /// Which of the app's tasks (a task id), when it has several.
    #[arg(long)]
    task: Option<String>,
    /// Keep printing what the task writes, until Ctrl-C or until the task is gone.
    #[arg(short, long)]
    follow: bool,
    /// The task's stderr instead of its stdout.
    #[arg(long)]
    stderr: bool,
    /// How many of the last lines to print first, or `all`.
    #[arg(short = 'n', long, default_value = "100", value_parser = parse_lines)]
    lines: Lines,
}

#[derive(Clone, Copy, Debug)]
enum Lines {
    All,
    Last(usize),
}

fn parse_lines(text: &str) -> Result<Lines, String> {
    if text == "all" {
        return Ok(Lines::All);
    }
    text.parse().map(Lines::Last).map_err(|_| format!("{text:?}: a number of lines, or `all`"))
}

pub async fn run(gateway: &Gateway, args: TaskArgs) -> anyhow::Result<()> {
    match args.command {
        TaskCommand::List { app, json } => list(gateway, app.as_deref(), json).await,
        TaskCommand::Kill { task, scale, json } => kill(gateway, &task, scale, json).await,
        TaskCommand::Logs(args) => logs(gateway, args).await,
    }
}

async fn list(gateway: &Gateway, app: Option<&str>, json: bool) -> anyhow::Result<()> {
    let body = match app {
        Some(app) => gateway
            .get_optional(&format!("{}/tasks", app_path(app)))
            .await?
            .with_context(|| format!("no app {}", absolute_id(app)))?,
        None => gateway.get("/v2/tasks").await?,
    };
    if json {
        print_json(&body);
        return Ok(());
    }
    let mut tasks: Vec<&Value> = body["tasks"].as_array().into_iter().flatten().collect();
    tasks.sort_by_key(|t| {
        (t["appId"].as_str().unwrap_or_default().to_owned(), t["stagedAt"].as_str().unwrap_or_default().to_owned())
    });
    let mut table = Table::new(&["TASK", "APP", "HOST", "PORTS", "STATE", "HEALTH", "AGE"]);
    for task in tasks {
        let ports: Vec<String> = task["ports"].as_array().into_iter().flatten().map(output::number).collect();
        let since = if task["startedAt"].is_string() { &task["startedAt"] } else { &task["stagedAt"] };
        table.row(vec![
            output::string(&task["id"]),
            output::string(&task["appId"]),
            output::string(&task["host"]),
            if ports.is_empty() { "-".to_owned() } else { ports.join(",") },
            output::string(&task["state"]).trim_start_matches("TASK_").to_lowercase(),
            health(task),
            output::age(since),
        ]);
    }
    if table.is_empty() {
        eprintln!("no tasks");
    } else {
        table.print();
    }
    Ok(())
}

/// `healthy`, `unhealthy`, or `-` for a task without health checks (or no result yet).
fn health(task: &Value) -> String {
    match task["healthCheckResults"].as_array() {
        Some(results) if !results.is_empty() => {
            if results.iter().all(|r| r["alive"] == true) { "healthy" } else { "unhealthy" }.to_owned()
        }
        _ => "-".to_owned(),
    }
}

async fn kill(gateway: &Gateway, task: &str, scale: bool, json: bool) -> anyhow::Result<()> {
    let path = format!("/v2/tasks/delete?scale={scale}");
    let answer = gateway.call(Method::POST, &path, Some(&json!({ "ids": [task] }))).await?;
    if json {
        print_json(&answer.body);
        return Ok(());
    }
    match answer.deployment() {
        Some(deployment) => say!("killed {task}; its app scales down in deployment {deployment}"),
        None => {
            let killed = answer.body["tasks"].as_array().map_or(0, Vec::len);
            if killed == 0 {
                anyhow::bail!("no task {task} to kill (see `marina task list`)");
            }
            say!("killed {task}; its app starts a replacement");
        }
    }
    Ok(())
}

// ----- output -----------------------------------------------------------------------------------

/// How often a followed file is read again.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(500);
/// How often, while following, the task is looked up to notice that it is gone.
const TASK_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// The most one read asks for (the gateway gives at most 4 MiB).
const READ_BYTES: u64 = 1 << 20;

/// A sandbox file of one task, read through the gateway.
struct SandboxFile<'a> {
    gateway: &'a Gateway,
    task: String,
    path: &'static str,
}

impl SandboxFile<'_> {
    /// Mesos' read: `data` from `offset` (at most `length` bytes), and the offset it starts at.
    async fn read(&self, offset: i64, length: u64) -> Result<(String, u64), GatewayError> {
        let path =
            format!("/v2/tasks/{}/files/read?path={}&offset={offset}&length={length}", encode(&self.task), self.path);
        let body = self.gateway.get(&path).await?;
        Ok((body["data"].as_str().unwrap_or_default().to_owned(), body["offset"].as_u64().unwrap_or(0)))
    }

    /// The file's length (`offset=-1`, as Mesos answers it).
    async fn size(&self) -> Result<u64, GatewayError> {
        Ok(self.read(-1, 0).await?.1)
    }

    /// The last `lines` lines (all with `Lines::All`), and the offset they end at. Reads
    /// backwards in growing pieces, so a long file is not read whole for a few lines.
    async fn tail(&self, lines: Lines) -> Result<(String, u64), GatewayError> {
        let size = self.size().await?;
        let Lines::Last(wanted) = lines else {
            let mut text = String::new();
            let mut offset = 0;
            while offset < size {
                let (data, _) = self.read(offset as i64, READ_BYTES).await?;
                if data.is_empty() {
                    break;
                }
                offset += data.len() as u64;
                text.push_str(&data);
            }
            return Ok((text, offset));
        };
        if wanted == 0 {
            return Ok((String::new(), size));
        }
        let mut start = size;
        let mut text = String::new();
        let mut piece = 16 * 1024;
        while start > 0 && text.matches('\n').count() <= wanted {
            let length = piece.min(start);
            start -= length;
            let (data, _) = self.read(start as i64, length).await?;
            text.insert_str(0, &data);
            piece = (piece * 4).min(READ_BYTES);
        }
        let end = start + text.len() as u64;
        // Keep the last `wanted` lines (a final line without its newline counts).
        let body = text.strip_suffix('\n').unwrap_or(&text);
        let keep_from = body.rmatch_indices('\n').nth(wanted - 1).map_or(0, |(index, _)| index + 1);
        if start > 0 && keep_from == 0 {
            // The first line read may be cut; drop it unless the file starts there.
            let cut = text.find('\n').map_or(text.len(), |i| i + 1);
            return Ok((text[cut..].to_owned(), end));
        }
        Ok((text[keep_from..].to_owned(), end))
    }
}

/// The last `lines` lines of a task's sandbox file, or `None` if it cannot be read (for
/// reports about failed tasks: best effort).
pub async fn tail_of(gateway: &Gateway, task: &str, path: &'static str, lines: usize) -> Option<String> {
    let file = SandboxFile { gateway, task: task.to_owned(), path };
    file.tail(Lines::Last(lines)).await.ok().map(|(text, _)| text)
}

/// Which task `marina task logs` reads: the named task, or the app's newest running one.
async fn choose_task(
    gateway: &Gateway,
    target: &str,
    chosen: Option<&str>,
) -> anyhow::Result<(String, Option<String>)> {
    let Some(app) = gateway.get_optional(&format!("{}?embed=app.lastTaskFailure", app_path(target))).await? else {
        // Not an app: a task id, if the gateway knows it.
        return Ok((target.to_owned(), None));
    };
    let app_id = app["app"]["id"].as_str().map_or_else(|| absolute_id(target), str::to_owned);
    let tasks: Vec<&Value> = app["app"]["tasks"].as_array().into_iter().flatten().collect();
    if let Some(chosen) = chosen {
        if !tasks.iter().any(|t| t["id"] == chosen) {
            let ids: Vec<String> = tasks.iter().map(|t| output::string(&t["id"])).collect();
            anyhow::bail!(
                "{app_id} has no task {chosen}; its tasks: {}",
                if ids.is_empty() { "none".into() } else { ids.join(", ") }
            );
        }
        return Ok((chosen.to_owned(), Some(app_id)));
    }
    let newest = |state: Option<&str>| {
        tasks
            .iter()
            .filter(|t| state.is_none_or(|s| t["state"] == s))
            .max_by_key(|t| t["startedAt"].as_str().or(t["stagedAt"].as_str()).unwrap_or_default().to_owned())
            .and_then(|t| t["id"].as_str())
            .map(str::to_owned)
    };
    let task = match newest(Some("TASK_RUNNING")).or_else(|| newest(None)) {
        Some(task) => task,
        None => match app["app"]["lastTaskFailure"]["taskId"].as_str() {
            // A failed task's sandbox outlives it while the app's last failure names it.
            Some(failed) => {
                eprintln!("{app_id} has no task now; showing its last failed task, {failed}");
                return Ok((failed.to_owned(), Some(app_id)));
            }
            None => anyhow::bail!("{app_id} has no task (see `marina app show {app_id}`)"),
        },
    };
    if tasks.len() > 1 {
        eprintln!("{app_id} has {} tasks; showing the newest running one, {task} (choose with --task)", tasks.len());
    }
    Ok((task, Some(app_id)))
}

async fn logs(gateway: &Gateway, args: LogsArgs) -> anyhow::Result<()> {
    let (task, app) = choose_task(gateway, &args.target, args.task.as_deref()).await?;
    let file = SandboxFile { gateway, task: task.clone(), path: if args.stderr { "stderr" } else { "stdout" } };
    let (text, mut offset) = file.tail(args.lines).await.map_err(|error| match error.status() {
        Some(reqwest::StatusCode::NOT_FOUND) if app.is_none() => {
            anyhow::anyhow!("no app or task {} (see `marina app list`, `marina task list`)", args.target)
        }
        _ => anyhow::Error::new(error).context(format!("{} of task {task}", file.path)),
    })?;
    output::write_stdout(text.as_bytes());
    if !args.follow {
        return Ok(());
    }
    let mut last_check = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            () = tokio::time::sleep(FOLLOW_INTERVAL) => {}
        }
        match file.read(offset as i64, READ_BYTES).await {
            Ok((data, _)) if !data.is_empty() => {
                offset += data.len() as u64;
                output::write_stdout(data.as_bytes());
                continue;
            }
            Ok(_) => {
                // Nothing new. A file shorter than what was read was rotated: start over.
                if let Ok(size) = file.size().await
                    && size < offset
                {
                    eprintln!("({} of {task} was rotated; reading it from its start)", file.path);
                    offset = 0;
                }
            }
            Err(error) if error.status().is_some_and(|s| s.is_client_error()) => {
                eprintln!("task {task} is gone: {error}");
                return Ok(());
            }
            Err(error) => eprintln!("reading {} of {task}: {error}; retrying", file.path),
        }
        if last_check.elapsed() >= TASK_CHECK_INTERVAL {
            last_check = tokio::time::Instant::now();
            if let Some(state) = task_ended(gateway, &task).await {
                // One last read: what it wrote before it went.
                if let Ok((data, _)) = file.read(offset as i64, READ_BYTES).await {
                    output::write_stdout(data.as_bytes());
                }
                eprintln!("task {task} {state}");
                return Ok(());
            }
        }
    }
}

/// `Some(how)` when the task is no longer among the cluster's tasks.
async fn task_ended(gateway: &Gateway, task: &str) -> Option<String> {
    let tasks = gateway.get("/v2/tasks").await.ok()?;
    let found = tasks["tasks"].as_array()?.iter().find(|t| t["id"] == task).cloned();
    match found {
        Some(t) if matches!(t["state"].as_str(), Some("TASK_RUNNING" | "TASK_STAGING" | "TASK_STARTING")) => None,
        Some(t) => Some(format!("is {}", output::string(&t["state"]).trim_start_matches("TASK_").to_lowercase())),
        None => Some("has ended".to_owned()),
    }
}
