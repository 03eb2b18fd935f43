//! What only the Docker backend does: port mapping, limits the engine enforces, Marathon's
//! `docker.parameters`, command semantics, container naming, and the engine connection.

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bollard::models::ContainerInspectResponse;
use common::{IMAGE, TestNetwork, cleanup, env, wait_for_logs};
use marina_runtime::conformance::eventually;
use marina_runtime::{
    Command, LABEL_AGENT_ID, LogRotation, LogStream, NetworkMode, PortMapping, Protocol, Runtime, RuntimeError,
    TaskAddresses, TaskHandle, TaskSpec, TaskState,
};
use marina_runtime_docker::{DockerConfig, DockerRuntime, container_name};

async fn start(runtime: &dyn Runtime, spec: &TaskSpec) -> TaskHandle {
    runtime.ensure_image(spec.image.as_deref().expect("an image"), false).await.expect("ensure_image");
    runtime.start(spec).await.unwrap_or_else(|e| panic!("start {}: {e}", spec.task_id))
}

async fn wait(runtime: &dyn Runtime, handle: &TaskHandle) -> marina_runtime::ExitStatus {
    tokio::time::timeout(Duration::from_secs(60), runtime.wait(handle)).await.expect("exits within 60 s").expect("wait")
}

/// The engine's own view of a container, bypassing the runtime.
async fn docker_inspect(handle: &TaskHandle) -> ContainerInspectResponse {
    let docker =
        bollard::Docker::connect_with_unix_defaults().expect("docker").negotiate_version().await.expect("version");
    docker.inspect_container(&handle.id, None).await.expect("inspect")
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapped_port_reaches_the_task() {
    let env = env("port_mapping").await;
    let host_port = free_port();
    let mut spec = env.fixture.spec("httpd", "exec httpd -f -p 8080 -h /var/www");
    spec.ports =
        vec![PortMapping { host_port, container_port: 8080, protocol: Protocol::Tcp, name: Some("http".into()) }];
    let handle = start(&*env.runtime, &spec).await;

    let url = format!("http://127.0.0.1:{host_port}/");
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        match reqwest::get(&url).await {
            Ok(response) if response.status().is_success() => break response.text().await.expect("body"),
            other => {
                assert!(Instant::now() < deadline, "{url} never answered: {other:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(body.contains("marina test image"), "{body:?}");
    let inspected = docker_inspect(&handle).await;
    let bindings = inspected.host_config.and_then(|h| h.port_bindings).expect("port bindings");
    let binding = &bindings["8080/tcp"].as_ref().expect("bound")[0];
    assert_eq!(binding.host_ip.as_deref(), Some("0.0.0.0"));
    cleanup(&*env.runtime, &handle).await;
}

/// The task's sandbox is at Mesos' `/mnt/mesos/sandbox`, read-write, named by
/// `MESOS_SANDBOX` and `MARINA_SANDBOX` (even though the agent passes the host's path in
/// them), and the working directory is the image's. What the task writes there is in the
/// host's sandbox and what the host puts there reaches the task — through a runtime connected
/// afresh, as after an agent restart: the re-adopted container keeps its mount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_sees_its_sandbox_at_the_mesos_path() {
    let env = env("sandbox").await;
    let script = r#"echo hi > "$MESOS_SANDBOX/out"
        while [ ! -e "$MESOS_SANDBOX/go" ]; do sleep 0.05; done
        echo "$MESOS_SANDBOX $MARINA_SANDBOX $(pwd)" > "$MARINA_SANDBOX/seen"
        cat /mnt/mesos/sandbox/go"#;
    let mut spec = env.fixture.spec("sandbox", script);
    let host_path = spec.sandbox.display().to_string();
    spec.env.insert("MESOS_SANDBOX".into(), host_path.clone());
    spec.env.insert("MARINA_SANDBOX".into(), host_path.clone());
    let handle = start(&*env.runtime, &spec).await;
    let read = |name: &str| std::fs::read_to_string(spec.sandbox.join(name)).ok();
    eventually(Duration::from_secs(30), "the task's file in the host's sandbox", || async {
        (read("out")? == "hi\n").then_some(())
    })
    .await;

    let restarted = DockerRuntime::connect(&DockerConfig::default()).await.expect("the engine answers");
    assert!(matches!(restarted.inspect(&handle).await.expect("inspect"), TaskState::Running { .. }));
    std::fs::write(spec.sandbox.join("go"), "from the host\n").expect("writing into the sandbox");
    assert!(wait(&restarted, &handle).await.success());
    assert_eq!(read("seen").as_deref(), Some("/mnt/mesos/sandbox /mnt/mesos/sandbox /\n"));
    let stdout = restarted.logs(&handle, LogStream::Stdout, None).await.expect("logs");
    assert_eq!(String::from_utf8_lossy(&stdout), "from the host\n");

    let mounts = docker_inspect(&handle).await.mounts.expect("mounts");
    let sandbox = mounts.iter().find(|m| m.destination.as_deref() == Some("/mnt/mesos/sandbox")).expect("mounted");
    assert_eq!((sandbox.source.as_deref(), sandbox.rw), (Some(host_path.as_str()), Some(true)), "{sandbox:?}");
    cleanup(&restarted, &handle).await;
    assert_eq!(read("out").as_deref(), Some("hi\n"), "the sandbox outlives its container");
}

/// A sandbox the engine cannot find on its host (an agent in a container whose work dir is
/// not mounted at the same path) fails the start, naming the sandbox, instead of the engine
/// making an empty directory the agent never sees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_missing_on_the_engines_host_fails_the_start() {
    let env = env("sandbox_missing").await;
    let mut spec = env.fixture.spec("elsewhere", "exec sleep 300");
    std::fs::remove_dir(&spec.sandbox).expect("removing the sandbox");
    spec.sandbox = spec.sandbox.join("not-on-this-host");
    env.runtime.ensure_image(common::IMAGE, false).await.expect("ensure_image");
    match env.runtime.start(&spec).await {
        Err(RuntimeError::InvalidSpec(message)) => {
            assert!(message.contains(&*spec.sandbox.to_string_lossy()), "{message}");
            assert!(message.contains("at the same path"), "the message says what to fix: {message}");
        }
        other => panic!("expected InvalidSpec, got {other:?}"),
    }
    assert!(!spec.sandbox.exists(), "the engine made no directory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_and_cpu_limits_reach_the_engine() {
    let env = env("limits").await;
    let mut spec = env.fixture.spec("limited", "exec sleep 300");
    spec.resources.mem_mb = 48.0;
    spec.resources.cpus = 0.25;
    let handle = start(&*env.runtime, &spec).await;
    let host = docker_inspect(&handle).await.host_config.expect("host config");
    assert_eq!(host.memory, Some(48 * 1024 * 1024));
    assert_eq!(host.nano_cpus, Some(250_000_000));
    let restart = host.restart_policy.and_then(|policy| policy.name).map(|name| name.to_string());
    assert!(matches!(restart.as_deref(), None | Some("" | "no")), "no restart policy: {restart:?}");
    cleanup(&*env.runtime, &handle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_kill_is_reported() {
    let env = env("oom").await;
    // Command substitution holds 200 MB in the shell's memory: far past a 16 MB limit.
    let mut spec = env.fixture.spec("hog", "x=$(head -c 200000000 /dev/zero | tr '\\000' a); echo survived");
    spec.resources.mem_mb = 16.0;
    let handle = start(&*env.runtime, &spec).await;
    let status = wait(&*env.runtime, &handle).await;
    assert!(status.oom_killed, "{status:?}");
    assert_eq!(status.signal, Some(9), "{status:?}");
    match env.runtime.inspect(&handle).await.expect("inspect") {
        TaskState::Exited { status, finished_at } => {
            assert!(status.oom_killed, "{status:?}");
            assert!(finished_at.is_some());
        }
        other => panic!("expected Exited, got {other:?}"),
    }
    cleanup(&*env.runtime, &handle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_after_the_grace_period_is_reported_as_a_signal() {
    let env = env("sigkill").await;
    let handle =
        start(&*env.runtime, &env.fixture.spec("stubborn", "trap '' TERM; echo ready; while true; do sleep 0.1; done"))
            .await;
    wait_for_logs(&*env.runtime, &handle, LogStream::Stdout, "ready").await;
    env.runtime.stop(&handle, Duration::from_millis(300)).await.expect("stop");
    let status = wait(&*env.runtime, &handle).await;
    assert_eq!((status.code, status.signal, status.oom_killed), (None, Some(9), false), "{status:?}");
    cleanup(&*env.runtime, &handle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_parameters_are_applied_or_refused_by_name() {
    let env = env("parameters").await;
    let mut spec = env.fixture.spec("params", "echo from=$FROM_PARAM; exec sleep 300");
    spec.parameters = vec![("label".into(), "team=core".into()), ("env".into(), "FROM_PARAM=yes".into())];
    let handle = start(&*env.runtime, &spec).await;
    wait_for_logs(&*env.runtime, &handle, LogStream::Stdout, "from=yes").await;
    let by_agent = BTreeMap::from([(LABEL_AGENT_ID.to_owned(), env.fixture.agent_id.clone())]);
    let listed = env.runtime.list(&by_agent).await.expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].labels.get("team").map(String::as_str), Some("core"));
    cleanup(&*env.runtime, &handle).await;

    let mut unknown = env.fixture.spec("unknown", "exec sleep 300");
    unknown.parameters = vec![("no-such-option".into(), "1".into())];
    match env.runtime.start(&unknown).await {
        Err(RuntimeError::InvalidSpec(message)) => assert!(message.contains("no-such-option"), "{message}"),
        other => panic!("expected InvalidSpec, got {other:?}"),
    }
    assert!(env.runtime.list(&by_agent).await.expect("list").is_empty(), "nothing was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_commands_use_a_shell_and_argv_does_not() {
    let env = env("commands").await;
    let shell = start(&*env.runtime, &env.fixture.spec("shell", "echo sum=$((40+2))")).await;
    let mut argv_spec = env.fixture.spec("argv", "");
    argv_spec.command = Some(Command::Argv(vec!["echo".into(), "literal=$HOME".into()]));
    let argv = start(&*env.runtime, &argv_spec).await;
    // No command: the image's own (`/bin/sh` with no input exits at once, successfully).
    let mut default_spec = env.fixture.spec("default", "");
    default_spec.command = None;
    let default = start(&*env.runtime, &default_spec).await;

    for handle in [&shell, &argv, &default] {
        assert!(wait(&*env.runtime, handle).await.success(), "{} failed", handle.task_id);
    }
    let logs = |handle: &TaskHandle| {
        let (runtime, handle) = (env.runtime.clone(), handle.clone());
        async move {
            String::from_utf8_lossy(&runtime.logs(&handle, LogStream::Stdout, None).await.expect("logs")).into_owned()
        }
    };
    assert_eq!(logs(&shell).await, "sum=42\n");
    assert_eq!(logs(&argv).await, "literal=$HOME\n");
    let config = docker_inspect(&default).await.config.expect("config");
    assert_eq!(config.cmd, Some(vec!["/bin/sh".to_owned()]), "the image's command ran");
    for handle in [&shell, &argv, &default] {
        cleanup(&*env.runtime, handle).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_tail_in_bytes_per_stream_after_exit() {
    let env = env("logs_tail").await;
    let script = "printf 'line one\\nline two\\nabcdefghij'; printf 'to stderr' >&2";
    let handle = start(&*env.runtime, &env.fixture.spec("tail", script)).await;
    wait(&*env.runtime, &handle).await;
    let tail = |stream, bytes| env.runtime.logs(&handle, stream, bytes);
    assert_eq!(&tail(LogStream::Stdout, Some(4)).await.expect("tail")[..], b"ghij");
    assert_eq!(&tail(LogStream::Stdout, Some(0)).await.expect("tail")[..], b"");
    assert_eq!(&tail(LogStream::Stdout, Some(1000)).await.expect("tail")[..], b"line one\nline two\nabcdefghij");
    assert_eq!(&tail(LogStream::Stderr, Some(6)).await.expect("tail")[..], b"stderr");
    cleanup(&*env.runtime, &handle).await;
    assert!(matches!(tail(LogStream::Stdout, None).await, Err(RuntimeError::NotFound { .. })));
}

/// The engine rotates a container's output (json-file `max-size`/`max-file`, the current file
/// counted), and the runtime still reads its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_rotates_a_containers_output() {
    let env = env("log_rotation").await;
    let defaults = start(&*env.runtime, &env.fixture.spec("defaults", "exec sleep 300")).await;
    let log = docker_inspect(&defaults).await.host_config.and_then(|host| host.log_config).expect("a log config");
    let options = log.config.expect("log options");
    assert_eq!(log.typ.as_deref(), Some("json-file"));
    assert_eq!((options["max-size"].as_str(), options["max-file"].as_str()), ("10485760", "4"));
    cleanup(&*env.runtime, &defaults).await;

    let rotation = LogRotation { max_bytes: 4096, keep: 1 };
    let config = DockerConfig { log_rotation: Some(rotation), ..DockerConfig::default() };
    let runtime = DockerRuntime::connect(&config).await.expect("the engine answers");
    // About 50 bytes of JSON a line: 2,000 lines fill the two files many times over.
    let script = "i=0; while [ $i -lt 2000 ]; do echo line$i; i=$((i+1)); done";
    let handle = start(&runtime, &env.fixture.spec("chatty", script)).await;
    wait(&runtime, &handle).await;
    let log_path = PathBuf::from(docker_inspect(&handle).await.log_path.expect("a log path"));
    let rotated = PathBuf::from(format!("{}.1", log_path.display()));
    for file in [&log_path, &rotated] {
        let len = std::fs::metadata(file).unwrap_or_else(|e| panic!("{}: {e}", file.display())).len();
        // The engine rotates once a line has taken a file to the size, so by at most a line.
        assert!(len > 0 && len <= rotation.max_bytes + 100, "{} holds {len} bytes", file.display());
    }
    assert!(!PathBuf::from(format!("{}.2", log_path.display())).exists(), "one rotated file is kept");
    let tail = runtime.logs(&handle, LogStream::Stdout, Some(8)).await.expect("logs");
    assert_eq!(&tail[..], b"ine1999\n");
    cleanup(&runtime, &handle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_past_its_timeout_fails_as_a_timeout() {
    let env = env("exec_timeout").await;
    let handle = start(&*env.runtime, &env.fixture.spec("exec", "exec sleep 300")).await;
    let argv = vec!["sleep".to_owned(), "30".to_owned()];
    match env.runtime.exec(&handle, &argv, Duration::from_millis(500)).await {
        Err(RuntimeError::Timeout { operation: "exec", .. }) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    cleanup(&*env.runtime, &handle).await;
    let gone = env.runtime.exec(&handle, &argv, Duration::from_secs(10)).await;
    assert!(matches!(gone, Err(RuntimeError::NotFound { .. })), "{gone:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leftover_container_is_replaced_but_a_running_one_is_not() {
    let env = env("leftover").await;
    let spec = env.fixture.spec("again", "echo attempt; exec sleep 300");
    let first = start(&*env.runtime, &spec).await;
    assert!(
        docker_inspect(&first).await.name.is_some_and(|name| name == format!("/{}", container_name(&spec.task_id)))
    );
    match env.runtime.start(&spec).await {
        Err(RuntimeError::Backend { message, .. }) => assert!(message.contains("already runs"), "{message}"),
        other => panic!("a running task must not be started twice, got {other:?}"),
    }
    env.runtime.stop(&first, Duration::from_millis(100)).await.expect("stop");
    let second = env.runtime.start(&spec).await.expect("a stopped leftover is replaced");
    assert_ne!(first.id, second.id);
    assert_eq!(env.runtime.inspect(&first).await.expect("inspect"), TaskState::NotFound);
    cleanup(&*env.runtime, &second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_none_has_only_loopback() {
    let env = env("network_none").await;
    let mut spec = env.fixture.spec("isolated", "ls /sys/class/net");
    spec.network = NetworkMode::None;
    let handle = start(&*env.runtime, &spec).await;
    wait(&*env.runtime, &handle).await;
    let interfaces = env.runtime.logs(&handle, LogStream::Stdout, None).await.expect("logs");
    assert_eq!(String::from_utf8_lossy(&interfaces).split_whitespace().collect::<Vec<_>>(), ["lo"]);
    cleanup(&*env.runtime, &handle).await;
}

/// The container's address on `network`, as the engine itself says it.
async fn address_on(handle: &TaskHandle, network: &str) -> IpAddr {
    let inspected = docker_inspect(handle).await;
    let networks = inspected.network_settings.and_then(|n| n.networks).expect("networks");
    let endpoint = networks.get(network).unwrap_or_else(|| panic!("not on {network}: {networks:?}"));
    endpoint.ip_address.as_deref().expect("an address").parse().expect("an IP address")
}

/// A task on a container network (a user-defined network the operator made) has an address
/// of its own there, which the runtime reports and at which its container port answers from
/// the host, with no port mapped. A bridge task reports its bridge address; a host-networked
/// one none (the agent reports its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_network_gives_the_task_an_address_where_its_ports_answer() {
    let network = TestNetwork::create("container_network");
    let env = env("container_network").await;
    let mut spec = env.fixture.spec("joined", "exec httpd -f -p 8080 -h /var/www");
    spec.network = NetworkMode::Container(network.name.clone());
    let joined = start(&*env.runtime, &spec).await;
    let Ok(TaskAddresses::Own(addresses)) = env.runtime.addresses(&joined).await else { panic!("its own addresses") };
    assert_eq!(addresses, [address_on(&joined, &network.name).await]);
    let url = format!("http://{}:8080/", addresses[0]);
    let http = reqwest::Client::builder().no_proxy().build().expect("a client");
    let body = eventually(Duration::from_secs(30), &format!("{url} to answer"), || async {
        let response = http.get(&url).send().await.ok()?;
        response.status().is_success().then_some(response.text().await.ok()?)
    })
    .await;
    assert!(body.contains("marina test image"), "{body:?}");

    let bridged = start(&*env.runtime, &env.fixture.spec("bridged", "sleep 600")).await;
    let own = TaskAddresses::Own(vec![address_on(&bridged, "bridge").await]);
    assert_eq!(env.runtime.addresses(&bridged).await.expect("addresses"), own);
    let mut host = env.fixture.spec("host", "sleep 600");
    host.network = NetworkMode::Host;
    let host = start(&*env.runtime, &host).await;
    assert_eq!(env.runtime.addresses(&host).await.expect("addresses"), TaskAddresses::Host);
    let mut isolated = env.fixture.spec("isolated", "sleep 600");
    isolated.network = NetworkMode::None;
    let isolated = start(&*env.runtime, &isolated).await;
    assert_eq!(env.runtime.addresses(&isolated).await.expect("addresses"), TaskAddresses::Own(Vec::new()));
    for handle in [&joined, &bridged, &host, &isolated] {
        cleanup(&*env.runtime, handle).await;
    }
    assert!(matches!(env.runtime.addresses(&joined).await, Err(RuntimeError::NotFound { .. })));
}

/// Container networks are the operator's to make: a task naming one the engine does not have
/// fails to start with an error naming it, and leaves no container behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_container_network_fails_the_start_naming_it() {
    let env = env("missing_network").await;
    let mut spec = env.fixture.spec("lost", "sleep 600");
    let missing = format!("marina-test-missing-{}", std::process::id());
    spec.network = NetworkMode::Container(missing.clone());
    env.runtime.ensure_image(IMAGE, false).await.expect("ensure_image");
    match env.runtime.start(&spec).await {
        Err(error @ RuntimeError::NetworkUnavailable { .. }) => {
            let message = error.to_string();
            assert!(message.contains(&missing) && message.contains("docker network create"), "{message}");
        }
        other => panic!("expected NetworkUnavailable, got {other:?}"),
    }
    let labels = BTreeMap::from([(LABEL_AGENT_ID.to_owned(), env.fixture.agent_id.clone())]);
    assert!(env.runtime.list(&labels).await.expect("list").is_empty(), "no container was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_reports_the_socket_when_no_engine_answers() {
    let missing = DockerConfig { socket: PathBuf::from("/nonexistent/docker.sock"), ..DockerConfig::default() };
    match DockerRuntime::connect(&missing).await {
        Err(RuntimeError::Backend { message, .. }) => {
            assert!(message.contains("/nonexistent/docker.sock"), "{message}")
        }
        other => panic!("expected a Backend error, got {other:?}"),
    }
    // A socket nobody listens on.
    let dir = tempfile::tempdir().expect("temp dir");
    let dead = dir.path().join("dead.sock");
    drop(std::os::unix::net::UnixListener::bind(&dead).expect("bind"));
    let dead_config = DockerConfig { socket: dead.clone(), ..DockerConfig::default() };
    match DockerRuntime::connect(&dead_config).await {
        Err(RuntimeError::Backend { message, .. }) => assert!(message.contains(&*dead.to_string_lossy()), "{message}"),
        other => panic!("expected a Backend error, got {other:?}"),
    }

    let live = DockerRuntime::connect(&DockerConfig::default()).await.expect("the engine answers");
    live.ping().await.expect("ping");
    assert_eq!(live.kind(), marina_runtime::RuntimeKind::Docker);
    assert!(live.capabilities().port_mapping && live.capabilities().network_isolation);
}

/// With a registry answering (`tests/python/registry.py` on the loopback, serving the test
/// image; the engine speaks plain HTTP to 127.0.0.0/8 registries), a missing image is
/// pulled and runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_is_pulled_when_a_registry_answers() {
    use std::io::BufRead;

    let env = env("pull").await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let archive = dir.path().join("image.tar");
    let saved = std::process::Command::new("docker")
        .args(["save", common::IMAGE, "-o"])
        .arg(&archive)
        .output()
        .expect("docker save");
    assert!(saved.status.success(), "{}", String::from_utf8_lossy(&saved.stderr));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/python/registry.py");
    let mut registry = std::process::Command::new("python3")
        .arg(script)
        .arg(&archive)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs the test registry");
    let mut port = String::new();
    std::io::BufReader::new(registry.stdout.take().unwrap()).read_line(&mut port).unwrap();
    let reference = format!("127.0.0.1:{}/marina-test/pulled:{}", port.trim(), std::process::id());

    let pulled = env.runtime.ensure_image(&reference, false).await;
    let _ = registry.kill();
    let _ = registry.wait();
    pulled.expect("pulled from the registry");
    let mut spec = env.fixture.spec("pulled", "echo pulled");
    spec.image = Some(reference.clone());
    let handle = start(&*env.runtime, &spec).await;
    assert!(wait(&*env.runtime, &handle).await.success());
    cleanup(&*env.runtime, &handle).await;
    let removed = std::process::Command::new("docker").args(["rmi", &reference]).output().expect("docker rmi");
    assert!(removed.status.success(), "{}", String::from_utf8_lossy(&removed.stderr));
}
