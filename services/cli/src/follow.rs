//! Following a deployment to its end: the gateway's event stream (`/v2/events`) says at once
//! when it succeeds or fails, and polling (`/v2/deployments`, the apps, `/v2/queue`) keeps
//! the progress current and decides the outcome when the stream drops, so a lost stream
//! never leaves the command hanging. On a terminal the progress is a live display; otherwise
//! one plain line whenever something changes.
//!
//! Marathon's deployments of apps whose tasks keep failing do not fail: they retry with
//! backoff. So a failing app ends by `--timeout`, with its last task failure and the queue's
//! reasons printed.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::gateway::{Gateway, app_path, encode};
use crate::output::{self, Exit, print_json, say, shorten};

/// The events that tell about a deployment and its tasks.
const EVENT_TYPES: [&str; 8] = [
    "deployment_info",
    "deployment_step_success",
    "deployment_step_failure",
    "deployment_success",
    "deployment_failed",
    "status_update_event",
    "health_status_changed_event",
    "event_stream_lagged",
];

/// How often the state is polled besides the events.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// A stream silent for longer than this is dead (the gateway sends a keep-alive every 15 s).
const STREAM_SILENCE: Duration = Duration::from_secs(40);
/// How long a deployment may be gone from `/v2/deployments` with its apps short of their
/// target before it counts as ended without success (its `deployment_failed` may be in
/// flight, or the counts a moment behind).
const GONE_GRACE: Duration = Duration::from_secs(3);

// ----- server-sent events -----------------------------------------------------------------------

/// One server-sent event: its `event:` name and its `data:` (JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub kind: String,
    pub data: Value,
}

/// Reads `event:`/`data:` lines out of the byte stream as it comes, in whatever pieces.
#[derive(Default)]
pub struct SseParser {
    pending: Vec<u8>,
    kind: String,
    data: String,
}

impl SseParser {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.pending.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                // A blank line ends the event; one without data (a keep-alive) is nothing.
                let kind = std::mem::take(&mut self.kind);
                let data = std::mem::take(&mut self.data);
                if !data.is_empty() {
                    let data = serde_json::from_str(&data).unwrap_or(Value::String(data));
                    let kind = if kind.is_empty() { "message".to_owned() } else { kind };
                    events.push(SseEvent { kind, data });
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => value.clone_into(&mut self.kind),
                "data" => {
                    if !self.data.is_empty() {
                        self.data.push('\n');
                    }
                    self.data.push_str(value);
                }
                _ => {}
            }
        }
        events
    }
}

/// What the event feed tells the monitor.
#[derive(Debug)]
pub enum FeedItem {
    Event(SseEvent),
    /// The stream broke; the feed reconnects, and events meanwhile are missed.
    Lost(String),
}

