//! Where Marina's services meet in coord: every directory one service writes and another
//! reads, below the cluster's coord root (`--coord ...?root=/marina`). One home, so a
//! service that finds the masters, or a tool that lists the gateways, cannot drift from the
//! service that writes there.
//!
//! ```text
//! /master/members/<member>             masters' election (ephemeral, sequential): the
//!                                      lowest leads; its data is the leader's MemberInfo
//! /master/registry/agents/<agent id>   agents the leading master admitted (AgentInfo)
//! /master/frameworks/<framework id>    frameworks the master knows (FrameworkInfo)
//! /gateway/members/<member>            gateways' election, as the masters'
//! /gateway/framework                   the framework id the master gave the gateways
//! /gateway/apps/<app>                  each app's current definition (Marathon JSON)
//! /gateway/versions/<app>/<version>    every stored version of each app
//! /gateway/deployments/<id>            deployments in progress
//! /gateway/instances/<task id>         every task launched and not yet gone
//! ```

/// The masters' election directory: agents and gateways find the leading master here.
pub const MASTER_ELECTION_DIR: &str = "/master/members";
/// The agents the leading master admitted, one node each.
pub const MASTER_AGENTS_DIR: &str = "/master/registry/agents";
/// The frameworks the master knows, one node each.
pub const MASTER_FRAMEWORKS_DIR: &str = "/master/frameworks";

/// The gateways' election directory: a standby gateway finds the leader here.
pub const GATEWAY_ELECTION_DIR: &str = "/gateway/members";
/// The framework id the master gave the gateways.
pub const GATEWAY_FRAMEWORK: &str = "/gateway/framework";
/// Each app's current definition.
pub const GATEWAY_APPS: &str = "/gateway/apps";
/// Every stored version of each app.
pub const GATEWAY_VERSIONS: &str = "/gateway/versions";
/// Deployments in progress.
pub const GATEWAY_DEPLOYMENTS: &str = "/gateway/deployments";
/// Every task the gateway launched and has not seen gone.
pub const GATEWAY_INSTANCES: &str = "/gateway/instances";
/// Each app's last task failure (Marathon's `lastTaskFailure`), kept across failovers.
pub const GATEWAY_FAILURES: &str = "/gateway/failures";
/// Every group that exists (Marathon's group tree), one node each: its id, dependencies and
/// version (`_` is the root's node: no group id makes it).
pub const GATEWAY_GROUPS: &str = "/gateway/groups";
/// The changes of the group tree, one node per version of the root (the newest kept): what
/// each change did to apps and groups, so the tree at any kept version can be rebuilt
/// (group versions and rollbacks).
pub const GATEWAY_GROUP_VERSIONS: &str = "/gateway/groupversions";
