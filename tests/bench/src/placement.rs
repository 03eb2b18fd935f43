//! Placement throughput: how fast the gateway turns submitted apps into RUNNING tasks.
//!
//! The cluster, all in this process: a 3-node coord quorum, a master, a gateway and N
//! agents on the `sim` runtime, each the production `spawn` on a loopback listener with its
//! own directory. One process because a 2-core machine is saturated by the cluster either
//! way and one process keeps 1,000 agents affordable (as kubemark's hollow nodes); every hop
//! is still real gRPC/HTTP on loopback and every coord write a Raft commit on disk. (Coord
//! as processes was tried: it needs the workspace's binaries rebuilt before each run, and
//! the runs stalled the same way.) The agents' threads run at nice 10 (`--agent-nice`):
//! they stand for other hosts, so they get what CPU the control plane leaves — at nice 0
//! with `--stress`, whose load stands for the control plane's host alone.
//!
//! Apps are submitted through the gateway's REST API (`POST /v2/apps`), a mix of a few apps
//! with many instances and many apps with few. Progress is followed on the gateway's
//! `/metrics` (`marina_gateway_instances{state="TASK_RUNNING"}`: the gateway's own view, and
//! cheap to read while it works). Once every task runs, `GET /v2/apps/{id}/tasks` for each
//! app gives each task's `startedAt` — when the gateway first saw it RUNNING — from which come
//! the per-task latency (its app's submission → RUNNING) and the rate (tasks / (last
//! RUNNING − first submission)).
//!
//! Around that: a calibration line (one client's coord write rate, so runs on different VMs
//! compare), the services' health counters (elections, session expiries, agents marked
//! unreachable: load must cause none), heap per service ([`heap`]) and coord's disk use.
//! `--runs N` repeats on fresh clusters and prints the spread; `--stress N` runs
//! `stress-ng --cpu N` beside.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use futures::StreamExt;
use marina_coord_client::CoordUrl;
use marina_daemon::Shutdown;
use marina_daemon::tls::Role;
use marina_gateway::app::Timestamp;
use marina_tests::{CoordCluster, TestCa, eventually};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::heap;

/// tmpfs, for the hollow agents' work dirs.
const SHM: &str = "/dev/shm";

/// What this machine (2 cores) should sustain.
const TARGET_TASKS_PER_SEC: f64 = 5_000.0;

#[derive(clap::Args)]
pub struct Args {
    /// Simulated agents (the `sim` runtime), each 4 cpus / 4 GiB.
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Tasks submitted in all.
    #[arg(long, default_value_t = 100_000)]
    tasks: usize,
    /// Apps the tasks are spread over (default: one per 50 tasks). A tenth of them carry
    /// most tasks; the rest have 1–10 instances each.
    #[arg(long)]
    apps: Option<usize>,
    /// Concurrent `POST /v2/apps` requests.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Give up when not every task runs after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout_seconds: u64,
    /// Log the services' events at this `tracing` filter (e.g. `warn`, or
    /// `warn,marina_master=info`) to stderr. Default: no logs.
    #[arg(long)]
    log: Option<String>,
    /// Runs, each on a fresh cluster; with more than one, a last line gives the spread.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Also run `stress-ng --cpu N` beside the cluster for the whole benchmark (CPU load
    /// from outside, as on a shared host). `scripts/setup-bench` installs stress-ng.
    #[arg(long, value_name = "N")]
    stress: Option<usize>,
    /// The niceness of the hollow agents' threads. They stand for other hosts: at 10 (the
    /// default) they get the CPU the control plane leaves, as on hosts of their own; 0
    /// makes them compete with it on equal terms, and is the default with `--stress`, whose
    /// load is on the control plane's host, not on theirs (niced below it, the agents fell
    /// 10 s behind on heartbeats).
    #[arg(long, value_parser = clap::value_parser!(i32).range(0..=19))]
    agent_nice: Option<i32>,
}

/// An app to submit: its id and instance count.
struct AppSpec {
    id: String,
    instances: usize,
    /// One of the many-instance apps.
    big: bool,
}

/// Splits `tasks` over `apps` apps: nine in ten are small (1–10 instances, cycling), the
/// rest share what is left evenly. Deterministic, and sums to exactly `tasks`.
fn app_mix(tasks: usize, apps: usize) -> Vec<AppSpec> {
    let apps = apps.clamp(1, tasks.max(1));
    let big = (apps / 10).max(1);
    let mut specs = Vec::new();
    let mut used = 0;
    for index in 0..apps - big {
        let instances = 1 + index % 10;
        // Leave at least one instance for each big app.
        if used + instances + big > tasks {
            break;
        }
        used += instances;
        specs.push(AppSpec { id: format!("/bench/small-{index:05}"), instances, big: false });
    }
    let rest = tasks - used;
    for index in 0..big {
        let instances = rest / big + usize::from(index < rest % big);
        specs.push(AppSpec { id: format!("/bench/big-{index:04}"), instances, big: true });
    }
    specs
}

fn app_json(spec: &AppSpec) -> Value {
    json!({
        "id": spec.id,
        // The sim runtime runs nothing: the command only has to be valid.
        "cmd": "sleep 1000000",
        "instances": spec.instances,
        "cpus": 0.01,
        "mem": 8,
        "disk": 0,
        "portDefinitions": [],
    })
}

