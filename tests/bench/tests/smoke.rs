//! The failover, start, footprint and tracing benchmarks at a tiny size, so they cannot rot: the built
//! `marina-bench` runs each against real processes and must finish with a `summary:` line.
//! The bench itself stops every process, container and temp dir it started.

use std::process::Command;

/// Runs `marina-bench args` and returns its `summary:` line, failing on any error.
fn bench(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_marina-bench")).args(args).output().expect("running marina-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "marina-bench {args:?} failed ({}):\n{stdout}\n{stderr}", output.status);
    stdout
        .lines()
        .find(|line| line.starts_with("summary:"))
        .unwrap_or_else(|| panic!("no summary line in:\n{stdout}"))
        .to_owned()
}

#[test]
fn a_failover_round_of_each_signal_reports_a_summary() {
    let summary = bench(&["failover", "--rounds", "1", "--agents", "1"]);
    assert!(summary.contains("failover (SIGKILL)") && summary.contains("handover (SIGTERM)"), "{summary}");
}

#[test]
fn one_start_of_each_kind_reports_a_summary() {
    let summary = bench(&["start", "--runs", "1"]);
    assert!(summary.contains("docker run -d") && summary.contains("ratio"), "{summary}");
}

#[test]
fn a_small_footprint_run_reports_a_summary() {
    let summary = bench(&["footprint", "--agents", "10", "--keys", "2000", "--sample-seconds", "0.3"]);
    assert!(summary.contains("with 11 agents") && summary.contains("with 2000 keys"), "{summary}");
}

#[test]
fn a_small_tracing_run_reports_a_summary() {
    let summary = bench(&["tracing", "--requests", "50"]);
    assert!(summary.contains("without an exporter") && summary.contains("exporting adds"), "{summary}");
}
