//! The conformance suite every Marina runtime passes, against the real Docker Engine.

mod common;

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let env = common::env(stringify!($name)).await;
            marina_runtime::conformance::$name(&env.fixture).await;
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
    missing_image_fails_clearly,
);
