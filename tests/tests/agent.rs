//! The agent as a real process: SIGKILL and restart re-adopt its tasks (process runtime,
//! Docker and containerd), status updates produced while no master is reachable arrive later, health
//! checks report and kill, a corrupt checkpoint stops it with a clear error, a full disk
//! loses no status update, finished tasks' sandboxes are collected, task output rotates and
//! its reads are bounded.

use std::path::{Path, PathBuf};
use std::time::Duration;

use marina_proto::agent::v1::agent_client::AgentClient;
use marina_proto::agent::v1::{
    ContainerSpec, HealthCheck, PortMapping, ReadTaskLogRequest, TaskInfo, TaskState, health_check,
};
use marina_tests::docker::{DockerCleanup, ensure_test_images};
use marina_tests::scheduler::{command_task, offered_ports};
use marina_tests::services::Service;
use marina_tests::{MarinaCluster, TestScheduler, eventually};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
const AGENT_ENV: &[(&str, &str)] = &[
    ("MARINA_AGENT_RESOURCES__CPUS", "4"),
    ("MARINA_AGENT_RESOURCES__MEM_MB", "2048"),
    ("MARINA_AGENT_RESOURCES__DISK_MB", "1024"),
    // Below Linux's ephemeral range (32768-60999), where every test binding port 0 lands: a
    // task's port must not be taken by a neighbour's socket.
    ("MARINA_AGENT_RESOURCES__PORTS", "21000-21999"),
];

async fn agent_task(agent: &Service, task_id: &str) -> Option<serde_json::Value> {
    let state = agent.get_json("/state").await?;
    state["tasks"].as_array()?.iter().find(|t| t["id"] == task_id).cloned()
}

/// Launches `tasks` on the first offer and waits until they run.
async fn launch(
    scheduler: &mut TestScheduler,
    mut build: impl FnMut(&marina_proto::master::v1::Offer) -> Vec<TaskInfo>,
) -> String {
    scheduler.pump_until(WAIT, "an offer", |s| !s.offers.is_empty()).await;
    let offer = scheduler.offers[0].clone();
    let tasks = build(&offer);
    let ids: Vec<String> = tasks.iter().map(|t| t.task_id.clone()).collect();
    scheduler.accept(vec![offer.offer_id.clone()], tasks).await.expect("accepted");
    scheduler
        .pump_until(WAIT, "the tasks to run", |s| {
            ids.iter().all(|id| s.latest(id).is_some_and(|t| t.state() == TaskState::TaskRunning))
        })
        .await;
    offer.agent_id
}

