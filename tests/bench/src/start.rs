//! Start overhead: how much longer a container takes to start through Marina than with
//! `docker run -d`, same image, command and limits. The cluster is real processes (3
//! `marina-coord`, a `marina-master`, one `marina-agent` on the Docker runtime, a
//! `marina-gateway`), production settings. Interleaved runs, alternating which goes first:
//!
//! - marina: from `POST /v2/apps` (one instance) to the gateway's `status_update_event`
//!   TASK_RUNNING for it (the agent reports RUNNING once Docker has started the container);
//!   then the app is deleted and its container waited out, untimed;
//! - docker: `docker run -d` until the command returns (the container is then started; that
//!   it runs is checked, untimed), then `docker rm -f`.
//!
//! One unmeasured warm-up of each comes first (the first start pays one-off costs).

use std::time::Duration;

use marina_tests::docker::{DockerCleanup, ensure_test_images};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

use crate::report::verdict;
use crate::stats::Latencies;
use marina_tests::processes::{AppsApi, Coord, ProcessCluster, SETTLE, Topology};

#[derive(clap::Args)]
pub struct Args {
    /// Measured starts of each kind.
    #[arg(long, default_value_t = 20)]
    runs: usize,
}

/// Built locally by `scripts/build-test-images` (no registry is involved).
const IMAGE: &str = "marina-test/busybox";
const COMMAND: &str = "sleep 100000";
const CPUS: f64 = 0.1;
const MEM_MB: u64 = 32;
/// Labels every container `docker run` starts here (value: this bench process), so leftovers
/// of an interrupted run are removed too.
const LABEL: &str = "marina.bench";
const TARGET_RATIO: f64 = 1.3;

type Events = UnboundedReceiver<(String, Value)>;

/// One start through Marina, from `POST /v2/apps`.
struct Start {
    /// To TASK_STARTING: the gateway, coord and the master have placed and sent the task.
    starting: Duration,
    /// To TASK_RUNNING.
    running: Duration,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    ensure_test_images();
    let topology = Topology::new(1, 1, "docker", 1).coord(Coord::Processes(3));
    let cluster = ProcessCluster::start(topology).await;
    // Whatever happens below, every container either side started is removed on return.
    let _marina_containers = DockerCleanup { label: "marina.framework_id".into(), value: cluster.framework_id().await };
    let docker_label = format!("start-{}", std::process::id());
    let _docker_containers = DockerCleanup { label: LABEL.into(), value: docker_label.clone() };
    let apps = cluster.gateway_api(0);
    let mut events = marina_tests::events::subscribe(&apps.events_url()).await;

    let (mut marina, mut scheduled, mut docker) = (Latencies::new(), Latencies::new(), Latencies::new());
    for run in 0..=args.runs {
        let marina_first = run % 2 == 0;
        let (through_marina, with_docker) = if marina_first {
            let m = start_through_marina(&apps, &mut events, run).await?;
            (m, docker_run(&docker_label).await?)
        } else {
            let d = docker_run(&docker_label).await?;
            (start_through_marina(&apps, &mut events, run).await?, d)
        };
        if run > 0 {
            marina.record(through_marina.running);
            scheduled.record(through_marina.starting);
            docker.record(with_docker);
        }
    }
    print_report(args.runs, &marina, &scheduled, &docker);
    drop(cluster);
    Ok(())
}

/// Creates a one-instance Docker app, times it to RUNNING, then deletes it and waits until
/// its container is gone.
async fn start_through_marina(apps: &AppsApi, events: &mut Events, run: usize) -> anyhow::Result<Start> {
    let id = format!("/bench-start-{run}");
    let app = json!({
        "id": id, "cmd": COMMAND, "cpus": CPUS, "mem": MEM_MB, "instances": 1,
        "container": { "type": "DOCKER", "docker": { "image": IMAGE } },
        "networks": [{ "mode": "host" }],
        // Untimed, but `sleep` as PID 1 ignores SIGTERM: do not wait the default grace.
        "taskKillGracePeriodSeconds": 1,
    });
    while events.try_recv().is_ok() {}
    let started = Instant::now();
    apps.create(&app).await?;
    let start = wait_running_event(events, &id, started).await?;

    // The deployment ends just after the task runs; a deletion before that would conflict.
    marina_tests::eventually(SETTLE, &format!("{id}'s deployment to finish"), || async {
        apps.is_stable(&id, 1).await.then_some(())
    })
    .await;
    apps.delete(&id).await?;
    let filter = format!("label=MARATHON_APP_ID={id}");
    marina_tests::eventually(SETTLE, &format!("{id} and its container to be gone"), || async {
        (apps.is_gone(&id).await && docker_ps(&filter).await?.is_empty()).then_some(())
    })
    .await;
    Ok(start)
}

