//! A child process under test: its output goes to a log file in the test's temp dir (shown
//! when a test fails), and it is SIGKILLed when dropped.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

pub struct TestProcess {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl TestProcess {
    /// Starts `program` with `args`; stdout and stderr are appended to `log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], envs: &[(&str, &str)], log: &Path) -> Self {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("opening process log");
        let stderr = file.try_clone().expect("cloning log handle");
        let mut command = Command::new(program);
        command.args(args).stdin(Stdio::null()).stdout(file).stderr(stderr).kill_on_drop(true);
        for (key, value) in envs {
            command.env(key, value);
        }
        let child = command.spawn().unwrap_or_else(|error| panic!("starting {}: {error}", program.display()));
        Self { name: name.to_owned(), child: Some(child), log: log.to_owned() }
    }

    /// Starts `program` with its stdout piped to the caller (for line-oriented fixtures).
    pub fn spawn_piped(name: &str, program: &Path, args: &[String], log: &Path) -> (Self, tokio::process::ChildStdout) {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("opening process log");
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|error| panic!("starting {}: {error}", program.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        (Self { name: name.to_owned(), child: Some(child), log: log.to_owned() }, stdout)
    }

    pub fn pid(&self) -> Option<Pid> {
        self.child.as_ref().and_then(Child::id).map(|id| Pid::from_raw(id as i32))
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// How the process ended, if it has (reaping it); `None` while it runs.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().expect("polling the child")
    }

    /// SIGKILL, and reap.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// SIGTERM, then wait for exit; returns the exit status.
    pub async fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        if let Some(id) = child.id() {
            let _ = kill(Pid::from_raw(id as i32), Signal::SIGTERM);
        }
        child.wait().await.ok()
    }

    /// Waits up to `timeout` for the process to exit on its own, and reaps it: its exit
    /// status, or None if it still runs after `timeout` (or was already reaped).
    pub async fn wait_exit(&mut self, timeout: std::time::Duration) -> Option<std::process::ExitStatus> {
        let status = tokio::time::timeout(timeout, self.child.as_mut()?.wait()).await.ok()?.ok()?;
        self.child = None;
        Some(status)
    }

    /// SIGSTOP: the process freezes with its sockets open.
    pub fn freeze(&self) {
        if let Some(pid) = self.pid() {
            kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
        }
    }

    /// SIGCONT.
    pub fn thaw(&self) {
        if let Some(pid) = self.pid() {
            kill(pid, Signal::SIGCONT).expect("SIGCONT");
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // A frozen child must be thawed to die promptly.
            if let Some(id) = child.id() {
                let _ = kill(Pid::from_raw(id as i32), Signal::SIGCONT);
            }
            let _ = child.start_kill();
        }
        if std::thread::panicking() {
            eprintln!("----- log of {} -----\n{}", self.name, tail(&self.log(), 60));
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