fn starting_updates(scheduler: &TestScheduler, task_id: &str) -> usize {
    scheduler.updates.iter().filter(|s| s.task_id == task_id && s.state() == TaskState::TaskStarting).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_readopts_its_processes() {
    let cluster = MarinaCluster::builder().masters(1).agents(0).start().await;
    let mut agent =
        Service::agent("agent", &cluster.coord_url(), cluster.ca(), "process", cluster.dir.path(), AGENT_ENV);
    agent.wait_healthy().await;
    let mut scheduler = TestScheduler::subscribe(cluster.ca(), &cluster.master_addresses(), "readopt", None).await;
    launch(&mut scheduler, |_| vec![command_task("long", "exec sleep 600", 0.1, 16.0)]).await;
    let before = agent_task(&agent, "long").await.unwrap();
    let container = before["container_id"].as_str().unwrap().to_owned();
    let pid: i32 = container.split(':').next().unwrap().parse().unwrap();

    agent.kill().await;
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "the task outlives its agent");
    agent.restart();
    agent.wait_healthy().await;
    let after =
        eventually(WAIT, "the restarted agent to report the task", || async { agent_task(&agent, "long").await }).await;
    assert_eq!(after["container_id"], container.as_str(), "the same process, re-adopted");
    assert_eq!(after["state"], "TASK_RUNNING");
    // Registered again with the master, which still knows the task as running.
    eventually(WAIT, "the agent to re-register", || async {
        let state = agent.get_json("/state").await?;
        (state["master"]["registered"] == true).then_some(())
    })
    .await;
    scheduler.reconcile(&[]).await;
    let count = scheduler.updates.len();
    scheduler.pump_until(WAIT, "reconciliation", |s| s.updates.len() > count).await;
    assert_eq!(scheduler.latest("long").unwrap().state(), TaskState::TaskRunning);
    assert_eq!(starting_updates(&scheduler, "long"), 1, "the task was never relaunched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_readopts_its_docker_containers() {
    ensure_test_images();
    let cluster = MarinaCluster::builder().masters(1).agents(0).start().await;
    let mut agent =
        Service::agent("agent", &cluster.coord_url(), cluster.ca(), "docker", cluster.dir.path(), AGENT_ENV);
    agent.wait_healthy().await;
    let mut scheduler =
        TestScheduler::subscribe(cluster.ca(), &cluster.master_addresses(), "readopt-docker", None).await;
    let _cleanup = DockerCleanup { label: "marina.framework_id".into(), value: scheduler.framework_id.clone() };
    launch(&mut scheduler, |_| {
        let mut task = command_task("web", "exec sleep 600", 0.1, 32.0);
        task.container = Some(ContainerSpec { image: "docker:///marina-test/busybox".into(), ..Default::default() });
        vec![task]
    })
    .await;
    let container = agent_task(&agent, "web").await.unwrap()["container_id"].as_str().unwrap().to_owned();
    let started = docker_started_at(&container);

    agent.kill().await;
    agent.restart();
    agent.wait_healthy().await;
    let after =
        eventually(WAIT, "the restarted agent to report the container", || async { agent_task(&agent, "web").await })
            .await;
    assert_eq!(after["container_id"], container.as_str());
    assert_eq!(after["state"], "TASK_RUNNING");
    assert_eq!(docker_started_at(&container), started, "the container was not restarted");
    assert_eq!(starting_updates(&scheduler, "web"), 1);
}

/// The same through containerd: the test image imported into the agent's namespace (no
/// registry to pull from), a task of it launched, the agent SIGKILLed and restarted, the
/// same task — same container, same process — reported; killed, it is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_readopts_its_containerd_tasks() {
    use marina_runtime::{LABEL_FRAMEWORK_ID, Runtime, TaskState as RuntimeState};
    use marina_runtime_containerd::ContainerdRuntime;

    let config = import_test_image_into_containerd().await;
    let containerd = ContainerdRuntime::connect(&config).await.expect("containerd answers on this machine");

    let cluster = MarinaCluster::builder().masters(1).agents(0).start().await;
    let mut agent =
        Service::agent("agent", &cluster.coord_url(), cluster.ca(), "containerd", cluster.dir.path(), AGENT_ENV);
    agent.wait_healthy().await;
    let mut scheduler =
        TestScheduler::subscribe(cluster.ca(), &cluster.master_addresses(), "readopt-containerd", None).await;
    let _cleanup = ContainerdCleanup { config, framework_id: scheduler.framework_id.clone() };
    launch(&mut scheduler, |_| {
        let mut task = command_task("ctr-web", "exec sleep 600", 0.1, 32.0);
        task.container = Some(ContainerSpec { image: "docker:///marina-test/busybox".into(), ..Default::default() });
        vec![task]
    })
    .await;
    let container = agent_task(&agent, "ctr-web").await.unwrap()["container_id"].as_str().unwrap().to_owned();
    let process = || async {
        let labels = [(LABEL_FRAMEWORK_ID.to_owned(), scheduler.framework_id.clone())].into();
        let listed = containerd.list(&labels).await.unwrap();
        match listed.as_slice() {
            [task] => match task.state {
                RuntimeState::Running { pid, .. } => pid,
                ref other => panic!("the task is not running: {other:?}"),
            },
            other => panic!("expected one task, found {other:?}"),
        }
    };
    let pid = process().await;

    agent.kill().await;
    agent.restart();
    agent.wait_healthy().await;
    let after =
        eventually(WAIT, "the restarted agent to report the task", || async { agent_task(&agent, "ctr-web").await })
            .await;
    assert_eq!(after["container_id"], container.as_str(), "the same container");
    assert_eq!(after["state"], "TASK_RUNNING");
    assert_eq!(process().await, pid, "the same process: never restarted");
    assert_eq!(starting_updates(&scheduler, "ctr-web"), 1, "never relaunched");

    let agent_id = agent.get_json("/state").await.unwrap()["id"].as_str().unwrap().to_owned();
    scheduler.kill("ctr-web", &agent_id).await;
    scheduler
        .pump_until(WAIT, "the task to be killed", |s| {
            s.latest("ctr-web").is_some_and(|t| t.state() == TaskState::TaskKilled)
        })
        .await;
    eventually(WAIT, "the killed task's container to be removed", || async {
        let labels = [(LABEL_FRAMEWORK_ID.to_owned(), scheduler.framework_id.clone())].into();
        containerd.list(&labels).await.ok()?.is_empty().then_some(())
    })
    .await;
}

