//! `marina-coord` configuration: defaults < TOML (`--config`) < `MARINA_COORD_*` < flags.

use std::collections::BTreeMap;
use std::path::PathBuf;

use marina_daemon::ServerLimits;
use marina_daemon::config::{ConfigError, check};
use marina_daemon::telemetry::LogConfig;
use marina_daemon::tls::TlsConfig;
use serde::{Deserialize, Serialize};

use crate::store::HistoryLimits;
use crate::types::NodeId;

pub const DEFAULT_PORT: u16 = 2181;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This node's id: unique in the cluster, never reused, > 0.
    pub id: NodeId,
    /// Where to serve gRPC and HTTP.
    pub listen: String,
    /// The address other nodes and clients reach this node at. Default: this node's entry in
    /// `peers`, else `listen`.
    pub advertise: Option<String>,
    /// The initial voters, `id=host:port` separated by commas. A fresh cluster bootstraps
    /// itself once every listed peer answers; a node with data never bootstraps again.
    /// Empty: a single-node cluster.
    pub peers: String,
    /// Raft log, vote and snapshots.
    pub data_dir: PathBuf,
    pub log: LogConfig,
    /// Mutual TLS: the cluster CA, this service's certificate and key (`marina certs`).
    pub tls: TlsConfig,
    pub raft: RaftConfig,
    pub limits: Limits,
    /// What the port bounds (every service has this section). Coord's messages:
    /// `max_decoding_message_bytes` is the largest request (a transaction with all its
    /// values; it must hold the largest node with its path); `max_encoding_message_bytes` the
    /// largest answer. It must hold the answer to the largest request (which repeats the
    /// nodes it wrote); its default is the most it may be, 64 MiB, what Marina's coord client
    /// decodes: `List` has no paging, and a listing of a hundred thousand children (a
    /// gateway's instance records) takes several megabytes. A transaction that reads more is
    /// refused after its writes committed, saying so. A client left at gRPC's default
    /// decoding limit (4 MiB) cannot decode a larger answer; lower this to have the node
    /// refuse such answers itself, naming this key. Watch messages are bounded apart, by
    /// `limits.max_watch_message_bytes`.
    pub server: ServerLimits,
}

