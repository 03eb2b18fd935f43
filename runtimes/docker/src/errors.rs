//! Folding bollard's errors into the trait's [`RuntimeError`].
//!
//! The agent only branches on a few kinds (not found, image unavailable, invalid spec); all
//! else is a `Backend` error whose message says which operation on which container failed,
//! because "Docker responded with status code 500" alone is useless in an agent's log.

use bollard::errors::Error as DockerError;
use marina_runtime::{RuntimeError, RuntimeKind};

/// The HTTP status the engine answered with, when it answered at all.
pub(crate) fn status(err: &DockerError) -> Option<u16> {
    match err {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The engine does not know the container, image or exec.
pub(crate) fn is_not_found(err: &DockerError) -> bool {
    status(err) == Some(404)
}

/// The engine refused because of the object's state (e.g. killing an exited container).
pub(crate) fn is_conflict(err: &DockerError) -> bool {
    status(err) == Some(409)
}

/// The engine itself answered (as opposed to a socket, timeout or decoding failure).
pub(crate) fn engine_answered(err: &DockerError) -> bool {
    matches!(err, DockerError::DockerResponseServerError { .. } | DockerError::DockerStreamError { .. })
}

/// A `Backend` error naming the operation and its target.
pub(crate) fn backend(operation: &str, target: &str, err: DockerError) -> RuntimeError {
    RuntimeError::backend(RuntimeKind::Docker, format!("{operation} {target}: {}", describe(&err)))
}

/// The engine's own message when it sent one, bollard's description otherwise.
pub(crate) fn describe(err: &DockerError) -> String {
    match err {
        DockerError::DockerResponseServerError { status_code, message } => {
            format!("the engine answered {status_code}: {}", message.trim())
        }
        DockerError::DockerStreamError { error } => format!("the engine reported: {}", error.trim()),
        DockerError::RequestTimeoutError => "the engine did not answer in time".to_owned(),
        other => with_causes(other),
    }
}

/// An error and its causes: bollard's own message for a socket failure ("client error
/// (Connect)") only says *why* (connection refused, permission denied) in its sources.
fn with_causes(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut cause = err.source();
    while let Some(inner) = cause {
        let text = inner.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        cause = inner.source();
    }
    message
}
