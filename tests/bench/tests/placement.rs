//! The placement benchmark end to end, tiny: the built `marina-bench` starts a whole
//! in-process cluster, submits apps through the gateway, and reports once every task runs —
//! twice, with the calibration, the services' health, coord's disk and the spread.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn a_tiny_placement_run_reports_a_summary() {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_marina-bench"))
        .args(["placement", "--agents", "5", "--tasks", "50", "--apps", "6", "--timeout-seconds", "45", "--runs", "2"])
        .output()
        .expect("running marina-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "marina-bench failed ({}):\n{stdout}\n{stderr}", output.status);
    let summary = stdout.lines().find(|line| line.starts_with("summary:")).unwrap_or_else(|| {
        panic!("no summary line in:\n{stdout}");
    });
    assert!(summary.contains("50 tasks in 6 apps on 5 sim agents RUNNING"), "{summary}");
    // Nothing failed, so nothing may look as if it had: no election, expiry or lost agent.
    assert!(summary.ends_with("; 0 disturbances"), "{summary}");
    assert!(stdout.contains("few-instance apps") && stdout.contains("many-instance apps"), "{stdout}");
    for line in ["calibration: ", "health: coord elections 0", "coord disk: node 1 log"] {
        assert_eq!(stdout.lines().filter(|l| l.starts_with(line)).count(), 2, "{line:?} once per run in:\n{stdout}");
    }
    let spread = stdout.lines().find(|line| line.starts_with("spread: 2 runs: tasks/s min "));
    assert!(
        spread.is_some_and(|line| line.ends_with("0 runs with a leader change, session expiry or unreachable agent")),
        "{stdout}"
    );
    assert!(started.elapsed() < Duration::from_secs(90), "took {:?}", started.elapsed());
}
