//! The behaviour every backend must show, as functions each backend's integration tests
//! call against the real thing (the Docker Engine, containerd, the OS). They panic with a
//! description of what went wrong.
//!
//! Task commands only use `/bin/sh` with busybox-compatible utilities, so they run both on
//! the host and in Marina's locally built test image.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{
    Command, LABEL_AGENT_ID, LABEL_TASK_ID, LogStream, NetworkMode, Resources, Runtime, RuntimeError, TaskHandle,
    TaskSpec, TaskState, marina_labels,
};

/// Polls `check` every 20 ms until it returns `Some`, or panics after `timeout` naming
/// `what`: the one way Marina's tests wait on a condition, never a fixed sleep (the runtimes'
/// tests call it from here, the cluster's as `marina_tests::eventually`).
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a backend's tests provide.
pub struct Fixture {
    pub runtime: Arc<dyn Runtime>,
    /// Task sandboxes are created under here.
    pub sandbox_root: PathBuf,
    /// The image tasks run from (image runtimes only).
    pub image: Option<String>,
    /// Distinguishes this test's tasks from every other test's.
    pub agent_id: String,
}

impl Fixture {
    /// A spec running `script` with `/bin/sh -c`.
    pub fn spec(&self, task: &str, script: &str) -> TaskSpec {
        let task_id = format!("{}-{task}", self.agent_id);
        let sandbox = self.sandbox_root.join(&task_id);
        std::fs::create_dir_all(&sandbox).expect("creating the sandbox");
        TaskSpec {
            task_id: task_id.clone(),
            sandbox,
            command: Some(Command::Shell(script.to_owned())),
            image: self.image.clone(),
            force_pull: false,
            env: BTreeMap::new(),
            resources: Resources { cpus: 0.1, mem_mb: 64.0, disk_mb: 0.0 },
            ports: Vec::new(),
            network: NetworkMode::Bridge,
            privileged: false,
            labels: marina_labels(&task_id, &self.agent_id, "conformance"),
            parameters: Vec::new(),
            user: None,
        }
    }

    async fn start(&self, spec: &TaskSpec) -> TaskHandle {
        if let Some(image) = &spec.image {
            self.runtime.ensure_image(image, false).await.unwrap_or_else(|e| panic!("ensure_image {image}: {e}"));
        }
        self.runtime.start(spec).await.unwrap_or_else(|e| panic!("start {}: {e}", spec.task_id))
    }

    async fn cleanup(&self, handle: &TaskHandle) {
        self.runtime.stop(handle, Duration::from_secs(1)).await.expect("stop");
        self.runtime.remove(handle).await.expect("remove");
    }

    /// Waits until `logs` of `stream` contain `needle`.
    async fn wait_for_output(&self, handle: &TaskHandle, stream: LogStream, needle: &str) -> String {
        eventually(Duration::from_secs(30), &format!("{needle:?} in {stream:?}"), || async {
            let logs = self.runtime.logs(handle, stream, None).await.expect("logs");
            let text = String::from_utf8_lossy(&logs).into_owned();
            text.contains(needle).then_some(text)
        })
        .await
    }
}

async fn wait_exit(fixture: &Fixture, handle: &TaskHandle) -> crate::ExitStatus {
    tokio::time::timeout(Duration::from_secs(60), fixture.runtime.wait(handle))
        .await
        .expect("the task exits within 60 s")
        .expect("wait")
}

/// Start, inspect as running, read stdout and stderr, see the environment.
pub async fn launch_inspect_and_logs(fixture: &Fixture) {
    let mut spec = fixture.spec("logs", "echo hello $GREETING; echo oops >&2; exec sleep 300");
    spec.env.insert("GREETING".into(), "from-env".into());
    let handle = fixture.start(&spec).await;
    assert_eq!(handle.task_id, spec.task_id);
    assert_eq!(handle.runtime, fixture.runtime.kind());
    match fixture.runtime.inspect(&handle).await.expect("inspect") {
        TaskState::Running { .. } => {}
        other => panic!("expected Running, got {other:?}"),
    }
    fixture.wait_for_output(&handle, LogStream::Stdout, "hello from-env").await;
    fixture.wait_for_output(&handle, LogStream::Stderr, "oops").await;
    let tail = fixture.runtime.logs(&handle, LogStream::Stdout, Some(5)).await.expect("tail");
    assert!(tail.len() <= 5, "tail returned {} bytes", tail.len());
    fixture.cleanup(&handle).await;
}

/// An exit code travels back through `wait` and `inspect`.
pub async fn exit_status_is_reported(fixture: &Fixture) {
    let handle = fixture.start(&fixture.spec("exit3", "exit 3")).await;
    let status = wait_exit(fixture, &handle).await;
    assert_eq!(status.code, Some(3), "{status:?}");
    match fixture.runtime.inspect(&handle).await.expect("inspect") {
        TaskState::Exited { status, .. } => assert_eq!(status.code, Some(3)),
        other => panic!("expected Exited, got {other:?}"),
    }
    fixture.cleanup(&handle).await;
}

