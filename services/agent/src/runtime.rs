//! Choosing the runtime: the configured one, or with `auto` the first engine that answers —
//! Docker, then containerd — falling back to host processes. `sim` is only ever explicit.

use std::sync::Arc;

use marina_runtime::Runtime;
use marina_runtime_containerd::{ContainerdConfig, ContainerdRuntime};
use marina_runtime_docker::{DockerConfig, DockerRuntime};
use marina_runtime_process::{ProcessConfig, ProcessRuntime};
use marina_runtime_sim::{SimConfig, SimRuntime};

use crate::AgentError;
use crate::config::{Config, RuntimeChoice};

pub async fn select(config: &Config) -> Result<Arc<dyn Runtime>, AgentError> {
    match config.runtime {
        RuntimeChoice::Docker => Ok(Arc::new(docker(config).await?)),
        RuntimeChoice::Containerd => Ok(Arc::new(containerd(config).await?)),
        RuntimeChoice::Process => Ok(Arc::new(process(config)?)),
        RuntimeChoice::Sim => Ok(Arc::new(SimRuntime::new(SimConfig::default()))),
        RuntimeChoice::Auto => {
            match docker(config).await {
                Ok(runtime) => return Ok(Arc::new(runtime)),
                Err(error) => tracing::info!(%error, "runtime auto: Docker is not available"),
            }
            match containerd(config).await {
                Ok(runtime) => return Ok(Arc::new(runtime)),
                Err(error) => tracing::info!(%error, "runtime auto: containerd is not available"),
            }
            tracing::info!("runtime auto: running tasks as host processes");
            Ok(Arc::new(process(config)?))
        }
    }
}

async fn docker(config: &Config) -> Result<DockerRuntime, AgentError> {
    let docker = DockerConfig {
        socket: config.docker.socket.clone(),
        log_rotation: Some(config.task_logs.rotation()),
        ..DockerConfig::default()
    };
    Ok(DockerRuntime::connect(&docker).await?)
}

async fn containerd(config: &Config) -> Result<ContainerdRuntime, AgentError> {
    // The shim hands each task's output to `marina-supervise`, which rotates it; without it
    // (not shipped next to the agent) the shim writes the files itself, unrotated.
    let log_binary = match marina_runtime_process::default_supervisor() {
        Ok(binary) => std::path::absolute(&binary).ok(),
        Err(error) => {
            tracing::warn!(%error, "containerd tasks' output will not be rotated");
            None
        }
    };
    let containerd = ContainerdConfig {
        socket: config.containerd.socket.clone(),
        namespace: config.containerd.namespace.clone(),
        log_binary,
        log_rotation: config.task_logs.rotation(),
        ..ContainerdConfig::default()
    };
    Ok(ContainerdRuntime::connect(&containerd).await?)
}

fn process(config: &Config) -> Result<ProcessRuntime, AgentError> {
    let process = ProcessConfig {
        log_rotation: config.task_logs.rotation(),
        ..ProcessConfig::new(config.work_dir.join("process"))?
    };
    Ok(ProcessRuntime::new(process)?)
}
