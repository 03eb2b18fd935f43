//! Marina's Docker backend: runs tasks as Docker Engine containers through bollard, over the
//! engine's unix socket.
//!
//! Why it is shaped this way:
//! - The API version is negotiated at [`DockerRuntime::connect`]: bollard speaks a newer API
//!   than older engines (20.10 speaks 1.41) accept. A failed connect names the socket, so the
//!   agent can log it and fall back to another runtime.
//! - Containers are named `marina-<task_id>` ([`container_name`]) and carry the task's labels;
//!   [`Runtime::list`] finds them by label after an agent restart, and a leftover container
//!   of the same task (a failed earlier attempt) is removed before a new one is created.
//! - No Docker restart policy: the agent alone decides whether a task runs again.
//! - `stop` signals the container itself (SIGTERM, then SIGKILL after the grace period)
//!   instead of using `docker stop`, whose timeout has whole-second granularity.
//! - The engine's exit codes are reported as codes; a code becomes a signal only when we know
//!   the signal was sent (see the `status` module).
//! - Docker tails logs by lines; the trait tails by bytes, so the output is trimmed here.
//! - Containers' output is rotated by the engine (`max-size`/`max-file`, from
//!   [`DockerConfig::log_rotation`]) when it keeps it in files (json-file, local): it lives
//!   on the engine's disk, not in a sandbox. An engine configured to ship output elsewhere
//!   (journald, syslog, ...) keeps doing so.
//! - A container network (`NetworkMode::Container`) is one the operator made on the engine
//!   (`docker network create`): the container joins it by name, and a missing one fails the
//!   start as [`RuntimeError::NetworkUnavailable`] naming it, before anything is created.
//!   [`Runtime::addresses`] reads the container's addresses on its networks from the engine
//!   (on the host's network it has none of its own: [`TaskAddresses::Host`]).
//! - The task's sandbox is bind-mounted read-write at [`SANDBOX_MOUNT`]
//!   (`/mnt/mesos/sandbox`, as Mesos' docker containerizer does), where `MESOS_SANDBOX` and
//!   `MARINA_SANDBOX` point; the working directory stays the image's. The engine resolves
//!   the sandbox's path on its own host: an agent running in a container must see its work
//!   dir at the same path as the engine's host does.

mod errors;
mod output;
mod parameters;
mod spec;
mod status;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::exec::StartExecResults;
use bollard::models::{ContainerCreateBody, ContainerStateStatusEnum, EndpointSettings, ExecConfig};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, KillContainerOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions,
};
use bollard::{API_DEFAULT_VERSION, Docker};
use bytes::Bytes;
use futures::StreamExt;
use marina_runtime::{
    Capabilities, ExecOutput, ExitStatus, LABEL_TASK_ID, ListedTask, LogRotation, LogStream, NetworkMode, Result,
    Runtime, RuntimeError, RuntimeKind, TaskAddresses, TaskHandle, TaskSpec, TaskState,
};
use tracing::{Instrument, debug, info, warn};

pub use marina_runtime::SANDBOX_MOUNT;
pub use parameters::SUPPORTED_PARAMETERS;
pub use spec::{NAME_PREFIX, container_name};

use crate::output::TailBuffer;
use crate::status::{SIGKILL, SIGTERM, SignalLedger};

const KIND: RuntimeKind = RuntimeKind::Docker;

/// How long `stop` waits for a container to die after SIGKILL before reporting a timeout
/// (a process stuck in uninterruptible I/O survives SIGKILL for a while).
const KILL_WAIT: Duration = Duration::from_secs(30);

/// `exec` keeps at most this many bytes of a command's output (its end): enough for any
/// health check's message, bounded against a command that prints without end.
pub const EXEC_OUTPUT_LIMIT: usize = 64 * 1024;

