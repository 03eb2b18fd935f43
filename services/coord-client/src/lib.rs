//! Client for Marina's coord quorum.
//!
//! - [`CoordClient`]: the data API over `coord://h1:p1,h2:p2,h3:p3/root`, failing over
//!   between endpoints and following leader hints;
//! - [`Session`]: TTL sessions kept alive in the background, loss reported at once;
//! - [`Watch`]: revision-ordered change streams that resume across node failures;
//! - [`Election`], [`LeaderObserver`], [`Fence`]: the leader election and fencing recipe.

mod candidacy;
mod client;
mod election;
mod error;
mod session;
mod url;
mod watch;

pub use candidacy::{Candidacy, Term, run as run_candidacy};
pub use client::{
    ClientOptions, CoordClient, CreateOptions, Listing, MAX_MESSAGE_BYTES, Node, OpResult, Txn, TxnResult,
    retry_idempotent,
};
pub use election::{Election, ElectionState, Fence, Leader, LeaderObserver};
pub use error::Error;
pub use marina_proto::coord::v1::{Member, StatusResponse};
pub use session::{Session, SessionState};
pub use url::{CoordUrl, UrlError};
pub use watch::{Event, EventKind, Watch, WatchEvent};