/// Coord's defaults for `[server]`: requests of twice the largest default value, answers of
/// what Marina's coord client decodes (as large as answers were before they were bounded,
/// so a gateway's listing of every instance record still fits).
fn default_server() -> ServerLimits {
    ServerLimits {
        max_decoding_message_bytes: 2 << 20,
        max_encoding_message_bytes: MAX_MESSAGE_BYTES_CEILING,
        ..ServerLimits::default()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftConfig {
    /// Leader heartbeat period. Each AppendEntries RPC has `election_timeout_min_ms` to answer
    /// (Marina's openraft patch; stock openraft 0.9 times it out at this interval, which on a
    /// saturated host throws batches away and stalls replication).
    pub heartbeat_ms: u64,
    /// A follower that hears nothing from the leader for a random time in [min, max],
    /// after the leader's lease (openraft: `max`) has run out, starts an election: a lost
    /// leader is replaced `max + [min, max]` after its last heartbeat, 1.5–2 s by default.
    /// Long enough that a host whose CPU is oversubscribed (a large deploy, a noisy
    /// neighbour) delays heartbeats without deposing a healthy leader — with 300–600 the
    /// placement benchmark beside `stress-ng --cpu 2` saw up to 7 elections a run — and
    /// short enough that clients' 5 s sessions outlive a leader change. Session TTLs must
    /// stay well above `2 × max`.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Take a snapshot (and let the log be compacted) after this many entries.
    pub snapshot_every_entries: u64,
    /// Also take one when the un-snapshotted log holds this many bytes in memory.
    pub snapshot_every_bytes: u64,
    /// Entries kept in the log after a snapshot, so slightly lagging followers catch up
    /// from the log rather than by a full snapshot transfer.
    pub keep_entries_after_snapshot: u64,
    /// A write not committed within this time fails with "no quorum".
    pub proposal_timeout_ms: u64,
    /// At most this many concurrent requests share one log entry.
    pub max_batch: usize,
    /// At most this many proposed entries await their commit at once; requests arriving
    /// while the pipeline is full are batched into the next entry. One by default: openraft
    /// sends a follower one message at a time, so a second entry cannot reach the followers
    /// before the first is answered anyway; it only splits the batch (measured: more
    /// throughput with 16 and 64 clients, and no more 50–170 ms write stalls at the p99.9).
    pub max_in_flight: usize,
    /// Linearizable reads rely on a leader lease for half the maximum election timeout
    /// after each quorum confirmation, instead of confirming leadership for every batch of
    /// reads. Safe as long as clocks run at roughly the same rate; a restarted node then
    /// waits out one maximum election timeout before it votes. `false`: every read batch
    /// confirms leadership with a quorum (read-index), whatever the clocks do.
    pub lease_reads: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest node data accepted.
    pub max_value_bytes: usize,
    /// Longest path accepted.
    pub max_path_bytes: usize,
    pub session_ttl_min_ms: u64,
    pub session_ttl_max_ms: u64,
    /// Concurrent watch streams this node serves.
    pub max_watches: usize,
    /// Concurrent watch streams this node serves to one client, so that one runaway client
    /// (a watch leak, a loop) cannot take every slot of `max_watches`. A client is one
    /// connection, named by its peer `ip:port`: every clone of a `CoordClient` shares one
    /// connection per node, while separate processes (and separate `CoordClient`s) have
    /// their own. Clients behind one proxy that multiplexes them over a single connection
    /// share one allowance.
    pub max_watches_per_client: usize,
    /// The largest watch message: a revision larger than this reaches a watcher that takes
    /// fragments (`WatchRequest.fragment`) in several messages, and ends the stream of one
    /// that does not (RESOURCE_EXHAUSTED naming this key). Watches send at most
    /// `min(this, server.max_encoding_message_bytes)`. Its default is what gRPC clients decode
    /// by default in every language (4 MiB), so any client reads every watch message. It
    /// must hold one event of the largest node; at most 64 MiB.
    pub max_watch_message_bytes: usize,
    /// Changes queued for a watch whose client reads slower than they come; past this it
    /// catches up from the history instead (nothing is missed while the history holds it).
    pub watch_queue: usize,
    /// Change history kept for watches to resume from: at most this many revisions...
    pub history_revisions: usize,
    /// ...and at most this many bytes.
    pub history_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            id: 1,
            listen: format!("127.0.0.1:{DEFAULT_PORT}"),
            advertise: None,
            peers: String::new(),
            data_dir: PathBuf::from("/var/lib/marina/coord"),
            log: LogConfig::default(),
            tls: TlsConfig::default(),
            raft: RaftConfig::default(),
            limits: Limits::default(),
            server: default_server(),
        }
    }
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            heartbeat_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            snapshot_every_entries: 10_000,
            snapshot_every_bytes: 64 << 20,
            keep_entries_after_snapshot: 1_000,
            proposal_timeout_ms: 3_000,
            max_batch: 1024,
            max_in_flight: 1,
            lease_reads: true,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        let history = HistoryLimits::default();
        Self {
            max_value_bytes: 1 << 20,
            max_path_bytes: 1024,
            session_ttl_min_ms: 200,
            session_ttl_max_ms: 300_000,
            max_watches: 10_000,
            // A master or gateway opens a handful; a thousand is far past any legitimate
            // client and still leaves most of `max_watches` to the others.
            max_watches_per_client: 1_000,
            max_watch_message_bytes: DEFAULT_MAX_WATCH_MESSAGE_BYTES,
            watch_queue: 1024,
            history_revisions: history.max_revisions,
            history_bytes: history.max_bytes,
        }
    }
}

impl Limits {
    pub fn history(&self) -> HistoryLimits {
        HistoryLimits { max_revisions: self.history_revisions, max_bytes: self.history_bytes }
    }

    /// The smallest message that carries one node of the largest size: its value, its path,
    /// and the fields and framing around them.
    pub fn largest_node_message(&self) -> usize {
        self.max_value_bytes.saturating_add(self.max_path_bytes).saturating_add(MESSAGE_OVERHEAD_BYTES)
    }

