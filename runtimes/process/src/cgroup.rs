//! CPU and memory limits for host processes, through cgroup v1 where this machine lets the
//! agent make cgroups below its own (root in a container with writable cgroup mounts, as
//! here, or a delegated hierarchy).
//!
//! Each task gets `<own cgroup>/marina/<runtime>/<task>` in the `memory` and `cpu`
//! hierarchies, with `memory.limit_in_bytes` (and no swap beyond it) and a CFS quota of
//! `cpus` cores. The supervisor enters them, starts the task (which inherits them) and goes
//! back to its own: so the task is limited from its first instruction, while the supervisor
//! — which must live to record how the task ended — is never killed for the task's memory.
//!
//! cgroup v2 is not used: a v2 cgroup holding processes (the agent's) cannot give its
//! children controllers, so it needs a delegated subtree set up for the agent; without one,
//! the runtime reports that it does not enforce limits rather than pretend.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The CFS period the quota is a share of.
const CFS_PERIOD_US: u64 = 100_000;
/// The smallest quota the kernel accepts.
const MIN_CFS_QUOTA_US: u64 = 1_000;

/// The parents of this runtime's task cgroups, one per hierarchy.
#[derive(Debug, Clone)]
pub struct Cgroups {
    memory: PathBuf,
    cpu: PathBuf,
}

impl Cgroups {
    /// Finds the memory and cpu hierarchies and checks that task cgroups can be made below
    /// this process's own; `scope` tells runtimes sharing a machine apart. The error says why
    /// limits cannot be enforced here.
    pub fn probe(scope: &str) -> Result<Self, String> {
        let own = fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("reading /proc/self/cgroup: {e}"))?;
        let mounts =
            fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
        let parent = |controller: &str| -> Result<PathBuf, String> {
            let own = own_cgroup(&own, controller).ok_or_else(|| {
                format!("no cgroup v1 `{controller}` hierarchy (cgroup v2 needs a delegated subtree)")
            })?;
            let dir = hierarchy_dir(&mounts, controller, &own)
                .ok_or_else(|| format!("the cgroup v1 `{controller}` hierarchy is not mounted here"))?;
            let parent = dir.join("marina").join(scope);
            let probe = parent.join(".probe");
            fs::create_dir_all(&probe)
                .and_then(|()| fs::remove_dir(&probe))
                .map_err(|e| format!("cannot make cgroups in {}: {e}", parent.display()))?;
            Ok(parent)
        };
        Ok(Cgroups { memory: parent("memory")?, cpu: parent("cpu")? })
    }

    /// Makes the task's cgroups with its limits; a non-positive limit is left unlimited.
    pub fn create(&self, key: &str, cpus: f64, mem_mb: f64) -> io::Result<Vec<PathBuf>> {
        let memory = self.memory.join(key);
        let cpu = self.cpu.join(key);
        let dirs = vec![memory.clone(), cpu.clone()];
        let made = (|| {
            for dir in &dirs {
                fs::create_dir_all(dir)?;
            }
            if mem_mb > 0.0 {
                let bytes = (mem_mb * 1024.0 * 1024.0) as u64;
                write(&memory, "memory.limit_in_bytes", bytes)?;
                // Where swap is accounted, the limit covers it too (it must not be below the
                // memory limit, which is why it comes second).
                if memory.join("memory.memsw.limit_in_bytes").exists() {
                    write(&memory, "memory.memsw.limit_in_bytes", bytes)?;
                }
            }
            if cpus > 0.0 {
                let quota = ((cpus * CFS_PERIOD_US as f64) as u64).max(MIN_CFS_QUOTA_US);
                write(&cpu, "cpu.cfs_period_us", CFS_PERIOD_US)?;
                write(&cpu, "cpu.cfs_quota_us", quota)?;
                write(&cpu, "cpu.shares", ((cpus * 1024.0) as u64).max(2))?;
            }
            Ok(())
        })();
        match made {
            Ok(()) => Ok(dirs),
            Err(e) => {
                remove(&dirs);
                Err(e)
            }
        }
    }

    /// The task cgroups `create` makes for `key` (to clean up after a lost supervisor).
    pub fn dirs(&self, key: &str) -> Vec<PathBuf> {
        vec![self.memory.join(key), self.cpu.join(key)]
    }
}

