//! What every Marina service does alike, in one place so the services stay small:
//!
//! - [`config`]: defaults < TOML file (`--config`) < `MARINA_<SERVICE>_*` environment < flags,
//!   merged with figment, validated by the service, printable with `--print-config`;
//! - [`telemetry`]: `tracing` logs as text or JSON;
//! - [`endpoint`]: one port serving gRPC (the service's API, `grpc.health.v1`, server
//!   reflection) and HTTP (`/metrics`, `/health`, the service's JSON endpoints);
//! - [`metrics`]: a Prometheus registry per service instance with RED metrics per request;
//! - [`shutdown`]: SIGTERM/SIGINT handling and a bounded drain;
//! - [`leader`]: how a non-leader tells a client where the leader is;
//! - [`link`]: links to peers, made alike so each notices a dead peer the same way;
//! - [`record`]: CRC-framed records for append-only files;
//! - [`tls`]: mutual TLS, identities from certificates, the cluster CA (`marina certs`);
//! - [`time`]: deadlines and durations from untrusted numbers, saturating;
//! - [`Allocator`]: the global allocator of the control plane's binaries.

pub mod cli;
pub mod config;
pub mod endpoint;
pub mod ids;
pub mod leader;
pub mod link;
mod metrics;
pub mod record;
pub mod shutdown;
pub mod stream;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod trace;

/// The allocator the control plane's binaries install (`#[global_allocator]` in the
/// `main.rs` of coord, the master and the gateway; the agent keeps the system allocator for
/// its footprint). Every request, status update and Raft entry allocates, from several
/// threads at once: glibc's allocator spent a tenth of a coord node's CPU under load, and in
/// the placement benchmark (100,000 tasks, every service in one process) its consolidation
/// of freed chunks was among the largest costs; with mimalloc that benchmark went from
/// 3,400–4,300 to 5,800–6,700 tasks/s. The price is memory: a master leading 1,001 agents
/// went from 54 to 85 MB resident. Version 2: version 3 kept freed pages longer (a coord node
/// holding 100,000 keys: 119 MB resident with version 2, 185 MB with 3, 94 MB with glibc).
pub use mimalloc::MiMalloc as Allocator;

pub use endpoint::{Endpoint, Health, Port, ServerLimits};
pub use metrics::Metrics;
pub use shutdown::Shutdown;

/// The Marina release every binary reports (in status, metrics and `--version`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// An error with its causes, `outer: inner: innermost`: HTTP clients keep the cause out of
/// their own message (`error sending request`, `client error (Connect)` say nothing of a
/// refused connection or a certificate).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
