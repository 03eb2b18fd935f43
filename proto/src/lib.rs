//! Marina's protobuf APIs. Each package is versioned (`marina.coord.v1`, …): a breaking
//! change is a new version beside the old one, never an edit in place.

pub mod checks;

/// Every Marina proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("marina_descriptor");

pub mod coord {
    pub mod v1 {
        tonic::include_proto!("marina.coord.v1");
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