fn now_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    ensure!(args.agents > 0 && args.tasks > 0, "--agents and --tasks must be positive");
    ensure!(args.runs > 0, "--runs must be positive");
    raise_file_limit(args.agents)?;
    // Coord's Raft runs on threads coord starts itself: count their heap as coord's.
    marina_coord::on_raft_thread_start(|| heap::set_thread_service(heap::Service::Coord));
    let specs = app_mix(args.tasks, args.apps.unwrap_or((args.tasks / 50).max(2)));
    let _telemetry = match &args.log {
        Some(level) => {
            let config = marina_daemon::telemetry::LogConfig { level: level.clone(), ..Default::default() };
            Some(marina_daemon::telemetry::init(
                &config,
                marina_daemon::telemetry::Identity { service: "marina-bench", instance: "placement" },
            )?)
        }
        None => None,
    };
    let _stress = args.stress.map(Stress::start).transpose()?;
    let mut runs = Vec::new();
    for run in 1..=args.runs {
        if args.runs > 1 {
            println!("run {run} of {}", args.runs);
        }
        runs.push(run_once(&args, &specs).await?);
    }
    if args.runs > 1 {
        print_spread(&runs);
    }
    Ok(())
}

/// Descriptors each hollow agent holds in this one process: its listener and journal, and
/// both ends of its connections to the master and to coord, sometimes two coord nodes (one
/// it asked first, then the leader it was pointed to). Measured: 6,075 open in a run of
/// 1,000 agents, 19,800 of 3,000 agents (which then ran out at this sandbox's 20,000).
const FILES_PER_AGENT: u64 = 7;

/// Raises this process's open-file limit to what `agents` hollow agents and the rest of the
/// cluster need (10,000 agents: about 71,000, past the usual 1,024 or 20,000), up to the
/// hard limit — or beyond it, as root — and fails at once, saying so, when that is not
/// enough, rather than with "too many open files" minutes into the run.
fn raise_file_limit(agents: usize) -> anyhow::Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let needed = agents as u64 * FILES_PER_AGENT + 1024;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= needed {
        return Ok(());
    }
    // Raising the hard limit takes CAP_SYS_RESOURCE; otherwise the soft one goes as far as
    // the hard one allows.
    if setrlimit(Resource::RLIMIT_NOFILE, needed, needed.max(hard)).is_err() {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE)?;
    ensure!(
        soft >= needed,
        "{agents} agents need about {needed} open files and this process may have {soft}: \
         raise `ulimit -n` (as root, or in /etc/security/limits.conf)"
    );
    Ok(())
}

/// What one run measured.
struct RunResult {
    tasks_per_second: f64,
    p99_ms: i64,
    /// Load-caused trouble: leader changes, session expiries, agents marked unreachable.
    disturbances: u64,
}

/// The last line of a multi-run benchmark: each figure's spread over the runs.
fn print_spread(runs: &[RunResult]) {
    let spread = |values: Vec<f64>| {
        let mut values = values;
        values.sort_by(f64::total_cmp);
        let median = values[values.len() / 2];
        (values[0], median, values[values.len() - 1])
    };
    let (rate_min, rate_median, rate_max) = spread(runs.iter().map(|r| r.tasks_per_second).collect());
    let (p99_min, p99_median, p99_max) = spread(runs.iter().map(|r| r.p99_ms as f64).collect());
    let met = runs.iter().filter(|r| r.tasks_per_second >= TARGET_TASKS_PER_SEC).count();
    let disturbed = runs.iter().filter(|r| r.disturbances > 0).count();
    println!(
        "spread: {} runs: tasks/s min {rate_min:.0} / median {rate_median:.0} / max {rate_max:.0} \
         (≥ {TARGET_TASKS_PER_SEC:.0} in {met} of {}); p99 submit→RUNNING min {p99_min:.0} / median \
         {p99_median:.0} / max {p99_max:.0} ms; {disturbed} runs with a leader change, session expiry or \
         unreachable agent",
        runs.len(),
        runs.len(),
    );
}

