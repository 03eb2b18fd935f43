//! Marathon's app definition, as the gateway reads, checks, changes, stores and writes it.
//!
//! Compatibility is the point: any app JSON a Marathon client, CLI or script sends, from the
//! 2014 era (`"instances": "1"`, `"container": {"image": "docker:///libmesos/ubuntu"}`) to
//! Marathon 1.5 (`networks`, `container.portMappings`), reads into one [`AppDefinition`]
//! with Marathon's defaults; it is written back in Marathon 1.4's shape (canonical fields plus
//! the legacy ones derived from them), which is also the stored form.
//!
//! - [`parse_app`] / [`parse_app_at`]: request body → validated app, or an [`AppError`] that
//!   is Marathon's error response (400 for malformed JSON; 422 with `details` otherwise).
//! - [`validate`]: Marathon's rules, at Marathon's paths (`/cpus`, `/healthChecks(0)`).
//! - [`apply_patch`], [`rollback_version`]: partial updates and rollbacks.
//! - [`config_equal`], [`is_scale_only`], [`stamp`]: versions and what a change means.
//! - [`Constraint::satisfied`]: Marathon's placement constraints, for the scheduler.
//! - [`AppDefinition::assign_service_ports`]: service ports for ports declared `0`.
//! - [`PathId`]: ids, their coord node names and Marathon task ids.
//!
//! Unknown fields are ignored, as Marathon ignores them, so that clients sending fields of a
//! later or earlier Marathon keep working.

mod constraints;
mod decode;
mod definition;
mod lenient;
mod limits;
mod path;
mod policy;
mod service_ports;
mod time;
mod update;
mod validate;
mod violation;

#[cfg(test)]
mod tests;

use serde_json::{Value, json};

pub use constraints::{AgentView, Constraint, Operator, first_unsatisfied};
pub use definition::{
    AppDefinition, CommandCheck, Container, ContainerType, DEFAULT_BACKOFF_FACTOR, DEFAULT_BACKOFF_SECONDS,
    DEFAULT_CPUS, DEFAULT_DISK, DEFAULT_EXPUNGE_AFTER_SECONDS, DEFAULT_GPUS, DEFAULT_INACTIVE_AFTER_SECONDS,
    DEFAULT_INSTANCES, DEFAULT_MAX_LAUNCH_DELAY_SECONDS, DEFAULT_MEM, DockerContainer, DockerNetwork, DockerParameter,
    EnvValue, FetchUri, HealthCheck, HealthCheckProtocol, HttpScheme, IpProtocol, KillSelection,
    LABEL_SINGLE_INSTANCE_APP, Network, NetworkMode, PortDefinition, PortMapping, Protocol, ReadinessCheck,
    UnreachableStrategy, UpgradeStrategy, VersionInfo,
};
pub use limits::AppLimits;
pub use path::{ID_SEGMENT_PATTERN, PathId, PathIdError, RESERVED_KEYWORDS};
pub use policy::check_policy;
pub use service_ports::{SERVICE_PORTS, ServicePortsExhausted};
pub use time::{Timestamp, TimestampError};
pub use update::{apply_patch, config_equal, is_scale_only, rollback_version, stamp};
pub use validate::{MAX_APP_ID_BYTES, MAX_CONSTRAINTS, MAX_ITEMS, validate};
pub use violation::{Violation, invalid_body};

/// Why a request body is not an app: Marathon's error responses.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AppError {
    /// Not JSON at all: HTTP 400.
    #[error("invalid JSON: {0}")]
    MalformedJson(String),
    /// JSON, but not a valid app: HTTP 422 with every problem at its path.
    #[error("invalid app definition: {}", describe(.0))]
    Invalid(Vec<Violation>),
}

impl AppError {
    pub fn status(&self) -> u16 {
        match self {
            AppError::MalformedJson(_) => 400,
            AppError::Invalid(_) => 422,
        }
    }

    /// Marathon 1.x's body for the error:
    /// - malformed JSON: `{"message": "Invalid JSON", "details": "<parser message>"}`;
    /// - fields of the wrong JSON type (Play's `error.*` keys only):
    ///   `{"message": "Invalid JSON", "details": [{"path": ..., "errors": [...]}]}`;
    /// - anything else: `{"message": "Object is not valid", "details": [...]}`.
    pub fn body(&self) -> Value {
        match self {
            AppError::MalformedJson(details) => json!({ "message": "Invalid JSON", "details": details }),
            AppError::Invalid(violations) => {
                let type_errors_only = violations.iter().flat_map(|v| &v.errors).all(|e| e.starts_with("error."));
                if type_errors_only {
                    json!({ "message": "Invalid JSON", "details": violations })
                } else {
                    invalid_body(violations)
                }
            }
        }
    }
}

/// `path: error, error; path: error`, for logs and gRPC messages.
pub fn describe(violations: &[Violation]) -> String {
    let parts: Vec<String> = violations.iter().map(|v| format!("{}: {}", v.path, v.errors.join(", "))).collect();
    parts.join("; ")
}

/// Reads and validates an app from a request body (`POST /v2/apps`, or an app of a group).
/// A relative `id` is taken relative to `base` (the enclosing group; the root if `None`),
/// and relative `dependencies` relative to the app's own group. Within a group (a non-root
/// `base`) the app must be a direct child of it, as in Marathon.
pub fn parse_app(body: &[u8], base: Option<&PathId>) -> Result<AppDefinition, AppError> {
    let base = base.cloned().unwrap_or_default();
    let app = parse(body, &base, None)?;
    let mut violations = validate(&app).err().unwrap_or_default();
    if !base.is_root() && (app.id.is_root() || app.id.parent() != base) {
        let error = format!("Identifier is not child of {base}. Hint: use relative paths.");
        violations.insert(0, Violation::new("/id", error));
    }
    if violations.is_empty() { Ok(app) } else { Err(AppError::Invalid(violations)) }
}

/// Like [`parse_app`], with the id taken from the URL (`PUT /v2/apps/{id}` creating the app);
/// an `id` in the body is ignored.
pub fn parse_app_at(body: &[u8], id: &PathId) -> Result<AppDefinition, AppError> {
    let app = parse(body, &id.parent(), Some(id))?;
    validate(&app).map_err(AppError::Invalid)?;
    Ok(app)
}

/// Reads (without validating) an app from a request body.
fn parse(body: &[u8], base: &PathId, id: Option<&PathId>) -> Result<AppDefinition, AppError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| AppError::MalformedJson(e.to_string()))?;
    decode::decode_app(&value, base, id).map_err(AppError::Invalid)
}
