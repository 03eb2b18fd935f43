//! What the containerd backend does beyond the conformance suite, against the real
//! containerd: limits in the task's cgroup, OOM kills, network modes, image command
//! semantics, exec timeouts, and handles that work from a fresh connection.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::TestEnv;
use marina_runtime::conformance::eventually;
use marina_runtime::{Command, LogStream, NetworkMode, Runtime, RuntimeError, TaskHandle, TaskSpec, TaskState};
use marina_runtime_containerd::ContainerdRuntime;

async fn start(env: &TestEnv, spec: &TaskSpec) -> TaskHandle {
    env.runtime.ensure_image(spec.image.as_deref().unwrap(), false).await.expect("ensure_image");
    env.runtime.start(spec).await.unwrap_or_else(|e| panic!("start {}: {e}", spec.task_id))
}

async fn finish(env: &TestEnv, handle: &TaskHandle) {
    env.runtime.stop(handle, Duration::from_millis(100)).await.expect("stop");
    env.runtime.remove(handle).await.expect("remove");
}

async fn running_pid(env: &TestEnv, handle: &TaskHandle) -> u32 {
    match env.runtime.inspect(handle).await.expect("inspect") {
        TaskState::Running { pid: Some(pid), started_at } => {
            assert!(started_at.is_some(), "a running task says when it started");
            pid
        }
        other => panic!("expected Running with a pid, got {other:?}"),
    }
}

/// The file a cgroup v1 controller (or the v2 unified hierarchy) keeps `file` in for `pid`.
fn cgroup_file(pid: u32, controller: &str, v1_file: &str, v2_file: &str) -> PathBuf {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("the task's cgroups");
    for line in cgroups.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next(), fields.next().unwrap_or(""), fields.next().unwrap_or(""));
        if controllers.split(',').any(|c| c == controller) {
            return Path::new("/sys/fs/cgroup").join(controller).join(path.trim_start_matches('/')).join(v1_file);
        }
    }
    let unified = cgroups.lines().find_map(|line| line.strip_prefix("0::")).expect("a cgroup v2 line");
    Path::new("/sys/fs/cgroup").join(unified.trim_start_matches('/')).join(v2_file)
}