/// The test image, imported into containerd's `marina` namespace (the agent's default, which
/// the containerd runtime tests share): no registry to pull from. Returns that config.
async fn import_test_image_into_containerd() -> marina_runtime_containerd::ContainerdConfig {
    use marina_runtime_containerd::{ContainerdConfig, ContainerdRuntime};

    ensure_test_images();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("busybox.tar");
    let saved = std::process::Command::new("docker")
        .args(["save", "marina-test/busybox:latest", "-o"])
        .arg(&archive)
        .output()
        .unwrap();
    assert!(saved.status.success(), "docker save: {}", String::from_utf8_lossy(&saved.stderr));
    let config = ContainerdConfig { namespace: "marina".into(), ..ContainerdConfig::default() };
    let containerd = ContainerdRuntime::connect(&config).await.expect("containerd answers on this machine");
    containerd.import_image(&archive).await.expect("importing the test image");
    config
}

/// Removes, on drop, every containerd task of a test's framework (should the test fail).
struct ContainerdCleanup {
    config: marina_runtime_containerd::ContainerdConfig,
    framework_id: String,
}

impl Drop for ContainerdCleanup {
    fn drop(&mut self) {
        use marina_runtime::Runtime;
        let config = self.config.clone();
        let labels = [(marina_runtime::LABEL_FRAMEWORK_ID.to_owned(), self.framework_id.clone())].into();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let containerd = marina_runtime_containerd::ContainerdRuntime::connect(&config).await.ok()?;
                for task in containerd.list(&labels).await.ok()? {
                    let _ = containerd.remove(&task.handle).await;
                }
                Some(())
            })
        })
        .join();
    }
}

