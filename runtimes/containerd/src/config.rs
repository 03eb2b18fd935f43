//! Where containerd is and how Marina uses it, and finding a containerd that answers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_client::services::v1::version_client::VersionClient;
use marina_runtime::{LogRotation, RuntimeError, RuntimeKind};
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

/// containerd's own socket, where a Docker Engine was started against a system containerd
/// (and where a hand-started `containerd` listens).
pub const SYSTEM_SOCKET: &str = "/run/containerd/containerd.sock";
/// The socket of the containerd a Docker Engine manages itself
/// (`/var/run` is a link to `/run`).
pub const DOCKER_MANAGED_SOCKET: &str = "/run/docker/containerd/containerd.sock";

/// How long one socket gets to answer a version call before the next one is tried: an agent
/// that falls back to another runtime must not wait on a dead socket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The containerd backend's settings; every field has a working default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerdConfig {
    /// containerd's gRPC socket. Tried first; then (with `discover`) [`SYSTEM_SOCKET`] and
    /// [`DOCKER_MANAGED_SOCKET`], so one config works on hosts of either kind.
    pub socket: Option<PathBuf>,
    /// Whether to try the well-known sockets after `socket`. Off: only `socket` is tried
    /// (an operator who named a socket may want that one or none).
    pub discover: bool,
    /// The containerd namespace Marina's images, containers and tasks live in, apart from
    /// Docker's (`moby`) and anyone else's.
    pub namespace: String,
    /// The snapshotter images are unpacked into and container root filesystems come from.
    pub snapshotter: String,
    /// The runtime (shim) tasks run under.
    pub runtime: String,
    /// Where `exec` output files are written while a command runs. containerd's shim opens
    /// them by path, so this must be a path the shim sees as we do (same host, same mount
    /// namespace). `None`: a `.marina-exec` folder in the task's sandbox.
    pub state_dir: Option<PathBuf>,
    /// `ctr`, containerd's own client, which pulls images (containerd 1.6 pulls client-side:
    /// it has no pull service). A bare name is looked up in `PATH`.
    pub ctr: PathBuf,
    /// How long a pull may take before it is given up (so an unreachable registry fails the
    /// task with a clear message instead of hanging it).
    pub pull_timeout_secs: u64,
    /// `marina-supervise`, run by containerd's shim as each task's logging binary (stdio
    /// `binary://`), so a task's `stdout` and `stderr` rotate at `log_rotation` as a
    /// process task's do. An absolute path the shim can execute (same host, same mount
    /// namespace). `None`: the shim appends to the files itself, unrotated.
    pub log_binary: Option<PathBuf>,
    /// How a task's `stdout` and `stderr` rotate when `log_binary` is set.
    pub log_rotation: LogRotation,
}

impl Default for ContainerdConfig {
    fn default() -> Self {
        ContainerdConfig {
            socket: None,
            discover: true,
            namespace: "marina".to_owned(),
            snapshotter: "overlayfs".to_owned(),
            runtime: "io.containerd.runc.v2".to_owned(),
            state_dir: None,
            ctr: PathBuf::from("ctr"),
            pull_timeout_secs: 300,
            log_binary: None,
            log_rotation: LogRotation::default(),
        }
    }
}

impl ContainerdConfig {
    /// The sockets a connection tries, in order, without duplicates.
    pub fn candidate_sockets(&self) -> Vec<PathBuf> {
        let mut sockets: Vec<PathBuf> = Vec::new();
        let defaults = if self.discover || self.socket.is_none() {
            vec![Path::new(SYSTEM_SOCKET), Path::new(DOCKER_MANAGED_SOCKET)]
        } else {
            vec![]
        };
        for socket in self.socket.as_deref().into_iter().chain(defaults) {
            if !sockets.iter().any(|known| known == socket) {
                sockets.push(socket.to_path_buf());
            }
        }
        sockets
    }

