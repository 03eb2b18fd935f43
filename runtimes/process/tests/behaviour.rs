//! What the process runtime does beyond the conformance suite.

mod common;

use std::time::Duration;

use common::{TestEnv, eventually, is_running, supervisor_of};
use marina_runtime::{Command, ExitStatus, LogStream, Runtime, RuntimeError, TaskHandle, TaskState};
use marina_runtime_process::{ProcessConfig, ProcessRuntime};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

async fn wait(runtime: &ProcessRuntime, handle: &TaskHandle) -> ExitStatus {
    tokio::time::timeout(Duration::from_secs(30), runtime.wait(handle)).await.expect("exits within 30 s").expect("wait")
}

async fn stdout(runtime: &ProcessRuntime, handle: &TaskHandle) -> String {
    String::from_utf8_lossy(&runtime.logs(handle, LogStream::Stdout, None).await.expect("logs")).into_owned()
}

fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| !stat.contains(") Z "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_fails_clearly_without_the_supervisor() {
    let env = TestEnv::new("no-supervisor");
    let config = ProcessConfig { supervisor: env.state_dir.join("marina-supervise"), ..env.config() };
    match ProcessRuntime::new(config) {
        Err(RuntimeError::Backend { message, .. }) => assert!(message.contains("marina-supervise"), "{message}"),
        other => panic!("expected a Backend error naming the supervisor, got {other:?}"),
    }
}

/// Test executables live in target/<profile>/deps, the supervisor in target/<profile>.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_supervisor_is_found_near_the_executable() {
    let found = marina_runtime_process::default_supervisor().expect("found");
    let built = std::path::Path::new(common::SUPERVISOR);
    assert_eq!(found.canonicalize().expect("found path"), built.canonicalize().expect("built path"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_in_their_sandbox_with_its_environment() {
    let env = TestEnv::new("environment");
    let runtime = env.runtime();
    let mut spec =
        env.fixture(runtime.clone()).spec("env", "echo \"$PWD|$HOME|$MESOS_SANDBOX|$MARINA_SANDBOX|$PORT0\"");
    spec.env.insert("PORT0".into(), "31000".into());
    let handle = runtime.start(&spec).await.expect("start");
    assert!(wait(&runtime, &handle).await.success());
    let sandbox = spec.sandbox.to_str().expect("utf-8");
    assert_eq!(stdout(&runtime, &handle).await.trim(), format!("{sandbox}|{sandbox}|{sandbox}|{sandbox}|31000"));
    runtime.remove(&handle).await.expect("remove");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argv_tasks_run_without_a_shell_and_a_missing_program_is_a_clear_error() {
    let env = TestEnv::new("argv");
    let runtime = env.runtime();
    let fixture = env.fixture(runtime.clone());
    let mut spec = fixture.spec("argv", "unused");
    spec.command = Some(Command::Argv(vec!["echo".into(), "$HOME is not expanded".into()]));
    let handle = runtime.start(&spec).await.expect("start");
    assert!(wait(&runtime, &handle).await.success());
    assert_eq!(stdout(&runtime, &handle).await, "$HOME is not expanded\n");
    runtime.remove(&handle).await.expect("remove");

    let mut missing = fixture.spec("missing", "unused");
    missing.command = Some(Command::Argv(vec!["/no/such/program".into()]));
    match runtime.start(&missing).await {
        Err(RuntimeError::InvalidSpec(message)) => assert!(message.contains("/no/such/program"), "{message}"),
        other => panic!("expected InvalidSpec naming the program, got {other:?}"),
    }
    assert!(runtime.list(&Default::default()).await.expect("list").is_empty(), "nothing is left recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_id_runs_once_at_a_time() {
    let env = TestEnv::new("once");
    let runtime = env.runtime();
    let spec = env.fixture(runtime.clone()).spec("once", "read line < /dev/null; exec sleep 300");
    let first = runtime.start(&spec).await.expect("start");
    match runtime.start(&spec).await {
        Err(RuntimeError::InvalidSpec(message)) => assert!(message.contains("already running"), "{message}"),
        other => panic!("a second start of a running task must be refused, got {other:?}"),
    }
    runtime.stop(&first, Duration::from_secs(1)).await.expect("stop");
    let second = runtime.start(&spec).await.expect("an ended task id may start again");
    assert_ne!(second.id, first.id);
    assert_eq!(runtime.inspect(&first).await.expect("inspect"), TaskState::NotFound, "the old incarnation is gone");
    runtime.stop(&first, Duration::from_secs(1)).await.expect("stopping the old incarnation is a no-op");
    assert!(matches!(runtime.inspect(&second).await.expect("inspect"), TaskState::Running { .. }));
    runtime.remove(&first).await.expect("removing the old incarnation is a no-op");
    assert!(matches!(runtime.inspect(&second).await.expect("inspect"), TaskState::Running { .. }));
    runtime.stop(&second, Duration::from_secs(1)).await.expect("stop");
    runtime.remove(&second).await.expect("remove");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_kills_a_running_task_rather_than_forget_it() {
    let env = TestEnv::new("remove-running");
    let runtime = env.runtime();
    let handle = runtime.start(&env.fixture(runtime.clone()).spec("forget", "exec sleep 300")).await.expect("start");
    let TaskState::Running { pid: Some(pid), .. } = runtime.inspect(&handle).await.expect("inspect") else {
        panic!("expected Running");
    };
    runtime.remove(&handle).await.expect("remove");
    assert_eq!(runtime.inspect(&handle).await.expect("inspect"), TaskState::NotFound);
    eventually("the removed task's process is gone", || !pid_alive(pid)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_times_out_and_kills_what_it_started() {
    let env = TestEnv::new("exec-timeout");
    let runtime = env.runtime();
    let fixture = env.fixture(runtime.clone());
    let handle = runtime.start(&fixture.spec("exec", "exec sleep 300")).await.expect("start");
    let argv = ["/bin/sh".to_owned(), "-c".to_owned(), "echo $$ > exec.pid; sleep 300".to_owned()];
    match runtime.exec(&handle, &argv, Duration::from_millis(300)).await {
        Err(RuntimeError::Timeout { operation: "exec", .. }) => {}
        other => panic!("expected Timeout, got {other:?}"),
    }
    let sandbox = std::path::PathBuf::from(&handle.data);
    let pid: u32 = std::fs::read_to_string(sandbox.join("exec.pid")).expect("exec.pid").trim().parse().expect("pid");
    eventually("the timed-out command is killed", || !pid_alive(pid)).await;

    let missing = runtime.exec(&handle, &["/no/such/check".to_owned()], Duration::from_secs(5)).await.expect("exec");
    assert_eq!(missing.status.code, Some(127), "{missing:?}");
    runtime.stop(&handle, Duration::from_secs(1)).await.expect("stop");
    runtime.remove(&handle).await.expect("remove");
}

/// If the supervisor itself dies, the task runs on: it is still seen, and still stoppable; how
/// it ended is unknown, since nobody was there to see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_supervisor_was_killed_can_still_be_stopped() {
    let env = TestEnv::new("supervisor-killed");
    let runtime = env.runtime();
    let handle = runtime.start(&env.fixture(runtime.clone()).spec("orphan", "exec sleep 300")).await.expect("start");
    let TaskState::Running { pid: Some(task_pid), .. } = runtime.inspect(&handle).await.expect("inspect") else {
        panic!("expected Running");
    };
    let (supervisor, start_time) = supervisor_of(&handle);
    kill(Pid::from_raw(supervisor as i32), Signal::SIGKILL).expect("kill the supervisor");
    eventually("the supervisor is dead", || !is_running(supervisor, start_time)).await;

    match runtime.inspect(&handle).await.expect("inspect") {
        TaskState::Running { pid, .. } => assert_eq!(pid, Some(task_pid), "the orphaned task is still seen"),
        other => panic!("expected Running, got {other:?}"),
    }
    runtime.stop(&handle, Duration::from_secs(1)).await.expect("stop");
    assert_eq!(wait(&runtime, &handle).await, ExitStatus { code: None, signal: None, oom_killed: false });
    assert!(!pid_alive(task_pid));
    runtime.remove(&handle).await.expect("remove");
}

/// Whether this machine lets this process make cgroups in cgroup v1 `memory` and `cpu`
/// hierarchies, which is what the runtime needs to enforce limits: found by trying, apart
/// from the runtime's own probe, so that a probe failing where it should not fails the test
/// instead of passing it as "cannot". `Err` says what is missing.
fn machine_offers_cgroup_v1_limits() -> Result<(), String> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("reading /proc/self/mountinfo");
    for controller in ["memory", "cpu"] {
        // `<id> <parent> <dev> <root> <mount point> <options> ... - <type> <source> <super options>`
        let mount_point = mounts
            .lines()
            .find_map(|line| {
                let (mount, filesystem) = line.split_once(" - ")?;
                let mut filesystem = filesystem.split(' ');
                let (kind, _source, options) = (filesystem.next()?, filesystem.next()?, filesystem.next()?);
                let holds_controller = kind == "cgroup" && options.split(',').any(|option| option == controller);
                holds_controller.then(|| mount.split(' ').nth(4).map(std::path::PathBuf::from)).flatten()
            })
            .ok_or_else(|| format!("no cgroup v1 `{controller}` hierarchy is mounted"))?;
        let probe = mount_point.join(format!("marina-limits-test-{}", std::process::id()));
        std::fs::create_dir(&probe)
            .and_then(|()| std::fs::remove_dir(&probe))
            .map_err(|e| format!("cannot make a cgroup in {}: {e}", mount_point.display()))?;
    }
    Ok(())
}

/// The runtime claims CPU and memory limits exactly where this machine lets it make cgroup
/// v1 cgroups (root with writable mounts, as on this project's machines and CI), and there
/// they are real: the task's cgroups carry them, the supervisor is not in them, a task
/// outgrowing its memory is OOM-killed and reported so, and the cgroups go with the task.
/// Elsewhere (cgroup v2 alone, say, which the runtime does not use) it claims none, and a
/// task asking for limits runs without any, in its supervisor's cgroups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_enforced_where_cgroups_allow_and_never_claimed_otherwise() {
    use marina_runtime_process::cgroup;

    let env = TestEnv::new("limits");
    let runtime = env.runtime();
    let capabilities = runtime.capabilities();
    let machine = machine_offers_cgroup_v1_limits();
    assert_eq!(
        (capabilities.cpu_limit, capabilities.memory_limit),
        (machine.is_ok(), machine.is_ok()),
        "the runtime's claim to enforce limits disagrees with this machine ({machine:?})"
    );
    if machine.is_err() {
        let mut spec = env.fixture(runtime.clone()).spec("unlimited", "sleep 30");
        spec.resources.cpus = 0.5;
        spec.resources.mem_mb = 64.0;
        let handle = runtime.start(&spec).await.expect("a task asking for limits still starts");
        let TaskState::Running { pid: Some(pid), .. } = runtime.inspect(&handle).await.expect("inspect") else {
            panic!("not running")
        };
        let cgroups_of = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("a live process");
        let (supervisor, _) = supervisor_of(&handle);
        assert_eq!(cgroups_of(pid), cgroups_of(supervisor), "no cgroup was made for the task");
        runtime.stop(&handle, Duration::from_secs(5)).await.expect("stop");
        runtime.remove(&handle).await.expect("remove");
        return;
    }

    let mut spec = env.fixture(runtime.clone()).spec("limited", "sleep 30");
    spec.resources.cpus = 0.5;
    spec.resources.mem_mb = 64.0;
    let handle = runtime.start(&spec).await.expect("start");
    let TaskState::Running { pid: Some(pid), .. } = runtime.inspect(&handle).await.expect("inspect") else {
        panic!("not running")
    };
    let memory = cgroup::of_process(pid, "memory").expect("the task's memory cgroup");
    let cpu = cgroup::of_process(pid, "cpu").expect("the task's cpu cgroup");
    let read = |dir: &std::path::Path, file: &str| std::fs::read_to_string(dir.join(file)).unwrap().trim().to_owned();
    assert_eq!(read(&memory, "memory.limit_in_bytes"), (64 * 1024 * 1024).to_string());
    assert_eq!(read(&cpu, "cpu.cfs_quota_us"), "50000");
    assert_eq!(read(&cpu, "cpu.cfs_period_us"), "100000");
    let (supervisor, _) = supervisor_of(&handle);
    assert_ne!(cgroup::of_process(supervisor, "memory"), Some(memory.clone()), "the supervisor is outside");
    runtime.stop(&handle, Duration::from_secs(5)).await.expect("stop");
    runtime.remove(&handle).await.expect("remove");
    assert!(!memory.exists() && !cpu.exists(), "the task's cgroups went with it");

    // 16 MiB of memory, then a process that fills a 64 MiB buffer.
    let mut spec = env.fixture(runtime.clone()).spec("hungry", "dd if=/dev/zero of=/dev/null bs=64M count=1");
    spec.resources.mem_mb = 16.0;
    let handle = runtime.start(&spec).await.expect("start");
    let status = wait(&runtime, &handle).await;
    assert!(status.oom_killed, "{status:?}");
    assert!(!status.success());
    runtime.remove(&handle).await.expect("remove");
}

/// A chatty task's output is rotated by its supervisor: each file at most `max_bytes`, `keep`
/// old ones, the oldest output gone; what the task wrote last is on disk by the time its end
/// is reported; `logs` reads the current file; stderr (with the supervisor's own messages)
/// rotates the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_output_is_rotated_by_size_keeping_the_newest_files() {
    let env = TestEnv::new("rotation");
    let rotation = marina_runtime::LogRotation { max_bytes: 1000, keep: 2 };
    let runtime = std::sync::Arc::new(
        ProcessRuntime::new(ProcessConfig { log_rotation: rotation, ..env.config() }).expect("runtime"),
    );
    // 5 bytes a line: 10,000 bytes on each stream, then a last line after a pause.
    let script = "i=0; while [ $i -lt 2000 ]; do printf '%04d\\n' $i; printf '%04d\\n' $i >&2; i=$((i+1)); done; \
                  sleep 0.2; echo last";
    let spec = env.fixture(runtime.clone()).spec("chatty", script);
    let handle = runtime.start(&spec).await.expect("start");
    assert!(wait(&runtime, &handle).await.success());

    let read = |name: &str| std::fs::read_to_string(spec.sandbox.join(name)).unwrap_or_default();
    for stream in ["stdout", "stderr"] {
        for name in [stream.to_owned(), format!("{stream}.1"), format!("{stream}.2")] {
            let len = read(&name).len();
            assert!(len > 0 && len <= 1000, "{name} holds {len} bytes");
        }
        assert!(!spec.sandbox.join(format!("{stream}.3")).exists(), "only two rotated {stream} files are kept");
    }
    let expected: String = (0..2000).map(|i| format!("{i:04}\n")).collect::<String>() + "last\n";
    let kept = read("stdout.2") + &read("stdout.1") + &read("stdout");
    assert!(expected.ends_with(&kept), "the newest output, in order, without a gap");
    assert!(kept.len() > 2000, "the kept files hold {} bytes", kept.len());
    assert!(read("stdout").ends_with("last\n"), "written before the end was recorded");
    assert_eq!(stdout(&runtime, &handle).await, read("stdout"), "logs read the current file");
    runtime.remove(&handle).await.expect("remove");
}

/// A task runs as its spec's user, with that user's group alone (none of root's
/// supplementary groups), in a sandbox handed to that user; an unknown user is refused by
/// name. Switching users needs root, as CI runs the tests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_runs_as_its_user_with_its_sandbox_handed_over() {
    assert!(nix::unistd::geteuid().is_root(), "switching users needs root: run the tests as root, as CI does");
    let env = TestEnv::new("user");
    // The test's temp dir is private (0700): `nobody` must be able to reach the sandbox.
    let root = env.sandbox_root.parent().expect("the test dir");
    std::fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let runtime = env.runtime();
    let mut spec =
        env.fixture(runtime.clone()).spec("as-nobody", "id -u; id -G; touch made-here && stat -c %u made-here");
    spec.user = Some("nobody".into());
    let handle = runtime.start(&spec).await.expect("start");
    let status = wait(&runtime, &handle).await;
    let output = stdout(&runtime, &handle).await;
    assert!(status.success(), "{status:?}: {output}");
    let nobody = nix::unistd::User::from_name("nobody").expect("passwd").expect("nobody exists");
    let (uid, gid) = (nobody.uid.as_raw().to_string(), nobody.gid.as_raw().to_string());
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines, [uid.as_str(), gid.as_str(), uid.as_str()], "uid, groups, the owner of a file it made");
    runtime.remove(&handle).await.expect("remove");

    let mut unknown = env.fixture(runtime.clone()).spec("as-nobody-known", "true");
    unknown.user = Some("no-such-user-here".into());
    match runtime.start(&unknown).await {
        Err(RuntimeError::InvalidSpec(message)) => assert!(message.contains("no such user"), "{message}"),
        other => panic!("expected InvalidSpec naming the user, got {other:?}"),
    }
}