fn docker_started_at(container: &str) -> String {
    let output = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{.State.Running}} {{.State.StartedAt}}", container])
        .output()
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.starts_with("true "), "container {container} is not running: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_made_while_no_master_answers_arrive_later() {
    let coord = marina_tests::CoordCluster::start(1).await;
    let dir = marina_tests::TestDir::new();
    let url = marina_coord_client::CoordUrl { root: "/marina".into(), ..coord.url() };
    let mut master = Service::master("master", &url, coord.ca(), dir.path(), &[]);
    let agent = Service::agent("agent", &url, coord.ca(), "process", dir.path(), AGENT_ENV);
    master.wait_healthy().await;
    agent.wait_healthy().await;
    let mut scheduler =
        TestScheduler::subscribe(coord.ca(), std::slice::from_ref(&master.address), "retry", None).await;
    // The task finishes when the test creates `done` in its sandbox.
    launch(&mut scheduler, |_| vec![command_task("waiter", "while [ ! -f done ]; do sleep 0.05; done", 0.1, 16.0)])
        .await;

    master.kill().await;
    std::fs::write(agent.work_dir.join("sandboxes/waiter/done"), b"").unwrap();
    eventually(WAIT, "the update to wait, unacknowledged, in the agent", || async {
        let task = agent_task(&agent, "waiter").await?;
        let state = agent.get_json("/state").await?;
        (task["state"] == "TASK_FINISHED" && state["pending_updates"].as_u64()? >= 1).then_some(())
    })
    .await;

    master.restart();
    master.wait_healthy().await;
    scheduler.resubscribe().await;
    scheduler
        .pump_until(WAIT, "the FINISHED update", |s| {
            s.latest("waiter").is_some_and(|t| t.state() == TaskState::TaskFinished && !t.uuid.is_empty())
        })
        .await;
    // Acknowledged: the agent forgets it.
    eventually(WAIT, "the agent to drop the acknowledged update", || async {
        let state = agent.get_json("/state").await?;
        (state["pending_updates"] == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_report_and_kill_unhealthy_tasks() {
    let cluster = MarinaCluster::builder().masters(1).agents(0).start().await;
    let agent = Service::agent("agent", &cluster.coord_url(), cluster.ca(), "process", cluster.dir.path(), AGENT_ENV);
    agent.wait_healthy().await;
    let mut scheduler = TestScheduler::subscribe(cluster.ca(), &cluster.master_addresses(), "health", None).await;
    launch(&mut scheduler, |offer| {
        let port = offered_ports(offer, 1)[0];
        let mut web = command_task("web", "echo ok > index.html; exec busybox httpd -f -p $PORT0 -h .", 0.1, 16.0);
        web.container = Some(ContainerSpec {
            port_mappings: vec![PortMapping { host_port: port, protocol: "tcp".into(), ..Default::default() }],
            ..Default::default()
        });
        web.health_checks = vec![HealthCheck {
            protocol: health_check::Protocol::Http as i32,
            path: "/index.html".into(),
            interval_seconds: 1,
            timeout_seconds: 2,
            grace_period_seconds: 10,
            max_consecutive_failures: 3,
            ..Default::default()
        }];
        let mut sick = command_task("sick", "exec sleep 600", 0.1, 16.0);
        sick.health_checks = vec![HealthCheck {
            protocol: health_check::Protocol::Command as i32,
            command: "exit 1".into(),
            interval_seconds: 1,
            timeout_seconds: 2,
            grace_period_seconds: 0,
            max_consecutive_failures: 2,
            ..Default::default()
        }];
        vec![web, sick]
    })
    .await;
    scheduler.pump_until(WAIT, "web to be healthy", |s| s.latest("web").is_some_and(|t| t.healthy == Some(true))).await;
    scheduler
        .pump_until(WAIT, "sick to be killed by its health check", |s| {
            s.latest("sick").is_some_and(|t| t.state() == TaskState::TaskKilled)
        })
        .await;
    assert!(
        scheduler.updates.iter().any(|s| s.task_id == "sick" && s.healthy == Some(false)),
        "unhealthy was reported first"
    );
    assert_eq!(scheduler.latest("sick").unwrap().reason, marina_proto::reason::HEALTH_KILLED);
    assert_eq!(scheduler.latest("web").unwrap().state(), TaskState::TaskRunning);
}

#[test]
fn a_corrupt_checkpoint_stops_the_agent_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("work/meta/tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    std::fs::write(tasks.join("web.pb"), b"\xff\xff\xff\xff").unwrap();
    let output = std::process::Command::new(marina_tests::binaries::binary("marina-agent"))
        .args(["--listen", "127.0.0.1:0", "--runtime", "sim", "--coord", "coord://127.0.0.1:1/marina", "--work-dir"])
        .arg(dir.path().join("work"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("web.pb") && stderr.contains("corrupt"), "{stderr}");
}

/// A root agent of the process runtime runs tasks as `nobody`: a work dir `nobody` cannot
/// reach, or a default user the host does not have, stops it at start with the key named,
/// instead of failing every task later.
#[test]
fn a_root_agent_whose_tasks_could_not_reach_their_sandboxes_does_not_start() {
    assert!(nix::unistd::geteuid().is_root(), "a root agent is what this tests: run the tests as root, as CI does");
    let dir = tempfile::tempdir().unwrap();
    let closed = std::os::unix::fs::PermissionsExt::from_mode(0o700);
    std::fs::set_permissions(dir.path(), closed).unwrap();
    let agent = |work: &str, envs: &[(&str, &str)]| {
        std::process::Command::new(marina_tests::binaries::binary("marina-agent"))
            .args(["--listen", "127.0.0.1:0", "--runtime", "process", "--coord", "coord://127.0.0.1:1/marina"])
            .arg("--work-dir")
            .arg(dir.path().join(work))
            .envs(envs.iter().copied())
            .output()
            .unwrap()
    };
    let closed = agent("work", &[]);
    assert!(!closed.status.success());
    let stderr = String::from_utf8_lossy(&closed.stderr);
    assert!(stderr.contains("`work_dir`") && stderr.contains("not searchable"), "{stderr}");
    let unknown = agent("other", &[("MARINA_AGENT_POLICY__DEFAULT_USER", "no-such-user-here")]);
    assert!(!unknown.status.success());
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(stderr.contains("`policy.default_user`") && stderr.contains("no-such-user-here"), "{stderr}");
}

/// `GET /metrics` on the agent: the value of `name` (a metric without labels).
async fn metric(agent: &Service, name: &str) -> Option<f64> {
    let text = agent.get_text("/metrics").await?;
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The last `tail_bytes` of a task's stdout through the agent's gRPC API.
async fn read_task_log(agent: &Service, task_id: &str, tail_bytes: u64) -> Vec<u8> {
    let mut client = AgentClient::new(agent.channel());
    let request = ReadTaskLogRequest { task_id: task_id.into(), stream: "stdout".into(), tail_bytes };
    client.read_task_log(request).await.expect("ReadTaskLog").into_inner().data.to_vec()
}

/// A small disk for real: a tmpfs mounted on `path` (created), for an agent's work dir.
/// Dropping it kills whatever runs from it (task processes, supervisors) and unmounts it,
/// even when the test fails.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    fn mount(path: &Path, bytes: u64) -> SmallDisk {
        std::fs::create_dir_all(path).unwrap();
        let output = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(path)
            .output()
            .unwrap();
        assert!(output.status.success(), "mount (this test needs root): {}", String::from_utf8_lossy(&output.stderr));
        SmallDisk { path: path.to_owned() }
    }

    /// Writes to a file until the disk has no room left; returns it (remove it to make room).
    /// Again, it takes up what was freed meanwhile.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.path.join("filler");
        let mut file = std::fs::File::options().create(true).append(true).open(&path).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(error) if error.kind() == std::io::ErrorKind::StorageFull => break,
                Err(error) => panic!("filling {}: {error}", path.display()),
            }
        }
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        marina_tests::testdir::kill_processes_under(&self.path);
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// The agent's work dir on a full disk: a running task killed meanwhile still reports
/// KILLED (its checkpoints fail and are counted, the update travels from memory); the
/// sandboxes of finished, acknowledged tasks are collected at once although their week is
/// not over (the disk is past the headroom), a running task's is not; a launch that cannot
/// be checkpointed fails naming the error and starts nothing; with room again, what waited
/// is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_loses_no_status_update() {
    let cluster = MarinaCluster::builder().masters(1).agents(0).start().await;
    let disk = SmallDisk::mount(&cluster.dir.path().join("agent"), 4 * 1024 * 1024);
    let mut env = AGENT_ENV.to_vec();
    env.push(("MARINA_AGENT_GC__DISK_WATCH_INTERVAL_MS", "200"));
    let agent = Service::agent("agent", &cluster.coord_url(), cluster.ca(), "process", cluster.dir.path(), &env);
    assert_eq!(agent.work_dir, disk.path);
    agent.wait_healthy().await;
    let mut scheduler = TestScheduler::subscribe(cluster.ca(), &cluster.master_addresses(), "full-disk", None).await;
    // Its every checkpoint is bigger than what is left of a page once the disk is full.
    let big = |task_id: &str, command: &str| {
        let mut task = command_task(task_id, command, 0.1, 16.0);
        task.labels.insert("note".into(), "x".repeat(16 * 1024));
        task
    };
    launch(&mut scheduler, |_| {
        vec![
            big("victim", "exec sleep 600"),
            command_task("survivor", "exec sleep 600", 0.1, 16.0),
            command_task("early", "while [ ! -f done ]; do sleep 0.05; done", 0.1, 16.0),
        ]
    })
    .await;
    let sandboxes = agent.work_dir.join("sandboxes");
    std::fs::write(sandboxes.join("early/done"), b"").unwrap();
    scheduler
        .pump_until(WAIT, "early to finish", |s| {
            s.latest("early").is_some_and(|t| t.state() == TaskState::TaskFinished)
        })
        .await;
    eventually(WAIT, "the agent to forget the acknowledged task", || async {
        agent_task(&agent, "early").await.is_none().then_some(())
    })
    .await;
    assert!(sandboxes.join("early").exists(), "kept: a week to go on a disk with room");

    let filler = disk.fill();
    let agent_id = agent.get_json("/state").await.unwrap()["id"].as_str().unwrap().to_owned();
    scheduler.kill("victim", &agent_id).await;
    scheduler
        .pump_until(WAIT, "victim to be killed", |s| {
            s.latest("victim").is_some_and(|t| t.state() == TaskState::TaskKilled)
        })
        .await;
    assert!(metric(&agent, "marina_agent_checkpoint_failures_total").await.unwrap() >= 1.0);

    // Acknowledged, the killed task is forgotten, and on a disk this full its sandbox and
    // the finished one's go at once, though their week is not over.
    eventually(WAIT, "the finished tasks' sandboxes to be collected", || async {
        let gone = agent_task(&agent, "victim").await.is_none()
            && !sandboxes.join("early").exists()
            && !sandboxes.join("victim").exists();
        gone.then_some(())
    })
    .await;
    assert!(sandboxes.join("survivor").exists(), "a running task's sandbox stays");
    assert!(metric(&agent, "marina_agent_sandboxes_collected_total").await.unwrap() >= 2.0);

    // What the collection and the killed task's removal freed is taken again.
    disk.fill();
    scheduler.pump_until(WAIT, "an offer", |s| !s.offers.is_empty()).await;
    let offer = scheduler.offers[0].offer_id.clone();
    scheduler.accept(vec![offer], vec![big("doomed", "exec sleep 600")]).await.expect("accepted");
    scheduler
        .pump_until(WAIT, "doomed to fail", |s| s.latest("doomed").is_some_and(|t| t.state() == TaskState::TaskFailed))
        .await;
    let failed = scheduler.latest("doomed").unwrap();
    assert!(
        failed.message.starts_with("cannot checkpoint the launch: No space left on device (os error 28) at ")
            && failed.message.contains("meta/journal"),
        "{}",
        failed.message
    );
    assert!(!sandboxes.join("doomed").exists(), "nothing of it was made");
    assert_eq!(starting_updates(&scheduler, "doomed"), 0, "nothing of it started");

    std::fs::remove_file(filler).unwrap();
    eventually(WAIT, "what waited in memory to be written", || async {
        (metric(&agent, "marina_agent_checkpoint_backlog").await? == 0.0).then_some(())
    })
    .await;
    assert_eq!(agent_task(&agent, "survivor").await.unwrap()["state"], "TASK_RUNNING");
}

/// Sandboxes of finished tasks go once their terminal update is acknowledged and they are
/// older than the (here short) gc delay: not before the acknowledgement, never while the
/// task runs, and sandboxes of tasks the agent does not know go too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_tasks_sandboxes_are_collected_once_acknowledged() {
    let cluster = MarinaCluster::builder().masters(1).agents(0).start().await;
    let mut env = AGENT_ENV.to_vec();
    env.extend([("MARINA_AGENT_GC__DELAY_SECONDS", "1"), ("MARINA_AGENT_GC__DISK_WATCH_INTERVAL_MS", "100")]);
    let agent = Service::agent("agent", &cluster.coord_url(), cluster.ca(), "process", cluster.dir.path(), &env);
    agent.wait_healthy().await;
    let mut scheduler = TestScheduler::subscribe(cluster.ca(), &cluster.master_addresses(), "gc", None).await;
    launch(&mut scheduler, |_| {
        vec![
            command_task("keeper", "exec sleep 600", 0.1, 16.0),
            command_task("waiter", "while [ ! -f done ]; do sleep 0.05; done", 0.1, 16.0),
        ]
    })
    .await;
    let sandboxes = agent.work_dir.join("sandboxes");
    std::fs::write(sandboxes.join("waiter/done"), b"").unwrap();
    // Finished, but its update not acknowledged: the scheduler is not reading.
    eventually(WAIT, "waiter to finish", || async {
        let task = agent_task(&agent, "waiter").await?;
        (task["state"] == "TASK_FINISHED").then_some(())
    })
    .await;
    // A sandbox no task owns, younger than the waiter's: once it is gone, the waiter's was
    // old enough to go as well, had it been allowed to.
    let orphan = sandboxes.join("orphan");
    std::fs::create_dir_all(&orphan).unwrap();
    std::fs::write(orphan.join("stdout"), b"left by an earlier agent").unwrap();
    eventually(WAIT, "the orphan sandbox to be collected", || async { (!orphan.exists()).then_some(()) }).await;
    assert!(sandboxes.join("waiter").exists(), "kept until its end is acknowledged");
    assert!(sandboxes.join("keeper").exists());

    scheduler
        .pump_until(WAIT, "the FINISHED update", |s| {
            s.latest("waiter").is_some_and(|t| t.state() == TaskState::TaskFinished)
        })
        .await;
    eventually(WAIT, "the acknowledged task's sandbox to be collected", || async {
        (!sandboxes.join("waiter").exists()).then_some(())
    })
    .await;
    assert!(sandboxes.join("keeper").exists(), "never while the task runs");
    assert_eq!(agent_task(&agent, "keeper").await.unwrap()["state"], "TASK_RUNNING");
}