    /// The largest watch message this node sends, and the key that sets it:
    /// `min(limits.max_watch_message_bytes, server.max_encoding_message_bytes)` (the watch
    /// key when they are equal).
    pub fn watch_message_bytes(&self, server: &ServerLimits) -> (usize, &'static str) {
        if server.max_encoding_message_bytes < self.max_watch_message_bytes {
            (server.max_encoding_message_bytes, "server.max_encoding_message_bytes")
        } else {
            (self.max_watch_message_bytes, "limits.max_watch_message_bytes")
        }
    }
}

/// The default `limits.max_watch_message_bytes`: what gRPC clients decode by default in
/// every language.
pub const DEFAULT_MAX_WATCH_MESSAGE_BYTES: usize = 4 << 20;

/// Room for what travels with a node's value and path in one message (versions,
/// revisions, headers, protobuf framing): a few hundred bytes, with margin.
pub const MESSAGE_OVERHEAD_BYTES: usize = 4 << 10;

/// Most operations one transaction may carry (in each branch), and most compares.
pub const MAX_TXN_OPS: usize = 256;

/// How much larger than a request its answer may be besides the nodes it reads: each
/// operation's result repeats the node it wrote, with a header, versions and revisions
/// (under a hundred bytes more than the operation itself; 128 with margin), plus framing.
pub const RESPONSE_OVERHEAD_BYTES: usize = MAX_TXN_OPS * 128 + MESSAGE_OVERHEAD_BYTES;

/// The largest `server.max_decoding_message_bytes`, `server.max_encoding_message_bytes` and
/// `limits.max_watch_message_bytes` accepted, and the default `server.max_encoding_message_bytes`:
/// what Marina's coord client decodes and encodes (`marina_coord_client::MAX_MESSAGE_BYTES`).
pub const MAX_MESSAGE_BYTES_CEILING: usize = 64 << 20;

