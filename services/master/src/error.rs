//! The master's one error type: why it did not start, or why it refused a request. Every
//! variant becomes its gRPC status in one place (`impl From<MasterError> for Status`), so a
//! scheduler or agent sees the same code for the same cause whichever call it made.

use marina_coord_client::Error as CoordError;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    // ----- starting ----------------------------------------------------------------------------
    #[error(transparent)]
    Config(#[from] marina_daemon::config::ConfigError),
    #[error("coord: {0}")]
    Coord(#[from] CoordError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Tls(#[from] marina_daemon::tls::TlsError),

    // ----- requests ----------------------------------------------------------------------------
    /// A request that breaks the protocol's rules; the message says which.
    #[error("{0}")]
    Invalid(String),
    /// An agent describing itself with what the master does not take (see `check_agent`).
    #[error("agent info refused: {0}")]
    AgentRefused(String),
    /// Tasks that do not fit the offers accepted, or break the rules every door checks.
    #[error("launch refused: {0}")]
    LaunchRefused(String),
    /// An agent that already obeyed a newer leader: this master is behind and must not
    /// command it.
    #[error("the agent obeyed epoch {agent} already; this master's epoch {master} is older")]
    StaleEpoch { agent: u64, master: u64 },
    /// A framework or agent the request names that the master does not know.
    #[error("{kind} {id} is not known")]
    Unknown { kind: &'static str, id: String },
    #[error("framework {0} is not subscribed")]
    NotSubscribed(String),
    #[error("offer {0} is not outstanding (rescinded or already used)")]
    OfferGone(String),
    #[error("offer {0} was made to another framework")]
    OfferOfAnother(String),
    /// The agent the offers came from went away (or lost its link) meanwhile: retry with
    /// new offers.
    #[error("agent {agent_id} is {why}")]
    AgentAway { agent_id: String, why: &'static str },
    /// The caller's certificate is not the one the framework or agent it names is bound to.
    #[error("{0}")]
    NotYours(String),
    /// A write the request needs could not be made (coord unreachable, or this master was
    /// deposed).
    #[error("cannot {action}: {error}")]
    Unrecorded { action: &'static str, error: CoordError },
}

impl MasterError {
    pub fn unknown_framework(id: &str) -> Self {
        MasterError::Unknown { kind: "framework", id: id.to_owned() }
    }

    pub fn unknown_agent(id: &str) -> Self {
        MasterError::Unknown { kind: "agent", id: id.to_owned() }
    }
}

impl From<MasterError> for Status {
    fn from(error: MasterError) -> Self {
        let message = error.to_string();
        match error {
            MasterError::Invalid(_) | MasterError::AgentRefused(_) | MasterError::LaunchRefused(_) => {
                Status::invalid_argument(message)
            }
            MasterError::StaleEpoch { .. } | MasterError::NotSubscribed(_) => Status::failed_precondition(message),
            MasterError::Unknown { .. } | MasterError::OfferGone(_) => Status::not_found(message),
            MasterError::OfferOfAnother(_) | MasterError::NotYours(_) => Status::permission_denied(message),
            MasterError::AgentAway { .. } | MasterError::Unrecorded { .. } | MasterError::Coord(_) => {
                Status::unavailable(message)
            }
            MasterError::Config(_) | MasterError::Io(_) | MasterError::Tls(_) => Status::internal(message),
        }
    }
}