/// A task's output rotates (`task_logs.max_bytes`, `keep`); ReadTaskLog reads the current
/// file, its end: the configured default when it asks for nothing in particular, never
/// more than the configured maximum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_output_rotates_and_reads_of_it_are_bounded() {
    let cluster = MarinaCluster::builder().masters(1).agents(0).start().await;
    let mut env = AGENT_ENV.to_vec();
    env.extend([
        ("MARINA_AGENT_TASK_LOGS__MAX_BYTES", "10240"),
        ("MARINA_AGENT_TASK_LOGS__KEEP", "1"),
        ("MARINA_AGENT_TASK_LOGS__READ_DEFAULT_BYTES", "1000"),
        ("MARINA_AGENT_TASK_LOGS__READ_MAX_BYTES", "5000"),
    ]);
    let agent = Service::agent("agent", &cluster.coord_url(), cluster.ca(), "process", cluster.dir.path(), &env);
    agent.wait_healthy().await;
    let mut scheduler = TestScheduler::subscribe(cluster.ca(), &cluster.master_addresses(), "task-logs", None).await;
    // 7,744 lines of 5 bytes: three full files of 10,240 bytes and 8,000 in the current one.
    let script = "i=0; while [ $i -lt 7744 ]; do printf '%04d\\n' $((i % 10000)); i=$((i+1)); done; exec sleep 600";
    launch(&mut scheduler, |_| vec![command_task("chatty", script, 0.1, 16.0)]).await;
    let expected: String = (0..7744).map(|i| format!("{:04}\n", i % 10000)).collect();
    eventually(WAIT, "all the output", || async {
        read_task_log(&agent, "chatty", 5).await.ends_with(b"7743\n").then_some(())
    })
    .await;

    let sandbox = agent.work_dir.join("sandboxes/chatty");
    let current = std::fs::read(sandbox.join("stdout")).unwrap();
    assert_eq!(current.len(), 8000);
    assert_eq!(std::fs::metadata(sandbox.join("stdout.1")).unwrap().len(), 10240);
    assert!(!sandbox.join("stdout.2").exists(), "one rotated file is kept");
    let tail = |n: usize| expected.as_bytes()[expected.len() - n..].to_vec();
    assert_eq!(read_task_log(&agent, "chatty", 0).await, tail(1000), "the default");
    assert_eq!(read_task_log(&agent, "chatty", u64::MAX).await, tail(5000), "capped at the maximum");
    assert_eq!(read_task_log(&agent, "chatty", 7).await, tail(7));
}

