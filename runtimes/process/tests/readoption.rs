//! Tasks outlive the runtime instance (the agent) that started them, and a new instance on the
//! same state dir re-adopts them.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::{TestEnv, eventually, is_running, supervisor_of};
use marina_runtime::{ExitStatus, LABEL_AGENT_ID, LogStream, Runtime, TaskHandle, TaskState};
use marina_runtime_process::{ProcessConfig, ProcessRuntime};
use tokio::io::{AsyncBufReadExt, BufReader};

/// The task stays up until SIGTERM, then exits with 7: its exit code proves whose status we read.
const TRAPS_TERM: &str = "trap 'exit 7' TERM; echo ready; while true; do sleep 0.1; done";

fn by_agent(env: &TestEnv) -> BTreeMap<String, String> {
    BTreeMap::from([(LABEL_AGENT_ID.to_owned(), env.agent_id.clone())])
}

fn running_pid(state: &TaskState) -> u32 {
    match state {
        TaskState::Running { pid: Some(pid), .. } => *pid,
        other => panic!("expected Running with a pid, got {other:?}"),
    }
}

fn exited(state: &TaskState) -> ExitStatus {
    match state {
        TaskState::Exited { status, .. } => *status,
        other => panic!("expected Exited, got {other:?}"),
    }
}

async fn logs_contain(runtime: &ProcessRuntime, handle: &TaskHandle, needle: &str) -> bool {
    let logs = runtime.logs(handle, LogStream::Stdout, None).await.expect("logs");
    String::from_utf8_lossy(&logs).contains(needle)
}

