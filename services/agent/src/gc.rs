//! Garbage collection of sandboxes, as Mesos does it (`--gc_delay`, `--gc_disk_headroom`,
//! `--disk_watch_interval`): every `disk_watch_interval_ms` the agent looks at how full the
//! disk holding its sandboxes is, and removes the sandboxes that may go and have not been
//! written to for `delay × max(0, 1 − disk_headroom − usage)` ([`max_age`]).
//!
//! A sandbox may go only when its task is not one the agent knows: a task is known until it
//! is terminal *and* its terminal update was acknowledged (then it is forgotten), so a
//! running task, or one whose end the scheduler has not heard of yet, keeps its output.
//! Sandboxes of tasks an earlier agent forgot, or never knew, go too.
//!
//! A sandbox's age is the time since the last change to it or to what it holds directly
//! (its output files): for a forgotten task, about when it ended. A sandbox to remove is
//! first renamed into `sandboxes/.collected/` with the tasks locked, so a launch of the same
//! task id (which claims the sandbox with the tasks locked) gets a fresh one rather than one
//! being deleted under it; the removal itself happens after, unlocked. Sandbox names never
//! start with a dot ([`crate::checkpoint::sandbox_name`]), so that directory is no one's.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use marina_daemon::Shutdown;

use crate::config::GcConfig;
use crate::tasks::Tasks;

/// Where sandboxes on their way out go, inside the sandboxes directory.
const TRASH: &str = ".collected";

/// How long a sandbox that may go is kept, given how full its disk is: Mesos' rule.
pub fn max_age(delay: Duration, headroom: f64, disk_usage: f64) -> Duration {
    // An unknown usage is no reason to remove anything sooner.
    let usage = if disk_usage.is_nan() { 0.0 } else { disk_usage };
    let fraction = (1.0 - headroom - usage).clamp(0.0, 1.0);
    // At most `delay` (the fraction is at most 1), which a float may round past.
    Duration::try_from_secs_f64(delay.as_secs_f64() * fraction).map_or(delay, |age| age.min(delay))
}

/// The used fraction of the file system holding `path` (Mesos': blocks not free over all).
pub fn disk_usage(path: &Path) -> io::Result<f64> {
    let stats = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
    let (blocks, free) = (stats.blocks(), stats.blocks_free());
    if blocks == 0 {
        return Ok(0.0);
    }
    Ok(blocks.saturating_sub(free) as f64 / blocks as f64)
}

/// The agent's sandbox collector.
pub struct SandboxGc {
    tasks: Arc<Tasks>,
    /// The sandboxes directory.
    dir: PathBuf,
    config: GcConfig,
    /// Sandboxes removed since the agent started, for the metrics.
    collected: AtomicU64,
}

impl SandboxGc {
    pub fn new(tasks: Arc<Tasks>, dir: PathBuf, config: GcConfig) -> Self {
        Self { tasks, dir, config, collected: AtomicU64::new(0) }
    }

    pub fn collected(&self) -> u64 {
        self.collected.load(Ordering::Relaxed)
    }

    /// Collects at once, then every `disk_watch_interval_ms`, until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        let mut ticker = tokio::time::interval(Duration::from_millis(self.config.disk_watch_interval_ms));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = shutdown.cancelled() => return,
            }
            let gc = self.clone();
            match tokio::task::spawn_blocking(move || gc.collect_once()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(dir = %self.dir.display(), %error, "sandbox garbage collection failed")
                }
                Err(error) => tracing::error!(%error, "sandbox garbage collection panicked"),
            }
        }
    }

    /// One pass: measures the disk, removes what may go and is old enough.
    pub fn collect_once(&self) -> io::Result<()> {
        let trash = self.dir.join(TRASH);
        // What an earlier pass (or agent) did not finish removing.
        remove_all(&trash)?;
        let usage = disk_usage(&self.dir).map_err(|e| with_path(e, &self.dir))?;
        let delay = Duration::from_secs(self.config.delay_seconds);
        let max_age = max_age(delay, self.config.disk_headroom, usage);
        let old = old_sandboxes(&self.dir, max_age, SystemTime::now())?;
        if old.is_empty() {
            return Ok(());
        }
        let moved = self.tasks.with_known_sandboxes(|known| move_to_trash(&old, known, &trash));
        for (sandbox, age) in &moved {
            tracing::info!(
                sandbox = %sandbox.display(),
                age_seconds = age.as_secs(),
                max_age_seconds = max_age.as_secs(),
                disk_usage = usage,
                "removing the sandbox of a finished task"
            );
        }
        self.collected.fetch_add(moved.len() as u64, Ordering::Relaxed);
        remove_all(&trash)
    }
}