/// Times from `started` to app `id`'s task reported TASK_STARTING (the agent has the launch:
/// scheduling is done) and TASK_RUNNING (the container runs).
async fn wait_running_event(events: &mut Events, id: &str, started: Instant) -> anyhow::Result<Start> {
    let running = async {
        let mut starting = None;
        while let Some((kind, data)) = events.recv().await {
            if kind != "status_update_event" || data["appId"] != id {
                continue;
            }
            match data["taskStatus"].as_str() {
                Some("TASK_STARTING") => starting = Some(started.elapsed()),
                Some("TASK_RUNNING") => {
                    let running = started.elapsed();
                    return Ok(Start { starting: starting.unwrap_or(running), running });
                }
                _ => {}
            }
        }
        anyhow::bail!("the event stream ended")
    };
    tokio::time::timeout(SETTLE, running).await.map_err(|_| anyhow::anyhow!("{id} did not run within {SETTLE:?}"))?
}

/// `docker run -d` of the same image, command and limits, timed until the CLI returns.
async fn docker_run(label: &str) -> anyhow::Result<Duration> {
    let label = format!("{LABEL}={label}");
    let memory = format!("{MEM_MB}m");
    let cpus = CPUS.to_string();
    let started = Instant::now();
    let output = docker(&[
        "run",
        "-d",
        "--label",
        &label,
        "--network",
        "host",
        "--memory",
        &memory,
        "--cpus",
        &cpus,
        "--entrypoint",
        "/bin/sh",
        IMAGE,
        "-c",
        COMMAND,
    ])
    .await?;
    let elapsed = started.elapsed();
    let id = output.trim();
    let running = docker(&["inspect", "-f", "{{.State.Running}}", id]).await?;
    anyhow::ensure!(running.trim() == "true", "container {id} is not running");
    docker(&["rm", "-f", id]).await?;
    Ok(elapsed)
}

/// Runs the docker CLI; its stdout.
async fn docker(args: &[&str]) -> anyhow::Result<String> {
    let output = tokio::process::Command::new("docker").args(args).output().await?;
    anyhow::ensure!(
        output.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Ids of the containers (any state) matching `filter`.
async fn docker_ps(filter: &str) -> Option<Vec<String>> {
    let ids = docker(&["ps", "-aq", "--filter", filter]).await.ok()?;
    Some(ids.split_whitespace().map(str::to_owned).collect())
}

fn print_report(runs: usize, marina: &Latencies, scheduled: &Latencies, docker: &Latencies) {
    println!(
        "start: 1 marina-agent on the Docker runtime (3 marina-coord, 1 marina-master, 1 marina-gateway; processes, \
         production settings); image {IMAGE}, `{COMMAND}`, {CPUS} cpus, {MEM_MB} MB, host network; {runs} runs \
         each, interleaved, after one unmeasured warm-up each"
    );
    println!("{:<44} {:>5} {:>9} {:>9} {:>9} {:>9}", "way", "n", "min ms", "p50 ms", "p90 ms", "max ms");
    for (way, latencies) in [
        ("marina: POST /v2/apps -> TASK_RUNNING event", marina),
        ("  of which POST -> TASK_STARTING (placed)", scheduled),
        ("docker run -d (CLI returns)", docker),
    ] {
        println!(
            "{:<44} {:>5} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            way,
            latencies.count(),
            latencies.ms(0.0),
            latencies.ms(0.5),
            latencies.ms(0.9),
            latencies.ms(1.0)
        );
    }
    let ratio = marina.ms(0.5) / docker.ms(0.5);
    let met = ratio <= TARGET_RATIO;
    println!("median ratio marina / docker run: {ratio:.2} (target <= {TARGET_RATIO}: {})", verdict(met));
    println!(
        "summary: start median {:.0} ms through marina vs {:.0} ms docker run -d: ratio {ratio:.2}, target <= \
         {TARGET_RATIO} {}",
        marina.ms(0.5),
        docker.ms(0.5),
        if met { "met" } else { "NOT met" }
    );
}
