//! Several runtimes as one, as a Mesos agent ran `--containerizers=docker,mesos`: image
//! tasks go to the image runtime (Docker or containerd), bare commands to the one that runs
//! host processes; everything about a running task goes to the runtime its handle names, so
//! checkpoints, re-adoption after a restart and reconciliation work across all of them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::{
    Capabilities, ExecOutput, ExitStatus, ListedTask, LogStream, Result, Runtime, RuntimeError, RuntimeKind,
    TaskAddresses, TaskHandle, TaskSpec, TaskState,
};

/// One image runtime at most, and one for commands at most (the agent's configuration
/// checks that).
pub struct RuntimeSet {
    members: Vec<Arc<dyn Runtime>>,
}

impl RuntimeSet {
    /// `members` in order of preference; the first is the set's [`Runtime::kind`].
    pub fn new(members: Vec<Arc<dyn Runtime>>) -> Self {
        assert!(!members.is_empty(), "a runtime set has at least one runtime");
        RuntimeSet { members }
    }

    /// The runtime that runs `spec`: an image task on one that runs images, a command on one
    /// that runs host processes.
    fn for_spec(&self, spec: &TaskSpec) -> Result<&Arc<dyn Runtime>> {
        let images = spec.image.is_some();
        self.members.iter().find(|member| member.capabilities().images == images).ok_or_else(|| {
            let kinds: Vec<&str> = self.members.iter().map(|member| member.kind().as_str()).collect();
            let reason = if images {
                format!(
                    "task {} has an image, and none of this agent's runtimes ({}) runs images",
                    spec.task_id,
                    kinds.join(", ")
                )
            } else {
                format!(
                    "task {} is a bare command, and none of this agent's runtimes ({}) runs host processes",
                    spec.task_id,
                    kinds.join(", ")
                )
            };
            RuntimeError::Unsupported { runtime: self.members[0].kind(), reason }
        })
    }

    fn for_image(&self) -> Result<&Arc<dyn Runtime>> {
        self.members.iter().find(|member| member.capabilities().images).ok_or_else(|| RuntimeError::Unsupported {
            runtime: self.members[0].kind(),
            reason: "none of this agent's runtimes runs images".into(),
        })
    }

    /// The runtime that started the task of `handle`.
    fn for_handle(&self, handle: &TaskHandle) -> Result<&Arc<dyn Runtime>> {
        self.members
            .iter()
            .find(|member| member.kind() == handle.runtime)
            .ok_or_else(|| RuntimeError::NotFound { task_id: handle.task_id.clone() })
    }
}

#[async_trait]
impl Runtime for RuntimeSet {
    fn kind(&self) -> RuntimeKind {
        self.members[0].kind()
    }

    fn kinds(&self) -> Vec<RuntimeKind> {
        self.members.iter().map(|member| member.kind()).collect()
    }

    fn capabilities(&self) -> Capabilities {
        self.members.iter().map(|member| member.capabilities()).fold(Capabilities::default(), |all, one| Capabilities {
            images: all.images || one.images,
            port_mapping: all.port_mapping || one.port_mapping,
            cpu_limit: all.cpu_limit || one.cpu_limit,
            memory_limit: all.memory_limit || one.memory_limit,
            network_isolation: all.network_isolation || one.network_isolation,
        })
    }

    async fn ensure_image(&self, image: &str, force_pull: bool) -> Result<()> {
        self.for_image()?.ensure_image(image, force_pull).await
    }

    async fn start(&self, spec: &TaskSpec) -> Result<TaskHandle> {
        self.for_spec(spec)?.start(spec).await
    }

    async fn inspect(&self, handle: &TaskHandle) -> Result<TaskState> {
        self.for_handle(handle)?.inspect(handle).await
    }

    async fn addresses(&self, handle: &TaskHandle) -> Result<TaskAddresses> {
        self.for_handle(handle)?.addresses(handle).await
    }

    async fn wait(&self, handle: &TaskHandle) -> Result<ExitStatus> {
        self.for_handle(handle)?.wait(handle).await
    }

    async fn stop(&self, handle: &TaskHandle, grace: Duration) -> Result<()> {
        self.for_handle(handle)?.stop(handle, grace).await
    }

    async fn remove(&self, handle: &TaskHandle) -> Result<()> {
        self.for_handle(handle)?.remove(handle).await
    }

    async fn list(&self, labels: &BTreeMap<String, String>) -> Result<Vec<ListedTask>> {
        let mut listed = Vec::new();
        for member in &self.members {
            listed.extend(member.list(labels).await?);
        }
        Ok(listed)
    }

    async fn logs(&self, handle: &TaskHandle, stream: LogStream, tail: Option<usize>) -> Result<Bytes> {
        self.for_handle(handle)?.logs(handle, stream, tail).await
    }

    async fn exec(&self, handle: &TaskHandle, argv: &[String], timeout: Duration) -> Result<ExecOutput> {
        self.for_handle(handle)?.exec(handle, argv, timeout).await
    }
}
