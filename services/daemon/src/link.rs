//! Links to peers — an agent or a gateway to its master, a coord client or node to a coord
//! node — made one way, so every link notices a dead peer the same way: HTTP/2 keep-alive
//! pings answered within a bound, TCP_NODELAY (requests are small and latency matters), and
//! a bounded connect. Only how quickly differs, by what the link is for.

use std::time::Duration;

use std::sync::Arc;

use tonic::transport::{Channel, Endpoint};

use crate::tls::{Role, Tls};

/// How quickly a link gives up on a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    pub connect_timeout: Duration,
    /// How often an HTTP/2 ping checks the connection.
    pub keep_alive_interval: Duration,
    /// How long a ping may go unanswered before the connection is dead.
    pub keep_alive_timeout: Duration,
    /// Ping even with no request in flight (a link that mostly idles but must fail over at
    /// once when needed).
    pub while_idle: bool,
}

impl Liveness {
    /// A long-lived stream to the leading master (an agent's link, a scheduler's
    /// subscription): a dead master is noticed within about five seconds.
    pub const TO_LEADER: Liveness = Liveness {
        connect_timeout: Duration::from_secs(2),
        keep_alive_interval: Duration::from_secs(2),
        keep_alive_timeout: Duration::from_secs(3),
        while_idle: false,
    };

    /// A coord client's link to a node: sessions must not expire behind a dead connection,
    /// so it is checked while idle too, and a node that does not answer is left at once
    /// for another.
    pub const TO_COORD: Liveness = Liveness {
        connect_timeout: Duration::from_millis(500),
        keep_alive_interval: Duration::from_secs(2),
        keep_alive_timeout: Duration::from_secs(2),
        while_idle: true,
    };

    /// A coord node's link to a peer: Raft's own heartbeats find a dead peer; the pings
    /// only clear connections that went away unnoticed.
    pub const TO_PEER: Liveness = Liveness {
        connect_timeout: Duration::from_millis(500),
        keep_alive_interval: Duration::from_secs(5),
        keep_alive_timeout: Duration::from_secs(5),
        while_idle: false,
    };
}

/// An address that is not `host:port`.
#[derive(Debug, thiserror::Error)]
#[error("{address:?} is not a host:port to connect to: {reason}")]
pub struct BadAddress {
    pub address: String,
    pub reason: String,
}

/// A link to `address` (`host:port`): over mutual TLS with `tls`, to a server whose
/// certificate names one of the roles in `peer`; plaintext HTTP/2 without.
#[derive(Clone)]
pub struct Link {
    endpoint: Endpoint,
    tls: Option<Arc<Tls>>,
    peer: &'static [Role],
}

impl Link {
    pub fn new(
        address: &str,
        liveness: Liveness,
        tls: Option<&Arc<Tls>>,
        peer: &'static [Role],
    ) -> Result<Link, BadAddress> {
        Ok(Link { endpoint: endpoint(address, liveness)?, tls: tls.cloned(), peer })
    }

    /// A channel that connects on first use (and again after a failure).
    pub fn connect_lazy(&self) -> Channel {
        match &self.tls {
            Some(tls) => self.endpoint.connect_with_connector_lazy(tls.connector(self.peer)),
            None => self.endpoint.connect_lazy(),
        }
    }

    /// A channel connected now.
    pub async fn connect(&self) -> Result<Channel, tonic::transport::Error> {
        match &self.tls {
            Some(tls) => self.endpoint.connect_with_connector(tls.connector(self.peer)).await,
            None => self.endpoint.connect().await,
        }
    }
}

/// The endpoint of a link to `address` (`host:port`), plain HTTP/2, with `liveness`.
fn endpoint(address: &str, liveness: Liveness) -> Result<Endpoint, BadAddress> {
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|error| BadAddress { address: address.to_owned(), reason: error.to_string() })?;
    Ok(endpoint
        .connect_timeout(liveness.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(liveness.keep_alive_interval)
        .keep_alive_timeout(liveness.keep_alive_timeout)
        .keep_alive_while_idle(liveness.while_idle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_that_is_not_host_port_is_named() {
        assert!(endpoint("127.0.0.1:5050", Liveness::TO_LEADER).is_ok());
        let error = endpoint("not an address", Liveness::TO_LEADER).unwrap_err();
        assert!(error.to_string().contains("\"not an address\""), "{error}");
    }
}