async fn run_once(args: &Args, specs: &[AppSpec]) -> anyhow::Result<RunResult> {
    // Hollow agents keep their checkpoints (every task and status update, fsync'd) in memory
    // when they can: otherwise this measures the disk's fsync latency, not placement. Coord
    // keeps its Raft log on disk, as in production.
    let agent_dirs = if Path::new(SHM).is_dir() { tempfile::tempdir_in(SHM)? } else { tempfile::tempdir()? };
    let agent_root = agent_dirs.path().to_owned();
    // Only with the tagging allocator is there anything to sample.
    let peaks = if cfg!(feature = "heap-profile") { Some(heap::PeakSampler::start()?) } else { None };
    let started = Instant::now();
    let agent_nice = args.agent_nice.unwrap_or(if args.stress.is_some() { 0 } else { 10 });
    let cluster = Cluster::start(args.agents, &agent_root, agent_nice).await?;
    let base = format!("http://{}", cluster.gateway_address);
    // The machine is shared (2 cores): its load says how much of it this run had.
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "placement: 3 coord nodes, 1 master, 1 gateway, {} sim agents at nice {agent_nice} in one process \
         (up in {:.1}s); gateway {base}; agent checkpoints in {}; load average {}",
        args.agents,
        started.elapsed().as_secs_f64(),
        agent_dirs.path().display(),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    );
    println!("{}", cluster.calibration);
    let http = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency).build()?;
    let operator = marina_tests::tls::http_client(&cluster.ca.operator());
    let health_before = Health::read(&cluster, &http, &operator).await?;
    let heap_before = heap::live();
    let deadline = Instant::now() + Duration::from_secs(args.timeout_seconds);

    // Submit every app, `concurrency` at a time, remembering when each was sent.
    let first_submit = now_millis();
    let submit_started = Instant::now();
    let retries = std::sync::atomic::AtomicUsize::new(0);
    let submitted: Vec<(String, i64)> = futures::stream::iter(specs.iter())
        .map(|spec| submit(&http, &base, spec, &retries))
        .buffer_unordered(args.concurrency.max(1))
        .collect::<Vec<anyhow::Result<_>>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let submit_seconds = submit_started.elapsed().as_secs_f64();
    let submitted: HashMap<String, i64> = submitted.into_iter().collect();
    let phases = deployment_phases(&http, &base).await?;

    wait_all_running(&http, &base, (&cluster.master_address, &operator), args.tasks, deadline).await?;
    let heap_running = heap::live();
    let offers = offer_phases(&http, &base).await?;

    // Every task's startedAt, from the gateway's own record, one app at a time: a listing of
    // every task at once would be gigabytes (its JSON, and the tree parsed from it) at a
    // million tasks.
    let mut rows = [Group::new("few-instance apps"), Group::new("many-instance apps"), Group::new("all")];
    let mut last_running = first_submit;
    let (client, gateway) = (&http, base.as_str());
    let mut started = futures::stream::iter(specs.iter())
        .map(|spec| async move { anyhow::Ok((spec, started_at(client, gateway, &spec.id).await?)) })
        .buffer_unordered(args.concurrency.max(1));
    while let Some(listed) = started.next().await {
        let (spec, started_at) = listed?;
        let Some(&sent) = submitted.get(&spec.id) else { continue };
        let group = usize::from(spec.big);
        rows[group].apps += 1;
        rows[2].apps += 1;
        for running in started_at {
            last_running = last_running.max(running);
            for index in [group, 2] {
                rows[index].latencies_ms.push((running - sent).max(0));
                rows[index].last_running = rows[index].last_running.max(running);
            }
        }
    }
    drop(started);
    for row in &mut rows {
        row.latencies_ms.sort_unstable();
    }
    let running = rows[2].latencies_ms.len();
    ensure!(running == args.tasks, "{running} tasks have a startedAt, {} were submitted", args.tasks);
    print_table(&rows, first_submit);
    println!("{phases}");
    println!("{offers}");
    let health = Health::read(&cluster, &http, &operator).await?.since(&health_before);
    println!("health: {health}");
    if let Some(peaks) = &peaks {
        print_memory(&heap_before, &heap_running, &peaks.peaks(), args.tasks, args.agents);
    } else {
        println!("heap per service: not counted (build marina-bench with --features heap-profile)");
    }
    print_process_memory();
    print_coord_disk(&cluster);
    let seconds = (last_running - first_submit).max(1) as f64 / 1000.0;
    let rate = args.tasks as f64 / seconds;
    let p99_ms = rows[2].quantile(0.99);
    println!(
        "summary: {} tasks in {} apps on {} sim agents RUNNING in {seconds:.1}s: {rate:.0} tasks/s \
         (target ≥ {TARGET_TASKS_PER_SEC:.0}: {}), p99 submit→RUNNING {p99_ms} ms; submitting took \
         {submit_seconds:.1}s ({} retried after 429/503); {} disturbances",
        args.tasks,
        specs.len(),
        args.agents,
        if rate >= TARGET_TASKS_PER_SEC { "met" } else { "NOT met" },
        retries.load(std::sync::atomic::Ordering::Relaxed),
        health.disturbances(),
    );
    drop(cluster);
    drop(agent_dirs);
    Ok(RunResult { tasks_per_second: rate, p99_ms, disturbances: health.disturbances() })
}

/// `POST /v2/apps` for one app; on 429 or 503 waits as `Retry-After` says (as Marathon's
/// clients do) and tries again. Returns the app's id and when it was first sent.
async fn submit(
    http: &reqwest::Client,
    base: &str,
    spec: &AppSpec,
    retries: &std::sync::atomic::AtomicUsize,
) -> anyhow::Result<(String, i64)> {
    let sent = now_millis();
    let body = app_json(spec);
    for _ in 0..MAX_SUBMIT_ATTEMPTS {
        let response = http.post(format!("{base}/v2/apps")).json(&body).send().await?;
        let status = response.status();
        if status.is_success() {
            return Ok((spec.id.clone(), sent));
        }
        if status != reqwest::StatusCode::TOO_MANY_REQUESTS && status != reqwest::StatusCode::SERVICE_UNAVAILABLE {
            bail!("POST /v2/apps {}: {status}: {}", spec.id, response.text().await.unwrap_or_default());
        }
        retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let wait = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok()?.trim().parse::<u64>().ok())
            .unwrap_or(1);
        tokio::time::sleep(Duration::from_secs(wait.clamp(1, 30))).await;
    }
    bail!("POST /v2/apps {}: still refused after {MAX_SUBMIT_ATTEMPTS} attempts", spec.id)
}

