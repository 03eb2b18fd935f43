//! The simulated runtime: the parts of the conformance suite that need no real process, what
//! the simulation promises on top, and that it stays cheap at scale.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use marina_runtime::conformance::{self, Fixture};
use marina_runtime::{
    Command, ExitStatus, LABEL_AGENT_ID, LABEL_TASK_ID, LogStream, NetworkMode, Runtime, RuntimeError, RuntimeKind,
    TaskSpec, TaskState, marina_labels,
};
use marina_runtime_sim::{SimConfig, SimRuntime};
use tokio::time::Instant;

fn spec(agent: &str, task: &str, command: &str) -> TaskSpec {
    let task_id = format!("{agent}-{task}");
    TaskSpec {
        task_id: task_id.clone(),
        // The simulation never touches it.
        sandbox: format!("/nonexistent/{task_id}").into(),
        command: Some(Command::Shell(command.to_owned())),
        image: None,
        force_pull: false,
        env: BTreeMap::new(),
        resources: Default::default(),
        ports: Vec::new(),
        network: NetworkMode::Bridge,
        privileged: false,
        labels: marina_labels(&task_id, agent, "sim-test"),
        parameters: Vec::new(),
        user: None,
    }
}

fn by_agent(agent: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(LABEL_AGENT_ID.to_owned(), agent.to_owned())])
}

async fn wait(runtime: &SimRuntime, handle: &marina_runtime::TaskHandle) -> marina_runtime::Result<ExitStatus> {
    tokio::time::timeout(Duration::from_secs(10), runtime.wait(handle)).await.expect("wait resolves")
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let sandboxes = tempfile::tempdir().expect("tempdir");
            let fixture = Fixture {
                runtime: Arc::new(SimRuntime::default()),
                sandbox_root: sandboxes.path().to_owned(),
                image: None,
                agent_id: stringify!($name).to_owned(),
            };
            conformance::$name(&fixture).await;
        }
    )*};
}