fn write(dir: &Path, file: &str, value: u64) -> io::Result<()> {
    fs::write(dir.join(file), value.to_string())
        .map_err(|e| io::Error::new(e.kind(), format!("writing {value} to {}: {e}", dir.join(file).display())))
}

/// Moves this process into the cgroup `dir`.
pub fn enter(dir: &Path) -> io::Result<()> {
    fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
        .map_err(|e| io::Error::new(e.kind(), format!("entering cgroup {}: {e}", dir.display())))
}

/// The cgroup a task cgroup was made from (`<own>/marina/<scope>/<task>` → `<own>`): where
/// its supervisor returns once the task has started.
pub fn home(task_dir: &Path) -> Option<&Path> {
    task_dir.ancestors().nth(3)
}

/// SIGKILLs every process left in the task's cgroups (one that left the task's process
/// group, say), so that nothing of it outlives it and the cgroups can go.
pub fn kill_all(dirs: &[PathBuf]) {
    for dir in dirs {
        let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) else { continue };
        for pid in procs.lines().filter_map(|line| line.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Whether the kernel's OOM killer killed something in the task's memory cgroup.
pub fn oom_killed(dirs: &[PathBuf]) -> bool {
    dirs.iter().any(|dir| {
        fs::read_to_string(dir.join("memory.oom_control")).is_ok_and(|control| {
            control.lines().any(|line| line.strip_prefix("oom_kill ").is_some_and(|count| count.trim() != "0"))
        })
    })
}

/// Removes the task's cgroups once their processes are gone (a killed process leaves its
/// cgroup a moment after the signal), giving up after a second.
pub fn remove(dirs: &[PathBuf]) {
    let deadline = Instant::now() + Duration::from_secs(1);
    for dir in dirs {
        loop {
            match fs::remove_dir(dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                _ => break,
            }
        }
    }
}

/// Where process `pid`'s cgroup of `controller`'s v1 hierarchy is in the file system.
pub fn of_process(pid: u32, controller: &str) -> Option<PathBuf> {
    let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let mounts = fs::read_to_string("/proc/self/mountinfo").ok()?;
    hierarchy_dir(&mounts, controller, &own_cgroup(&cgroups, controller)?)
}

/// This process's cgroup path in the v1 hierarchy holding `controller`.
fn own_cgroup(proc_self_cgroup: &str, controller: &str) -> Option<String> {
    proc_self_cgroup.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        controllers.split(',').any(|c| c == controller).then(|| path.to_owned())
    })
}

/// Where the cgroup `own` of `controller`'s hierarchy is in the file system.
fn hierarchy_dir(mountinfo: &str, controller: &str, own: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mount, filesystem) = line.split_once(" - ")?;
        let mut filesystem = filesystem.split(' ');
        let (kind, _source, options) = (filesystem.next()?, filesystem.next()?, filesystem.next()?);
        if kind != "cgroup" || !options.split(',').any(|option| option == controller) {
            return None;
        }
        let mut fields = mount.split(' ');
        let (root, mount_point) = (fields.nth(3)?, fields.next()?);
        let relative = own.strip_prefix(root).unwrap_or(own).trim_start_matches('/');
        Some(Path::new(mount_point).join(relative))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CGROUP: &str = "12:memory:/process_api/abc\n4:cpu,cpuacct:/process_api/abc\n0::/\n";
    const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 /process_api /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn own_cgroups_are_found_in_their_mounted_hierarchies() {
        let memory = own_cgroup(CGROUP, "memory").unwrap();
        let cpu = own_cgroup(CGROUP, "cpu").unwrap();
        assert_eq!(own_cgroup(CGROUP, "pids"), None);
        // A mount of a sub-tree (a container's view) strips its root from the path.
        assert_eq!(hierarchy_dir(MOUNTINFO, "memory", &memory).unwrap(), Path::new("/sys/fs/cgroup/memory/abc"));
        assert_eq!(
            hierarchy_dir(MOUNTINFO, "cpu", &cpu).unwrap(),
            Path::new("/sys/fs/cgroup/cpu,cpuacct/process_api/abc")
        );
        assert_eq!(hierarchy_dir(MOUNTINFO, "pids", "/"), None);
    }

    #[test]
    fn a_task_cgroup_leads_home() {
        let task = Path::new("/sys/fs/cgroup/memory/agent/marina/scope/task-1");
        assert_eq!(home(task), Some(Path::new("/sys/fs/cgroup/memory/agent")));
    }
}