/// When each of the app's tasks started (ms since the epoch), as `GET /v2/apps/{id}/tasks`
/// says; tasks without a `startedAt` are left out.
async fn started_at(http: &reqwest::Client, base: &str, app_id: &str) -> anyhow::Result<Vec<i64>> {
    let listing: Value = http
        .get(format!("{base}/v2/apps{app_id}/tasks"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await
        .with_context(|| format!("reading {app_id}'s tasks"))?;
    let tasks = listing["tasks"].as_array().with_context(|| format!("{app_id}: no task list"))?;
    tasks
        .iter()
        .filter_map(|task| task["startedAt"].as_str())
        .map(|started_at| -> anyhow::Result<i64> { Ok(Timestamp::parse(started_at)?.as_millis()) })
        .collect()
}

/// A submission refused this often (429/503) fails the run.
const MAX_SUBMIT_ATTEMPTS: usize = 20;

/// `stress-ng --cpu N`, running until dropped.
struct Stress(std::process::Child);

impl Stress {
    fn start(workers: usize) -> anyhow::Result<Self> {
        let child = std::process::Command::new("stress-ng")
            .args(["--cpu", &workers.to_string(), "--quiet"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("starting stress-ng (scripts/setup-bench installs it)")?;
        println!("stress: stress-ng --cpu {workers} running beside the cluster (pid {})", child.id());
        Ok(Self(child))
    }
}

impl Drop for Stress {
    fn drop(&mut self) {
        // SIGTERM, so stress-ng stops its workers too (SIGKILL would orphan them).
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

/// Counters that show the cluster's own load disturbing it, read from every service's
/// `/metrics` before and after the run.
#[derive(Default)]
struct Health {
    /// Raft term of each coord node: a change is an election.
    coord_terms: Vec<f64>,
    coord_sessions_expired: f64,
    master_elections: f64,
    agents_marked_unreachable: f64,
    master_stalled_seconds: f64,
    /// The scheduler (the gateway) read events too slowly, its queue filled and it had to
    /// subscribe again and reconcile: a hiccup, not a failure.
    scheduler_overflows: f64,
    gateway_elections: f64,
}

impl Health {
    async fn read(cluster: &Cluster, http: &reqwest::Client, operator: &reqwest::Client) -> anyhow::Result<Self> {
        let get = |client: &reqwest::Client, url: String| {
            let request = client.get(url);
            async move { anyhow::Ok(request.send().await?.error_for_status()?.text().await?) }
        };
        let mut health = Health::default();
        for id in cluster.coord.ids() {
            let text = get(operator, format!("https://{}/metrics", cluster.coord.address(id))).await?;
            health.coord_terms.push(metric(&text, "marina_coord_term"));
            health.coord_sessions_expired += metric(&text, "marina_coord_sessions_expired_total");
        }
        let master = get(operator, format!("https://{}/metrics", cluster.master_address)).await?;
        health.master_elections = metric(&master, "marina_master_elections_won_total");
        health.agents_marked_unreachable = metric(&master, "marina_master_agents_marked_unreachable_total");
        health.master_stalled_seconds = metric(&master, "marina_master_stalled_seconds_total");
        health.scheduler_overflows = metric(&master, "marina_master_scheduler_overflows_total");
        let gateway = get(http, format!("http://{}/metrics", cluster.gateway_address)).await?;
        health.gateway_elections = metric(&gateway, "marina_gateway_elections_won_total");
        Ok(health)
    }

    /// What changed since `before`.
    fn since(&self, before: &Health) -> Health {
        Health {
            coord_terms: self.coord_terms.iter().zip(&before.coord_terms).map(|(now, then)| now - then).collect(),
            coord_sessions_expired: self.coord_sessions_expired - before.coord_sessions_expired,
            master_elections: self.master_elections - before.master_elections,
            agents_marked_unreachable: self.agents_marked_unreachable - before.agents_marked_unreachable,
            master_stalled_seconds: self.master_stalled_seconds - before.master_stalled_seconds,
            scheduler_overflows: self.scheduler_overflows - before.scheduler_overflows,
            gateway_elections: self.gateway_elections - before.gateway_elections,
        }
    }

    /// Coord elections: the largest term change of any node.
    fn coord_elections(&self) -> f64 {
        self.coord_terms.iter().copied().fold(0.0, f64::max)
    }

    /// Elections, expiries and agents lost: each one the load's doing (nothing failed).
    fn disturbances(&self) -> u64 {
        (self.coord_elections()
            + self.coord_sessions_expired
            + self.master_elections
            + self.agents_marked_unreachable
            + self.gateway_elections) as u64
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "coord elections {:.0}, coord sessions expired {:.0}, agents marked unreachable {:.0}, \
             master leaderships {:.0}, gateway leaderships {:.0}; the master stalled {:.1}s in all; the \
             gateway's event queue overflowed {:.0} times",
            self.coord_elections(),
            self.coord_sessions_expired,
            self.agents_marked_unreachable,
            self.master_elections,
            self.gateway_elections,
            self.master_stalled_seconds,
            self.scheduler_overflows,
        )
    }
}

/// Where submission time went on the gateway's leader: the mean time per deployment in each
/// phase (`marina_gateway_deployment_phase_seconds`), read as submission ends.
async fn deployment_phases(http: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    let text = gateway_metrics(http, base).await?;
    let (count, means) =
        phase_means(&text, "marina_gateway_deployment_phase_seconds", &["queued", "plan", "commit", "adopt"]);
    Ok(format!(
        "deployments: {count:.0} on the leader; mean per deployment: {means} (queued: behind the deployments \
         before it; they are carried out one at a time)"
    ))
}

/// Where the gateway's time using offers went: batches of offers used, tasks placed per
/// batch, and each phase's mean (from `marina_gateway_offer_*`).
async fn offer_phases(http: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    let text = gateway_metrics(http, base).await?;
    let (count, means) = phase_means(&text, "marina_gateway_offer_phase_seconds", &["decide", "record", "accept"]);
    let placed = metric(&text, "marina_gateway_offer_batch_tasks_sum");
    let per_batch = if count > 0.0 { placed / count } else { 0.0 };
    Ok(format!(
        "offers: {count:.0} batches used, {per_batch:.0} tasks placed per batch; mean per batch: {means} \
         (batches are used one at a time)"
    ))
}

/// The count of a phase histogram (label `phase`) and `phase X.XX ms` for each phase's mean.
fn phase_means(text: &str, name: &str, phases: &[&str]) -> (f64, String) {
    let mut count_of_first = 0.0;
    let means: Vec<String> = phases
        .iter()
        .enumerate()
        .map(|(index, phase)| {
            let labelled = |suffix: &str| format!("{name}_{suffix}{{phase=\"{phase}\"}}");
            let (sum, count) = (metric(text, &labelled("sum")), metric(text, &labelled("count")));
            if index == 0 {
                count_of_first = count;
            }
            format!("{phase} {:.2} ms", if count > 0.0 { 1000.0 * sum / count } else { 0.0 })
        })
        .collect();
    (count_of_first, means.join(", "))
}

/// The gateway's `/metrics` page.
async fn gateway_metrics(http: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    Ok(http.get(format!("{base}/metrics")).send().await?.error_for_status()?.text().await?)
}

/// The value of an unlabelled metric in a Prometheus text page (0 when absent).
fn metric(text: &str, name: &str) -> f64 {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0.0)
}

/// Heap per service: before submission, with every task running (and the bytes per task
/// that added), and the sampled peak.
fn print_memory(before: &[i64; 5], running: &[i64; 5], peaks: &[i64; 5], tasks: usize, agents: usize) {
    let mb = |bytes: i64| bytes as f64 / (1 << 20) as f64;
    println!("{:<22} {:>12} {:>12} {:>10} {:>11}", "heap", "before MB", "running MB", "peak MB", "bytes/task");
    for service in heap::Service::ALL {
        let index = service as usize;
        let name = match service {
            heap::Service::Coord => "coord (3 nodes)".to_owned(),
            heap::Service::Agents => format!("agents ({agents})"),
            heap::Service::Bench => "bench client".to_owned(),
            other => other.name().to_owned(),
        };
        println!(
            "{name:<22} {:>12.1} {:>12.1} {:>10.1} {:>11.0}",
            mb(before[index]),
            mb(running[index]),
            mb(peaks[index]),
            (running[index] - before[index]) as f64 / tasks as f64,
        );
    }
}

/// The whole process's resident memory: every service and the bench together.
fn print_process_memory() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status.lines().find_map(|line| line.strip_prefix(name)).map_or("?".to_owned(), |v| v.trim().to_owned())
    };
    println!("process: VmRSS {}, VmHWM {} (all services and the bench together)", field("VmRSS:"), field("VmHWM:"));
}

/// Each coord node's Raft log and snapshot on disk.
fn print_coord_disk(cluster: &Cluster) {
    let rows: Vec<String> = cluster
        .coord
        .ids()
        .into_iter()
        .map(|id| {
            let (log, snapshot, other) = disk_usage(cluster.coord.data_dir(id));
            format!(
                "node {id} log {:.1} MB, snapshot {:.1} MB, other {:.1} MB",
                log as f64 / 1e6,
                snapshot as f64 / 1e6,
                other as f64 / 1e6
            )
        })
        .collect();
    println!("coord disk: {}", rows.join("; "));
}

/// Bytes under `dir`: in a `log` directory, in a `snapshot` directory, elsewhere.
fn disk_usage(root: &Path) -> (u64, u64, u64) {
    let mut totals = (0, 0, 0);
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let Ok(metadata) = entry.metadata() else { continue };
            let path = entry.path();
            if metadata.is_dir() {
                pending.push(path);
                continue;
            }
            let relative = path.strip_prefix(root).unwrap_or(&path);
            let under = |name: &str| relative.components().any(|c| c.as_os_str() == name);
            match (under("log"), under("snapshot")) {
                (true, _) => totals.0 += metadata.len(),
                (_, true) => totals.1 += metadata.len(),
                _ => totals.2 += metadata.len(),
            }
        }
    }
    totals
}