/// The gateway's events, read by a task of its own that reconnects when the stream drops.
pub struct EventFeed {
    receiver: mpsc::UnboundedReceiver<FeedItem>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for EventFeed {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl EventFeed {
    /// Subscribes and waits (briefly) until the gateway has attached the stream, so that a
    /// change sent afterwards cannot finish unseen. If no stream can be had, the monitor
    /// relies on polling; the feed keeps trying in the background.
    pub async fn subscribe(gateway: &Gateway) -> EventFeed {
        let (sender, receiver) = mpsc::unbounded_channel();
        let (attached_tx, attached_rx) = tokio::sync::oneshot::channel();
        let gateway = gateway.clone();
        let reader = tokio::spawn(async move {
            let mut attached = Some(attached_tx);
            loop {
                let reason = match gateway.open_events(&EVENT_TYPES).await {
                    Ok(response) => read_stream(response, &sender, &mut attached).await,
                    Err(error) => error.to_string(),
                };
                // The first attempt failed: stop holding the caller up.
                attached.take();
                if sender.send(FeedItem::Lost(reason)).is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let _ = tokio::time::timeout(Duration::from_secs(5), attached_rx).await;
        EventFeed { receiver, reader }
    }

    pub async fn next(&mut self) -> Option<FeedItem> {
        self.receiver.recv().await
    }
}

/// Reads one connection's events into `sender` until it ends; returns why it ended.
async fn read_stream(
    mut response: reqwest::Response,
    sender: &mpsc::UnboundedSender<FeedItem>,
    attached: &mut Option<tokio::sync::oneshot::Sender<()>>,
) -> String {
    let mut parser = SseParser::default();
    loop {
        let chunk = match tokio::time::timeout(STREAM_SILENCE, response.chunk()).await {
            Err(_) => return format!("no event or keep-alive for {}s", STREAM_SILENCE.as_secs()),
            Ok(Err(error)) => return format!("the event stream broke: {error}"),
            Ok(Ok(None)) => return "the gateway closed the event stream".to_owned(),
            Ok(Ok(Some(chunk))) => chunk,
        };
        for event in parser.push(&chunk) {
            if event.kind == "event_stream_attached" {
                if let Some(attached) = attached.take() {
                    let _ = attached.send(());
                }
                continue;
            }
            let lagged = event.kind == "event_stream_lagged";
            if sender.send(FeedItem::Event(event)).is_err() {
                return String::new();
            }
            if lagged {
                return "the event stream fell behind and was closed".to_owned();
            }
        }
    }
}

// ----- the monitor ------------------------------------------------------------------------------

/// How a followed deployment ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded,
    Failed(String),
    TimedOut,
    /// The deployment finished, but its apps did not stay at their target (tasks that start
    /// and fail) before the timeout.
    Unsettled,
    Interrupted,
}

impl Outcome {
    fn name(&self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed(_) => "failed",
            Outcome::TimedOut => "timedOut",
            Outcome::Unsettled => "unstable",
            Outcome::Interrupted => "interrupted",
        }
    }
}

/// What is known of one app of the deployment.
#[derive(Default, Clone)]
struct AppProgress {
    /// The app as last read (`embed` counts, last task failure, readiness).
    app: Value,
    /// Its `/v2/queue` entry, if it waits to launch.
    queued: Option<Value>,
    /// Its last task failure when following began: one with another task id is new.
    failure_before: Option<String>,
    /// The last task failure's task as of the previous poll, to notice new ones.
    failure_seen: Option<String>,
    /// A task failed between the last two polls.
    failed_since_last_poll: bool,
    deleted: bool,
    /// The deployment stops (deletes) it: gone is its target.
    stopping: bool,
}

impl AppProgress {
    fn target(&self) -> u64 {
        self.app["instances"].as_u64().unwrap_or(0)
    }

    fn count(&self, field: &str) -> u64 {
        self.app[field].as_u64().unwrap_or(0)
    }

    fn ready(&self) -> u64 {
        let results = self.app["readinessCheckResults"].as_array();
        results.map_or(0, |r| r.iter().filter(|r| r["ready"] == true).count() as u64)
    }

    fn has(&self, checks: &str) -> bool {
        self.app[checks].as_array().is_some_and(|c| !c.is_empty())
    }

    /// Every instance of the target runs (healthy, where it has health checks) and no more.
    fn at_target(&self) -> bool {
        if self.stopping {
            return self.deleted;
        }
        let target = self.target();
        let running = self.count("tasksRunning");
        !self.deleted
            && running == target
            && self.count("tasksStaged") == 0
            && (!self.has("healthChecks") || self.count("tasksHealthy") >= target)
    }

    fn new_failure(&self) -> Option<&str> {
        let failure = &self.app["lastTaskFailure"];
        let task = failure["taskId"].as_str()?;
        (Some(task) != self.failure_before.as_deref()).then(|| failure["message"].as_str().unwrap_or("failed"))
    }

    /// One line for people: `2/3 running, 1 staged, 1/3 healthy; waiting: NoCapableRuntime`.
    fn summary(&self) -> String {
        if self.deleted {
            return "deleted".to_owned();
        }
        let target = self.target();
        let mut parts = vec![format!("{}/{target} running", self.count("tasksRunning"))];
        let staged = self.count("tasksStaged");
        if staged > 0 {
            parts.push(format!("{staged} staged"));
        }
        if self.has("healthChecks") {
            parts.push(format!("{}/{target} healthy", self.count("tasksHealthy")));
        }
        if self.has("readinessChecks") {
            parts.push(format!("{}/{target} ready", self.ready()));
        }
        let mut line = parts.join(", ");
        if let Some(why) = self.queued.as_ref().and_then(waiting_reason_brief) {
            line.push_str(&format!("; waiting: {why}"));
        }
        if let Some(failure) = self.new_failure() {
            line.push_str(&format!("; last failure: {}", shorten(failure, 80)));
        }
        line
    }
}

/// Why a queued app waits, from its `/v2/queue` entry: offers declined by reason, and the
/// launch backoff. `None` when nothing holds it back.
pub fn waiting_reason(entry: &Value) -> Option<String> {
    reasons(entry, true)
}

/// The reasons without counts, which change with every offer: for a progress line that is
/// printed again only when it changes.
fn waiting_reason_brief(entry: &Value) -> Option<String> {
    reasons(entry, false)
}

fn reasons(entry: &Value, counts: bool) -> Option<String> {
    let mut reasons: Vec<String> = entry["processedOffersSummary"]["rejectSummaryLastOffers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|step| step["declined"].as_u64().unwrap_or(0) > 0)
        .map(|step| match counts {
            true => format!("{} ({} offers declined)", output::string(&step["reason"]), step["declined"]),
            false => output::string(&step["reason"]),
        })
        .collect();
    // Any reason-like field a gateway adds besides Marathon's summary.
    if let Some(reason) = entry["reason"].as_str().or_else(|| entry["message"].as_str()) {
        reasons.insert(0, reason.to_owned());
    }
    let delay = entry["delay"]["timeLeftSeconds"].as_u64().unwrap_or(0);
    if delay > 0 {
        reasons.push(match counts {
            true => format!("backing off after failures, next launch in {delay}s"),
            false => "backing off after failures".to_owned(),
        });
    }
    (!reasons.is_empty()).then(|| reasons.join(", "))
}

/// The live display on a terminal, or plain lines when something changes.
enum Display {
    Live { _bars: MultiProgress, header: ProgressBar, apps: BTreeMap<String, ProgressBar> },
    Plain { last: String },
}

impl Display {
    fn new() -> Display {
        if std::io::stderr().is_terminal() {
            let bars = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let header = bars.add(ProgressBar::new_spinner());
            header.set_style(
                ProgressStyle::with_template("{spinner} {prefix} {msg} [{elapsed}]")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            header.enable_steady_tick(Duration::from_millis(120));
            Display::Live { _bars: bars, header, apps: BTreeMap::new() }
        } else {
            Display::Plain { last: String::new() }
        }
    }

    fn show(&mut self, deployment_id: &str, step: &str, apps: &BTreeMap<String, AppProgress>, started: Instant) {
        match self {
            Display::Plain { last } => {
                let app_lines: Vec<String> = apps.iter().map(|(id, p)| format!("{id} {}", p.summary())).collect();
                let line = format!("deployment {deployment_id}: {step}; {}", app_lines.join("; "));
                if *last != line {
                    eprintln!("[{:>5.1}s] {line}", started.elapsed().as_secs_f64());
                    *last = line;
                }
            }
            Display::Live { _bars: bars, header, apps: app_bars } => {
                header.set_prefix(format!("deployment {deployment_id}"));
                header.set_message(step.to_owned());
                for (id, progress) in apps {
                    let bar = app_bars.entry(id.clone()).or_insert_with(|| {
                        let bar = bars.add(ProgressBar::new(0));
                        bar.set_style(
                            ProgressStyle::with_template("  {prefix} [{bar:24}] {msg}")
                                .map(|style| style.progress_chars("=> "))
                                .unwrap_or_else(|_| ProgressStyle::default_bar()),
                        );
                        bar.set_prefix(id.clone());
                        bar
                    });
                    bar.set_length(progress.target().max(1));
                    bar.set_position(progress.count("tasksRunning").min(progress.target()));
                    bar.set_message(progress.summary());
                }
            }
        }
    }

    fn note(&mut self, text: &str) {
        match self {
            Display::Plain { .. } => eprintln!("{text}"),
            Display::Live { header, .. } => header.println(text),
        }
    }

    fn finish(&mut self) {
        if let Display::Live { header, apps, .. } = self {
            for bar in apps.values() {
                bar.abandon();
            }
            header.finish_and_clear();
        }
    }
}

/// Options of a followed deployment.
pub struct Follow {
    pub timeout: Duration,
    /// How long, once the deployment is over, every instance must keep running with no new
    /// task failure before it counts as a success.
    pub settle: Duration,
    /// The change deletes the given apps: their being gone is the target.
    pub deleting: bool,
    pub json: bool,
}

/// Follows deployment `deployment_id` (of `apps`, if known; else its `affectedApps`) to its
/// end; prints the result, and on failure why. Ok only when it succeeded; otherwise an
/// [`Exit`] with the code that says how it ended.
///
/// A deployment is over, for the gateway as for Marathon, once its instances have run: a task
/// that starts and crashes at once counts. So success also needs the apps to stay at their
/// target for `settle` with no new task failure; a crash-looping app ends by the timeout.
pub async fn follow(
    gateway: &Gateway,
    mut feed: Option<EventFeed>,
    deployment_id: &str,
    apps: &[String],
    options: &Follow,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let deadline = started + options.timeout;
    let mut display = Display::new();
    let mut progress: BTreeMap<String, AppProgress> = apps
        .iter()
        .map(|id| (id.clone(), AppProgress { stopping: options.deleting, ..AppProgress::default() }))
        .collect();
    let mut first_poll = true;
    let mut step = "starting".to_owned();
    let mut deployment = Value::Null;
    let mut gone_since: Option<Instant> = None;
    // Once the deployment is over: since when every app has been at its target.
    let mut finished = false;
    let mut stable_since: Option<Instant> = None;
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stream_lost_said = false;

    let outcome = loop {
        let mut refresh = false;
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => break if finished { Outcome::Unsettled } else { Outcome::TimedOut },
            _ = tokio::signal::ctrl_c() => break Outcome::Interrupted,
            item = async { match feed.as_mut() { Some(feed) => feed.next().await, None => std::future::pending().await } } => {
                match item {
                    None => feed = None,
                    Some(FeedItem::Lost(reason)) => {
                        if !stream_lost_said && !reason.is_empty() {
                            display.note(&format!("event stream: {reason}; following by polling"));
                            stream_lost_said = true;
                        }
                    }
                    Some(FeedItem::Event(event)) => {
                        let id = event.data["id"].as_str().or_else(|| event.data["plan"]["id"].as_str());
                        let ours = id == Some(deployment_id);
                        match event.kind.as_str() {
                            "deployment_success" if ours => {
                                finished = true;
                                refresh = true;
                            }
                            "deployment_failed" if ours && !finished => {
                                let reason = event.data["reason"].as_str().unwrap_or("the deployment failed");
                                break Outcome::Failed(reason.to_owned());
                            }
                            "status_update_event" | "health_status_changed_event" => {
                                let app = event.data["appId"].as_str();
                                refresh = app.is_some_and(|app| progress.contains_key(app));
                                let failed = matches!(
                                    event.data["taskStatus"].as_str(),
                                    Some("TASK_FAILED" | "TASK_ERROR" | "TASK_LOST" | "TASK_DROPPED" | "TASK_GONE")
                                );
                                if refresh && (failed || event.data["alive"] == false) {
                                    stable_since = None;
                                }
                            }
                            _ => refresh = ours,
                        }
                    }
                }
            }
            _ = poll.tick() => refresh = true,
        }
        if !refresh {
            continue;
        }
        match poll_state(gateway, deployment_id, &mut progress, first_poll).await {
            Ok(_) if finished => {
                step =
                    format!("done; checking that every instance stays up ({})", output::short_duration(options.settle));
            }
            Ok(Some(current)) => {
                gone_since = None;
                step = crate::deployment::step_summary(&current);
                deployment = current;
            }
            Ok(None) => {
                // It left /v2/deployments: done if every app is at its target; otherwise its
                // `deployment_failed` may still be on its way, or the counts a moment behind.
                if progress.values().all(AppProgress::at_target) {
                    finished = true;
                    step = "done".to_owned();
                } else {
                    let since = *gone_since.get_or_insert_with(Instant::now);
                    if let Some((id, _)) = progress.iter().find(|(_, p)| p.deleted && !p.stopping) {
                        break Outcome::Failed(format!("{id} was deleted"));
                    }
                    if since.elapsed() >= GONE_GRACE {
                        let other: Vec<&str> = progress
                            .values()
                            .flat_map(|p| p.app["deployments"].as_array().into_iter().flatten())
                            .filter_map(|d| d["id"].as_str())
                            .filter(|d| *d != deployment_id)
                            .collect();
                        break Outcome::Failed(match other.first() {
                            Some(next) => format!("it was replaced by deployment {next}"),
                            None => "it ended without reaching its target (cancelled?)".to_owned(),
                        });
                    }
                    step = "finishing".to_owned();
                }
            }
            Err(error) => display.note(&format!("polling: {error}")),
        }
        first_poll = false;
        if finished && progress.values().all(|p| p.stopping && p.deleted) {
            // Nothing left to keep running.
            break Outcome::Succeeded;
        }
        if finished {
            let stable = progress.values().all(|p| p.at_target() && !p.failed_since_last_poll);
            if !stable {
                stable_since = None;
            } else if stable_since.get_or_insert_with(Instant::now).elapsed() >= options.settle {
                break Outcome::Succeeded;
            }
        }
        display.show(deployment_id, &step, &progress, started);
    };
    display.finish();
    // The final state, for the report (the last poll may be a second old).
    let _ = poll_state(gateway, deployment_id, &mut progress, first_poll).await;
    report(gateway, deployment_id, &deployment, &progress, &outcome, started, options).await
}

/// Reads the deployment (`None` once it is no longer in progress), the apps and the queue.
async fn poll_state(
    gateway: &Gateway,
    deployment_id: &str,
    progress: &mut BTreeMap<String, AppProgress>,
    first: bool,
) -> anyhow::Result<Option<Value>> {
    let deployments = gateway.get("/v2/deployments").await?;
    let deployment = deployments.as_array().into_iter().flatten().find(|d| d["id"] == deployment_id).cloned();
    if let Some(deployment) = &deployment {
        for app in deployment["affectedApps"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            progress.entry(app.to_owned()).or_default();
        }
        let actions = deployment["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|step| step["actions"].as_array().into_iter().flatten());
        for action in actions.filter(|a| a["action"] == "StopApplication") {
            if let Some(app) = action["app"].as_str().and_then(|app| progress.get_mut(app)) {
                app.stopping = true;
            }
        }
    }
    let queue = gateway.get("/v2/queue").await?;
    for (id, app) in progress.iter_mut() {
        let path = format!(
            "{}?embed=app.counts&embed=app.lastTaskFailure&embed=app.readiness&embed=app.deployments",
            app_path(id)
        );
        match gateway.get_optional(&path).await? {
            Some(body) => {
                app.app = body["app"].clone();
                app.deleted = false;
            }
            None => app.deleted = true,
        }
        let failure = app.app["lastTaskFailure"]["taskId"].as_str().map(str::to_owned);
        if first {
            app.failure_before.clone_from(&failure);
            app.failure_seen.clone_from(&failure);
        }
        app.failed_since_last_poll = failure.is_some() && failure != app.failure_seen;
        app.failure_seen = failure;
        app.queued =
            queue["queue"].as_array().into_iter().flatten().find(|entry| entry["app"]["id"] == id.as_str()).cloned();
    }
    Ok(deployment)
}

/// Prints how the deployment ended (JSON with `--json`) and why when it did not succeed.
async fn report(
    gateway: &Gateway,
    deployment_id: &str,
    deployment: &Value,
    progress: &BTreeMap<String, AppProgress>,
    outcome: &Outcome,
    started: Instant,
    options: &Follow,
) -> anyhow::Result<()> {
    let elapsed = started.elapsed();
    let mut stderr_tails = BTreeMap::new();
    if *outcome != Outcome::Succeeded {
        for (id, app) in progress {
            if let Some(task) = app.app["lastTaskFailure"]["taskId"].as_str() {
                stderr_tails
                    .insert(id.clone(), (task.to_owned(), crate::task::tail_of(gateway, task, "stderr", 5).await));
            }
        }
    }
    if options.json {
        let apps: Vec<Value> = progress
            .iter()
            .map(|(id, p)| {
                json!({
                    "id": id,
                    "deleted": p.deleted,
                    "instances": p.app["instances"],
                    "tasksStaged": p.app["tasksStaged"],
                    "tasksRunning": p.app["tasksRunning"],
                    "tasksHealthy": p.app["tasksHealthy"],
                    "version": p.app["version"],
                    "lastTaskFailure": p.app.get("lastTaskFailure").cloned().unwrap_or(Value::Null),
                    "queue": p.queued.clone().unwrap_or(Value::Null),
                    "waiting": p.queued.as_ref().and_then(waiting_reason),
                    "stderrTail": stderr_tails.get(id).and_then(|(_, tail)| tail.clone()),
                })
            })
            .collect();
        print_json(&json!({
            "deploymentId": deployment_id,
            "result": outcome.name(),
            "reason": match outcome { Outcome::Failed(reason) => Value::from(reason.clone()), _ => Value::Null },
            "elapsedSeconds": (elapsed.as_secs_f64() * 10.0).round() / 10.0,
            "lastStep": deployment.get("currentStep").cloned().unwrap_or(Value::Null),
            "totalSteps": deployment.get("totalSteps").cloned().unwrap_or(Value::Null),
            "apps": apps,
        }));
    }
    let took = format!("{:.1}s", elapsed.as_secs_f64());
    let states: Vec<String> = progress.iter().map(|(id, p)| format!("{id}: {}", p.summary())).collect();
    let (code, headline) = match outcome {
        Outcome::Succeeded => {
            if !options.json {
                say!("deployment {deployment_id} succeeded in {took} ({})", states.join("; "));
            }
            return Ok(());
        }
        Outcome::Failed(reason) => {
            (output::DEPLOYMENT_FAILED, format!("deployment {deployment_id} failed after {took}: {reason}"))
        }
        Outcome::TimedOut => (
            output::TIMED_OUT,
            format!(
                "deployment {deployment_id} did not finish within {} (it goes on in the cluster: `marina deployment watch {deployment_id}`, or cancel it with `marina deployment cancel {deployment_id}`)",
                output::short_duration(options.timeout)
            ),
        ),
        Outcome::Unsettled => (
            output::TIMED_OUT,
            format!(
                "deployment {deployment_id} finished, but its tasks did not stay up within {}: they keep failing",
                output::short_duration(options.timeout)
            ),
        ),
        Outcome::Interrupted => (
            output::INTERRUPTED,
            format!(
                "stopped following deployment {deployment_id}; it goes on in the cluster (`marina deployment watch {deployment_id}`)"
            ),
        ),
    };
    let mut message = headline;
    for (id, app) in progress {
        message.push_str(&format!("\n  {id}: {}", app.summary()));
        let failure = &app.app["lastTaskFailure"];
        if let Some(text) = failure["message"].as_str() {
            message.push_str(&format!(
                "\n    last task failure ({}, {} {} ago on {}): {text}",
                output::string(&failure["taskId"]),
                output::string(&failure["state"]),
                output::age(&failure["timestamp"]),
                output::string(&failure["host"]),
            ));
        }
        if let Some((task, Some(tail))) = stderr_tails.get(id)
            && !tail.trim().is_empty()
        {
            message.push_str(&format!("\n    stderr of {task} (last lines):"));
            for line in tail.lines() {
                message.push_str(&format!("\n      {line}"));
            }
        }
        if let Some(entry) = &app.queued {
            let waiting = entry["count"].as_u64().unwrap_or(0);
            let why = waiting_reason(entry).unwrap_or_else(|| "offers are being matched".to_owned());
            message.push_str(&format!("\n    queue: {waiting} instance(s) waiting to launch: {why}"));
        }
    }
    Err(Exit { code, message }.into())
}

/// `--timeout` of the commands that follow a deployment.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    output::parse_duration(text)
}

/// A deployment id for a query string or path.
pub fn deployment_path(id: &str) -> String {
    format!("/v2/deployments/{}", encode(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_read_from_pieces_of_any_size() {
        let stream = "event: event_stream_attached\ndata: {\"remoteAddress\":\"127.0.0.1\"}\n\n:keep-alive\n\n\
                      event: deployment_success\r\ndata: {\"id\":\"d1\",\r\ndata: \"plan\":{}}\r\n\r\n";
        for size in [1, 3, 7, stream.len()] {
            let mut parser = SseParser::default();
            let events: Vec<SseEvent> = stream.as_bytes().chunks(size).flat_map(|chunk| parser.push(chunk)).collect();
            assert_eq!(events.len(), 2, "pieces of {size}");
            assert_eq!(events[0].kind, "event_stream_attached");
            assert_eq!(
                events[1],
                SseEvent { kind: "deployment_success".into(), data: json!({ "id": "d1", "plan": {} }) }
            );
        }
    }

    #[test]
    fn waiting_reasons_name_declined_offers_and_backoff() {
        let entry = json!({
            "count": 1,
            "delay": { "timeLeftSeconds": 4, "overdue": false },
            "processedOffersSummary": { "rejectSummaryLastOffers": [
                { "reason": "UnfulfilledRole", "declined": 0, "processed": 3 },
                { "reason": "NoCapableRuntime", "declined": 3, "processed": 3 },
            ]},
        });
        assert_eq!(
            waiting_reason(&entry).unwrap(),
            "NoCapableRuntime (3 offers declined), backing off after failures, next launch in 4s"
        );
        assert_eq!(waiting_reason(&json!({ "delay": { "timeLeftSeconds": 0 } })), None);
    }

    #[test]
    fn an_app_is_at_its_target_when_every_instance_runs_healthy() {
        let mut app = AppProgress {
            app: json!({ "instances": 2, "tasksRunning": 2, "tasksStaged": 0, "tasksHealthy": 1, "healthChecks": [{}] }),
            ..AppProgress::default()
        };
        assert!(!app.at_target(), "one is not healthy yet");
        app.app["tasksHealthy"] = json!(2);
        assert!(app.at_target());
        assert_eq!(app.summary(), "2/2 running, 2/2 healthy");
        app.app["lastTaskFailure"] = json!({ "taskId": "a.1", "message": "boom" });
        assert_eq!(app.summary(), "2/2 running, 2/2 healthy; last failure: boom");
        app.failure_before = Some("a.1".into());
        assert_eq!(app.summary(), "2/2 running, 2/2 healthy", "a failure from before is not news");
    }
}
