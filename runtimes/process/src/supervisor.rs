//! `marina-supervise`: the small process that stands between the agent and each task.
//!
//! ```text
//! marina-supervise --exit-file <path> [--cgroup <dir>]... -- <program> [args...]
//! ```
//! Started by the runtime in a process group of its own, with the sandbox as its working
//! directory, the task's environment as its own, and its stderr appended to the sandbox's
//! `stderr` (so its few messages land next to the task's). It
//! 1. starts `program` in a *second* process group (the task's), stdin from `/dev/null`,
//!    stdout and stderr appended to `stdout` and `stderr` in the working directory, and in
//!    the task's cgroups if given (see [`crate::cgroup`]);
//! 2. tells the runtime, as one JSON line on its stdout, the task's pid and start time, or why
//!    it could not start it;
//! 3. forwards SIGTERM and SIGINT to the task's group, and ignores SIGHUP;
//! 4. reaps the task, kills what is left of its group and its cgroups (as Mesos destroys a
//!    container whose command ended), and writes how the task ended (OOM kills included) to
//!    the exit file, atomically; then removes the cgroups and exits.
//!
//! Because the supervisor is not in the task's group, a SIGKILL of the task's group after the
//! grace period cannot take the supervisor with it, and the exit status is always recorded.
//! Because it is not in the agent's group and holds nothing of the agent's, it outlives the
//! agent (even a SIGKILL of it), and a restarted agent finds the status on disk. (A systemd
//! unit for the agent needs `KillMode=process`, as Mesos agents do, or stopping the agent
//! kills its tasks.)

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::SystemTime;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::signal::unix::{SignalKind, signal};

use crate::cgroup;
use crate::procfs::{ProcessIdentity, signal_group};
use crate::store::{ExitRecord, write_atomically};

/// The supervisor's binary name. Ship it next to the agent binary.
pub const SUPERVISOR_BIN: &str = "marina-supervise";

const USAGE: &str = "usage: marina-supervise --exit-file <path> [--cgroup <dir>]... -- <program> [args...]";

/// What the supervisor tells the runtime once, as a JSON line on its stdout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Handshake {
    /// The task runs.
    Started { task: ProcessIdentity },
    /// The task could not be started (the program is missing or not executable, …).
    Failed { error: String },
}

/// The supervisor's command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub exit_file: PathBuf,
    /// The task's cgroups (limits), made by the runtime.
    pub cgroups: Vec<PathBuf>,
    pub program: OsString,
    pub args: Vec<OsString>,
}

impl Invocation {
    /// The arguments the runtime passes; the inverse of [`Invocation::parse`].
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args = vec![OsString::from("--exit-file"), self.exit_file.clone().into_os_string()];
        for cgroup in &self.cgroups {
            args.extend([OsString::from("--cgroup"), cgroup.clone().into_os_string()]);
        }
        args.push("--".into());
        args.push(self.program.clone());
        args.extend(self.args.iter().cloned());
        args
    }

    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Invocation, String> {
        let mut args = args.into_iter();
        let mut exit_file = None;
        let mut cgroups = Vec::new();
        loop {
            let Some(arg) = args.next() else { return Err("missing `-- <program>`".into()) };
            match arg.to_str() {
                Some("--exit-file") => exit_file = Some(PathBuf::from(args.next().ok_or("--exit-file needs a path")?)),
                Some("--cgroup") => cgroups.push(PathBuf::from(args.next().ok_or("--cgroup needs a directory")?)),
                Some("--") => break,
                _ => return Err(format!("unexpected argument {arg:?}")),
            }
        }
        let exit_file = exit_file.ok_or("--exit-file is required")?;
        let program = args.next().ok_or("missing the program to run after `--`")?;
        Ok(Invocation { exit_file, cgroups, program, args: args.collect() })
    }
}