/// Through containerd, the agent has `marina-supervise` (next to it) write each task's
/// output, rotated as a process task's is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_task_output_rotates() {
    let config = import_test_image_into_containerd().await;
    let cluster = MarinaCluster::builder().masters(1).agents(0).start().await;
    let mut env = AGENT_ENV.to_vec();
    env.extend([("MARINA_AGENT_TASK_LOGS__MAX_BYTES", "10240"), ("MARINA_AGENT_TASK_LOGS__KEEP", "1")]);
    let agent = Service::agent("agent", &cluster.coord_url(), cluster.ca(), "containerd", cluster.dir.path(), &env);
    agent.wait_healthy().await;
    let mut scheduler =
        TestScheduler::subscribe(cluster.ca(), &cluster.master_addresses(), "containerd-logs", None).await;
    let _cleanup = ContainerdCleanup { config, framework_id: scheduler.framework_id.clone() };
    // A name of its own: a run killed before its cleanup must not block the next.
    let task_id = format!("ctr-chatty-{}", &marina_daemon::ids::uuid()[..8]);
    let script = "i=0; while [ $i -lt 7744 ]; do printf '%04d\\n' $((i % 10000)); i=$((i+1)); done; exec sleep 600";
    launch(&mut scheduler, |_| {
        let mut task = command_task(&task_id, script, 0.1, 32.0);
        task.container = Some(ContainerSpec { image: "docker:///marina-test/busybox".into(), ..Default::default() });
        vec![task]
    })
    .await;
    eventually(WAIT, "all the output", || async {
        read_task_log(&agent, &task_id, 5).await.ends_with(b"7743\n").then_some(())
    })
    .await;
    let sandbox = agent.work_dir.join("sandboxes").join(&task_id);
    assert_eq!(std::fs::metadata(sandbox.join("stdout")).unwrap().len(), 8000);
    assert_eq!(std::fs::metadata(sandbox.join("stdout.1")).unwrap().len(), 10240);
    assert!(!sandbox.join("stdout.2").exists(), "one rotated file is kept");
    let expected: String = (0..7744).map(|i| format!("{:04}\n", i % 10000)).collect();
    assert_eq!(read_task_log(&agent, &task_id, 0).await, expected.as_bytes()[expected.len() - 8000..]);

    let agent_id = agent.get_json("/state").await.unwrap()["id"].as_str().unwrap().to_owned();
    scheduler.kill(&task_id, &agent_id).await;
    scheduler
        .pump_until(WAIT, "the task to be killed", |s| {
            s.latest(&task_id).is_some_and(|t| t.state() == TaskState::TaskKilled)
        })
        .await;
}