impl Config {
    /// The parsed `peers` map, checked against `id`.
    pub fn peer_map(&self) -> Result<BTreeMap<NodeId, String>, ConfigError> {
        let peers = parse_peers(&self.peers)?;
        if !peers.is_empty() && !peers.contains_key(&self.id) {
            return Err(ConfigError::value("peers", format!("does not list this node's id {}", self.id)));
        }
        Ok(peers)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.tls.validate()?;
        if self.id == 0 {
            return Err(ConfigError::value("id", "must be greater than 0"));
        }
        check::listen(&self.listen)?;
        if let Some(advertise) = &self.advertise {
            check::address("advertise", advertise)?;
        }
        self.peer_map()?;
        check::dir("data_dir", &self.data_dir)?;
        let raft = &self.raft;
        if raft.heartbeat_ms == 0 || raft.election_timeout_min_ms <= raft.heartbeat_ms * 2 {
            return Err(ConfigError::value(
                "raft.election_timeout_min_ms",
                "must be more than twice raft.heartbeat_ms (and heartbeat_ms > 0)",
            ));
        }
        if raft.election_timeout_max_ms <= raft.election_timeout_min_ms {
            return Err(ConfigError::value("raft.election_timeout_max_ms", "must exceed election_timeout_min_ms"));
        }
        if raft.snapshot_every_entries == 0 {
            return Err(ConfigError::value("raft.snapshot_every_entries", "must be greater than 0"));
        }
        // Upper bounds keep queue sizes derived from these (tokio channels, semaphores)
        // within what tokio accepts, far above any useful value.
        if raft.max_batch == 0 || raft.max_batch > MAX_QUEUE {
            return Err(ConfigError::value("raft.max_batch", format!("must be between 1 and {MAX_QUEUE}")));
        }
        if raft.max_in_flight == 0 || raft.max_in_flight > MAX_QUEUE {
            return Err(ConfigError::value("raft.max_in_flight", format!("must be between 1 and {MAX_QUEUE}")));
        }
        if raft.proposal_timeout_ms == 0 {
            return Err(ConfigError::value("raft.proposal_timeout_ms", "must be greater than 0"));
        }
        let limits = &self.limits;
        if limits.session_ttl_min_ms == 0 || limits.session_ttl_min_ms > limits.session_ttl_max_ms {
            return Err(ConfigError::value("limits.session_ttl_min_ms", "must be > 0 and <= session_ttl_max_ms"));
        }
        // A value travels in one log entry, which holds at most 16 MiB; half of that leaves
        // room for a transaction's other operations.
        if limits.max_value_bytes == 0 || limits.max_value_bytes > MAX_VALUE_BYTES_CEILING {
            return Err(ConfigError::value(
                "limits.max_value_bytes",
                format!("must be between 1 and {MAX_VALUE_BYTES_CEILING} (8 MiB)"),
            ));
        }
        if limits.watch_queue == 0 || limits.watch_queue > MAX_QUEUE {
            return Err(ConfigError::value("limits.watch_queue", format!("must be between 1 and {MAX_QUEUE}")));
        }
        if limits.max_path_bytes < 2 {
            return Err(ConfigError::value("limits.max_path_bytes", "must be at least 2"));
        }
        if limits.max_watches_per_client == 0 {
            return Err(ConfigError::value("limits.max_watches_per_client", "must be greater than 0"));
        }
        // A request must carry the largest node there is, an answer the answer to the
        // largest request; neither more than the coord client handles.
        self.server.validate()?;
        let (max_request, max_response) =
            (self.server.max_decoding_message_bytes, self.server.max_encoding_message_bytes);
        let smallest_request = limits.largest_node_message();
        if !(smallest_request..=MAX_MESSAGE_BYTES_CEILING).contains(&max_request) {
            return Err(ConfigError::value(
                "server.max_decoding_message_bytes",
                format!(
                    "{} is outside {smallest_request}..={MAX_MESSAGE_BYTES_CEILING}: a request must hold the largest node \
                     (limits.max_value_bytes {} + limits.max_path_bytes {} + {MESSAGE_OVERHEAD_BYTES} bytes of \
                     framing), and the coord client sends at most 64 MiB",
                    max_request, limits.max_value_bytes, limits.max_path_bytes
                ),
            ));
        }
        let smallest_response = max_request + RESPONSE_OVERHEAD_BYTES;
        if !(smallest_response..=MAX_MESSAGE_BYTES_CEILING).contains(&max_response) {
            return Err(ConfigError::value(
                "server.max_encoding_message_bytes",
                format!(
                    "{} is outside {smallest_response}..={MAX_MESSAGE_BYTES_CEILING}: an answer must hold the answer to \
                     the largest request (server.max_decoding_message_bytes {} + {RESPONSE_OVERHEAD_BYTES} bytes of results), \
                     and the coord client decodes at most 64 MiB",
                    max_response, max_request
                ),
            ));
        }
        // A watch message must carry one event of the largest node: a revision is split
        // between events, never inside one.
        if !(smallest_request..=MAX_MESSAGE_BYTES_CEILING).contains(&limits.max_watch_message_bytes) {
            return Err(ConfigError::value(
                "limits.max_watch_message_bytes",
                format!(
                    "{} is outside {smallest_request}..={MAX_MESSAGE_BYTES_CEILING}: a watch message must hold one event \
                     of the largest node (limits.max_value_bytes {} + limits.max_path_bytes {} + \
                     {MESSAGE_OVERHEAD_BYTES} bytes of framing), and the coord client decodes at most 64 MiB",
                    limits.max_watch_message_bytes, limits.max_value_bytes, limits.max_path_bytes
                ),
            ));
        }
        Ok(())
    }
}

/// The largest queue-like setting accepted (`raft.max_batch`, `raft.max_in_flight`,
/// `limits.watch_queue`).
const MAX_QUEUE: usize = 1 << 20;

/// The largest `limits.max_value_bytes` accepted.
const MAX_VALUE_BYTES_CEILING: usize = 8 << 20;

/// Parses `1=host:port,2=host:port`.
pub fn parse_peers(peers: &str) -> Result<BTreeMap<NodeId, String>, ConfigError> {
    let mut map = BTreeMap::new();
    for entry in peers.split(',').map(str::trim).filter(|entry| !entry.is_empty()) {
        let (id, address) = entry
            .split_once('=')
            .ok_or_else(|| ConfigError::value("peers", format!("entry {entry:?} is not id=host:port")))?;
        let id: NodeId =
            id.trim().parse().ok().filter(|id| *id > 0).ok_or_else(|| {
                ConfigError::value("peers", format!("entry {entry:?}: id must be a positive integer"))
            })?;
        check::address("peers", address.trim())?;
        if map.insert(id, address.trim().to_owned()).is_some() {
            return Err(ConfigError::value("peers", format!("id {id} is listed twice")));
        }
    }
    Ok(map)
}