/// `stop` sends SIGTERM first: a task that handles it exits on its own terms.
pub async fn stop_is_graceful_first(fixture: &Fixture) {
    let script = "trap 'echo graceful; exit 0' TERM; echo ready; while true; do sleep 0.1; done";
    let handle = fixture.start(&fixture.spec("graceful", script)).await;
    fixture.wait_for_output(&handle, LogStream::Stdout, "ready").await;
    fixture.runtime.stop(&handle, Duration::from_secs(10)).await.expect("stop");
    let status = wait_exit(fixture, &handle).await;
    assert_eq!(status.code, Some(0), "the task exited by its TERM handler: {status:?}");
    fixture.wait_for_output(&handle, LogStream::Stdout, "graceful").await;
    fixture.cleanup(&handle).await;
}

/// A task ignoring SIGTERM is killed once the grace period is over.
pub async fn stop_kills_after_the_grace_period(fixture: &Fixture) {
    let script = "trap '' TERM; echo ready; while true; do sleep 0.1; done";
    let handle = fixture.start(&fixture.spec("stubborn", script)).await;
    fixture.wait_for_output(&handle, LogStream::Stdout, "ready").await;
    let started = Instant::now();
    fixture.runtime.stop(&handle, Duration::from_millis(500)).await.expect("stop");
    let status = wait_exit(fixture, &handle).await;
    assert!(status.code != Some(0), "a stubborn task cannot exit cleanly: {status:?}");
    assert!(started.elapsed() < Duration::from_secs(15), "killed {:?} after stop", started.elapsed());
    fixture.cleanup(&handle).await;
}

/// `stop` and `remove` succeed on exited, removed and unknown tasks.
pub async fn stop_and_remove_are_idempotent(fixture: &Fixture) {
    let handle = fixture.start(&fixture.spec("idempotent", "exit 0")).await;
    wait_exit(fixture, &handle).await;
    for _ in 0..2 {
        fixture.runtime.stop(&handle, Duration::from_millis(100)).await.expect("stop an exited task");
        fixture.runtime.remove(&handle).await.expect("remove");
    }
    let unknown = TaskHandle { id: format!("{}-never-existed", handle.id), ..handle.clone() };
    fixture.runtime.stop(&unknown, Duration::from_millis(100)).await.expect("stop an unknown task");
    fixture.runtime.remove(&unknown).await.expect("remove an unknown task");
    match fixture.runtime.inspect(&handle).await {
        Ok(TaskState::NotFound) | Err(RuntimeError::NotFound { .. }) => {}
        other => panic!("a removed task is gone, got {other:?}"),
    }
}

/// `list` finds tasks by their labels, with handles that work.
pub async fn list_finds_tasks_by_label(fixture: &Fixture) {
    let first = fixture.start(&fixture.spec("list-a", "exec sleep 300")).await;
    let second = fixture.start(&fixture.spec("list-b", "exec sleep 300")).await;
    let by_agent = BTreeMap::from([(LABEL_AGENT_ID.to_owned(), fixture.agent_id.clone())]);
    let listed = fixture.runtime.list(&by_agent).await.expect("list");
    for handle in [&first, &second] {
        let found = listed.iter().find(|task| task.handle.task_id == handle.task_id);
        let found = found.unwrap_or_else(|| panic!("{} not listed in {listed:?}", handle.task_id));
        assert_eq!(&found.handle, handle, "list returns the same handle start did");
        assert_eq!(found.labels.get(LABEL_TASK_ID), Some(&handle.task_id));
        assert!(matches!(found.state, TaskState::Running { .. }), "{:?}", found.state);
    }
    let by_task = BTreeMap::from([(LABEL_TASK_ID.to_owned(), first.task_id.clone())]);
    let only_first = fixture.runtime.list(&by_task).await.expect("list");
    assert_eq!(only_first.len(), 1, "{only_first:?}");
    fixture.cleanup(&first).await;
    fixture.cleanup(&second).await;
}

/// `exec` runs a command next to the task and reports its exit status.
pub async fn exec_runs_next_to_the_task(fixture: &Fixture) {
    let handle = fixture.start(&fixture.spec("exec", "exec sleep 300")).await;
    let argv = |script: &str| vec!["/bin/sh".to_owned(), "-c".to_owned(), script.to_owned()];
    let ok = fixture.runtime.exec(&handle, &argv("echo checked"), Duration::from_secs(10)).await.expect("exec");
    assert!(ok.status.success(), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.output).contains("checked"), "{ok:?}");
    let failed = fixture.runtime.exec(&handle, &argv("exit 7"), Duration::from_secs(10)).await.expect("exec");
    assert_eq!(failed.status.code, Some(7));
    fixture.cleanup(&handle).await;
}

/// A missing image with no registry fails quickly and names the image: the unreachable
/// registry ends the pull, well before a backend's pull timeout would.
pub async fn missing_image_fails_clearly(fixture: &Fixture) {
    // Half the shortest default pull timeout of any backend (Docker's 60 s; containerd's is
    // 300 s): a failure slower than this was a timeout waited out, not a missing registry
    // noticed. The outer bound only keeps a hanging backend from hanging the suite.
    const QUICKLY: Duration = Duration::from_secs(30);
    let image = "marina-test/does-not-exist:1";
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(120), fixture.runtime.ensure_image(image, false))
        .await
        .expect("ensure_image must not hang");
    match result {
        Err(RuntimeError::ImageUnavailable { image: named, reason }) => {
            assert_eq!(named, image);
            assert!(!reason.is_empty());
        }
        other => panic!("expected ImageUnavailable, got {other:?}"),
    }
    let took = started.elapsed();
    assert!(took < QUICKLY, "a missing image took {took:?} to fail, more than {QUICKLY:?}");
}