/// Coord, master, gateway and agents, each the production `spawn`, in this process (as
/// `marina_tests::MarinaCluster`, with deadlines sized for 1,000 agents). Everything stops
/// (and its directories go) on drop.
///
/// Each service runs on its own tokio runtime, as it would in its own process: sharing
/// one runtime, the coord nodes' Raft tasks queued behind a thousand agents' tasks, their
/// heartbeats missed openraft's deadline (the heartbeat interval) and leadership changed in
/// mid-run — a stall a real deployment, where coord has its own processes, does not have.
struct Cluster {
    /// Coord, master, gateway, agents. First, so they stop before the directories go.
    _runtimes: ServiceRuntimes,
    /// Stops the coord nodes and removes their data when dropped.
    coord: CoordCluster,
    /// This machine's speed, measured on the cluster's coord before anything else ran.
    calibration: String,
    gateway_address: std::net::SocketAddr,
    master_address: std::net::SocketAddr,
    ca: TestCa,
    shutdowns: Vec<Shutdown>,
    /// Master and gateway work dirs.
    _dir: tempfile::TempDir,
}

/// The services' runtimes. They go without waiting for their tasks (already told to stop):
/// they are dropped inside the bench's own runtime, where blocking is not allowed — also on
/// an early return while the cluster starts.
struct ServiceRuntimes(Vec<tokio::runtime::Runtime>);

