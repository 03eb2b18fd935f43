//! `marina-supervise`: the small process that stands between the agent and each task.
//!
//! ```text
//! marina-supervise --exit-file <path> [--cgroup <dir>]... [--log-max-bytes <n> --log-keep <k>]
//!                  -- <program> [args...]
//! ```
//! Started by the runtime in a process group of its own, with the sandbox as its working
//! directory, the task's environment as its own, and its stderr appended to the sandbox's
//! `stderr` (so its few messages land next to the task's). It
//! 1. starts `program` in a *second* process group (the task's), stdin from `/dev/null`,
//!    stdout and stderr into pipes it copies to `stdout` and `stderr` in the working
//!    directory, rotated at `--log-max-bytes` keeping `--log-keep` old files (see
//!    [`crate::rotate`]; without them, the files grow unbounded), and in the task's cgroups if
//!    given (see [`crate::cgroup`]);
//! 2. tells the runtime, as one JSON line on its stdout, the task's pid and start time, or why
//!    it could not start it;
//! 3. forwards SIGTERM and SIGINT to the task's group, and ignores SIGHUP;
//! 4. reaps the task, kills what is left of its group and its cgroups (as Mesos destroys a
//!    container whose command ended), writes out what the task's output pipes still hold,
//!    and writes how the task ended (OOM kills included) to the exit file, atomically; then
//!    removes the cgroups and exits.
//!
//! The same binary is the logging binary containerd's shim runs for a containerd task
//! (`binary://` stdio, see [`marina_runtime::logs::ShimLogger`]): given those arguments, it
//! only copies the task's output to rotated files ([`shim_logger`]).
//!
//! Because the supervisor is not in the task's group, a SIGKILL of the task's group after the
//! grace period cannot take the supervisor with it, and the exit status is always recorded.
//! Because it is not in the agent's group and holds nothing of the agent's, it outlives the
//! agent (even a SIGKILL of it), and a restarted agent finds the status on disk. Should the
//! supervisor itself be killed, the task's next write to its output fails (`SIGPIPE`). (A systemd
//! unit for the agent needs `KillMode=process`, as Mesos agents do, or stopping the agent
//! kills its tasks.)

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, PipeReader, Write};
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, SystemTime};

use marina_runtime::LogRotation;
use marina_runtime::logs::ShimLogger;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::net::unix::pipe;
use tokio::signal::unix::{SignalKind, signal};

use crate::cgroup;
use crate::procfs::{ProcessIdentity, signal_group};
use crate::rotate::{self, RotatingFile};
use crate::store::{ExitRecord, write_atomically};

/// The supervisor's binary name. Ship it next to the agent binary.
pub const SUPERVISOR_BIN: &str = "marina-supervise";

const USAGE: &str = "usage: marina-supervise --exit-file <path> [--cgroup <dir>]... \
                     [--log-max-bytes <n> --log-keep <k>] -- <program> [args...]";