async fn wait_for_output(runtime: &ProcessRuntime, handle: &TaskHandle, needle: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !logs_contain(runtime, handle, needle).await {
        assert!(tokio::time::Instant::now() < deadline, "{needle:?} never appeared in stdout");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_runtime_re_adopts_a_running_task() {
    let env = TestEnv::new("readopt");
    let first = env.runtime();
    let spec = env.fixture(first.clone()).spec("web", TRAPS_TERM);
    let handle = first.start(&spec).await.expect("start");
    wait_for_output(&first, &handle, "ready").await;
    let pid = running_pid(&first.inspect(&handle).await.expect("inspect"));
    drop(first);

    let second = env.runtime();
    let listed = second.list(&by_agent(&env)).await.expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].handle, handle, "the restarted runtime hands out the same handle");
    assert_eq!(listed[0].labels, spec.labels);
    assert_eq!(running_pid(&listed[0].state), pid, "the same process, not a relaunch");
    assert_eq!(running_pid(&second.inspect(&handle).await.expect("inspect")), pid);
    assert!(logs_contain(&second, &handle, "ready").await);
    let argv = ["/bin/sh".to_owned(), "-c".to_owned(), "echo $MARINA_SANDBOX".to_owned()];
    let checked = second.exec(&handle, &argv, Duration::from_secs(10)).await.expect("exec");
    assert_eq!(String::from_utf8_lossy(&checked.output).trim(), spec.sandbox.to_str().expect("utf-8"));

    second.stop(&handle, Duration::from_secs(10)).await.expect("stop");
    let status =
        tokio::time::timeout(Duration::from_secs(30), second.wait(&handle)).await.expect("exits").expect("wait");
    assert_eq!(status.code, Some(7), "the status the supervisor recorded: {status:?}");
    assert_eq!(exited(&second.inspect(&handle).await.expect("inspect")).code, Some(7));
    second.remove(&handle).await.expect("remove");
    assert!(second.list(&by_agent(&env)).await.expect("list").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_exits_while_no_runtime_runs_is_reported_afterwards() {
    let env = TestEnv::new("exit-while-away");
    let first = env.runtime();
    let spec = env.fixture(first.clone()).spec("batch", "while [ ! -e release ]; do sleep 0.02; done; exit 4");
    let handle = first.start(&spec).await.expect("start");
    drop(first);

    let (pid, start_time) = supervisor_of(&handle);
    std::fs::write(spec.sandbox.join("release"), b"").expect("release the task");
    eventually("the supervisor has recorded the status and exited", || !is_running(pid, start_time)).await;

    let second = env.runtime();
    assert_eq!(exited(&second.inspect(&handle).await.expect("inspect")).code, Some(4));
    let status =
        tokio::time::timeout(Duration::from_secs(5), second.wait(&handle)).await.expect("at once").expect("wait");
    assert_eq!(status.code, Some(4));
    let listed = second.list(&by_agent(&env)).await.expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(exited(&listed[0].state).code, Some(4));
    second.stop(&handle, Duration::from_secs(1)).await.expect("stopping an exited task");
    second.remove(&handle).await.expect("remove");
}

/// Not a test: the agent `an_agent_killed_with_sigkill_leaves_its_tasks_re_adoptable` starts
/// in a process of its own and SIGKILLs. Ignored, so only that test runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by an_agent_killed_with_sigkill_leaves_its_tasks_re_adoptable"]
async fn agent_process_for_the_sigkill_test() {
    let (Some(state_dir), Some(sandbox)) =
        (std::env::var_os("MARINA_TEST_STATE_DIR"), std::env::var_os("MARINA_TEST_SANDBOX"))
    else {
        return;
    };
    let config = ProcessConfig {
        state_dir: state_dir.into(),
        supervisor: common::SUPERVISOR.into(),
        log_rotation: Default::default(),
    };
    let runtime = ProcessRuntime::new(config).expect("runtime");
    let mut spec = env_spec(PathBuf::from(sandbox));
    spec.labels.insert(LABEL_AGENT_ID.into(), std::env::var("MARINA_TEST_AGENT_ID").expect("agent id"));
    let handle = runtime.start(&spec).await.expect("start");
    println!("HANDLE {}", serde_json::to_string(&handle).expect("handle json"));
    std::future::pending::<()>().await;
}

fn env_spec(sandbox: PathBuf) -> marina_runtime::TaskSpec {
    marina_runtime::TaskSpec {
        task_id: "killed-agent-task".into(),
        sandbox,
        command: Some(marina_runtime::Command::Shell(TRAPS_TERM.into())),
        image: None,
        force_pull: false,
        env: BTreeMap::new(),
        resources: Default::default(),
        ports: Vec::new(),
        network: Default::default(),
        privileged: false,
        labels: BTreeMap::new(),
        parameters: Vec::new(),
        user: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_with_sigkill_leaves_its_tasks_re_adoptable() {
    let env = TestEnv::new("sigkill");
    let sandbox = env.sandbox_root.join("killed-agent-task");
    std::fs::create_dir_all(&sandbox).expect("sandbox");
    let mut agent = tokio::process::Command::new(std::env::current_exe().expect("test executable"))
        .args(["agent_process_for_the_sigkill_test", "--exact", "--ignored", "--nocapture"])
        .env("MARINA_TEST_STATE_DIR", &env.state_dir)
        .env("MARINA_TEST_SANDBOX", &sandbox)
        .env("MARINA_TEST_AGENT_ID", &env.agent_id)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the agent process starts");
    let mut lines = BufReader::new(agent.stdout.take().expect("stdout")).lines();
    let handle: TaskHandle = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("agent stdout") {
            if let Some(json) = line.strip_prefix("HANDLE ") {
                return serde_json::from_str(json).expect("handle");
            }
        }
        panic!("the agent process ended without starting its task");
    })
    .await
    .expect("the agent starts its task within 30 s");

    agent.kill().await.expect("SIGKILL the agent");
    let runtime = env.runtime();
    let listed = runtime.list(&by_agent(&env)).await.expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].handle, handle);
    running_pid(&listed[0].state);
    wait_for_output(&runtime, &handle, "ready").await;

    runtime.stop(&handle, Duration::from_secs(10)).await.expect("stop");
    let status =
        tokio::time::timeout(Duration::from_secs(30), runtime.wait(&handle)).await.expect("exits").expect("wait");
    assert_eq!(status.code, Some(7), "{status:?}");
    runtime.remove(&handle).await.expect("remove");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_supervisor_pid_is_not_mistaken_for_the_task() {
    let env = TestEnv::new("pid-reuse");
    let first = env.runtime();
    let spec = env.fixture(first.clone()).spec("reused", "exec sleep 300");
    let handle = first.start(&spec).await.expect("start");
    let task_pid = running_pid(&first.inspect(&handle).await.expect("inspect"));
    drop(first);

    // Rewrite the record as if its processes had ended and their pids now named others: same
    // pids, other start times. (The record's layout is this crate's own, see src/store.rs.)
    let record_path = env.state_dir.join("tasks").join(&spec.task_id).join("task.json");
    let mut record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record_path).expect("record")).expect("json");
    for process in ["supervisor", "task"] {
        let start_time = &mut record[process]["start_time"];
        *start_time = (start_time.as_u64().expect("start time") + 1).into();
    }
    std::fs::write(&record_path, serde_json::to_vec(&record).expect("json")).expect("rewrite the record");

    let runtime = env.runtime();
    let listed = runtime.list(&by_agent(&env)).await.expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    let stale = &listed[0].handle;
    assert_ne!(stale, &handle, "the handle names the supervisor's start time");
    let unknown = ExitStatus { code: None, signal: None, oom_killed: false };
    assert_eq!(exited(&listed[0].state), unknown);
    assert_eq!(exited(&runtime.inspect(stale).await.expect("inspect")), unknown);
    assert_eq!(runtime.inspect(&handle).await.expect("inspect"), TaskState::NotFound);

    runtime.stop(stale, Duration::from_millis(100)).await.expect("stop");
    let (supervisor_pid, supervisor_start) = supervisor_of(&handle);
    assert!(is_running(supervisor_pid, supervisor_start), "stop signalled a process that was not the task's");
    let task_stat = std::fs::read_to_string(format!("/proc/{task_pid}/stat")).expect("the task process still runs");
    assert!(!task_stat.contains(") Z "), "stop signalled a process that was not the task's");
    // The TestEnv kills the real processes.
}
