//! The bodies of Marina's fuzz targets, as plain functions of the input bytes.
//!
//! `fuzz/` (cargo-fuzz, nightly, outside the workspace) has one `fuzz_target!` per function
//! here; `scripts/fuzz [SECONDS]` runs them all. On stable, `tests/corpus.rs` replays every
//! committed input (`fuzz/corpus/<target>/`) and every crash found and fixed
//! (`fuzz/artifacts/<target>/`) through the same functions, so CI keeps them passing.
//!
//! Each function must never panic, on any input. Beyond not crashing, each asserts what its
//! decoder promises: accepted values survive the way they are stored (an app re-serializes
//! and reads back as itself; a record re-encodes to a fixed point), recovery refuses damage
//! without touching it, and what validation accepts is safe for the code behind it.
//!
//! Every target calls the services' own code for what a door checks (where it was private,
//! it is public now), so a fix reaches the fuzzer by itself.

pub mod agent;
pub mod coord;
pub mod gateway;
pub mod master;
pub mod support;

pub use agent::{agent_journal, agent_master_messages};
pub use coord::{coord_log_record, coord_log_segment, coord_raft_messages, coord_requests, coord_snapshot};
pub use gateway::{app_group, app_ids, app_json, app_update, rest_query};
pub use master::{master_agent_messages, master_scheduler_requests};

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target, by the name of its `fuzz/fuzz_targets/<name>.rs` and `fuzz/corpus/<name>/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("app_json", app_json),
    ("app_update", app_update),
    ("app_group", app_group),
    ("app_ids", app_ids),
    ("rest_query", rest_query),
    ("coord_log_record", coord_log_record),
    ("coord_log_segment", coord_log_segment),
    ("coord_snapshot", coord_snapshot),
    ("coord_raft_messages", coord_raft_messages),
    ("coord_requests", coord_requests),
    ("agent_journal", agent_journal),
    ("agent_master_messages", agent_master_messages),
    ("master_scheduler_requests", master_scheduler_requests),
    ("master_agent_messages", master_agent_messages),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(target, _)| *target == name).map(|(_, body)| *body)
}