/// How long, once the task has ended, its output pipes are drained before its end is
/// recorded: long enough for what the task wrote last, short enough that a process which
/// escaped the task's group with the pipe open does not hold the record back.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

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
    /// How the task's `stdout` and `stderr` rotate ([`LogRotation::UNBOUNDED`] when not given).
    pub rotation: LogRotation,
    /// Who the task runs as (uid, gid), when not the supervisor's own user: it gets that
    /// user's group and no supplementary groups.
    pub user: Option<(u32, u32)>,
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
        if self.rotation != LogRotation::UNBOUNDED {
            args.extend(["--log-max-bytes".into(), self.rotation.max_bytes.to_string().into()]);
            args.extend(["--log-keep".into(), self.rotation.keep.to_string().into()]);
        }
        if let Some((uid, gid)) = self.user {
            args.extend(["--user".into(), format!("{uid}:{gid}").into()]);
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
        let mut rotation = LogRotation::UNBOUNDED;
        let mut user = None;
        let number = |flag: &str, value: Option<OsString>| {
            let value = value.ok_or_else(|| format!("{flag} needs a number"))?;
            value
                .to_str()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| format!("{flag}: {value:?} is not a number"))
        };
        loop {
            let Some(arg) = args.next() else { return Err("missing `-- <program>`".into()) };
            match arg.to_str() {
                Some("--exit-file") => exit_file = Some(PathBuf::from(args.next().ok_or("--exit-file needs a path")?)),
                Some("--cgroup") => cgroups.push(PathBuf::from(args.next().ok_or("--cgroup needs a directory")?)),
                Some(flag @ "--log-max-bytes") => rotation.max_bytes = number(flag, args.next())?.max(1),
                Some(flag @ "--log-keep") => {
                    rotation.keep = u32::try_from(number(flag, args.next())?).map_err(|_| "--log-keep is too large")?;
                }
                Some("--user") => {
                    let value = args.next().ok_or("--user needs UID:GID")?;
                    let ids = value
                        .to_str()
                        .and_then(|v| v.split_once(':'))
                        .and_then(|(uid, gid)| Some((uid.parse::<u32>().ok()?, gid.parse::<u32>().ok()?)));
                    user = Some(ids.ok_or_else(|| format!("--user: {value:?} is not UID:GID"))?);
                }
                Some("--") => break,
                _ => return Err(format!("unexpected argument {arg:?}")),
            }
        }
        let exit_file = exit_file.ok_or("--exit-file is required")?;
        let program = args.next().ok_or("missing the program to run after `--`")?;
        Ok(Invocation { exit_file, cgroups, rotation, user, program, args: args.collect() })
    }
}

