//! A temp dir that also reaps what ran in it: task processes of the process runtime run in
//! their own process groups (so they survive their agent, by design) with their sandbox
//! under the test's dir as working directory. Dropping a [`TestDir`] SIGKILLs every process
//! whose working directory is inside it, then deletes it.

use std::path::{Path, PathBuf};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub struct TestDir {
    dir: Option<tempfile::TempDir>,
}

impl TestDir {
    /// A new temp dir, searchable by every user whatever the umask (as `/var/lib` is): agents
    /// that run as root run process tasks as `nobody`, who must reach a sandbox below it.
    /// Its contents keep their own modes.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let searchable = std::os::unix::fs::PermissionsExt::from_mode(0o711);
        std::fs::set_permissions(dir.path(), searchable).expect("making the temp dir searchable");
        Self { dir: Some(dir) }
    }

    pub fn path(&self) -> &Path {
        self.dir.as_ref().expect("present until drop").path()
    }
}

impl Default for TestDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        kill_processes_under(dir.path());
        drop(dir);
    }
}

/// SIGKILLs every process whose current directory is `root` or below it.
pub fn kill_processes_under(root: &Path) {
    let Ok(root) = root.canonicalize() else { return };
    let Ok(entries) = std::fs::read_dir("/proc") else { return };
    let me = std::process::id() as i32;
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<i32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let cwd: Option<PathBuf> = std::fs::read_link(entry.path().join("cwd")).ok();
        if cwd.is_some_and(|cwd| cwd.starts_with(&root)) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}