impl marina_daemon::cli::ServiceConfig for Config {
    const SERVICE: &'static str = "coord";

    fn validate(&self) -> Result<(), ConfigError> {
        Config::validate(self)
    }

    fn log(&self) -> &LogConfig {
        &self.log
    }

    fn listen(&self) -> &str {
        &self.listen
    }

    fn tls(&self) -> &TlsConfig {
        &self.tls
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_errors_say_what_is_wrong() {
        let peers = parse_peers("1=127.0.0.1:2181, 2=localhost:2182,3=[::1]:2183").unwrap();
        assert_eq!(peers.len(), 3);
        assert_eq!(peers[&2], "localhost:2182");
        for (bad, expected) in [
            ("1=a:1,1=b:2", "listed twice"),
            ("x=a:1", "positive integer"),
            ("0=a:1", "positive integer"),
            ("1=a", "not host:port"),
            ("1a:1", "not id=host:port"),
        ] {
            let message = parse_peers(bad).unwrap_err().to_string();
            assert!(message.contains("peers") && message.contains(expected), "{bad}: {message}");
        }
    }

    #[test]
    fn validation_names_the_key() {
        let mut config = Config { peers: "2=a:1".into(), ..Config::default() };
        assert!(config.validate().unwrap_err().to_string().contains("this node's id 1"));
        config.peers.clear();
        config.raft.election_timeout_min_ms = 60;
        assert!(config.validate().unwrap_err().to_string().contains("raft.election_timeout_min_ms"));
        let mut config = Config::default();
        config.limits.max_value_bytes = 9 << 20;
        assert!(config.validate().unwrap_err().to_string().contains("limits.max_value_bytes"));
        let config = Config { listen: "nowhere".into(), ..Config::default() };
        assert!(config.validate().unwrap_err().to_string().contains("`listen`"));
        Config::default().validate().unwrap();
    }

    #[test]
    fn message_and_watch_limits_are_validated() {
        let mut config = Config::default();
        config.limits.max_watches_per_client = 0;
        assert!(config.validate().unwrap_err().to_string().contains("limits.max_watches_per_client"));

        // A value of the largest size must fit a message both ways.
        let mut config = Config::default();
        config.limits.max_value_bytes = 8 << 20;
        let message = config.validate().unwrap_err().to_string();
        assert!(
            message.contains("server.max_decoding_message_bytes") && message.contains("limits.max_value_bytes"),
            "{message}"
        );
        config.server.max_decoding_message_bytes = 9 << 20;
        // A watch message must carry one event of it.
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("limits.max_watch_message_bytes"), "{message}");
        config.limits.max_watch_message_bytes = 9 << 20;
        config.validate().unwrap();
        // The answer to the largest request, which repeats what it wrote, must fit too.
        config.server.max_encoding_message_bytes = 9 << 20;
        assert!(config.validate().unwrap_err().to_string().contains("server.max_decoding_message_bytes 9437184"));
        config.server.max_encoding_message_bytes = (9 << 20) + RESPONSE_OVERHEAD_BYTES;
        config.validate().unwrap();

        // Never more than the coord client decodes.
        config.server.max_encoding_message_bytes = MAX_MESSAGE_BYTES_CEILING + 1;
        assert!(config.validate().unwrap_err().to_string().contains("64 MiB"));
        config.server.max_encoding_message_bytes = MAX_MESSAGE_BYTES_CEILING;
        config.limits.max_watch_message_bytes = MAX_MESSAGE_BYTES_CEILING + 1;
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("limits.max_watch_message_bytes") && message.contains("64 MiB"), "{message}");

        // Watches send at most the smaller of the two limits, naming the one met.
        let limits = Limits::default();
        let mut server = Config::default().server;
        assert_eq!(limits.watch_message_bytes(&server), (4 << 20, "limits.max_watch_message_bytes"));
        server.max_encoding_message_bytes = 1 << 20;
        assert_eq!(limits.watch_message_bytes(&server), (1 << 20, "server.max_encoding_message_bytes"));

        let mut config = Config::default();
        config.raft.proposal_timeout_ms = 0;
        assert!(config.validate().unwrap_err().to_string().contains("raft.proposal_timeout_ms"));
    }
}
