//! Small tmpfs file systems, for disks that fill up on purpose (a coord node's, an agent's):
//! real `ENOSPC` from the kernel, no mock. Mounting needs root.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Small tmpfs file systems for one test, unmounted when dropped whatever the test's
/// outcome: lazily, so that a process still holding files on one (SIGKILLed, not yet
/// reaped) cannot keep it mounted.
pub struct Tmpfs {
    mounts: Vec<PathBuf>,
    /// Holds the mount points; removed after they are unmounted (fields drop after `drop`).
    dir: tempfile::TempDir,
}

impl Default for Tmpfs {
    fn default() -> Self {
        Self::new()
    }
}

impl Tmpfs {
    pub fn new() -> Self {
        Self { mounts: Vec::new(), dir: tempfile::tempdir().expect("temp dir") }
    }

    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it) at a fresh directory.
    pub fn mount(&mut self, name: &str, size: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::create_dir(&path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("running mount");
        assert!(status.success(), "mounting a {size} tmpfs at {} failed (this test needs root)", path.display());
        self.mounts.push(path.clone());
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        for path in self.mounts.iter().rev() {
            let unmounted = std::process::Command::new("umount").arg("--lazy").arg(path).status();
            if !unmounted.is_ok_and(|status| status.success()) {
                eprintln!("could not unmount the tmpfs at {}", path.display());
            }
        }
    }
}

/// Fills the file system holding `dir` until a write fails (ENOSPC), with one file.
pub fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0xa5u8; 64 << 10];
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) => {
                assert_eq!(error.kind(), std::io::ErrorKind::StorageFull, "filling {}: {error}", path.display());
                break;
            }
        }
    }
    path
}