impl Drop for ServiceRuntimes {
    fn drop(&mut self) {
        for runtime in self.0.drain(..) {
            runtime.shutdown_background();
        }
    }
}

/// A runtime for one service, with as many workers as tokio gives a process by default here
/// (one per core); its threads are named after the service (`coord-0` in `top -H`), and
/// what they allocate is counted as the service's ([`heap`]).
/// A runtime of `workers` threads (and its blocking pool) for `service`, its threads named
/// after it and run at `nice`.
fn service_runtime(service: heap::Service, workers: usize, nice: i32) -> anyhow::Result<tokio::runtime::Runtime> {
    let name = service.name();
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .on_thread_start(move || {
            heap::set_thread_service(service);
            if nice != 0 {
                set_this_thread_nice(nice);
            }
        })
        .thread_name_fn(move || {
            static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            format!("{name}-{}", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
        })
        .enable_all()
        .build()?)
}

/// Sets the calling thread's niceness (Linux applies `PRIO_PROCESS` with id 0 to the calling
/// thread alone). Best effort: a thread left at 0 only makes the run harsher.
#[allow(unsafe_code)]
fn set_this_thread_nice(nice: i32) {
    // SAFETY: setpriority takes plain integers and touches no memory of ours.
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
}

/// Runs `future` to completion on `runtime` (where everything it spawns then lives).
async fn on<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    future: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    runtime.spawn(future).await.expect("a service's start panicked")
}

/// Starts one service on `runtime` with a loopback listener and a shutdown signal of its
/// own (kept in `shutdowns`); `start` is the service's production `spawn`.
async fn start_service<T, F>(
    runtime: &tokio::runtime::Runtime,
    shutdowns: &mut Vec<Shutdown>,
    start: impl FnOnce(TcpListener, Shutdown) -> F + Send + 'static,
) -> anyhow::Result<(T, std::net::SocketAddr)>
where
    F: std::future::Future<Output = anyhow::Result<T>> + Send,
    T: Send + 'static,
{
    // Bound here, registered with `runtime`'s reactor there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let address = listener.local_addr()?;
    let shutdown = Shutdown::new();
    shutdowns.push(shutdown.clone());
    let started = on(runtime, async move { start(TcpListener::from_std(listener)?, shutdown).await }).await?;
    Ok((started, address))
}

