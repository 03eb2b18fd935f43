//! The runtime conformance suite against the machine's real containerd, one test per
//! behaviour, each with its own agent id so parallel tests never see each other's tasks.

mod common;

use common::TestEnv;
use marina_runtime::conformance;

macro_rules! conformance_tests {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let env = TestEnv::new(&stringify!($name).replace('_', "-")).await;
            conformance::$name(&env.fixture()).await;
        }
    )*};
}

conformance_tests!(
    launch_inspect_and_logs,
    exit_status_is_reported,
    stop_is_graceful_first,
    stop_kills_after_the_grace_period,
    stop_and_remove_are_idempotent,
    list_finds_tasks_by_label,
    exec_runs_next_to_the_task,
    missing_image_fails_clearly,
);
