//! What every Docker test shares: the locally built image, a connected runtime, a conformance
//! fixture with an agent id of its own, and a guard that removes the test's containers even
//! when the test panics.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use marina_runtime::conformance::Fixture;
use marina_runtime::{LABEL_AGENT_ID, LogStream, Runtime, TaskHandle};
use marina_runtime_docker::{DockerConfig, DockerRuntime};
use tempfile::TempDir;

pub const IMAGE: &str = "marina-test/busybox:latest";

/// Builds the test images once per test process (the script is idempotent and fast).
pub fn build_images() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-test-images");
        let status = Command::new(&script).status().unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        assert!(status.success(), "{} failed: {status}", script.display());
    });
}

/// One test's world. Field order is drop order: containers go before their sandboxes.
pub struct TestEnv {
    pub fixture: Fixture,
    pub runtime: Arc<DockerRuntime>,
    _cleanup: RemoveContainersOnDrop,
    _sandboxes: TempDir,
}

/// A connected runtime and a fixture whose agent id is unique to `test` in this process.
pub async fn env(test: &str) -> TestEnv {
    build_images();
    let runtime = Arc::new(DockerRuntime::connect(&DockerConfig::default()).await.expect("a Docker Engine answers"));
    let agent_id = format!("{}-{}", test.replace('_', "-"), std::process::id());
    let sandboxes = tempfile::tempdir().expect("a temp dir");
    let fixture = Fixture {
        runtime: runtime.clone(),
        sandbox_root: sandboxes.path().to_owned(),
        image: Some(IMAGE.to_owned()),
        agent_id: agent_id.clone(),
    };
    TestEnv { fixture, runtime, _cleanup: RemoveContainersOnDrop { agent_id }, _sandboxes: sandboxes }
}

/// Force-removes every container labelled with the test's agent id. Blocking and through the
/// docker CLI, because the tokio runtime may already be gone when a panicking test unwinds.
struct RemoveContainersOnDrop {
    agent_id: String,
}

impl Drop for RemoveContainersOnDrop {
    fn drop(&mut self) {
        let filter = format!("label={LABEL_AGENT_ID}={}", self.agent_id);
        let listed = Command::new("docker").args(["ps", "-aq", "--no-trunc", "--filter", &filter]).output();
        let ids: Vec<String> = match listed {
            Ok(out) => String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect(),
            Err(e) => {
                eprintln!("cleanup: docker ps failed: {e}");
                return;
            }
        };
        if ids.is_empty() {
            return;
        }
        let removed = Command::new("docker").args(["rm", "-f", "-v"]).args(&ids).output();
        if let Err(e) = removed {
            eprintln!("cleanup: docker rm {ids:?} failed: {e}");
        }
    }
}

/// Waits until `stream` of the task contains `needle`; returns the whole stream.
pub async fn wait_for_logs(runtime: &dyn Runtime, handle: &TaskHandle, stream: LogStream, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let logs = runtime.logs(handle, stream, None).await.expect("logs");
        let text = String::from_utf8_lossy(&logs).into_owned();
        if text.contains(needle) {
            return text;
        }
        assert!(Instant::now() < deadline, "{needle:?} never appeared in {stream:?}: {text:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops and removes a task, as the agent does.
pub async fn cleanup(runtime: &dyn Runtime, handle: &TaskHandle) {
    runtime.stop(handle, Duration::from_millis(200)).await.expect("stop");
    runtime.remove(handle).await.expect("remove");
}

/// A user-defined Docker network made for one test (container networks are the operator's
/// to make), removed when dropped — after the test's containers, if declared before its
/// [`TestEnv`] — even when the test panics.
pub struct TestNetwork {
    pub name: String,
}

impl TestNetwork {
    pub fn create(test: &str) -> TestNetwork {
        let name = format!("marina-test-{}-{}", test.replace('_', "-"), std::process::id());
        // A leftover of an earlier run of the same process id.
        let _ = Command::new("docker").args(["network", "rm", &name]).output();
        let out = Command::new("docker").args(["network", "create", &name]).output().expect("docker network create");
        assert!(out.status.success(), "docker network create {name}: {}", String::from_utf8_lossy(&out.stderr));
        TestNetwork { name }
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        if let Err(e) = Command::new("docker").args(["network", "rm", &self.name]).output() {
            eprintln!("cleanup: docker network rm {} failed: {e}", self.name);
        }
    }
}