/// Mesos' sandbox files API on the agent: a task's sandbox (named in `/state`) browsed, a
/// file read from an offset and in full, downloaded; `..` and a symlink the task left that
/// leads out of its sandbox are refused; callers need a certificate of the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_files_api_serves_sandboxes_and_nothing_else() {
    let cluster = MarinaCluster::builder().masters(1).agents(0).start().await;
    let agent = Service::agent("agent", &cluster.coord_url(), cluster.ca(), "process", cluster.dir.path(), AGENT_ENV);
    agent.wait_healthy().await;
    let mut scheduler = TestScheduler::subscribe(cluster.ca(), &cluster.master_addresses(), "files", None).await;
    let script = "printf 'hello sandbox\\n' > note.txt; ln -s /etc/passwd escape; exec sleep 600";
    launch(&mut scheduler, |_| vec![command_task("filed", script, 0.1, 16.0)]).await;
    let sandbox = eventually(WAIT, "the task's sandbox in /state", || async {
        let state = agent.get_json("/state").await?;
        let task = state["tasks"].as_array()?.iter().find(|t| t["id"] == "filed")?.clone();
        task["sandbox"].as_str().map(str::to_owned)
    })
    .await;
    let note = format!("{sandbox}/note.txt");
    eventually(WAIT, "the task's file", || async { std::path::Path::new(&note).exists().then_some(()) }).await;

    let get = async |path: &str, query: &[(&str, &str)]| {
        let response = agent.http().get(agent.url(path)).query(query).send().await.unwrap();
        (response.status().as_u16(), response.bytes().await.unwrap())
    };
    let (status, body) = get("/files/browse", &[("path", &sandbox)]).await;
    assert_eq!(status, 200, "{body:?}");
    let listing: Value = serde_json::from_slice(&body).unwrap();
    let names: Vec<&str> = listing.as_array().unwrap().iter().filter_map(|e| e["path"].as_str()).collect();
    assert!(names.contains(&note.as_str()), "{listing}");
    let entry = listing.as_array().unwrap().iter().find(|e| e["path"] == note.as_str()).unwrap();
    assert_eq!(entry["size"], 14);
    assert!(entry["mode"].as_str().unwrap().starts_with("-rw"), "{entry}");

    let (status, body) = get("/files/read", &[("path", &note), ("offset", "6"), ("length", "7")]).await;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap(), json!({ "data": "sandbox", "offset": 6 }));
    let (_, body) = get("/files/read", &[("path", &note), ("offset", "-1")]).await;
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap(), json!({ "data": "", "offset": 14 }));
    let (status, body) = get("/files/download", &[("path", &note)]).await;
    assert_eq!((status, &body[..]), (200, &b"hello sandbox\n"[..]));

    for outside in [format!("{sandbox}/../../checkpoint"), format!("{sandbox}/escape"), "/etc/passwd".to_owned()] {
        let (status, body) = get("/files/read", &[("path", &outside)]).await;
        assert!(status == 403 || status == 404, "{outside}: {status} {body:?}");
        assert!(!String::from_utf8_lossy(&body).contains("root:"), "{outside} leaked");
    }
    let (status, _) = get("/files/read", &[("path", &format!("{sandbox}/escape"))]).await;
    assert_eq!(status, 403, "a symlink out of the sandbox");
    let anonymous = marina_tests::tls::anonymous_client(cluster.ca());
    assert!(anonymous.get(agent.url("/files/browse")).query(&[("path", &sandbox)]).send().await.is_err());
}