impl Cluster {
    async fn start(agents: usize, agent_root: &Path, agent_nice: i32) -> anyhow::Result<Self> {
        let runtimes = ServiceRuntimes(vec![
            service_runtime(heap::Service::Coord, 2, 0)?,
            service_runtime(heap::Service::Master, 2, 0)?,
            service_runtime(heap::Service::Gateway, 2, 0)?,
            service_runtime(heap::Service::Agents, 2, agent_nice)?,
        ]);
        // Every agent, the gateway and Raft's own peers connect from 127.0.0.1 here, as a
        // thousand hosts behind one NAT would: the per-address bound on TLS handshakes in
        // progress (32 by default) would close Raft's reconnections while the agents attach.
        let server = marina_daemon::endpoint::ServerLimits {
            max_tls_handshakes_per_peer: agents + 64,
            ..marina_daemon::endpoint::ServerLimits::default()
        };
        let coord = on(
            &runtimes.0[0],
            CoordCluster::start_with(3, move |config| {
                config.server.max_tls_handshakes_per_peer = server.max_tls_handshakes_per_peer
            }),
        )
        .await;
        let calibration = calibrate(&coord).await?;
        let url = CoordUrl { root: "/marina".into(), ..coord.url() };
        let ca = coord.ca().clone();
        let dir = tempfile::tempdir()?;
        let mut shutdowns = Vec::new();
        let master_dir = dir.path().join("master");
        let master_coord = url.clone();
        let master_tls = ca.config(Role::Master, None);
        let (master, master_address) =
            start_service(&runtimes.0[1], &mut shutdowns, move |listener, shutdown| async move {
                let config = marina_master::Config {
                    listen: listener.local_addr()?.to_string(),
                    coord: master_coord,
                    work_dir: master_dir,
                    tls: master_tls,
                    server,
                    ..Default::default()
                };
                Ok(marina_master::spawn(config, listener, shutdown).await?)
            })
            .await?;
        for index in 0..agents {
            let (coord, work_dir) = (url.clone(), agent_root.join(format!("agent-{index}")));
            // One certificate for every hollow agent: issuing a thousand would time the CA.
            let tls = ca.config(Role::Agent, None);
            // The handle is not needed: the agent stops on its shutdown signal.
            start_service(&runtimes.0[3], &mut shutdowns, move |listener, shutdown| async move {
                let mut config = marina_agent::Config {
                    listen: listener.local_addr()?.to_string(),
                    coord,
                    work_dir,
                    runtime: marina_agent::RuntimeChoice::Sim.into(),
                    hostname: Some(format!("agent-{index}.bench")),
                    tls,
                    ..Default::default()
                };
                config.resources.cpus = Some(4.0);
                config.resources.mem_mb = Some(4096.0);
                config.resources.disk_mb = Some(10240.0);
                marina_agent::spawn(config, listener, shutdown).await?;
                Ok(())
            })
            .await?;
        }
        let gateway_dir = dir.path().join("gateway");
        // REST in plaintext on loopback, as in `marina dev`.
        let gateway_tls = marina_daemon::tls::TlsConfig { accept_plaintext: true, ..ca.config(Role::Gateway, None) };
        let (gateway, gateway_address) =
            start_service(&runtimes.0[2], &mut shutdowns, move |listener, shutdown| async move {
                let config = marina_gateway::Config {
                    listen: listener.local_addr()?.to_string(),
                    coord: url,
                    work_dir: gateway_dir,
                    tls: gateway_tls,
                    server,
                    ..Default::default()
                };
                Ok(marina_gateway::spawn(config, listener, shutdown).await?)
            })
            .await?;
        let cluster =
            Self { _runtimes: runtimes, coord, calibration, gateway_address, master_address, ca, shutdowns, _dir: dir };
        // Registration of 1,000 agents is 1,000 coord writes: allow for it.
        let timeout = Duration::from_secs(30 + agents as u64 / 20);
        eventually(timeout, &format!("{agents} agents active on the leading master"), || async {
            let state = master.master.leader().ok()?.state();
            (state.agents.iter().filter(|a| a.status == "active").count() >= agents).then_some(())
        })
        .await;
        eventually(timeout, "the gateway leading and subscribed to the master", || async {
            gateway.gateway.leader().filter(|leader| leader.master.borrow().is_some())
        })
        .await;
        Ok(cluster)
    }
}

/// How long [`calibrate`] writes.
const CALIBRATION: Duration = Duration::from_secs(2);

/// The machine's speed in the terms that bound placement: one client's sequential writes to
/// the 3-node coord quorum (each a Raft commit, fsync'd on a majority), before anything else
/// runs. Runs on different VMs compare through it.
async fn calibrate(coord: &CoordCluster) -> anyhow::Result<String> {
    let client = coord.client();
    let value = bytes::Bytes::from(vec![b'x'; 256]);
    let mut latencies = Vec::new();
    let started = Instant::now();
    while started.elapsed() < CALIBRATION {
        let sent = Instant::now();
        client.put(&format!("/calibration/{}", latencies.len() % 100), value.clone()).await?;
        latencies.push(sent.elapsed());
    }
    let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    Ok(format!(
        "calibration: {cores} cores; coord single-client writes {rate:.0}/s (p50 {:.2} ms, p99 {:.2} ms), \
         3 nodes in this process, Raft log in {}",
        latencies[latencies.len() / 2].as_secs_f64() * 1e3,
        latencies[latencies.len() * 99 / 100].as_secs_f64() * 1e3,
        coord.data_dir(1).parent().unwrap_or(coord.data_dir(1)).display(),
    ))
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for shutdown in &self.shutdowns {
            shutdown.trigger();
        }
    }
}