/// Where the engine is and how long to wait for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerConfig {
    /// The engine's unix socket. Default `/var/run/docker.sock`.
    pub socket: PathBuf,
    /// How long [`DockerRuntime::connect`] waits for the engine to answer, so that an agent
    /// whose engine hangs falls back to another runtime quickly. Default 5 s.
    pub connect_timeout: Duration,
    /// How long one engine request may take until the engine starts answering (bollard
    /// rounds it down to whole seconds, at least 1). Streams (logs, waits) are not bounded
    /// by it once they have started. Default 120 s.
    pub request_timeout: Duration,
    /// Bound on one image pull; past it the pull is abandoned as
    /// [`RuntimeError::ImageUnavailable`]. Default 60 s.
    pub pull_timeout: Duration,
    /// How containers' output rotates: set at create as the `max-size` and `max-file` of the
    /// driver the container uses (the task's own, else the engine's default) when it keeps
    /// files (json-file, local); other drivers are left alone. `None` leaves the engine's
    /// logging configuration alone. Default: [`LogRotation::default`].
    pub log_rotation: Option<LogRotation>,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            socket: PathBuf::from("/var/run/docker.sock"),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(120),
            pull_timeout: Duration::from_secs(60),
            log_rotation: Some(LogRotation::default()),
        }
    }
}

/// The logging driver the engine gives containers that name none; Docker's own default
/// (json-file) if the engine does not say.
async fn read_engine_log_driver(docker: &Docker) -> String {
    match docker.info().await {
        Ok(info) => info.logging_driver.filter(|driver| !driver.is_empty()).unwrap_or_else(|| "json-file".to_owned()),
        Err(error) => {
            warn!(error = %errors::describe(&error), "cannot read the engine's logging driver; assuming json-file");
            "json-file".to_owned()
        }
    }
}

/// The Docker backend of [`Runtime`]. Cheap to share behind an `Arc`; every method may run
/// concurrently.
#[derive(Debug)]
pub struct DockerRuntime {
    docker: Docker,
    config: DockerConfig,
    /// The rotation of containers' output, with the engine's default driver (read at connect).
    output: Option<spec::OutputRotation>,
    /// The signals `stop` sent, to tell "killed by SIGKILL" from "exited with 137".
    signals: SignalLedger,
}

impl DockerRuntime {
    /// Connects to the engine at `config.socket` and negotiates the API version. Fails with a
    /// `Backend` error naming the socket when no engine answers there.
    pub async fn connect(config: &DockerConfig) -> Result<Self> {
        let socket = config.socket.display().to_string();
        let unreachable =
            |reason: String| RuntimeError::backend(KIND, format!("no Docker Engine at {socket}: {reason}"));
        let path = config.socket.to_str().ok_or_else(|| unreachable("the socket path is not UTF-8".into()))?;
        let request_timeout = config.request_timeout.as_secs().max(1);
        let docker = Docker::connect_with_unix(path, request_timeout, API_DEFAULT_VERSION)
            .map_err(|e| unreachable(errors::describe(&e)))?;
        let docker = tokio::time::timeout(config.connect_timeout, docker.negotiate_version())
            .await
            .map_err(|_| unreachable(format!("no answer within {:?}", config.connect_timeout)))?
            .map_err(|e| unreachable(errors::describe(&e)))?;
        let version = docker.client_version();
        info!(socket, api = %format!("{}.{}", version.major_version, version.minor_version), "connected to the Docker Engine");
        let output = match config.log_rotation {
            Some(rotation) => {
                Some(spec::OutputRotation { rotation, engine_driver: read_engine_log_driver(&docker).await })
            }
            None => None,
        };
        Ok(DockerRuntime { docker, config: config.clone(), output, signals: SignalLedger::default() })
    }

    /// Checks that the engine still answers (cheap: `GET /_ping`).
    pub async fn ping(&self) -> Result<()> {
        self.docker.ping().await.map(drop).map_err(|e| errors::backend("ping", &self.socket(), e))
    }

    /// The API version negotiated with the engine, e.g. `1.41`.
    pub fn api_version(&self) -> String {
        let version = self.docker.client_version();
        format!("{}.{}", version.major_version, version.minor_version)
    }

    pub fn config(&self) -> &DockerConfig {
        &self.config
    }

