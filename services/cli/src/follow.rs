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

use clap::Args;
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
/// Events the reader may hold for the monitor; more, and the monitor has fallen behind: the
/// events are dropped, the stream reconnects, and the monitor polls.
const FEED_CAPACITY: usize = 1024;
/// The longest line, and the largest event, read from the stream: anything longer is not an
/// event this CLI needs, and must not make it buffer without bound.
const MAX_EVENT_BYTES: usize = 1 << 20;
/// `?embed=...` of one app as the monitor and `marina app show` read it: counts, last task
/// failure, readiness, deployments.
pub const APP_EMBED: &str = "embed=app.counts&embed=app.lastTaskFailure&embed=app.readiness&embed=app.deployments";
/// The longest `--timeout` or `--settle`: longer is a typo, and would overflow clocks.
const MAX_TIMEOUT: Duration = Duration::from_secs(30 * 86_400);

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

/// The stream sent a line or an event longer than [`MAX_EVENT_BYTES`].
#[derive(Debug, PartialEq)]
pub struct EventTooLarge;

impl SseParser {
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, EventTooLarge> {
        self.pending.extend_from_slice(bytes);
        let mut events = Vec::new();
        loop {
            let Some(end) = self.pending.iter().position(|&b| b == b'\n') else {
                if self.pending.len() > MAX_EVENT_BYTES {
                    return Err(EventTooLarge);
                }
                break;
            };
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
                    if self.data.len() + value.len() + 1 > MAX_EVENT_BYTES {
                        return Err(EventTooLarge);
                    }
                    if !self.data.is_empty() {
                        self.data.push('\n');
                    }
                    self.data.push_str(value);
                }
                _ => {}
            }
        }
        Ok(events)
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
    receiver: mpsc::Receiver<FeedItem>,
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
        let (sender, receiver) = mpsc::channel(FEED_CAPACITY);
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
                // Waits for room: the monitor learns that events were missed, after those it has.
                if sender.send(FeedItem::Lost(reason)).await.is_err() {
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

    /// What has arrived already, without waiting (`Some(None)`: the feed has ended).
    fn try_next(&mut self) -> Option<Option<FeedItem>> {
        match self.receiver.try_recv() {
            Ok(item) => Some(Some(item)),
            Err(mpsc::error::TryRecvError::Empty) => None,
            Err(mpsc::error::TryRecvError::Disconnected) => Some(None),
        }
    }
}

