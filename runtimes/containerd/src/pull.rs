//! Pulling images. containerd 1.6 has no pull service: clients resolve, fetch and unpack
//! images themselves. Marina's client for that is `ctr`, shipped with containerd and
//! maintained with it (registry resolution, authentication, TLS, platform selection), so
//! none of it is compiled into the agent. Registries on the loopback (`localhost`,
//! `127.0.0.1`, `[::1]`) are spoken to over plain HTTP, as Docker does.

use std::path::Path;
use std::time::Duration;

use marina_runtime::RuntimeError;

use crate::config::ContainerdConfig;
use crate::images::normalize_reference;

/// The last lines of `ctr`'s output kept in an error.
const ERROR_LINES: usize = 3;

/// Pulls `reference` into `config.namespace` and unpacks it, within `config.pull_timeout_secs`.
pub async fn pull(config: &ContainerdConfig, socket: &Path, reference: &str) -> Result<(), RuntimeError> {
    let normalized = normalize_reference(reference);
    let unavailable = |reason: String| RuntimeError::ImageUnavailable { image: reference.to_owned(), reason };
    let mut command = tokio::process::Command::new(&config.ctr);
    command.arg("--address").arg(socket).args([
        "--namespace",
        &config.namespace,
        "images",
        "pull",
        "--snapshotter",
        &config.snapshotter,
    ]);
    if is_loopback_registry(&normalized) {
        command.arg("--plain-http");
    }
    command.arg(&normalized).stdin(std::process::Stdio::null()).kill_on_drop(true);
    tracing::info!(image = %normalized, "pulling");
    let timeout = Duration::from_secs(config.pull_timeout_secs);
    let output = match tokio::time::timeout(timeout, command.output()).await {
        Err(_elapsed) => {
            return Err(unavailable(format!("pulling {normalized} did not finish within {timeout:?}")));
        }
        Ok(Err(error)) => {
            return Err(unavailable(format!(
                "cannot pull {normalized}: running {} (containerd's client) failed: {error}; \
                 install it or import the image (`ctr -n {} images import image.tar`)",
                config.ctr.display(),
                config.namespace
            )));
        }
        Ok(Ok(output)) => output,
    };
    if output.status.success() {
        return Ok(());
    }
    // ctr ends with its own `ctr: <error>` line; before it come progress and retry logs.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|line| !line.trim().is_empty()).collect();
    let tail = match lines.iter().rev().find(|line| line.starts_with("ctr: ")) {
        Some(error) => error.trim_start_matches("ctr: ").to_owned(),
        None => lines[lines.len().saturating_sub(ERROR_LINES)..].join(" / "),
    };
    Err(unavailable(format!(
        "pulling {normalized} failed ({}): {tail}; without a registry, import it: `docker save {reference} -o \
         image.tar` then `ctr -n {} images import image.tar`",
        output.status, config.namespace
    )))
}

/// Whether the reference's registry is on this machine's loopback.
fn is_loopback_registry(normalized: &str) -> bool {
    let host = normalized.split('/').next().unwrap_or_default();
    let host =
        host.rsplit_once(':').filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit())).map_or(host, |(h, _)| h);
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_registries_are_plain_http() {
        assert!(is_loopback_registry("127.0.0.1:5000/team/app:1"));
        assert!(is_loopback_registry("localhost/app:1"));
        assert!(is_loopback_registry("[::1]:5000/app:1"));
        assert!(!is_loopback_registry("docker.io/library/busybox:latest"));
        assert!(!is_loopback_registry("registry.example.com:5000/app:1"));
    }
}