/// The sandboxes in `dir` not written to for `max_age` or longer, with their ages.
pub fn old_sandboxes(dir: &Path, max_age: Duration, now: SystemTime) -> io::Result<Vec<(PathBuf, Duration)>> {
    let mut old = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(old),
        Err(error) => return Err(with_path(error, dir)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| with_path(e, dir))?;
        let path = entry.path();
        let is_dir = entry.file_type().is_ok_and(|kind| kind.is_dir());
        if !is_dir || entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        // Gone meanwhile, or unreadable: looked at again at the next pass.
        let Ok(modified) = last_modified(&path) else { continue };
        let age = now.duration_since(modified).unwrap_or(Duration::ZERO);
        if age >= max_age {
            old.push((path, age));
        }
    }
    Ok(old)
}

/// The latest modification of `dir` and of what it holds directly.
fn last_modified(dir: &Path) -> io::Result<SystemTime> {
    let mut latest = fs::symlink_metadata(dir)?.modified()?;
    for entry in fs::read_dir(dir)?.flatten() {
        if let Ok(modified) = entry.metadata().and_then(|meta| meta.modified()) {
            latest = latest.max(modified);
        }
    }
    Ok(latest)
}

/// Renames each of `old` that is not `known` into `trash`; returns those moved. Sandboxes
/// are matched by directory name: a known task's sandbox path may be spelled otherwise (a
/// checkpoint's, written with the work directory as it was given then), and one name is
/// one task ([`crate::checkpoint::sandbox_name`] is injective), so a name match keeps it.
pub fn move_to_trash(old: &[(PathBuf, Duration)], known: &HashSet<PathBuf>, trash: &Path) -> Vec<(PathBuf, Duration)> {
    let known: HashSet<&std::ffi::OsStr> = known.iter().filter_map(|sandbox| sandbox.file_name()).collect();
    let mut moved = Vec::new();
    for (sandbox, age) in old {
        let Some(name) = sandbox.file_name() else { continue };
        if known.contains(name) {
            continue;
        }
        let renamed = fs::create_dir_all(trash).and_then(|()| fs::rename(sandbox, trash.join(name)));
        match renamed {
            Ok(()) => moved.push((sandbox.clone(), *age)),
            Err(error) => tracing::warn!(sandbox = %sandbox.display(), %error, "cannot remove a sandbox"),
        }
    }
    moved
}

fn remove_all(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(with_path(error, dir)),
    }
}

fn with_path(error: io::Error, path: &Path) -> io::Error {
    io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

    #[test]
    fn the_allowed_age_shrinks_as_the_disk_fills() {
        assert_eq!(max_age(WEEK, 0.1, 0.0), WEEK.mul_f64(0.9));
        assert_eq!(max_age(WEEK, 0.1, 0.5), WEEK.mul_f64(0.4));
        assert_eq!(max_age(WEEK, 0.1, 0.9), Duration::ZERO, "at the headroom: at once");
        assert_eq!(max_age(WEEK, 0.1, 1.0), Duration::ZERO);
        assert_eq!(max_age(WEEK, 0.0, f64::NAN), WEEK, "an unknown usage removes nothing sooner");
        assert_eq!(max_age(Duration::MAX, 0.0, 0.0), Duration::MAX, "no overflow");
    }

    fn sandbox(root: &Path, name: &str, written: SystemTime) -> PathBuf {
        let dir = root.join(name);
        fs::create_dir_all(&dir).unwrap();
        let file = fs::File::create(dir.join("stdout")).unwrap();
        file.set_modified(written).unwrap();
        fs::File::open(&dir).unwrap().set_modified(written).unwrap();
        dir
    }

    /// Only sandboxes old enough and not known go; known ones, young ones, the trash and
    /// files stay; a sandbox counts as written when its output last was.
    #[test]
    fn old_sandboxes_of_unknown_tasks_go_and_nothing_else() {
        let root = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        let old = sandbox(root.path(), "old", now - 3 * hour);
        let known = sandbox(root.path(), "running", now - 3 * hour);
        let young = sandbox(root.path(), "young", now - hour / 2);
        let written_lately = sandbox(root.path(), "written-lately", now - 3 * hour);
        fs::File::options().write(true).open(written_lately.join("stdout")).unwrap().set_modified(now).unwrap();
        fs::write(root.path().join("a-file"), b"").unwrap();
        fs::create_dir_all(root.path().join(TRASH)).unwrap();

        let candidates = old_sandboxes(root.path(), hour, now).unwrap();
        let mut names: Vec<String> =
            candidates.iter().map(|(path, _)| path.file_name().unwrap().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names, ["old", "running"]);

        let trash = root.path().join(TRASH);
        // A known sandbox as a checkpoint may spell it: the same directory, another path.
        let spelled_otherwise = root.path().join("..").join(root.path().file_name().unwrap()).join("running");
        assert_ne!(spelled_otherwise, known);
        let moved = move_to_trash(&candidates, &HashSet::from([spelled_otherwise]), &trash);
        assert_eq!(moved.len(), 1);
        assert_eq!(moved[0].0, old);
        assert!(moved[0].1 >= 3 * hour);
        assert!(!old.exists() && trash.join("old").exists());
        assert!(known.exists() && young.exists() && written_lately.exists());
    }
}
