//! Marina's protobuf APIs. Each package is versioned (`marina.coord.v1`, …): a breaking
//! change is a new version beside the old one, never an edit in place.

pub mod checks;
pub mod layout;
pub mod policy;
pub mod reason;
pub mod resources;

/// Every Marina proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("marina_descriptor");

pub mod coord {
    pub mod v1 {
        tonic::include_proto!("marina.coord.v1");
    }

    /// How a coord node says what kind of error it answered: the gRPC metadata key
    /// [`error_kind::METADATA`] carries one of these names beside the status, so a client
    /// maps an answer back to a typed error without reading its message (and tells a node's
    /// answer from a transport failure, which carries none).
    pub mod error_kind {
        pub const METADATA: &str = "x-marina-error";
        pub const INVALID_ARGUMENT: &str = "invalid_argument";
        pub const NODE_EXISTS: &str = "node_exists";
        pub const NO_NODE: &str = "no_node";
        pub const BAD_VERSION: &str = "bad_version";
        pub const NOT_EMPTY: &str = "not_empty";
        pub const SESSION_EXPIRED: &str = "session_expired";
        /// This node does not lead; retry on the leader (nothing was proposed).
        pub const NOT_LEADER: &str = "not_leader";
        pub const NO_QUORUM: &str = "no_quorum";
        /// The request may or may not have committed.
        pub const INDETERMINATE: &str = "indeterminate";
        /// No node leads at the moment (nothing was proposed).
        pub const NO_LEADER: &str = "no_leader";
        /// The watch's revision was compacted away: re-read the state.
        pub const COMPACTED: &str = "compacted";
        pub const TOO_MANY_WATCHES: &str = "too_many_watches";
        pub const RESPONSE_TOO_LARGE: &str = "response_too_large";
        pub const MEMBERSHIP: &str = "membership";
        /// The node is stopping (nothing was proposed).
        pub const SHUTTING_DOWN: &str = "shutting_down";
        pub const RAFT: &str = "raft";
    }
}

pub mod agent {
    pub mod v1 {
        tonic::include_proto!("marina.agent.v1");
    }
}

pub mod master {
    pub mod v1 {
        tonic::include_proto!("marina.master.v1");
    }
}

pub mod apps {
    pub mod v1 {
        tonic::include_proto!("marina.apps.v1");
    }
}

impl agent::v1::TaskState {
    /// The task is over: it will not run again (Mesos' terminal states, plus UNKNOWN, which
    /// the master answers for a task no one knows).
    pub fn is_terminal(self) -> bool {
        use agent::v1::TaskState as S;
        matches!(
            self,
            S::TaskFinished
                | S::TaskFailed
                | S::TaskKilled
                | S::TaskError
                | S::TaskLost
                | S::TaskGone
                | S::TaskDropped
                | S::TaskUnknown
        )
    }
}
