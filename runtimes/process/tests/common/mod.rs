//! What the process runtime's integration tests share: a temporary agent (state dir and
//! sandboxes) that kills every process it started when dropped, passing or failing.

// Each test file uses its own part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use marina_runtime::conformance::Fixture;
use marina_runtime::{Runtime, TaskHandle};
use marina_runtime_process::{ProcessConfig, ProcessRuntime};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tempfile::TempDir;

pub const SUPERVISOR: &str = env!("CARGO_BIN_EXE_marina-supervise");

/// One simulated agent's directories. Dropping it SIGKILLs every process whose working
/// directory is inside them (supervisors and tasks run in their sandboxes), with its whole
/// process group, so a failed assertion leaves nothing running.
pub struct TestEnv {
    pub agent_id: String,
    pub state_dir: PathBuf,
    pub sandbox_root: PathBuf,
    /// Declared last: removed after `drop` has killed what ran inside.
    dir: TempDir,
}

impl TestEnv {
    pub fn new(test: &str) -> TestEnv {
        let dir = tempfile::tempdir().expect("tempdir");
        let state_dir = dir.path().join("state");
        let sandbox_root = dir.path().join("sandboxes");
        std::fs::create_dir_all(&sandbox_root).expect("sandbox root");
        TestEnv { agent_id: format!("{test}-{}", std::process::id()), state_dir, sandbox_root, dir }
    }

    pub fn config(&self) -> ProcessConfig {
        ProcessConfig {
            state_dir: self.state_dir.clone(),
            supervisor: PathBuf::from(SUPERVISOR),
            log_rotation: Default::default(),
        }
    }

    /// A runtime on this agent's state dir: call again to simulate the agent's restart.
    pub fn runtime(&self) -> Arc<ProcessRuntime> {
        Arc::new(ProcessRuntime::new(self.config()).expect("the process runtime starts"))
    }

    pub fn fixture(&self, runtime: Arc<ProcessRuntime>) -> Fixture {
        Fixture {
            runtime: runtime as Arc<dyn Runtime>,
            sandbox_root: self.sandbox_root.clone(),
            image: None,
            agent_id: self.agent_id.clone(),
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        kill_everything_under(self.dir.path());
    }
}

fn kill_everything_under(root: &Path) {
    let Ok(root) = root.canonicalize() else { return };
    let Ok(entries) = std::fs::read_dir("/proc") else { return };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<i32>().ok()) else { continue };
        let inside = std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(&root));
        if !inside || pid == std::process::id() as i32 {
            continue;
        }
        if let Some(pgid) = read_pgid(pid).filter(|&pgid| pgid > 1) {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Field 5 of `/proc/<pid>/stat`.
fn read_pgid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].split_ascii_whitespace().nth(2)?.parse().ok()
}

/// Field 22 of `/proc/<pid>/stat` and whether the process is a zombie.
fn read_start_time(pid: u32) -> Option<(u64, bool)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat[stat.rfind(')')? + 1..].split_ascii_whitespace();
    let zombie = fields.next()? == "Z";
    Some((fields.nth(18)?.parse().ok()?, zombie))
}

/// The supervisor's pid and start time, from a handle's id (`<pid>:<start time>`).
pub fn supervisor_of(handle: &TaskHandle) -> (u32, u64) {
    let (pid, start) = handle.id.split_once(':').expect("a process handle id is <pid>:<start time>");
    (pid.parse().expect("pid"), start.parse().expect("start time"))
}

/// Whether the process `pid` that started at `start_time` still runs (not a zombie).
pub fn is_running(pid: u32, start_time: u64) -> bool {
    read_start_time(pid).is_some_and(|(start, zombie)| start == start_time && !zombie)
}

/// Waits up to 30 s until `condition` holds.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    marina_runtime::conformance::eventually(Duration::from_secs(30), what, || {
        let holds = condition();
        async move { holds.then_some(()) }
    })
    .await
}
