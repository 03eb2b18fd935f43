//! Choosing the runtimes: the configured ones, or with `auto` every one that answers — an
//! image runtime (Docker, else containerd) and host processes for commands. `sim` is only
//! ever explicit. Several runtimes run as one [`RuntimeSet`].

use std::sync::Arc;

use marina_runtime::{Runtime, RuntimeSet};
use marina_runtime_containerd::{ContainerdConfig, ContainerdRuntime};
use marina_runtime_docker::{DockerConfig, DockerRuntime};
use marina_runtime_process::{ProcessConfig, ProcessRuntime};
use marina_runtime_sim::{SimConfig, SimRuntime};

use crate::AgentError;
use crate::config::{Config, RuntimeChoice};

pub async fn select(config: &Config) -> Result<Arc<dyn Runtime>, AgentError> {
    let mut members: Vec<Arc<dyn Runtime>> = Vec::new();
    for choice in &config.runtime.0 {
        match choice {
            RuntimeChoice::Docker => members.push(Arc::new(docker(config).await?)),
            RuntimeChoice::Containerd => members.push(Arc::new(containerd(config).await?)),
            RuntimeChoice::Process => members.push(Arc::new(process(config)?)),
            RuntimeChoice::Sim => members.push(Arc::new(SimRuntime::new(SimConfig::default()))),
            RuntimeChoice::Auto => {
                match docker(config).await {
                    Ok(runtime) => members.push(Arc::new(runtime)),
                    Err(error) => {
                        tracing::info!(%error, "runtime auto: Docker is not available");
                        match containerd(config).await {
                            Ok(runtime) => members.push(Arc::new(runtime)),
                            Err(error) => tracing::info!(%error, "runtime auto: containerd is not available"),
                        }
                    }
                }
                members.push(Arc::new(process(config)?));
            }
        }
    }
    let kinds: Vec<&str> = members.iter().map(|member| member.kind().as_str()).collect();
    tracing::info!(runtimes = %kinds.join(","), "runtimes");
    if members.len() == 1 {
        return Ok(members.remove(0));
    }
    Ok(Arc::new(RuntimeSet::new(members)))
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
