//! Server processes the benchmarks start themselves (etcd, ZooKeeper), and waiting for them.
//!
//! A [`Daemon`] is a drop guard: whichever way a scenario ends (success, `?`, panic, Ctrl-C
//! dropping the scenario's future), the process is SIGKILLed and reaped before the temp dir
//! holding its data is removed.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::time::Instant;

pub struct Daemon {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// Starts `program` with `args`; its stdout and stderr go to `log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], log: &Path) -> anyhow::Result<Self> {
        let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        Ok(Self { name: name.to_owned(), child, log: log.to_owned() })
    }

    /// An error (with the end of its log) if the process has exited: a server that died at
    /// startup (port taken, bad config) fails the wait at once instead of at its deadline.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("{} exited ({status}); end of its log:\n{}", self.name, tail.join("\n"));
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGKILL, then reap (milliseconds), so the process no longer writes to its data dir
        // when the owner's temp dir is removed right after.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 50 ms until it returns `Ok(Some(_))`. An `Err` ends the wait at once
/// (a server died); after `timeout` the error names `what`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first of `candidates` that is an executable file, or of `name` on `PATH`.
pub fn find_program(name: &str, candidates: &[&str]) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).map(|dir| dir.join(name)).collect::<Vec<_>>())
        .unwrap_or_default();
    candidates.iter().map(PathBuf::from).chain(on_path).find(|path| is_executable(path))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Runs `scenario`, or stops it on Ctrl-C: dropping its future drops its clusters' guards,
/// so no server outlives an interrupted benchmark.
pub async fn until_interrupted<T>(scenario: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::select! {
        result = scenario => result,
        _ = tokio::signal::ctrl_c() => bail!("interrupted: servers stopped"),
    }
}