/// The supervisor program; `src/bin/marina-supervise.rs` only calls this.
pub fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    match ShimLogger::parse(&args) {
        Some(Ok(logger)) => return shim_logger(&logger),
        Some(Err(message)) => {
            eprintln!("{SUPERVISOR_BIN}: as containerd's logging binary: {message}");
            return ExitCode::from(2);
        }
        None => {}
    }
    let invocation = match Invocation::parse(args) {
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

    let (mut child, task, output) = match start(&invocation) {
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
    let copiers = output.copy()?;

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
    // A reader who sees the task ended sees everything it wrote.
    if tokio::time::timeout(DRAIN_TIMEOUT, copiers).await.is_err() {
        eprintln!(
            "{SUPERVISOR_BIN}: the task's output is still open after {DRAIN_TIMEOUT:?} (a process left its group); not waiting for the rest"
        );
    }
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

/// The task's output: the read ends of its stdout and stderr pipes, and the files they go to.
struct Output {
    stdout: (PipeReader, RotatingFile),
    stderr: (PipeReader, RotatingFile),
}

impl Output {
    /// Starts copying; the future resolves once both pipes have ended.
    fn copy(self) -> io::Result<impl Future<Output = ()>> {
        let stdout = tokio::spawn(rotate::copy(receiver(self.stdout.0)?, self.stdout.1));
        let stderr = tokio::spawn(rotate::copy(receiver(self.stderr.0)?, self.stderr.1));
        Ok(async move {
            let _ = tokio::join!(stdout, stderr);
        })
    }
}

fn receiver(reader: PipeReader) -> io::Result<pipe::Receiver> {
    pipe::Receiver::from_file(File::from(OwnedFd::from(reader)))
}

/// Starts the task in a process group of its own; on error, nothing of it runs.
fn start(invocation: &Invocation) -> io::Result<(tokio::process::Child, ProcessIdentity, Output)> {
    let sandbox = Path::new(".");
    let open = |name: &str| {
        RotatingFile::open(sandbox, name, invocation.rotation)
            .map_err(|e| io::Error::new(e.kind(), format!("opening {name} in the sandbox: {e}")))
    };
    let (stdout_reader, stdout_writer) = io::pipe()?;
    let (stderr_reader, stderr_writer) = io::pipe()?;
    let output = Output {
        stdout: (stdout_reader, open("stdout")?),
        // The supervisor's own messages follow the task's errors through rotations.
        stderr: (stderr_reader, open("stderr")?.follow_stderr()?),
    };
    let mut command = tokio::process::Command::new(&invocation.program);
    command
        .args(&invocation.args)
        .stdin(Stdio::null())
        // The command holds the only other copies of the write ends: it is dropped on
        // return, so the pipes end when the task's processes have all closed them.
        .stdout(stdout_writer)
        .stderr(stderr_writer)
        .process_group(0)
        // Should the supervisor fail before the task ends, the task ends too: a task whose
        // end nobody can record must not run on.
        .kill_on_drop(true);
    if let Some((uid, gid)) = invocation.user {
        // Set just before exec, group first; setting the uid also drops every
        // supplementary group the supervisor (root) has.
        command.uid(uid).gid(gid);
    }
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
        Ok(identity) => Ok((child, identity, output)),
        Err(e) => {
            if let Some(pid) = child.id() {
                forward(pid, Signal::SIGKILL);
            }
            Err(io::Error::new(e.kind(), format!("reading the task's start time: {e}")))
        }
    }
}

/// containerd's shim runs this as a task's logging binary: descriptors 3 and 4 are the task's
/// stdout and stderr, 5 is how the shim learns the logger is ready (it waits for a byte or
/// the end). Copies both streams to rotated files in `logger.dir` until they end. SIGTERM
/// (the shim deleting the task) gives what is still in the pipes [`DRAIN_TIMEOUT`] to arrive.
fn shim_logger(logger: &ShimLogger) -> ExitCode {
    match run_shim_logger(logger) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{SUPERVISOR_BIN}: as containerd's logging binary: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_shim_logger(logger: &ShimLogger) -> io::Result<()> {
    // The descriptors are inherited, not ours to adopt without `unsafe`: open new ones on the
    // same pipes through /proc instead.
    let inherited = |fd: u32, write: bool| {
        let path = format!("/proc/self/fd/{fd}");
        std::fs::OpenOptions::new()
            .read(!write)
            .write(write)
            .open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("descriptor {fd} from the shim ({path}): {e}")))
    };
    let (stdout, stderr) = (inherited(3, false)?, inherited(4, false)?);
    let open = |name: &str| RotatingFile::open(&logger.dir, name, logger.rotation);
    let (stdout_file, stderr_file) = (open("stdout")?, open("stderr")?);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut terminate = signal(SignalKind::terminate())?;
        let stdout = tokio::spawn(rotate::copy(pipe::Receiver::from_file(stdout)?, stdout_file));
        let stderr = tokio::spawn(rotate::copy(pipe::Receiver::from_file(stderr)?, stderr_file));
        // Ready: the files are open and the pipes are being read.
        inherited(5, true)?.write_all(b"r")?;
        let copied = async {
            let _ = tokio::join!(stdout, stderr);
        };
        tokio::pin!(copied);
        tokio::select! {
            () = &mut copied => {}
            _ = terminate.recv() => {
                let _ = tokio::time::timeout(DRAIN_TIMEOUT, copied).await;
            }
        }
        Ok(())
    })
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
            rotation: LogRotation { max_bytes: 4096, keep: 2 },
            user: Some((65534, 65534)),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "echo -- --exit-file".into()],
        };
        assert_eq!(Invocation::parse(invocation.to_args()), Ok(invocation.clone()));
        // A runtime from before rotation passes none: the files are not rotated.
        let unbounded = Invocation { rotation: LogRotation::UNBOUNDED, ..invocation };
        assert!(!unbounded.to_args().contains(&OsString::from("--log-keep")));
        assert_eq!(Invocation::parse(unbounded.to_args()), Ok(unbounded));
    }

    #[test]
    fn bad_invocations_say_what_is_wrong() {
        let parse = |args: &[&str]| Invocation::parse(args.iter().map(OsString::from));
        assert!(parse(&[]).unwrap_err().contains("--"));
        assert!(parse(&["--", "/bin/true"]).unwrap_err().contains("--exit-file"));
        assert!(parse(&["--exit-file", "/x", "--"]).unwrap_err().contains("program"));
        assert!(parse(&["--verbose"]).unwrap_err().contains("--verbose"));
        assert!(parse(&["--exit-file", "/x", "--log-keep", "many", "--", "/bin/true"]).unwrap_err().contains("many"));
    }
}