/// Polls the gateway's instance gauge until `tasks` instances are RUNNING (a progress line
/// every ~5 s), or fails at `deadline` saying how far it got. When the count stands still
/// for [`STALL`], says once where the missing tasks are stuck (see [`diagnose_stall`]).
async fn wait_all_running(
    http: &reqwest::Client,
    base: &str,
    master: (&std::net::SocketAddr, &reqwest::Client),
    tasks: usize,
    deadline: Instant,
) -> anyhow::Result<()> {
    let mut last_report = Instant::now();
    let mut last_change = (0, Instant::now());
    let mut diagnosed = false;
    loop {
        let (running, launching) = running_instances(http, base).await.unwrap_or((0, 0));
        if running >= tasks {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out: {running} of {tasks} tasks RUNNING");
        }
        if running != last_change.0 {
            last_change = (running, Instant::now());
        } else if !diagnosed && running > 0 && last_change.1.elapsed() >= STALL {
            diagnosed = true;
            if let Err(error) = diagnose_stall(http, base, master).await {
                eprintln!("  (could not diagnose the stall: {error:#})");
            }
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            eprintln!("  … {running} of {tasks} tasks RUNNING, {launching} launched and not yet running");
        }
        // Not much more often: each poll makes the gateway count 100,000 instances.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// No progress for this long is a stall worth explaining.
const STALL: Duration = Duration::from_secs(15);

/// Prints the tasks that are not RUNNING by state, and for a few of them what the master
/// knows: the agent's status and heartbeat, and the task's state there.
/// `master`: its address, and a client calling it as an operator.
async fn diagnose_stall(
    http: &reqwest::Client,
    base: &str,
    (master, operator): (&std::net::SocketAddr, &reqwest::Client),
) -> anyhow::Result<()> {
    let tasks: Value = http.get(format!("{base}/v2/tasks")).send().await?.error_for_status()?.json().await?;
    let stuck: Vec<&Value> = tasks["tasks"]
        .as_array()
        .context("/v2/tasks lists no tasks")?
        .iter()
        .filter(|task| task["state"] != "TASK_RUNNING")
        .collect();
    let mut by_state: HashMap<&str, usize> = HashMap::new();
    for task in &stuck {
        *by_state.entry(task["state"].as_str().unwrap_or("?")).or_default() += 1;
    }
    eprintln!("  stalled for {}s; tasks not RUNNING, by state: {by_state:?}", STALL.as_secs());
    let state: Value =
        operator.get(format!("https://{master}/master/state")).send().await?.error_for_status()?.json().await?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let mut by_status: HashMap<&str, usize> = HashMap::new();
    for agent in state["agents"].as_array().into_iter().flatten() {
        *by_status.entry(agent["status"].as_str().unwrap_or("?")).or_default() += 1;
    }
    eprintln!("  the master's agents, by status: {by_status:?}");
    for task in stuck.iter().take(5) {
        let agent_id = task["slaveId"].as_str().unwrap_or_default();
        let agent = state["agents"].as_array().into_iter().flatten().find(|a| a["id"] == agent_id);
        let on_master = state["tasks"].as_array().into_iter().flatten().find(|t| t["id"] == task["id"]);
        eprintln!(
            "  {} {} on {agent_id}: agent {} (heartbeat {:.1}s ago); the master has it as {}",
            task["id"].as_str().unwrap_or("?"),
            task["state"].as_str().unwrap_or("?"),
            agent.map_or("unknown", |a| a["status"].as_str().unwrap_or("?")),
            agent.and_then(|a| a["last_heartbeat"].as_f64()).map_or(f64::NAN, |at| now - at),
            on_master.map_or("unknown", |t| t["state"].as_str().unwrap_or("?")),
        );
    }
    Ok(())
}

/// The gateway's instances RUNNING, and those launched and not yet running (staging or
/// starting), from `marina_gateway_instances`.
async fn running_instances(http: &reqwest::Client, base: &str) -> anyhow::Result<(usize, usize)> {
    let text = gateway_metrics(http, base).await?;
    let count = |state: &str| metric(&text, &format!("marina_gateway_instances{{state=\"{state}\"}}")) as usize;
    Ok((count("TASK_RUNNING"), count("TASK_STAGING") + count("TASK_STARTING")))
}

/// One row: a kind of app, its tasks' latencies, and when its last task ran.
struct Group {
    name: &'static str,
    apps: usize,
    /// Submission → RUNNING of each task, in ms; sorted once all are in. Kept whole (at most
    /// a few 100,000) so quantiles are exact and not capped by a histogram's range.
    latencies_ms: Vec<i64>,
    last_running: i64,
}

impl Group {
    fn new(name: &'static str) -> Self {
        Self { name, apps: 0, latencies_ms: Vec::new(), last_running: 0 }
    }

    /// The latency at `quantile` (nearest rank), in ms.
    fn quantile(&self, quantile: f64) -> i64 {
        let Some(last) = self.latencies_ms.len().checked_sub(1) else { return 0 };
        self.latencies_ms[((quantile * self.latencies_ms.len() as f64).ceil() as usize).saturating_sub(1).min(last)]
    }
}

fn print_table(rows: &[Group], first_submit: i64) {
    println!(
        "{:<20} {:>6} {:>8} {:>10} {:>9} {:>9} {:>9} {:>9}",
        "workload", "apps", "tasks", "tasks/s", "p50 ms", "p99 ms", "max ms", "done s"
    );
    for row in rows.iter().filter(|row| row.apps > 0) {
        let seconds = (row.last_running - first_submit).max(1) as f64 / 1000.0;
        println!(
            "{:<20} {:>6} {:>8} {:>10.0} {:>9} {:>9} {:>9} {:>9.1}",
            row.name,
            row.apps,
            row.latencies_ms.len(),
            row.latencies_ms.len() as f64 / seconds,
            row.quantile(0.5),
            row.quantile(0.99),
            row.quantile(1.0),
            seconds,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::app_mix;

    #[test]
    fn the_mix_sums_to_the_tasks_and_has_both_kinds() {
        for (tasks, apps) in [(100_000, 2000), (50, 2), (50, 1), (7, 100), (30_000, 600)] {
            let mix = app_mix(tasks, apps);
            assert_eq!(mix.iter().map(|a| a.instances).sum::<usize>(), tasks, "{tasks} over {apps}");
            assert!(mix.iter().all(|a| a.instances > 0));
            assert!(mix.iter().any(|a| a.big));
        }
        let mix = app_mix(100_000, 2000);
        assert_eq!(mix.iter().filter(|a| !a.big).count(), 1800);
        assert!(mix.iter().filter(|a| !a.big).all(|a| a.instances <= 10));
    }
}