    /// Refuses settings containerd would refuse later, with a message naming the field.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        for (field, value) in
            [("namespace", &self.namespace), ("snapshotter", &self.snapshotter), ("runtime", &self.runtime)]
        {
            if value.is_empty() {
                return Err(RuntimeError::InvalidSpec(format!("containerd config: `{field}` is empty")));
            }
        }
        if let Some(binary) = self.log_binary.as_deref().filter(|binary| !binary.is_absolute()) {
            return Err(RuntimeError::InvalidSpec(format!(
                "containerd config: log_binary {} is not an absolute path (the shim runs it from its own directory)",
                binary.display()
            )));
        }
        // containerd's identifier rule, and a value that travels as gRPC metadata.
        if !crate::spec::is_valid_identifier(&self.namespace) {
            return Err(RuntimeError::InvalidSpec(format!(
                "containerd config: namespace {:?} is not a valid containerd identifier \
                 (letters and digits, separated by single '.', '_' or '-')",
                self.namespace
            )));
        }
        Ok(())
    }
}

/// A containerd that answered: its channel, where it is and its version.
pub(crate) struct Connected {
    pub channel: Channel,
    pub socket: PathBuf,
    pub version: String,
}

/// Connects to the first candidate socket whose containerd answers a version call.
pub(crate) async fn connect(config: &ContainerdConfig) -> Result<Connected, RuntimeError> {
    config.validate()?;
    let mut failures = Vec::new();
    for socket in config.candidate_sockets() {
        match tokio::time::timeout(CONNECT_TIMEOUT, try_socket(&socket)).await {
            Ok(Ok((channel, version))) => {
                tracing::info!(socket = %socket.display(), %version, "connected to containerd");
                return Ok(Connected { channel, socket, version });
            }
            Ok(Err(reason)) => failures.push(format!("{}: {reason}", socket.display())),
            Err(_) => failures.push(format!("{}: no answer within {CONNECT_TIMEOUT:?}", socket.display())),
        }
    }
    Err(RuntimeError::backend(
        RuntimeKind::Containerd,
        format!("no containerd answered on any socket tried ({})", failures.join("; ")),
    ))
}

async fn try_socket(socket: &Path) -> Result<(Channel, String), String> {
    if !socket.exists() {
        return Err("no such socket".to_owned());
    }
    let channel = containerd_client::connect(socket).await.map_err(|e| format!("connect: {e}"))?;
    let version = VersionClient::new(channel.clone())
        .version(())
        .await
        .map_err(|status| format!("version: {}", status.message()))?
        .into_inner();
    Ok((channel, version.version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_socket_comes_first_and_defaults_follow_without_duplicates() {
        let config = ContainerdConfig { socket: Some(DOCKER_MANAGED_SOCKET.into()), ..Default::default() };
        assert_eq!(
            config.candidate_sockets(),
            vec![PathBuf::from(DOCKER_MANAGED_SOCKET), PathBuf::from(SYSTEM_SOCKET)]
        );
        assert_eq!(
            ContainerdConfig::default().candidate_sockets(),
            vec![PathBuf::from(SYSTEM_SOCKET), PathBuf::from(DOCKER_MANAGED_SOCKET)]
        );
        let only = ContainerdConfig { socket: Some("/x.sock".into()), discover: false, ..Default::default() };
        assert_eq!(only.candidate_sockets(), vec![PathBuf::from("/x.sock")]);
    }

    #[test]
    fn a_namespace_containerd_would_refuse_is_refused_early() {
        let config = ContainerdConfig { namespace: "bad namespace".into(), ..Default::default() };
        assert!(matches!(config.validate(), Err(RuntimeError::InvalidSpec(_))));
        ContainerdConfig::default().validate().expect("defaults are valid");
        let relative = ContainerdConfig { log_binary: Some("marina-supervise".into()), ..Default::default() };
        assert!(matches!(relative.validate(), Err(RuntimeError::InvalidSpec(m)) if m.contains("log_binary")));
    }
}
