//! Smoke tests of `marina-bench coord` (Marina and its peers etcd and ZooKeeper) and of
//! `marina-bench zk-election`: each run must succeed and print its table and `summary:` line.
//! `scripts/test` installs the peers (through `scripts/setup-bench`); on a machine without
//! them, their tests say so and pass.

use std::path::Path;
use std::process::Command;

/// Runs marina-bench with `args`; asserts success and a `summary:` line; returns stdout.
fn bench(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_marina-bench")).args(args).output().expect("running marina-bench");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "marina-bench {args:?} failed: {}\n{stdout}\n{stderr}", output.status);
    assert!(stdout.lines().any(|line| line.starts_with("summary: ")), "no summary line:\n{stdout}");
    stdout
}

/// Table rows of `system` (first column) with their error count (last column).
fn rows<'a>(stdout: &'a str, system: &str) -> Vec<(&'a str, u64)> {
    stdout
        .lines()
        .filter(|line| line.split_whitespace().next() == Some(system))
        .map(|line| (line, line.split_whitespace().last().and_then(|errors| errors.parse().ok()).unwrap_or(u64::MAX)))
        .collect()
}

fn zookeeper_installed() -> bool {
    installed("java", "/usr/bin/java") && Path::new("/usr/share/java/zookeeper.jar").is_file()
}

fn installed(program: &str, debian_path: &str) -> bool {
    Path::new(debian_path).is_file()
        || std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

#[test]
fn coord_marina() {
    let stdout = bench(&["coord", "--systems", "marina", "--clients", "1", "--seconds", "0.5"]);
    let marina = rows(&stdout, "marina");
    assert_eq!(marina.len(), 3, "one row per workload:\n{stdout}");
    assert!(marina.iter().all(|(_, errors)| *errors == 0), "errors:\n{stdout}");
}

#[test]
fn coord_etcd_beside_marina() {
    if !installed("etcd", "/usr/bin/etcd") {
        eprintln!("skipped: etcd is not installed (scripts/setup-bench installs it)");
        return;
    }
    let stdout = bench(&["coord", "--systems", "marina,etcd", "--clients", "1", "--seconds", "0.5"]);
    let etcd = rows(&stdout, "etcd");
    assert_eq!(etcd.len(), 3, "one etcd row per workload:\n{stdout}");
    assert!(etcd.iter().all(|(_, errors)| *errors == 0), "etcd errors:\n{stdout}");
    assert!(stdout.contains("vs etcd:"), "no comparison with etcd in the summary:\n{stdout}");
}

#[test]
fn coord_zookeeper_beside_marina() {
    if !zookeeper_installed() {
        eprintln!("skipped: ZooKeeper (or java) is not installed (scripts/setup-bench installs it)");
        return;
    }
    let stdout = bench(&["coord", "--systems", "marina,zookeeper", "--clients", "1", "--seconds", "0.5"]);
    let zookeeper = rows(&stdout, "zookeeper");
    assert_eq!(zookeeper.len(), 3, "one zookeeper row per workload:\n{stdout}");
    assert!(zookeeper.iter().all(|(_, errors)| *errors == 0), "zookeeper errors:\n{stdout}");
    assert!(stdout.contains("vs zookeeper:"), "no comparison with ZooKeeper in the summary:\n{stdout}");
}

#[test]
fn zk_election_one_round() {
    if !zookeeper_installed() {
        eprintln!("skipped: ZooKeeper (or java) is not installed (scripts/setup-bench installs it)");
        return;
    }
    let stdout = bench(&["zk-election", "--rounds", "1"]);
    let row = rows(&stdout, "zookeeper");
    assert_eq!(row.len(), 1, "one row:\n{stdout}");
}