/// Reads one connection's events into `sender` until it ends; returns why it ended.
async fn read_stream(
    mut response: reqwest::Response,
    sender: &mpsc::Sender<FeedItem>,
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
        let Ok(events) = parser.push(&chunk) else {
            return format!("the event stream sent an event larger than {} MiB", MAX_EVENT_BYTES >> 20);
        };
        for event in events {
            if event.kind == "event_stream_attached" {
                if let Some(attached) = attached.take() {
                    let _ = attached.send(());
                }
                continue;
            }
            let lagged = event.kind == "event_stream_lagged";
            match sender.try_send(FeedItem::Event(event)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return "the CLI fell behind the event stream".to_owned();
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return String::new(),
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
    /// `failure_before` is known (read before the change, or by a poll).
    baseline: bool,
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

/// `--timeout` and `--settle` of the commands that follow a deployment (`marina app deploy`
/// and the other changes, `marina deployment watch`).
#[derive(Args, Clone, Debug)]
pub struct FollowTiming {
    /// Give up following after this long (30s, 5m, 1h30m, 500ms; at most 30d); the
    /// deployment itself goes on. Exit code 4.
    #[arg(long, default_value = "5m", value_parser = parse_timeout, value_name = "DURATION")]
    pub timeout: Duration,
    /// Once the deployment is over, how long every instance must keep running with no new
    /// task failure before it counts as a success (the gateway, as Marathon, counts a task
    /// that started and crashed at once as deployed). `0s` trusts the gateway.
    #[arg(long, default_value = "3s", value_parser = parse_timeout, value_name = "DURATION")]
    pub settle: Duration,
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
    /// Each app's last task failure (its task id) read before the change was sent: a failure
    /// with another task id is new, even one between the change and the first poll. Apps not
    /// in it get theirs from the first poll that reads them.
    pub failures_before: BTreeMap<String, Option<String>>,
}

impl Follow {
    pub fn new(timing: &FollowTiming, json: bool) -> Follow {
        Follow {
            timeout: timing.timeout,
            settle: timing.settle,
            deleting: false,
            json,
            failures_before: BTreeMap::new(),
        }
    }
}

/// The last task failure (its task id) of each of `apps` as they are now, for
/// [`Follow::failures_before`]; an app that does not exist has none. Best effort: an app that
/// cannot be read is left to the first poll.
pub async fn failures_before(gateway: &Gateway, apps: &[String]) -> BTreeMap<String, Option<String>> {
    let mut failures = BTreeMap::new();
    for id in apps {
        let path = format!("{}?embed=app.lastTaskFailure", app_path(id));
        if let Ok(app) = gateway.get_optional(&path).await {
            let task = app.and_then(|app| app["app"]["lastTaskFailure"]["taskId"].as_str().map(str::to_owned));
            failures.insert(id.clone(), task);
        }
    }
    failures
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
    // One listener for the whole command, made before anything else: a Ctrl-C while a call is
    // in flight is not lost, and interrupts that call.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|error| anyhow::anyhow!("listening for Ctrl-C: {error}"))?;
    let started = Instant::now();
    // `--timeout` is capped, so this cannot overflow; if it did, there would be no deadline.
    let deadline = started.checked_add(options.timeout);
    let mut display = Display::new();
    let mut progress: BTreeMap<String, AppProgress> = apps
        .iter()
        .map(|id| {
            let mut app = AppProgress { stopping: options.deleting, ..AppProgress::default() };
            if let Some(before) = options.failures_before.get(id) {
                app.baseline = true;
                app.failure_before.clone_from(before);
                app.failure_seen.clone_from(before);
            }
            (id.clone(), app)
        })
        .collect();
    let mut deployment = Value::Null;

    let watching = async {
        let mut step = "starting".to_owned();
        let mut gone_since: Option<Instant> = None;
        // Once the deployment is over: since when every app has been at its target.
        let mut finished = false;
        let mut stable_since: Option<Instant> = None;
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stream_lost_said = false;
        let mut poll_error_said: Option<String> = None;
        'follow: loop {
            let mut refresh = false;
            let mut items = Vec::new();
            tokio::select! {
                () = sleep_until(deadline) => break if finished { Outcome::Unsettled } else { Outcome::TimedOut },
                item = async { match feed.as_mut() { Some(feed) => feed.next().await, None => std::future::pending().await } } => {
                    items.push(item);
                    // What else has arrived: a burst of events costs one poll, not one each.
                    while let Some(item) = feed.as_mut().and_then(EventFeed::try_next) {
                        let ended = item.is_none();
                        items.push(item);
                        if ended || items.len() >= FEED_CAPACITY {
                            break;
                        }
                    }
                }
                _ = poll.tick() => refresh = true,
            }
            for item in items {
                match item {
                    None => feed = None,
                    Some(FeedItem::Lost(reason)) => {
                        // Events were missed: the state is read instead.
                        refresh = true;
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
                                break 'follow Outcome::Failed(reason.to_owned());
                            }
                            "status_update_event" | "health_status_changed_event" => {
                                let app = event.data["appId"].as_str();
                                let of_ours = app.is_some_and(|app| progress.contains_key(app));
                                refresh |= of_ours;
                                let failed = matches!(
                                    event.data["taskStatus"].as_str(),
                                    Some("TASK_FAILED" | "TASK_ERROR" | "TASK_LOST" | "TASK_DROPPED" | "TASK_GONE")
                                );
                                if of_ours && (failed || event.data["alive"] == false) {
                                    stable_since = None;
                                }
                            }
                            _ => refresh |= ours,
                        }
                    }
                }
            }
            if !refresh {
                continue;
            }
            match poll_state(gateway, deployment_id, &mut progress).await {
                Ok(_) if finished => {
                    poll_error_said = None;
                    step = format!(
                        "done; checking that every instance stays up ({})",
                        output::short_duration(options.settle)
                    );
                }
                Ok(Some(current)) => {
                    poll_error_said = None;
                    gone_since = None;
                    step = crate::deployment::step_summary(&current);
                    deployment = current;
                }
                Ok(None) => {
                    poll_error_said = None;
                    // It left /v2/deployments: done if every app is at its target. Otherwise
                    // its `deployment_failed` may still be on its way, or the counts a moment
                    // behind; after a grace it counts as over all the same (its success event
                    // may have been missed), and staying at the target decides, by --timeout.
                    if let Some((id, _)) = progress.iter().find(|(_, p)| p.deleted && !p.stopping) {
                        break Outcome::Failed(format!("{id} was deleted"));
                    }
                    if progress.values().all(AppProgress::at_target) {
                        finished = true;
                        step = "done".to_owned();
                    } else if gone_since.get_or_insert_with(Instant::now).elapsed() >= GONE_GRACE {
                        let other = progress
                            .values()
                            .flat_map(|p| p.app["deployments"].as_array().into_iter().flatten())
                            .filter_map(|d| d["id"].as_str())
                            .find(|d| *d != deployment_id);
                        if let Some(next) = other {
                            break Outcome::Failed(format!("it was replaced by deployment {next}"));
                        }
                        finished = true;
                        step = "done; waiting for every instance to run".to_owned();
                    } else {
                        step = "finishing".to_owned();
                    }
                }
                Err(error) => {
                    // Said once per different error, not at every poll while it lasts.
                    let said = format!("polling: {error:#}");
                    if poll_error_said.as_ref() != Some(&said) {
                        display.note(&said);
                        poll_error_said = Some(said);
                    }
                }
            }
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
        }
    };
    let outcome = tokio::select! {
        outcome = watching => outcome,
        _ = interrupt.recv() => Outcome::Interrupted,
    };
    display.finish();
    let ending = async {
        // The final state, for the report (the last poll may be a second old).
        let _ = poll_state(gateway, deployment_id, &mut progress).await;
        report(gateway, deployment_id, &deployment, &progress, &outcome, started, options).await
    };
    tokio::select! {
        result = ending => result,
        // A Ctrl-C while the report is being made: no report.
        _ = interrupt.recv() => Err(Exit {
            code: output::INTERRUPTED,
            message: format!("stopped following deployment {deployment_id}; it goes on in the cluster"),
        }
        .into()),
    }
}