    fn socket(&self) -> String {
        format!("the engine at {}", self.config.socket.display())
    }

    async fn pull(&self, image: &str) -> Result<()> {
        let (repository, tag) = spec::split_reference(image);
        let options = CreateImageOptions { from_image: Some(repository), tag: Some(tag), ..Default::default() };
        let unavailable = |reason: String| RuntimeError::ImageUnavailable { image: image.to_owned(), reason };
        let pull = async {
            let mut progress = self.docker.create_image(Some(options), None, None);
            while let Some(step) = progress.next().await {
                step?;
            }
            Ok::<(), DockerError>(())
        };
        debug!(image, "pulling");
        match tokio::time::timeout(self.config.pull_timeout, pull).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if errors::engine_answered(&e) => {
                Err(unavailable(format!("pull failed: {}", errors::describe(&e))))
            }
            Ok(Err(e)) => Err(errors::backend("pull image", image, e)),
            Err(_) => Err(unavailable(format!("pull did not finish within {:?}", self.config.pull_timeout))),
        }
    }

    /// Creates the container, first clearing a leftover of an earlier attempt at the same task.
    async fn create(&self, name: &str, spec: &TaskSpec, body: ContainerCreateBody) -> Result<String> {
        let options = || CreateContainerOptions { name: Some(name.to_owned()), ..Default::default() };
        let mut cleared = false;
        let joined = match &spec.network {
            NetworkMode::Container(network) => Some(network.as_str()),
            _ => None,
        };
        loop {
            let err = match self.docker.create_container(Some(options()), body.clone()).await {
                Ok(created) => {
                    for warning in created.warnings.iter().filter(|w| !w.is_empty()) {
                        warn!(task_id = %spec.task_id, container = name, warning, "engine warning on create");
                    }
                    return Ok(created.id);
                }
                Err(err) => err,
            };
            match errors::status(&err) {
                Some(409) if !cleared => {
                    self.clear_leftover(name, &spec.task_id).await?;
                    cleared = true;
                }
                // A container network removed since `check_network` found it.
                Some(404) if errors::describe(&err).contains("network") && joined.is_some() => {
                    let network = joined.unwrap_or_default();
                    return Err(network_unavailable(network, errors::describe(&err)));
                }
                Some(404) => {
                    return Err(RuntimeError::ImageUnavailable {
                        image: spec.image.clone().unwrap_or_default(),
                        reason: format!("not present on the engine (ensure_image first): {}", errors::describe(&err)),
                    });
                }
                Some(400) => {
                    let reason = errors::describe(&err);
                    // The engine's words for a bind source it cannot find on its host.
                    let hint = if reason.contains("bind source path does not exist") {
                        format!(
                            " (the sandbox {} is not on the engine's host: an agent in a container must see \
                             its work dir at the same path as the engine's host)",
                            spec.sandbox.display()
                        )
                    } else {
                        String::new()
                    };
                    return Err(RuntimeError::InvalidSpec(format!(
                        "the engine refused container {name}: {reason}{hint}"
                    )));
                }
                _ => return Err(errors::backend("create container", name, err)),
            }
        }
    }

    /// A container network must exist before a container can join it: the operator makes
    /// them. Anything but the engine's "no such network" is left for the create to report.
    async fn check_network(&self, network: &str) -> Result<()> {
        match self.docker.inspect_network(network, None).await {
            Ok(_) => Ok(()),
            Err(e) if errors::is_not_found(&e) => Err(network_unavailable(network, errors::describe(&e))),
            Err(e) => {
                debug!(network, error = %errors::describe(&e), "cannot inspect the network; creating the container anyway");
                Ok(())
            }
        }
    }

    /// A container already holds the task's name. If it is this task's and not running, it is
    /// what a failed earlier attempt left: remove it. Anything else is refused rather than
    /// touched: a running copy of the task, or someone else's container.
    async fn clear_leftover(&self, name: &str, task_id: &str) -> Result<()> {
        let existing = match self.docker.inspect_container(name, None).await {
            Ok(existing) => existing,
            Err(e) if errors::is_not_found(&e) => return Ok(()),
            Err(e) => return Err(errors::backend("inspect existing container", name, e)),
        };
        let id = existing.id.clone().unwrap_or_else(|| name.to_owned());
        let owner = existing.config.as_ref().and_then(|c| c.labels.as_ref()).and_then(|l| l.get(LABEL_TASK_ID));
        if owner.map(String::as_str) != Some(task_id) {
            return Err(RuntimeError::backend(
                KIND,
                format!("container {name} ({id}) exists and is not task {task_id}'s; refusing to replace it"),
            ));
        }
        let running = matches!(
            existing.state.as_ref().and_then(|s| s.status),
            Some(
                ContainerStateStatusEnum::RUNNING
                    | ContainerStateStatusEnum::PAUSED
                    | ContainerStateStatusEnum::RESTARTING
            )
        );
        if running {
            return Err(RuntimeError::backend(
                KIND,
                format!("task {task_id} already runs in container {name} ({id}); stop it or recover it instead"),
            ));
        }
        info!(task_id, container = %id, "removing the container a previous attempt left");
        self.remove_container(&id, task_id).await
    }

    async fn remove_container(&self, id: &str, task_id: &str) -> Result<()> {
        let options = RemoveContainerOptions { force: true, v: true, link: false };
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => {}
            Err(e) if errors::is_not_found(&e) => {}
            // "removal of container ... is already in progress": someone else finishes the job.
            Err(e) if errors::is_conflict(&e) && errors::describe(&e).contains("already in progress") => {}
            Err(e) => return Err(errors::backend("remove container", &format!("{id} (task {task_id})"), e)),
        }
        self.signals.forget(id);
        Ok(())
    }

    /// Sends `signal` to the container's main process. `false` when there was nothing to
    /// signal (the container is gone or not running).
    async fn signal(&self, handle: &TaskHandle, signal: i32) -> Result<bool> {
        // Recorded before sending: a concurrent `wait` may see the exit before `kill` returns.
        self.signals.record(&handle.id, signal);
        let name = status::signal_name(signal);
        let options = KillContainerOptions { signal: name.clone() };
        match self.docker.kill_container(&handle.id, Some(options)).await {
            Ok(()) => Ok(true),
            Err(e) if errors::is_not_found(&e) || errors::is_conflict(&e) => {
                self.signals.unrecord(&handle.id, signal);
                Ok(false)
            }
            Err(e) => {
                self.signals.unrecord(&handle.id, signal);
                Err(errors::backend(&format!("send {name} to"), &describe_task(handle), e))
            }
        }
    }

    /// Whether the container stops running within `limit`.
    async fn exited_within(&self, handle: &TaskHandle, limit: Duration) -> Result<bool> {
        let mut wait = self.docker.wait_container(&handle.id, None);
        match tokio::time::timeout(limit, wait.next()).await {
            Err(_) => Ok(false),
            Ok(None | Some(Ok(_)) | Some(Err(DockerError::DockerContainerWaitError { .. }))) => Ok(true),
            Ok(Some(Err(e))) if errors::is_not_found(&e) => Ok(true),
            Ok(Some(Err(e))) => Err(errors::backend("wait for", &describe_task(handle), e)),
        }
    }

    /// The last `limit` bytes of one stream; `docker_tail` is the engine's tail (in entries).
    async fn read_logs(
        &self,
        handle: &TaskHandle,
        stream: LogStream,
        docker_tail: String,
        limit: usize,
    ) -> Result<TailBuffer> {
        let options = LogsOptions {
            stdout: stream == LogStream::Stdout,
            stderr: stream == LogStream::Stderr,
            tail: docker_tail,
            ..Default::default()
        };
        let mut tail = TailBuffer::new(limit);
        let mut entries = self.docker.logs(&handle.id, Some(options));
        while let Some(entry) = entries.next().await {
            match entry {
                Ok(LogOutput::StdOut { message }) if stream == LogStream::Stdout => tail.push(&message),
                Ok(LogOutput::StdErr { message }) if stream == LogStream::Stderr => tail.push(&message),
                Ok(_) => {}
                Err(e) if errors::is_not_found(&e) => return Err(not_found(handle)),
                Err(e) => return Err(errors::backend("read logs of", &describe_task(handle), e)),
            }
        }
        Ok(tail)
    }

    async fn run_exec(&self, handle: &TaskHandle, argv: &[String]) -> Result<ExecOutput> {
        let target = describe_task(handle);
        let config = ExecConfig {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(argv.to_vec()),
            ..Default::default()
        };
        let created = match self.docker.create_exec(&handle.id, config).await {
            Ok(created) => created,
            Err(e) if errors::is_not_found(&e) => return Err(not_found(handle)),
            Err(e) => return Err(errors::backend("exec in", &target, e)),
        };
        let started = self.docker.start_exec(&created.id, None).await;
        let mut output = TailBuffer::new(EXEC_OUTPUT_LIMIT);
        match started.map_err(|e| errors::backend("start exec in", &target, e))? {
            StartExecResults::Attached { output: mut chunks, .. } => {
                while let Some(chunk) = chunks.next().await {
                    output.push(&chunk.map_err(|e| errors::backend("read exec output in", &target, e))?.into_bytes());
                }
            }
            StartExecResults::Detached => {
                return Err(RuntimeError::backend(KIND, format!("exec in {target}: the engine did not attach")));
            }
        }
        // The output ends when the process does, but the engine may record the exit code a
        // moment later; the caller's timeout bounds this.
        loop {
            let inspected = self
                .docker
                .inspect_exec(&created.id)
                .await
                .map_err(|e| errors::backend("inspect exec in", &target, e))?;
            if inspected.running != Some(true) {
                let code = inspected.exit_code.and_then(|code| i32::try_from(code).ok());
                let status = ExitStatus { code, signal: None, oom_killed: false };
                return Ok(ExecOutput { status, output: output.finish() });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn network_unavailable(network: &str, engine: String) -> RuntimeError {
    RuntimeError::NetworkUnavailable {
        network: network.to_owned(),
        reason: format!(
            "the engine has no such network ({engine}); container networks are the operator's to create on every \
             agent's engine (docker network create {network})"
        ),
    }
}

/// A container's addresses on the networks it is attached to (none on the host's network,
/// whose endpoint has no address of its own), IPv4 first, in the order of the networks'
/// names so that the first is always the same one.
fn container_addresses(networks: Option<&HashMap<String, EndpointSettings>>) -> Vec<IpAddr> {
    let Some(networks) = networks else { return Vec::new() };
    let sorted: BTreeMap<&String, &EndpointSettings> = networks.iter().collect();
    let mut addresses: Vec<IpAddr> = Vec::new();
    for endpoint in sorted.values() {
        for text in [&endpoint.ip_address, &endpoint.global_ipv6_address].into_iter().flatten() {
            if let Ok(address) = text.parse::<IpAddr>()
                && !address.is_unspecified()
                && !addresses.contains(&address)
            {
                addresses.push(address);
            }
        }
    }
    addresses.sort_by_key(|address| address.is_ipv6());
    addresses
}

fn not_found(handle: &TaskHandle) -> RuntimeError {
    RuntimeError::NotFound { task_id: handle.task_id.clone() }
}

fn describe_task(handle: &TaskHandle) -> String {
    format!("container {} (task {})", handle.id, handle.task_id)
}

#[async_trait]
impl Runtime for DockerRuntime {
    fn kind(&self) -> RuntimeKind {
        KIND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { images: true, port_mapping: true, cpu_limit: true, memory_limit: true, network_isolation: true }
    }

    async fn ensure_image(&self, image: &str, force_pull: bool) -> Result<()> {
        if !force_pull {
            match self.docker.inspect_image(image).await {
                Ok(_) => return Ok(()),
                Err(e) if errors::is_not_found(&e) => {}
                Err(e) => return Err(errors::backend("inspect image", image, e)),
            }
        }
        self.pull(image).instrument(tracing::info_span!("docker.pull", image)).await
    }

    async fn start(&self, spec: &TaskSpec) -> Result<TaskHandle> {
        let name = container_name(&spec.task_id);
        // The engine mounts only absolute paths; a relative sandbox is relative to the agent's
        // directory, as the containerd runtime reads it.
        let sandbox = std::path::absolute(&spec.sandbox)
            .map_err(|e| RuntimeError::InvalidSpec(format!("sandbox {}: {e}", spec.sandbox.display())))?;
        let spec = &TaskSpec { sandbox, ..spec.clone() };
        let body = spec::container_body(spec, self.output.as_ref())?;
        if let NetworkMode::Container(network) = &spec.network {
            self.check_network(network).instrument(tracing::info_span!("docker.check_network", network)).await?;
        }
        let id = self.create(&name, spec, body).instrument(tracing::info_span!("docker.create")).await?;
        let started = self.docker.start_container(&id, None).instrument(tracing::info_span!("docker.start")).await;
        if let Err(e) = started {
            // Never leave a created, never started container behind: it would hold the name.
            let error = errors::backend("start container", &format!("{name} ({id})"), e);
            if let Err(cleanup) = self.remove_container(&id, &spec.task_id).await {
                warn!(task_id = %spec.task_id, container = %id, %cleanup, "removing a container that failed to start");
            }
            return Err(error);
        }
        info!(task_id = %spec.task_id, container = %id, name, "started");
        Ok(TaskHandle { runtime: KIND, task_id: spec.task_id.clone(), id, data: String::new() })
    }

    async fn inspect(&self, handle: &TaskHandle) -> Result<TaskState> {
        match self.docker.inspect_container(&handle.id, None).await {
            Ok(container) => Ok(status::task_state(container.state.as_ref(), &handle.id, &self.signals)),
            Err(e) if errors::is_not_found(&e) => Ok(TaskState::NotFound),
            Err(e) => Err(errors::backend("inspect", &describe_task(handle), e)),
        }
    }

    async fn addresses(&self, handle: &TaskHandle) -> Result<TaskAddresses> {
        match self.docker.inspect_container(&handle.id, None).await {
            Ok(container) => {
                let mode = container.host_config.as_ref().and_then(|host| host.network_mode.as_deref());
                if mode == Some("host") {
                    return Ok(TaskAddresses::Host);
                }
                let networks = container.network_settings.as_ref().and_then(|n| n.networks.as_ref());
                Ok(TaskAddresses::Own(container_addresses(networks)))
            }
            Err(e) if errors::is_not_found(&e) => Err(not_found(handle)),
            Err(e) => Err(errors::backend("inspect the networks of", &describe_task(handle), e)),
        }
    }

    async fn wait(&self, handle: &TaskHandle) -> Result<ExitStatus> {
        let mut wait = self.docker.wait_container(&handle.id, None);
        let code = match wait.next().await {
            Some(Ok(response)) => response.status_code,
            // bollard turns a non-zero exit into this error.
            Some(Err(DockerError::DockerContainerWaitError { code, .. })) => code,
            Some(Err(e)) if errors::is_not_found(&e) => return Err(not_found(handle)),
            Some(Err(e)) => return Err(errors::backend("wait for", &describe_task(handle), e)),
            None => {
                return Err(RuntimeError::backend(
                    KIND,
                    format!("wait for {}: the engine closed the stream without an exit status", describe_task(handle)),
                ));
            }
        };
        // The wait only carries the code; inspect knows whether the OOM killer struck.
        match self.inspect(handle).await {
            Ok(TaskState::Exited { status, .. }) => Ok(status),
            _ => Ok(status::exit_status(code, false, &handle.id, &self.signals)),
        }
    }

    async fn stop(&self, handle: &TaskHandle, grace: Duration) -> Result<()> {
        if !self.signal(handle, SIGTERM).await? {
            return Ok(());
        }
        if self.exited_within(handle, grace).await? {
            return Ok(());
        }
        debug!(task_id = %handle.task_id, container = %handle.id, ?grace, "grace period over, killing");
        if !self.signal(handle, SIGKILL).await? || self.exited_within(handle, KILL_WAIT).await? {
            return Ok(());
        }
        Err(RuntimeError::Timeout { operation: "stop", after: grace.saturating_add(KILL_WAIT) })
    }

    async fn remove(&self, handle: &TaskHandle) -> Result<()> {
        self.remove_container(&handle.id, &handle.task_id).await
    }

    async fn list(&self, labels: &BTreeMap<String, String>) -> Result<Vec<ListedTask>> {
        let filters = (!labels.is_empty())
            .then(|| HashMap::from([("label".to_owned(), labels.iter().map(|(k, v)| format!("{k}={v}")).collect())]));
        let options = ListContainersOptions { all: true, filters, ..Default::default() };
        let summaries =
            self.docker.list_containers(Some(options)).await.map_err(|e| errors::backend("list", "containers", e))?;
        // The summary's state has no exit code: inspect each container for the full state.
        let inspections = summaries.into_iter().filter_map(|summary| {
            let labels: BTreeMap<String, String> = summary.labels?.into_iter().collect();
            let task_id = labels.get(LABEL_TASK_ID)?.clone();
            let handle = TaskHandle { runtime: KIND, task_id, id: summary.id?, data: String::new() };
            Some(async move {
                let state = self.inspect(&handle).await?;
                Ok::<_, RuntimeError>((state != TaskState::NotFound).then_some(ListedTask { handle, labels, state }))
            })
        });
        let listed: Vec<Result<Option<ListedTask>>> = futures::stream::iter(inspections).buffered(8).collect().await;
        listed.into_iter().filter_map(Result::transpose).collect()
    }

    async fn logs(&self, handle: &TaskHandle, stream: LogStream, tail: Option<usize>) -> Result<Bytes> {
        let Some(limit) = tail else {
            return Ok(self.read_logs(handle, stream, "all".into(), usize::MAX).await?.finish());
        };
        if limit == 0 {
            return Ok(Bytes::new());
        }
        // The engine tails in log entries (lines) of both streams together. Try the last few
        // entries first; only when they hold fewer than `limit` bytes of this stream, read all.
        let entries = limit.div_ceil(32).max(16);
        let recent = self.read_logs(handle, stream, entries.to_string(), limit).await?;
        if recent.len() >= limit {
            return Ok(recent.finish());
        }
        Ok(self.read_logs(handle, stream, "all".into(), limit).await?.finish())
    }

    async fn exec(&self, handle: &TaskHandle, argv: &[String], timeout: Duration) -> Result<ExecOutput> {
        if argv.is_empty() {
            return Err(RuntimeError::InvalidSpec("exec needs a command".into()));
        }
        // On timeout the command keeps running in the container: the engine cannot kill an exec.
        tokio::time::timeout(timeout, self.run_exec(handle, argv))
            .await
            .map_err(|_| RuntimeError::Timeout { operation: "exec", after: timeout })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_containers_addresses_are_its_networks_and_none_on_the_hosts() {
        let endpoint = |v4: &str, v6: &str| EndpointSettings {
            ip_address: Some(v4.to_owned()),
            global_ipv6_address: Some(v6.to_owned()),
            ..Default::default()
        };
        let host = HashMap::from([("host".to_owned(), endpoint("", ""))]);
        assert!(container_addresses(Some(&host)).is_empty());
        assert!(container_addresses(None).is_empty());
        let joined = HashMap::from([
            ("z-net".to_owned(), endpoint("172.20.0.2", "fd00::2")),
            ("a-net".to_owned(), endpoint("172.19.0.5", "")),
        ]);
        let expected: Vec<IpAddr> =
            ["172.19.0.5", "172.20.0.2", "fd00::2"].iter().map(|a| a.parse().unwrap()).collect();
        assert_eq!(container_addresses(Some(&joined)), expected);
    }
}