// The others read real output or pull real images.
conformance!(exit_status_is_reported, stop_and_remove_are_idempotent, list_finds_tasks_by_label);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_until_stopped_as_if_by_sigterm() {
    let runtime = Arc::new(SimRuntime::default());
    assert_eq!(runtime.kind(), RuntimeKind::Sim);
    let handle = runtime.start(&spec("a1", "web", "exec sleep 300")).await.expect("start");
    assert_eq!(handle.runtime, RuntimeKind::Sim);
    assert!(matches!(runtime.inspect(&handle).await.expect("inspect"), TaskState::Running { .. }));
    assert!(runtime.logs(&handle, LogStream::Stdout, None).await.expect("logs").is_empty());
    let argv = ["/bin/true".to_owned()];
    assert!(runtime.exec(&handle, &argv, Duration::from_secs(1)).await.expect("exec").status.success());

    let waiting = tokio::spawn({
        let runtime = runtime.clone();
        let handle = handle.clone();
        async move { runtime.wait(&handle).await }
    });
    runtime.stop(&handle, Duration::from_secs(30)).await.expect("stop");
    let stopped = ExitStatus { code: None, signal: Some(15), oom_killed: false };
    let status = tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("wait resolves").expect("join");
    assert_eq!(status.expect("wait"), stopped);
    match runtime.inspect(&handle).await.expect("inspect") {
        TaskState::Exited { status, finished_at } => {
            assert_eq!(status, stopped);
            assert!(finished_at.is_some());
        }
        other => panic!("expected Exited, got {other:?}"),
    }
    runtime.stop(&handle, Duration::ZERO).await.expect("stop again");
    assert_eq!(wait(&runtime, &handle).await.expect("wait"), stopped, "a second stop changes nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_exit_command_fails_the_task_at_once() {
    let runtime = SimRuntime::default();
    let handle = runtime.start(&spec("a1", "crash", "exit 42")).await.expect("start");
    assert_eq!(wait(&runtime, &handle).await.expect("wait").code, Some(42));
    let handle = runtime.start(&spec("a1", "ok", "exit")).await.expect("start");
    assert!(wait(&runtime, &handle).await.expect("wait").success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tests_can_end_running_tasks_as_they_like() {
    let runtime = SimRuntime::default();
    let handle = runtime.start(&spec("a1", "oom", "exec server")).await.expect("start");
    let oom = ExitStatus { code: None, signal: Some(9), oom_killed: true };
    assert!(runtime.exit_task(&handle.task_id, oom));
    assert!(!runtime.exit_task(&handle.task_id, ExitStatus { code: Some(0), signal: None, oom_killed: false }));
    assert_eq!(wait(&runtime, &handle).await.expect("wait"), oom, "the first ending stands");
    assert!(!runtime.exit_task("never-started", oom));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removal_forgets_the_task_and_releases_its_waiters() {
    let runtime = Arc::new(SimRuntime::default());
    let handle = runtime.start(&spec("a1", "gone", "exec sleep 300")).await.expect("start");
    let waiting = tokio::spawn({
        let (runtime, handle) = (runtime.clone(), handle.clone());
        async move { runtime.wait(&handle).await }
    });
    // The waiter may subscribe before or after the removal: NotFound either way.
    runtime.remove(&handle).await.expect("remove");
    let waited = tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("wait resolves").expect("join");
    assert!(matches!(waited, Err(RuntimeError::NotFound { .. })), "{waited:?}");
    assert_eq!(runtime.inspect(&handle).await.expect("inspect"), TaskState::NotFound);
    assert!(matches!(runtime.logs(&handle, LogStream::Stdout, None).await, Err(RuntimeError::NotFound { .. })));
    assert_eq!(runtime.task_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_id_runs_once_at_a_time_and_incarnations_are_told_apart() {
    let runtime = SimRuntime::default();
    let task = spec("a1", "once", "exec sleep 300");
    let first = runtime.start(&task).await.expect("start");
    assert!(matches!(runtime.start(&task).await, Err(RuntimeError::InvalidSpec(_))));
    runtime.stop(&first, Duration::ZERO).await.expect("stop");
    let second = runtime.start(&task).await.expect("an ended task may start again");
    assert_ne!(first.id, second.id);
    assert_eq!(runtime.inspect(&first).await.expect("inspect"), TaskState::NotFound);
    runtime.remove(&first).await.expect("removing the old incarnation is a no-op");
    assert!(matches!(runtime.inspect(&second).await.expect("inspect"), TaskState::Running { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_accepted_without_side_effects_and_bad_specs_refused() {
    let runtime = SimRuntime::default();
    assert!(runtime.capabilities().images);
    assert!(!runtime.capabilities().memory_limit);
    runtime.ensure_image("marina-test/does-not-exist:1", true).await.expect("every image is present");
    let mut image_task = spec("a1", "image", "unused");
    image_task.command = None;
    image_task.image = Some("marina-test/does-not-exist:1".into());
    runtime.start(&image_task).await.expect("an image task starts");
    let mut no_command = image_task.clone();
    no_command.task_id = "a1-nothing".into();
    no_command.image = None;
    assert!(matches!(runtime.start(&no_command).await, Err(RuntimeError::InvalidSpec(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_takes_the_configured_latency() {
    let latency = Duration::from_millis(200);
    let runtime = SimRuntime::new(SimConfig { start_latency: latency, ..SimConfig::default() });
    let started = Instant::now();
    let handle = runtime.start(&spec("a1", "slow", "exec sleep 300")).await.expect("start");
    assert!(started.elapsed() >= latency, "started after {:?}", started.elapsed());
    assert!(matches!(runtime.inspect(&handle).await.expect("inspect"), TaskState::Running { .. }));
}

/// 100 agents of 100 tasks each, as a scale test would run them: cheap to start, list, stop
/// and wait for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_tasks_on_a_hundred_agents_are_cheap() {
    const AGENTS: usize = 100;
    const TASKS: usize = 100;
    let started = Instant::now();
    let runtimes: Vec<(String, Arc<SimRuntime>)> =
        (0..AGENTS).map(|agent| (format!("agent-{agent}"), Arc::new(SimRuntime::default()))).collect();
    let handles = futures::future::join_all(runtimes.iter().map(|(agent, runtime)| async move {
        let mut handles = Vec::with_capacity(TASKS);
        for task in 0..TASKS {
            handles.push(runtime.start(&spec(agent, &format!("t{task}"), "exec server")).await.expect("start"));
        }
        handles
    }))
    .await;
    for (agent, runtime) in &runtimes {
        let listed = runtime.list(&by_agent(agent)).await.expect("list");
        assert_eq!(listed.len(), TASKS);
        assert!(listed.iter().all(|task| matches!(task.state, TaskState::Running { .. })));
    }
    let one = BTreeMap::from([(LABEL_TASK_ID.to_owned(), "agent-7-t42".to_owned())]);
    assert_eq!(runtimes[7].1.list(&one).await.expect("list").len(), 1);

    let waiters: Vec<_> = runtimes
        .iter()
        .zip(&handles)
        .flat_map(|((_, runtime), handles)| handles.iter().map(move |handle| (runtime.clone(), handle.clone())))
        .map(|(runtime, handle)| tokio::spawn(async move { runtime.wait(&handle).await }))
        .collect();
    for ((_, runtime), handles) in runtimes.iter().zip(&handles) {
        for handle in handles {
            runtime.stop(handle, Duration::from_secs(30)).await.expect("stop");
        }
    }
    for waiter in waiters {
        assert_eq!(waiter.await.expect("join").expect("wait").signal, Some(15));
    }
    // Loose: in a debug build on a 2-core machine this takes well under a second.
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
}