/// The supervisor program; `src/bin/marina-supervise.rs` only calls this.
pub fn main() -> ExitCode {
    let invocation = match Invocation::parse(std::env::args_os().skip(1)) {
        Ok(invocation) => invocation,
        Err(message) => {
            eprintln!("{SUPERVISOR_BIN}: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{SUPERVISOR_BIN}: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(supervise(invocation)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{SUPERVISOR_BIN}: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn supervise(invocation: Invocation) -> io::Result<ExitCode> {
    // Listen before the task exists, so no forwarded signal can find the default action.
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;

    let (mut child, task) = match start(&invocation) {
        Ok(started) => started,
        Err(e) => {
            let error = e.to_string();
            eprintln!("{SUPERVISOR_BIN}: {error}");
            tell(&Handshake::Failed { error });
            // The shell's convention: 127 not found, 126 found but not runnable.
            return Ok(ExitCode::from(if e.kind() == io::ErrorKind::NotFound { 127 } else { 126 }));
        }
    };
    tell(&Handshake::Started { task });

    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            Some(()) = terminate.recv() => forward(task.pid, Signal::SIGTERM),
            Some(()) = interrupt.recv() => forward(task.pid, Signal::SIGINT),
            Some(()) = hangup.recv() => {}
        }
    };
    // Whatever the task left running in its group, or in its cgroups, ends with it.
    forward(task.pid, Signal::SIGKILL);
    cgroup::kill_all(&invocation.cgroups);
    let record = ExitRecord {
        code: status.code(),
        signal: status.signal(),
        oom_killed: cgroup::oom_killed(&invocation.cgroups),
        finished_at: SystemTime::now(),
    };
    let json = serde_json::to_vec(&record).map_err(io::Error::other)?;
    write_atomically(&invocation.exit_file, &json).map_err(|e| {
        io::Error::new(e.kind(), format!("recording the exit status in {:?}: {e}", invocation.exit_file))
    })?;
    cgroup::remove(&invocation.cgroups);
    Ok(ExitCode::SUCCESS)
}

/// Starts the task in a process group of its own; on error, nothing of it runs.
fn start(invocation: &Invocation) -> io::Result<(tokio::process::Child, ProcessIdentity)> {
    let mut command = tokio::process::Command::new(&invocation.program);
    command
        .args(&invocation.args)
        .stdin(Stdio::null())
        .stdout(append("stdout")?)
        .stderr(append("stderr")?)
        .process_group(0)
        // Should the supervisor fail before the task ends, the task ends too: a task whose
        // end nobody can record must not run on.
        .kill_on_drop(true);
    // In the task's cgroups for the spawn only: the task inherits them from its first
    // instruction, the supervisor goes back home (it must outlive an OOM kill of the task).
    for dir in &invocation.cgroups {
        cgroup::enter(dir)?;
    }
    let spawned = command.spawn();
    for dir in &invocation.cgroups {
        if let Some(home) = cgroup::home(dir)
            && let Err(e) = cgroup::enter(home)
        {
            eprintln!("{SUPERVISOR_BIN}: leaving the task's cgroup: {e}");
        }
    }
    let child =
        spawned.map_err(|e| io::Error::new(e.kind(), format!("cannot execute {:?}: {e}", invocation.program)))?;
    // Not reaped yet, so its stat is readable even if it has already exited.
    let identity =
        child.id().ok_or_else(|| io::Error::other("the task vanished at once")).and_then(ProcessIdentity::of);
    match identity {
        Ok(identity) => Ok((child, identity)),
        Err(e) => {
            if let Some(pid) = child.id() {
                forward(pid, Signal::SIGKILL);
            }
            Err(io::Error::new(e.kind(), format!("reading the task's start time: {e}")))
        }
    }
}

fn append(name: &str) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .open(name)
        .map_err(|e| io::Error::new(e.kind(), format!("opening {name} in the sandbox: {e}")))
}

/// One line to the runtime. It may be gone (an agent killed mid-start): nothing to do then.
fn tell(handshake: &Handshake) {
    if let Ok(mut line) = serde_json::to_vec(handshake) {
        line.push(b'\n');
        let mut stdout = io::stdout().lock();
        let _ = stdout.write_all(&line).and_then(|()| stdout.flush());
    }
}

fn forward(pgid: u32, signal: Signal) {
    if let Err(e) = signal_group(pgid, signal) {
        eprintln!("{SUPERVISOR_BIN}: sending {signal} to the task's process group {pgid}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invocations_round_trip() {
        let invocation = Invocation {
            exit_file: "/state/tasks/t/exit.json".into(),
            cgroups: vec!["/sys/fs/cgroup/memory/marina/s/t".into(), "/sys/fs/cgroup/cpu/marina/s/t".into()],
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "echo -- --exit-file".into()],
        };
        assert_eq!(Invocation::parse(invocation.to_args()), Ok(invocation));
    }

    #[test]
    fn bad_invocations_say_what_is_wrong() {
        let parse = |args: &[&str]| Invocation::parse(args.iter().map(OsString::from));
        assert!(parse(&[]).unwrap_err().contains("--"));
        assert!(parse(&["--", "/bin/true"]).unwrap_err().contains("--exit-file"));
        assert!(parse(&["--exit-file", "/x", "--"]).unwrap_err().contains("program"));
        assert!(parse(&["--verbose"]).unwrap_err().contains("--verbose"));
    }
}