/// Sleeps until `deadline`; forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Reads the deployment (`None` once it is no longer in progress), the apps and the queue.
async fn poll_state(
    gateway: &Gateway,
    deployment_id: &str,
    progress: &mut BTreeMap<String, AppProgress>,
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
        let path = format!("{}?{APP_EMBED}", app_path(id));
        match gateway.get_optional(&path).await? {
            Some(body) => {
                app.app = body["app"].clone();
                app.deleted = false;
            }
            None => app.deleted = true,
        }
        let failure = app.app["lastTaskFailure"]["taskId"].as_str().map(str::to_owned);
        if !app.baseline {
            // Only once this app has been read: a failed poll leaves it to the next one.
            app.baseline = true;
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

/// `--timeout` (and `--settle`) of the commands that follow a deployment: a duration of at
/// most [`MAX_TIMEOUT`].
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    let duration = output::parse_duration(text)?;
    if duration > MAX_TIMEOUT {
        return Err(format!("{:?}: at most {}", text.trim(), output::short_duration(MAX_TIMEOUT)));
    }
    Ok(duration)
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
            let events: Vec<SseEvent> =
                stream.as_bytes().chunks(size).flat_map(|chunk| parser.push(chunk).unwrap()).collect();
            assert_eq!(events.len(), 2, "pieces of {size}");
            assert_eq!(events[0].kind, "event_stream_attached");
            assert_eq!(
                events[1],
                SseEvent { kind: "deployment_success".into(), data: json!({ "id": "d1", "plan": {} }) }
            );
        }
    }

    #[test]
    fn an_endless_line_or_event_is_refused_not_buffered() {
        let mut parser = SseParser::default();
        let piece = vec![b'x'; 64 * 1024];
        let mut result = Ok(Vec::new());
        for _ in 0..(MAX_EVENT_BYTES / piece.len() + 2) {
            result = parser.push(&piece);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(EventTooLarge), "a line without its end");
        // Many short data lines that never end the event.
        let mut parser = SseParser::default();
        let line = format!("data: {}\n", "y".repeat(1000));
        let outcome = (0..2_000).map(|_| parser.push(line.as_bytes())).find(Result::is_err);
        assert_eq!(outcome, Some(Err(EventTooLarge)), "an event without its end");
    }

    #[test]
    fn timeouts_are_capped() {
        assert_eq!(parse_timeout("30d"), Ok(MAX_TIMEOUT));
        assert!(parse_timeout("31d").unwrap_err().contains("at most 30d"));
        assert!(parse_timeout("1e30").unwrap_err().contains("too long"));
        assert!(Instant::now().checked_add(MAX_TIMEOUT).is_some());
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