fn read_trimmed(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display())).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_and_cpu_limits_reach_the_task_cgroup() {
    let env = TestEnv::new("limits").await;
    let fixture = env.fixture();
    let mut spec = fixture.spec("limits", "exec sleep 300");
    spec.resources.mem_mb = 48.0;
    spec.resources.cpus = 0.25;
    let handle = start(&env, &spec).await;
    let pid = running_pid(&env, &handle).await;

    let memory = cgroup_file(pid, "memory", "memory.limit_in_bytes", "memory.max");
    assert_eq!(read_trimmed(&memory), (48 * 1024 * 1024).to_string(), "{}", memory.display());
    let cpu = cgroup_file(pid, "cpu", "cpu.cfs_quota_us", "cpu.max");
    let quota = read_trimmed(&cpu);
    assert!(quota == "25000" || quota == "25000 100000", "cpu quota {quota:?} in {}", cpu.display());
    finish(&env, &handle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_out_of_memory_kill_is_reported() {
    let env = TestEnv::new("oom").await;
    let fixture = env.fixture();
    let mut spec = fixture.spec("oom", "exec dd if=/dev/zero of=/dev/null bs=64M count=1");
    spec.resources.mem_mb = 16.0;
    let handle = start(&env, &spec).await;
    let status =
        tokio::time::timeout(Duration::from_secs(60), env.runtime.wait(&handle)).await.expect("exits").expect("wait");
    assert!(status.oom_killed, "{status:?}");
    assert_eq!(status.signal, Some(9), "{status:?}");
    match env.runtime.inspect(&handle).await.expect("inspect") {
        TaskState::Exited { status, finished_at } => {
            assert!(status.oom_killed, "{status:?}");
            assert!(finished_at.is_some());
        }
        other => panic!("expected Exited, got {other:?}"),
    }
    finish(&env, &handle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_none_is_isolated_and_bridge_shares_the_host_network() {
    let env = TestEnv::new("net").await;
    let fixture = env.fixture();
    let host_interfaces: Vec<String> = std::fs::read_dir("/sys/class/net")
        .expect("host interfaces")
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(host_interfaces.len() > 1, "the host has more than loopback: {host_interfaces:?}");

    let mut isolated = fixture.spec("net-none", "ls /sys/class/net; exec sleep 300");
    isolated.network = NetworkMode::None;
    let shared = fixture.spec("net-bridge", "ls /sys/class/net; exec sleep 300");
    let isolated_handle = start(&env, &isolated).await;
    let shared_handle = start(&env, &shared).await;

    let seen = |handle: TaskHandle| {
        let runtime = env.runtime.clone();
        async move {
            eventually(Duration::from_secs(30), "the interfaces are listed", || {
                let (runtime, handle) = (runtime.clone(), handle.clone());
                async move {
                    let logs = runtime.logs(&handle, LogStream::Stdout, None).await.expect("logs");
                    let text = String::from_utf8_lossy(&logs).into_owned();
                    text.contains("lo").then(|| text.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
                }
            })
            .await
        }
    };
    assert_eq!(seen(isolated_handle.clone()).await, ["lo"], "network none has only loopback");
    let mut bridge = seen(shared_handle.clone()).await;
    let mut host = host_interfaces.clone();
    bridge.sort();
    host.sort();
    assert_eq!(bridge, host, "bridge (no CNI) runs in the host's network");
    finish(&env, &isolated_handle).await;
    finish(&env, &shared_handle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_follow_the_image_semantics() {
    let env = TestEnv::new("cmd").await;
    let fixture = env.fixture();
    // The image's command is /bin/sh, which exits at once without input.
    let mut image_command = fixture.spec("cmd-image", "unused");
    image_command.command = None;
    let mut argv = fixture.spec("cmd-argv", "unused");
    argv.command = Some(Command::Argv(vec!["/bin/sh".into(), "-c".into(), "echo $0 $PATH; exit 4".into()]));
    for (spec, code) in [(&image_command, 0), (&argv, 4)] {
        let handle = start(&env, spec).await;
        let status = tokio::time::timeout(Duration::from_secs(60), env.runtime.wait(&handle))
            .await
            .expect("exits")
            .expect("wait");
        assert_eq!(status.code, Some(code), "{}: {status:?}", spec.task_id);
        finish(&env, &handle).await;
    }
    let logs = std::fs::read_to_string(argv.sandbox.join("stdout")).expect("stdout file in the sandbox");
    assert_eq!(logs.trim(), "/bin/sh /bin:/sbin:/usr/bin:/usr/sbin", "the image's PATH reaches the task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_gives_up_at_its_timeout() {
    let env = TestEnv::new("exec-timeout").await;
    let handle = start(&env, &env.fixture().spec("exec-timeout", "exec sleep 300")).await;
    let started = std::time::Instant::now();
    let argv = ["/bin/sh".to_owned(), "-c".to_owned(), "sleep 60".to_owned()];
    match env.runtime.exec(&handle, &argv, Duration::from_millis(500)).await {
        Err(RuntimeError::Timeout { operation: "exec", .. }) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    // The task is unharmed and exec still works.
    let ok = env.runtime.exec(&handle, &["true".to_owned()], Duration::from_secs(10)).await.expect("exec");
    assert!(ok.status.success(), "{ok:?}");
    finish(&env, &handle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_connection_manages_tasks_from_their_handles() {
    let env = TestEnv::new("recover").await;
    let handle = start(&env, &env.fixture().spec("recover", "echo before; exec sleep 300")).await;
    // What an agent does after its own restart: a new runtime, the checkpointed handle.
    let restarted = ContainerdRuntime::connect(env.runtime.config()).await.expect("connect");
    let handle: TaskHandle = serde_json::from_str(&serde_json::to_string(&handle).unwrap()).unwrap();
    assert!(matches!(restarted.inspect(&handle).await.expect("inspect"), TaskState::Running { .. }));
    // Even a handle that lost its data finds the task's logs through the container.
    let bare = TaskHandle { data: String::new(), ..handle.clone() };
    eventually(Duration::from_secs(30), "stdout through a bare handle", || async {
        let logs = restarted.logs(&bare, LogStream::Stdout, None).await.expect("logs");
        String::from_utf8_lossy(&logs).contains("before").then_some(())
    })
    .await;
    // `sleep` is the container's PID 1, which the kernel spares signals it has no handler
    // for: SIGTERM does nothing, and SIGKILL comes after the (sub-second) grace period.
    restarted.stop(&handle, Duration::from_millis(200)).await.expect("stop");
    let status = restarted.wait(&handle).await.expect("wait");
    assert_eq!(status.signal, Some(9), "{status:?}");
    restarted.remove(&handle).await.expect("remove");
    assert_eq!(env.runtime.inspect(&handle).await.expect("inspect"), TaskState::NotFound);
}

/// The task's sandbox is at Mesos' `/mnt/mesos/sandbox`, read-write, named by
/// `MESOS_SANDBOX` and `MARINA_SANDBOX` (even though the agent passes the host's path in
/// them), and the working directory is the image's. What the task writes there is in the
/// host's sandbox and what the host puts there reaches the task — through a runtime connected
/// afresh, as after an agent restart: the re-adopted container keeps its mount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_sees_its_sandbox_at_the_mesos_path() {
    let env = TestEnv::new("sandbox").await;
    let script = r#"echo hi > "$MESOS_SANDBOX/out"
        while [ ! -e "$MESOS_SANDBOX/go" ]; do sleep 0.05; done
        echo "$MESOS_SANDBOX $MARINA_SANDBOX $(pwd)" > "$MARINA_SANDBOX/seen"
        cat /mnt/mesos/sandbox/go"#;
    let mut spec = env.fixture().spec("sandbox", script);
    let host_path = spec.sandbox.display().to_string();
    spec.env.insert("MESOS_SANDBOX".into(), host_path.clone());
    spec.env.insert("MARINA_SANDBOX".into(), host_path);
    let handle = start(&env, &spec).await;
    let read = |name: &str| std::fs::read_to_string(spec.sandbox.join(name)).ok();
    eventually(Duration::from_secs(30), "the task's file in the host's sandbox", || async {
        (read("out")? == "hi\n").then_some(())
    })
    .await;

    let restarted = ContainerdRuntime::connect(env.runtime.config()).await.expect("connect");
    assert!(matches!(restarted.inspect(&handle).await.expect("inspect"), TaskState::Running { .. }));
    std::fs::write(spec.sandbox.join("go"), "from the host\n").expect("writing into the sandbox");
    let status =
        tokio::time::timeout(Duration::from_secs(60), restarted.wait(&handle)).await.expect("exits").expect("wait");
    assert!(status.success(), "{status:?}");
    assert_eq!(read("seen").as_deref(), Some("/mnt/mesos/sandbox /mnt/mesos/sandbox /\n"));
    assert_eq!(read("stdout").as_deref(), Some("from the host\n"));
    restarted.remove(&handle).await.expect("remove");
    assert_eq!(read("out").as_deref(), Some("hi\n"), "the sandbox outlives its container");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_kills_a_task_that_still_runs() {
    let env = TestEnv::new("remove-running").await;
    let spec = env.fixture().spec("remove-running", "trap '' TERM; exec sleep 300");
    let handle = start(&env, &spec).await;
    running_pid(&env, &handle).await;
    env.runtime.remove(&handle).await.expect("remove a running task");
    assert_eq!(env.runtime.inspect(&handle).await.expect("inspect"), TaskState::NotFound);
    assert!(env.runtime.list(&spec.labels).await.expect("list").is_empty());
}

/// `marina-supervise`, built from the current sources (a no-op when it is up to date).
fn supervisor_binary() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = std::process::Command::new(cargo);
    build.args(["build", "--quiet", "-p", "marina-runtime-process", "--bin", "marina-supervise"]);
    if !cfg!(debug_assertions) {
        build.arg("--release");
    }
    let status = build.current_dir(env!("CARGO_MANIFEST_DIR")).status().expect("running cargo build");
    assert!(status.success(), "building marina-supervise: {status}");
    let exe = std::env::current_exe().expect("the test's path");
    let profile = exe.parent().and_then(Path::parent).expect("target/<profile>");
    profile.join("marina-supervise").canonicalize().expect("marina-supervise was built")
}

/// With `marina-supervise` as the shim's logging binary, a task's output rotates as a process
/// task's does: each file at most `max_bytes`, `keep` old ones, the newest output kept in
/// order; `logs` reads the current file; and the logger ends with the task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_rotates_through_marinas_logging_binary() {
    let env = TestEnv::new("rotation").await;
    let rotation = marina_runtime::LogRotation { max_bytes: 1000, keep: 2 };
    let config = marina_runtime_containerd::ContainerdConfig {
        log_binary: Some(supervisor_binary()),
        log_rotation: rotation,
        ..env.runtime.config().clone()
    };
    let runtime = ContainerdRuntime::connect(&config).await.expect("connect");
    let script = "i=0; while [ $i -lt 2000 ]; do printf '%04d\\n' $i; printf '%04d\\n' $i >&2; i=$((i+1)); done";
    let spec = env.fixture().spec("chatty", script);
    let handle = runtime.start(&spec).await.unwrap_or_else(|e| panic!("start: {e}"));
    assert!(runtime.wait(&handle).await.expect("wait").success());

    let read = |name: &str| std::fs::read_to_string(spec.sandbox.join(name)).unwrap_or_default();
    let expected: String = (0..2000).map(|i| format!("{i:04}\n")).collect();
    // Both streams to their last line: until then a rotation may be under way, its files
    // between two renames.
    eventually(Duration::from_secs(30), "the logger to write the last line of both streams", || async {
        (read("stdout").ends_with("1999\n") && read("stderr").ends_with("1999\n")).then_some(())
    })
    .await;
    for stream in ["stdout", "stderr"] {
        for name in [stream.to_owned(), format!("{stream}.1"), format!("{stream}.2")] {
            let len = read(&name).len();
            assert!(len > 0 && len <= 1000, "{name} holds {len} bytes");
        }
        assert!(!spec.sandbox.join(format!("{stream}.3")).exists(), "only two rotated {stream} files are kept");
        let kept = read(&format!("{stream}.2")) + &read(&format!("{stream}.1")) + &read(stream);
        assert!(kept.len() > 2000 && expected.ends_with(&kept), "{stream}: the newest output, in order");
    }
    let logs = runtime.logs(&handle, LogStream::Stdout, None).await.expect("logs");
    assert_eq!(String::from_utf8_lossy(&logs), read("stdout"), "logs read the current file");
    runtime.remove(&handle).await.expect("remove");
    let sandbox = spec.sandbox.display().to_string();
    eventually(Duration::from_secs(30), "the logger to exit with its task", || async {
        let running = std::fs::read_dir("/proc").ok()?.flatten().any(|entry| {
            std::fs::read(entry.path().join("cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(&sandbox))
        });
        (!running).then_some(())
    })
    .await;
}
