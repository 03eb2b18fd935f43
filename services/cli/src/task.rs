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
    /// Keep printing what the task writes, until the task is gone (exit 0) or Ctrl-C (exit
    /// 130).
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
        let cells = TaskCells::of(task);
        table.row(vec![
            output::string(&task["id"]),
            output::string(&task["appId"]),
            output::string(&task["host"]),
            cells.ports,
            cells.state,
            health(task),
            cells.age,
        ]);
    }
    table.print_or("no tasks");
    Ok(())
}

/// A task's cells as the task tables show them (`marina task list`, `marina app show`).
pub struct TaskCells {
    /// `31000,31001`, or `-`.
    pub ports: String,
    /// `running`, `staging`, ...
    pub state: String,
    /// Since it started (or was staged, until it starts): `42s`, `5m`.
    pub age: String,
}

impl TaskCells {
    pub fn of(task: &Value) -> TaskCells {
        let ports: Vec<String> = task["ports"].as_array().into_iter().flatten().map(output::number).collect();
        let since = if task["startedAt"].is_string() { &task["startedAt"] } else { &task["stagedAt"] };
        TaskCells {
            ports: if ports.is_empty() { "-".to_owned() } else { ports.join(",") },
            state: state_name(&task["state"]),
            age: output::age(since),
        }
    }
}

/// `TASK_RUNNING` as `running`.
fn state_name(state: &Value) -> String {
    output::string(state).trim_start_matches("TASK_").to_lowercase()
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

    /// Prints the whole file to stdout a piece at a time (a long file is never held whole);
    /// the offset it ends at.
    async fn print_all(&self) -> Result<u64, GatewayError> {
        let size = self.size().await?;
        let mut offset = 0;
        while offset < size {
            let (data, _) = self.read(offset as i64, READ_BYTES).await?;
            if data.is_empty() {
                break;
            }
            // The data's length is what it stands for (a character cut at the end of a piece
            // is left for the next read).
            offset += data.len() as u64;
            output::write_stdout(data.as_bytes());
        }
        Ok(offset)
    }

    /// The last `wanted` lines, and the offset they end at (where following goes on). Reads
    /// backwards in growing pieces, so a long file is not read whole for a few lines; each
    /// older piece ends where a line starts (after a `\n`, never inside a character), so the
    /// pieces join without a byte lost or read twice.
    async fn tail(&self, wanted: usize) -> Result<(String, u64), GatewayError> {
        let size = self.size().await?;
        if wanted == 0 {
            return Ok((String::new(), size));
        }
        // `text` is the file from `boundary` (a line's start, or 0) to `end`.
        let mut boundary = size;
        let mut end = None;
        let mut text = String::new();
        let mut piece = 16 * 1024;
        while boundary > 0 && line_count(&text) < wanted {
            let start = boundary.saturating_sub(piece);
            let (data, _) = self.read(start as i64, boundary - start).await?;
            // The newest piece ends where the data does: a character being written at the
            // very end is left for following to read whole.
            end.get_or_insert(start + data.len() as u64);
            if start == 0 {
                text.insert_str(0, &data);
                boundary = 0;
            } else if let Some(newline) = data.find('\n') {
                // Before the first newline, a line (maybe a character) is cut: the next piece
                // reads it whole.
                text.insert_str(0, &data[newline + 1..]);
                boundary = start + newline as u64 + 1;
            } else if piece >= READ_BYTES {
                // One line longer than a read: shown from where it was cut.
                text.insert_str(0, &data);
                break;
            }
            piece = (piece * 4).min(READ_BYTES);
        }
        // Keep the last `wanted` lines (a final line without its newline counts).
        let body = text.strip_suffix('\n').unwrap_or(&text);
        let keep_from = body.rmatch_indices('\n').nth(wanted - 1).map_or(0, |(index, _)| index + 1);
        Ok((text[keep_from..].to_owned(), end.unwrap_or(size)))
    }
}

/// How many lines `text` holds, a last one without its newline included.
fn line_count(text: &str) -> usize {
    match text.strip_suffix('\n').unwrap_or(text) {
        "" if text.is_empty() => 0,
        body => body.matches('\n').count() + 1,
    }
}

/// The last `lines` lines of a task's sandbox file, or `None` if it cannot be read (for
/// reports about failed tasks: best effort).
pub async fn tail_of(gateway: &Gateway, task: &str, path: &'static str, lines: usize) -> Option<String> {
    let file = SandboxFile { gateway, task: task.to_owned(), path };
    file.tail(lines).await.ok().map(|(text, _)| text)
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
    let (task, which) = match newest(Some("TASK_RUNNING")).map(|t| (t, "newest running one")) {
        Some(chosen) => chosen,
        None => match newest(None) {
            Some(task) => (task, "newest one (none runs)"),
            None => match app["app"]["lastTaskFailure"]["taskId"].as_str() {
                // A failed task's sandbox outlives it while the app's last failure names it.
                Some(failed) => {
                    eprintln!("{app_id} has no task now; showing its last failed task, {failed}");
                    return Ok((failed.to_owned(), Some(app_id)));
                }
                None => anyhow::bail!("{app_id} has no task (see `marina app show {app_id}`)"),
            },
        },
    };
    if tasks.len() > 1 {
        eprintln!("{app_id} has {} tasks; showing the {which}, {task} (choose with --task)", tasks.len());
    }
    Ok((task, Some(app_id)))
}

