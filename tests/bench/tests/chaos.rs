//! The fault suite, short: the built `marina-bench chaos` starts a whole cluster of processes
//! in network namespaces, runs a few faults (the first always the coord leader cut off), and
//! every checker passes — registers linearizable, leaderships in epoch order, apps converged
//! after every heal.

use std::process::Command;

#[test]
fn a_short_chaos_run_finds_no_violation() {
    if let Some(reason) = marina_tests::netns::unavailable_reason() {
        assert!(std::env::var_os("MARINA_NETNS_REQUIRED").is_none(), "network namespaces are required: {reason}");
        eprintln!("skipped: {reason}");
        return;
    }
    let output = Command::new(env!("CARGO_BIN_EXE_marina-bench"))
        .args(["chaos", "--faults", "5", "--seed", "20"])
        .output()
        .expect("running marina-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "marina-bench chaos failed ({}):\n{stdout}\n{stderr}", output.status);
    let summary = stdout.lines().find(|line| line.starts_with("summary:")).unwrap_or_else(|| {
        panic!("no summary line in:\n{stdout}");
    });
    assert!(summary.contains("partition") && summary.contains("; 0 violations;"), "{summary}");
    for checker in ["coord-registers", "leadership", "apps", "liveness"] {
        let line = format!("checker {checker}: ok");
        assert!(stdout.lines().any(|l| l.starts_with(&line)), "no {line:?} in:\n{stdout}");
    }
    assert!(stdout.lines().any(|l| l.starts_with("fault 1 [") && l.contains("partition")), "{stdout}");
}
