//! Commands run inside a task's container (command health checks): an extra process in the
//! task, made from the container's own process spec (same user, environment, capabilities)
//! with other arguments. Its stdout and stderr go to one file the shim appends to; the file
//! is complete once the process is deleted (the shim finishes copying before it answers).

use std::path::Path;
use std::time::Duration;

use containerd_client::services::v1::{DeleteProcessRequest, ExecProcessRequest, StartRequest};
use marina_runtime::{ExecOutput, RuntimeError, TaskHandle};
use prost_types::Any;

use crate::ContainerdRuntime;
use crate::rpc::{backend_error, is_not_found, rpc_error, unique_id};
use crate::tasks::{Killed, SIGKILL};

/// The type containerd and its shims decode an exec's process spec as (JSON).
const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
/// How long a process killed at the timeout gets to go before we stop waiting for it.
const REAP_TIMEOUT: Duration = Duration::from_secs(10);

impl ContainerdRuntime {
    pub(crate) async fn exec_in_task(
        &self,
        handle: &TaskHandle,
        argv: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        if argv.is_empty() {
            return Err(RuntimeError::InvalidSpec("exec: the command is empty".to_owned()));
        }
        let id = &handle.id;
        let container =
            self.container(id).await?.ok_or_else(|| RuntimeError::NotFound { task_id: handle.task_id.clone() })?;
        let spec = container.spec.ok_or_else(|| backend_error(format!("exec {id}: the container has no spec")))?;
        let mut spec: serde_json::Value = serde_json::from_slice(&spec.value)
            .map_err(|e| backend_error(format!("exec {id}: the container's spec: {e}")))?;
        let mut process = spec["process"].take();
        if !process.is_object() {
            return Err(backend_error(format!("exec {id}: the container's spec has no process")));
        }
        process["args"] = serde_json::json!(argv);
        process["terminal"] = serde_json::json!(false);

        let dir = match &self.config.state_dir {
            Some(dir) => dir.join("exec"),
            None => self.task_data(handle).await?.sandbox.join(".marina-exec"),
        };
        let exec_id = unique_id("marina-exec");
        let output = std::path::absolute(dir.join(format!("{exec_id}.out")))
            .map_err(|e| backend_error(format!("exec {id}: output path: {e}")))?;
        let io = |e: std::io::Error| backend_error(format!("exec {id}: output file {}: {e}", output.display()));
        tokio::fs::create_dir_all(&dir).await.map_err(io)?;
        tokio::fs::File::create(&output).await.map_err(io)?;

        let result = self.run_exec(id, &exec_id, &output, process, timeout).await;
        let text = tokio::fs::read(&output).await;
        if let Err(e) = tokio::fs::remove_file(&output).await {
            tracing::debug!(file = %output.display(), error = %e, "could not remove an exec output file");
        }
        let status = result?;
        Ok(ExecOutput { status, output: text.map_err(io)?.into() })
    }

    /// Creates, starts and waits for the exec process, and always deletes it (which also
    /// flushes its output).
    async fn run_exec(
        &self,
        id: &str,
        exec_id: &str,
        output: &Path,
        process: serde_json::Value,
        timeout: Duration,
    ) -> Result<marina_runtime::ExitStatus, RuntimeError> {
        let cd = &self.cd;
        let path = output.to_string_lossy().into_owned();
        let exec = ExecProcessRequest {
            container_id: id.to_owned(),
            stdin: String::new(),
            stdout: path.clone(),
            stderr: path,
            terminal: false,
            spec: Some(Any { type_url: PROCESS_TYPE_URL.to_owned(), value: process.to_string().into_bytes() }),
            exec_id: exec_id.to_owned(),
        };
        cd.tasks().exec(cd.request(exec)).await.map_err(|s| {
            if is_not_found(&s) {
                backend_error(format!("exec in {id}: the task is not running"))
            } else {
                rpc_error("task exec", id, &s)
            }
        })?;

        let ran = tokio::time::timeout(timeout, async {
            let start = StartRequest { container_id: id.to_owned(), exec_id: exec_id.to_owned() };
            cd.tasks()
                .start(cd.request(start))
                .await
                .map_err(|s| rpc_error("exec start", &format!("{id}/{exec_id}"), &s))?;
            self.wait_process(id, exec_id).await.map_err(|s| rpc_error("exec wait", &format!("{id}/{exec_id}"), &s))
        })
        .await;
        let result = match ran {
            Ok(Ok(exited)) => Ok(self.exec_exit_status(exited.exit_status)),
            Ok(Err(error)) => Err(error),
            Err(_) => {
                if let Ok(Killed::Sent) = self.kill(id, exec_id, SIGKILL, false).await {
                    let _ = tokio::time::timeout(REAP_TIMEOUT, self.wait_process(id, exec_id)).await;
                }
                Err(RuntimeError::Timeout { operation: "exec", after: timeout })
            }
        };
        let delete = DeleteProcessRequest { container_id: id.to_owned(), exec_id: exec_id.to_owned() };
        if let Err(status) = cd.tasks().delete_process(cd.request(delete)).await
            && !is_not_found(&status)
        {
            tracing::warn!(container = %id, %exec_id, error = %status.message(), "could not delete an exec process");
        }
        result
    }

    /// An exec's status: signal deaths as 128 + N, like the task's (no OOM check: the task's
    /// cgroup outlives the exec, so its count says nothing about this process).
    fn exec_exit_status(&self, status: u32) -> marina_runtime::ExitStatus {
        if status > 128 && status < 128 + 65 {
            marina_runtime::ExitStatus { code: None, signal: Some((status - 128) as i32), oom_killed: false }
        } else {
            marina_runtime::ExitStatus { code: Some(status as i32), signal: None, oom_killed: false }
        }
    }
}