async fn logs(gateway: &Gateway, args: LogsArgs) -> anyhow::Result<()> {
    // One listener for the whole command, made first: a Ctrl-C while a read is in flight is
    // not lost, and interrupts it.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|error| anyhow::anyhow!("listening for Ctrl-C: {error}"))?;
    tokio::select! {
        result = print_logs(gateway, &args) => result,
        // Interrupted (Ctrl-C) while reading or following: exit code 130, as the help says.
        _ = interrupt.recv() => Err(output::Exit { code: output::INTERRUPTED, message: String::new() }.into()),
    }
}

async fn print_logs(gateway: &Gateway, args: &LogsArgs) -> anyhow::Result<()> {
    let (task, app) = choose_task(gateway, &args.target, args.task.as_deref()).await?;
    let file = SandboxFile { gateway, task: task.clone(), path: if args.stderr { "stderr" } else { "stdout" } };
    let printed = match args.lines {
        Lines::All => file.print_all().await,
        Lines::Last(lines) => file.tail(lines).await.map(|(text, end)| {
            output::write_stdout(text.as_bytes());
            end
        }),
    };
    let mut offset = printed.map_err(|error| match error.status() {
        Some(reqwest::StatusCode::NOT_FOUND) if app.is_none() => {
            anyhow::anyhow!("no app or task {} (see `marina app list`, `marina task list`)", args.target)
        }
        _ => anyhow::Error::new(error).context(format!("{} of task {task}", file.path)),
    })?;
    if !args.follow {
        return Ok(());
    }
    // Whose tasks to look through to notice that the task is gone: its app's, not the cluster's.
    let app = match app {
        Some(app) => Some(app),
        None => app_of_task(gateway, &task).await,
    };
    let mut last_check = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(FOLLOW_INTERVAL).await;
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
            // The task (404) or its sandbox (the agent's 400: not a file) is gone.
            Err(error)
                if matches!(
                    error.status(),
                    Some(reqwest::StatusCode::NOT_FOUND | reqwest::StatusCode::GONE | reqwest::StatusCode::BAD_REQUEST)
                ) =>
            {
                eprintln!("task {task} has ended");
                return Ok(());
            }
            // Refused (credentials, a bad request): retrying would not help.
            Err(error) if error.status().is_some_and(|s| s.is_client_error()) => {
                return Err(anyhow::Error::new(error).context(format!("{} of task {task}", file.path)));
            }
            Err(error) => eprintln!("reading {} of {task}: {error}; retrying", file.path),
        }
        if last_check.elapsed() >= TASK_CHECK_INTERVAL {
            last_check = tokio::time::Instant::now();
            if let Some(state) = task_ended(gateway, app.as_deref(), &task).await {
                // One last read: what it wrote before it went.
                if let Ok((data, _)) = file.read(offset as i64, READ_BYTES).await {
                    output::write_stdout(data.as_bytes());
                }
                match state {
                    Some(state) => eprintln!("task {task} has ended ({state})"),
                    None => eprintln!("task {task} has ended"),
                }
                return Ok(());
            }
        }
    }
}

/// The app a task id belongs to, from the cluster's tasks (`None` if it cannot be told).
async fn app_of_task(gateway: &Gateway, task: &str) -> Option<String> {
    let tasks = gateway.get("/v2/tasks").await.ok()?;
    let found = tasks["tasks"].as_array()?.iter().find(|t| t["id"] == task)?;
    found["appId"].as_str().map(str::to_owned)
}

/// `Some(state)` when the task is no longer alive: `Some(Some("killed"))` with its final
/// state, `Some(None)` when it is no longer listed. Looks among its app's tasks (all the
/// cluster's only when its app is unknown); `None` while it lives or when that cannot be read.
async fn task_ended(gateway: &Gateway, app: Option<&str>, task: &str) -> Option<Option<String>> {
    let tasks = match app {
        // Its app deleted: its tasks are gone.
        Some(app) => gateway.get_optional(&format!("{}/tasks", app_path(app))).await.ok()?.unwrap_or(Value::Null),
        None => gateway.get("/v2/tasks").await.ok()?,
    };
    let found = tasks["tasks"].as_array().into_iter().flatten().find(|t| t["id"] == task);
    match found {
        // Killing: still writing its last words.
        Some(t)
            if matches!(
                t["state"].as_str(),
                Some("TASK_RUNNING" | "TASK_STAGING" | "TASK_STARTING" | "TASK_KILLING")
            ) =>
        {
            None
        }
        Some(t) => Some(Some(state_name(&t["state"]))),
        None => Some(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_counted_with_a_last_one_unended() {
        assert_eq!(line_count(""), 0);
        assert_eq!(line_count("\n"), 1);
        assert_eq!(line_count("a\nb\n"), 2);
        assert_eq!(line_count("a\nb"), 2);
    }
}
