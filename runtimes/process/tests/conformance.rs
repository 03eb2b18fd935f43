//! The runtime conformance suite against real host processes.

mod common;

use std::time::Duration;

use common::TestEnv;
use marina_runtime::{Runtime, RuntimeError, RuntimeKind};

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let env = TestEnv::new(stringify!($name));
            let fixture = env.fixture(env.runtime());
            marina_runtime::conformance::$name(&fixture).await;
        }
    )*};
}

conformance!(
    launch_inspect_and_logs,
    exit_status_is_reported,
    stop_is_graceful_first,
    stop_kills_after_the_grace_period,
    stop_and_remove_are_idempotent,
    list_finds_tasks_by_label,
    exec_runs_next_to_the_task,
);

/// Instead of `missing_image_fails_clearly`: the process runtime runs no images at all, and
/// says so at once rather than pretending an image is unavailable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_unsupported() {
    let env = TestEnv::new("images");
    let runtime = env.runtime();
    assert!(!runtime.capabilities().images);
    match tokio::time::timeout(Duration::from_secs(5), runtime.ensure_image("busybox:1", false)).await {
        Ok(Err(RuntimeError::Unsupported { runtime: RuntimeKind::Process, reason })) => {
            assert!(reason.contains("busybox:1"), "{reason}");
        }
        other => panic!("expected Unsupported at once, got {other:?}"),
    }
    let fixture = env.fixture(runtime.clone());
    let mut spec = fixture.spec("image", "true");
    spec.image = Some("busybox:1".into());
    match runtime.start(&spec).await {
        Err(RuntimeError::Unsupported { reason, .. }) => assert!(reason.contains("image busybox:1"), "{reason}"),
        other => panic!("expected Unsupported, got {other:?}"),
    }
}
