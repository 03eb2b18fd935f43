//! What the runtime learns about processes from `/proc`, and how it signals them.
//!
//! A pid alone does not name a process for long: once it is reaped, the kernel may hand the
//! same number to an unrelated process. Marina therefore names every process it tracks by its
//! pid *and* its start time (field 22 of `/proc/<pid>/stat`, in clock ticks since boot), which
//! together are unique for the life of the machine.

use std::io;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// One process, named robustly: its pid and its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat`: clock ticks after boot at which the process started.
    pub start_time: u64,
}

impl ProcessIdentity {
    /// The identity of the live (or not yet reaped) process `pid`.
    pub fn of(pid: u32) -> io::Result<Self> {
        Ok(ProcessIdentity { pid, start_time: Stat::read(pid)?.start_time })
    }

    /// Whether this very process still runs: the pid exists, started at the same time (so it
    /// was not reused), and is neither a zombie nor dead.
    pub fn is_alive(&self) -> bool {
        match Stat::read(self.pid) {
            Ok(stat) => stat.start_time == self.start_time && !matches!(stat.state, 'Z' | 'X' | 'x'),
            Err(_) => false,
        }
    }
}

/// The fields of `/proc/<pid>/stat` the runtime uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Field 3: `R`, `S`, `D`, `Z` (zombie), `T`, `X` (dead), …
    pub state: char,
    /// Field 22.
    pub start_time: u64,
}

impl Stat {
    /// Reads `/proc/<pid>/stat`. A small in-memory kernel file: read synchronously.
    pub fn read(pid: u32) -> io::Result<Stat> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        Stat::parse(&text)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("malformed /proc/{pid}/stat")))
    }

    /// Parses the contents of a `stat` file. The command name (field 2) is in parentheses and
    /// may itself contain spaces and parentheses, so fields are counted from the last `)`.
    pub fn parse(text: &str) -> Option<Stat> {
        let after_comm = &text[text.rfind(')')? + 1..];
        let mut fields = after_comm.split_ascii_whitespace();
        // Field 3 is the first after the command name; field 22 is 19 further on.
        let state = fields.next()?.chars().next()?;
        let start_time = fields.nth(18)?.parse().ok()?;
        Some(Stat { state, start_time })
    }
}

/// Sends `signal` to the process group `pgid`. A group that no longer exists is not an error:
/// every caller wants the group gone or told, and an empty group is both.
pub fn signal_group(pgid: u32, signal: Signal) -> io::Result<()> {
    let Ok(raw) = i32::try_from(pgid) else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("pid {pgid} is out of range")));
    };
    if raw <= 1 {
        // killpg(0) would signal our own group and killpg(1) init's: never a task's group.
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("refusing to signal process group {raw}")));
    }
    match killpg(Pid::from_raw(raw), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(errno) => Err(io::Error::from(errno)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_with_a_hostile_command_name() {
        let line = "4242 (we ird) (name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(Stat::parse(line), Some(Stat { state: 'S', start_time: 987654 }));
    }

    #[test]
    fn rejects_a_truncated_stat_line() {
        assert_eq!(Stat::parse("4242 (sh) S 1 4242"), None);
        assert_eq!(Stat::parse("no parentheses here"), None);
    }

    #[test]
    fn our_own_process_is_alive_and_a_different_start_time_is_not() {
        let me = ProcessIdentity::of(std::process::id()).expect("our own stat");
        assert!(me.is_alive());
        let reused = ProcessIdentity { start_time: me.start_time + 1, ..me };
        assert!(!reused.is_alive(), "a mismatching start time means the pid was reused");
    }

    #[test]
    fn a_reaped_child_is_not_alive() {
        let mut child = std::process::Command::new("/bin/sh").args(["-c", "exit 0"]).spawn().expect("spawn sh");
        let identity = ProcessIdentity::of(child.id()).expect("stat of a child");
        child.wait().expect("wait");
        assert!(!identity.is_alive());
    }

    #[test]
    fn refuses_to_signal_special_groups() {
        assert!(signal_group(0, Signal::SIGTERM).is_err());
        assert!(signal_group(1, Signal::SIGTERM).is_err());
    }
}
