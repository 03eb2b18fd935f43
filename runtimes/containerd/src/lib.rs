//! Marina's containerd backend: tasks run as runc containers that containerd manages, over
//! its gRPC API (containerd-client), in a namespace of Marina's own (`marina` by default,
//! apart from Docker's `moby`).
//!
//! What the agent uses:
//! - [`ContainerdConfig`] and [`ContainerdRuntime::connect`], which finds a containerd that
//!   answers (the configured socket, then the system's, then the Docker Engine's own) or
//!   fails with the sockets it tried, so the agent can fall back to another runtime;
//! - [`ContainerdRuntime::import_image`], how images get here without a registry: it loads a
//!   `docker save` (or OCI layout) archive into the content store, names the images and
//!   unpacks them into the snapshotter;
//! - the [`Runtime`] trait for everything else.
//!
//! Built for containerd 1.6 (Debian 12's, and the one the Docker Engine runs there), which
//! has none of the newer Transfer, Sandbox or Streaming services, so:
//! - pulls are client-side: `ensure_image` uses the image if it is in the namespace and
//!   otherwise (or with `force_pull`) pulls it with `ctr`, containerd's own client (`pull`);
//!   when no registry answers, the task fails with [`RuntimeError::ImageUnavailable`] naming
//!   the image, what went wrong, and how to import it instead;
//! - no CNI: `Bridge` and `Host` tasks share the host's network and bind the host ports they
//!   are given (no port mapping); `None` gets an isolated network namespace.
//!
//! A task sees its sandbox at [`SANDBOX_MOUNT`] (`/mnt/mesos/sandbox`, bind-mounted
//! read-write, as Mesos' docker containerizer does), where `MESOS_SANDBOX` and
//! `MARINA_SANDBOX` point; its working directory stays the image's.
//!
//! A task's output is `stdout` and `stderr` in its sandbox. With
//! [`ContainerdConfig::log_binary`] set (the agent sets it to the `marina-supervise` next to
//! it), the shim hands both streams to that binary, which rotates them at
//! [`ContainerdConfig::log_rotation`] as the process runtime does; without it the shim
//! appends to the files itself and nothing bounds them.
//!
//! Also not supported: named image users (`USER nobody`; numeric ones work), a seccomp
//! profile, host devices for privileged tasks, swap limits, `TaskSpec::parameters` (logged
//! and ignored), compressed archives (`docker save | gzip`). Exit statuses: containerd
//! reports a death by signal N as 128 + N, which is mapped to `signal: Some(N)` (a process
//! that itself exits with 129..=192 reads as a signal too); an OOM kill is told by the
//! task's memory cgroup, which lives until `remove`.
//!
//! Modules: [`config`] (settings, finding the socket), `rpc` (namespaced requests, leases,
//! errors), `content` and `archive` and `images` (import, unpack, resolve), `pull`, `spec` (the OCI
//! runtime spec), `tasks` (the lifecycle), `exec` (commands next to a task).

mod archive;
pub mod config;
mod content;
mod exec;
mod images;
mod pull;
mod rpc;
mod spec;
mod tasks;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use marina_runtime::{
    Capabilities, ExecOutput, ExitStatus, ListedTask, LogStream, Runtime, RuntimeError, RuntimeKind, TaskHandle,
    TaskSpec, TaskState,
};

pub use config::{ContainerdConfig, DOCKER_MANAGED_SOCKET, SYSTEM_SOCKET};
pub use images::normalize_reference;
pub use marina_runtime::SANDBOX_MOUNT;

/// The containerd backend. Cheap to share: one gRPC connection, multiplexed.
pub struct ContainerdRuntime {
    /// The connection, scoped to the configured namespace.
    cd: rpc::Containerd,
    config: ContainerdConfig,
    /// The socket that answered (the configured one may not have).
    socket: PathBuf,
    /// containerd's version, for the agent's reports.
    version: String,
}

impl ContainerdRuntime {
    /// Connects to the first containerd that answers: `config.socket`, then
    /// [`SYSTEM_SOCKET`], then [`DOCKER_MANAGED_SOCKET`]. Fails within a few seconds per
    /// socket, naming every socket tried and why it failed.
    pub async fn connect(config: &ContainerdConfig) -> Result<Self, RuntimeError> {
        let connected = config::connect(config).await?;
        let cd = rpc::Containerd::new(connected.channel, &config.namespace)?;
        Ok(ContainerdRuntime { cd, config: config.clone(), socket: connected.socket, version: connected.version })
    }

    /// Loads an image archive (`docker save`'s tar, or an OCI image layout tar) into the
    /// namespace: blobs into the content store, image records under their normalized
    /// names (`docker.io/marina-test/busybox:latest`), layers unpacked into the snapshotter.
    /// Idempotent, and safe to run concurrently with itself. Returns the image names.
    pub async fn import_image(&self, archive: &Path) -> Result<Vec<String>, RuntimeError> {
        self.images().import(archive).await
    }

    /// The socket of the containerd this runtime talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// containerd's version.
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn config(&self) -> &ContainerdConfig {
        &self.config
    }
}

#[async_trait]
impl Runtime for ContainerdRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Containerd
    }

    /// No port mapping and no network isolation for the default (bridge) mode: containerd
    /// has no CNI here, so tasks share the host's network.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            images: true,
            port_mapping: false,
            cpu_limit: true,
            memory_limit: true,
            network_isolation: false,
        }
    }

    async fn ensure_image(&self, image: &str, force_pull: bool) -> Result<(), RuntimeError> {
        let images = self.images();
        if force_pull || !images.present(image).await? {
            pull::pull(&self.config, &self.socket, image).await?;
        }
        images.ready(image).await.map(drop)
    }

    async fn start(&self, spec: &TaskSpec) -> Result<TaskHandle, RuntimeError> {
        self.start_task(spec).await
    }

    async fn inspect(&self, handle: &TaskHandle) -> Result<TaskState, RuntimeError> {
        self.inspect_task(handle).await
    }

    async fn wait(&self, handle: &TaskHandle) -> Result<ExitStatus, RuntimeError> {
        self.wait_task(handle).await
    }

    async fn stop(&self, handle: &TaskHandle, grace: Duration) -> Result<(), RuntimeError> {
        self.stop_task(handle, grace).await
    }

    async fn remove(&self, handle: &TaskHandle) -> Result<(), RuntimeError> {
        self.remove_task(handle).await
    }

    async fn list(&self, labels: &BTreeMap<String, String>) -> Result<Vec<ListedTask>, RuntimeError> {
        self.list_tasks(labels).await
    }

    async fn logs(&self, handle: &TaskHandle, stream: LogStream, tail: Option<usize>) -> Result<Bytes, RuntimeError> {
        self.task_logs(handle, stream, tail).await
    }

    async fn exec(&self, handle: &TaskHandle, argv: &[String], timeout: Duration) -> Result<ExecOutput, RuntimeError> {
        self.exec_in_task(handle, argv, timeout).await
    }
}
