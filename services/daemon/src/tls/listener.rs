//! The server side: a listener whose connections have been through the TLS handshake (or
//! are plaintext, on a service without TLS), each with the caller it came from.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::either::Either;

use super::{Caller, Identity, Tls};

/// How long a client has to finish its handshake (its first byte included): a peer on a
/// healthy network needs milliseconds.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshakes in progress at once; more connections are closed at once (a flood of
/// half-open handshakes must not take the memory or the accept loop).
const MAX_HANDSHAKES: usize = 512;
/// Handshakes in progress from one address, by default (`server.max_tls_handshakes_per_peer`):
/// one host holding silent connections open cannot take every slot from the others (coord
/// peers, agents re-attaching).
pub const MAX_HANDSHAKES_PER_PEER: usize = 32;
/// The first byte of a TLS ClientHello record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// A connection as accepted: TLS, or plaintext.
pub type Io = Either<tokio_rustls::server::TlsStream<TcpStream>, TcpStream>;

/// Where a connection came from, and who made it.
#[derive(Debug, Clone)]
pub struct Peer {
    pub address: SocketAddr,
    pub caller: Caller,
}

/// Accepts connections and hands them over once their handshake is done. Handshakes run
/// concurrently and bounded in time, so a slow or silent client holds up no one else.
pub struct SecureListener {
    /// Boxed: a channel allocates its slots in blocks of 32, and a TLS stream is over a
    /// kilobyte, so every port held ~40 KB of slots; a thousand hollow agents in one
    /// process, 40 MB.
    incoming: mpsc::Receiver<Box<(Io, Peer)>>,
    local: SocketAddr,
    accept: tokio::task::AbortHandle,
}

impl SecureListener {
    /// Accepts on `listener`; with `tls`, over TLS, asking callers for a certificate
    /// (required unless `client_certificate_required` is false), at most
    /// `handshakes_per_peer` handshakes in progress from one address.
    pub fn new(
        listener: TcpListener,
        tls: Option<Arc<Tls>>,
        client_certificate_required: bool,
        handshakes_per_peer: usize,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (sender, incoming) = mpsc::channel(64);
        let accept = tokio::spawn(accept_loop(listener, tls, client_certificate_required, handshakes_per_peer, sender))
            .abort_handle();
        Ok(SecureListener { incoming, local, accept })
    }
}

impl Drop for SecureListener {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    client_certificate_required: bool,
    handshakes_per_peer: usize,
    sender: mpsc::Sender<Box<(Io, Peer)>>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let per_peer: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    loop {
        let (stream, address) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // gRPC is latency-bound request/response traffic: never wait to coalesce segments.
        let _ = stream.set_nodelay(true);
        let Some(tls) = &tls else {
            if sender
                .send(Box::new((Either::Right(stream), Peer { address, caller: Caller::Plaintext })))
                .await
                .is_err()
            {
                return;
            }
            continue;
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            tracing::warn!(peer = %address, "{MAX_HANDSHAKES} TLS handshakes in progress: connection closed");
            continue;
        };
        let Some(peer_slot) = PeerSlot::take(&per_peer, address.ip(), handshakes_per_peer) else {
            tracing::warn!(
                peer = %address,
                "{handshakes_per_peer} TLS handshakes in progress from this address \
                 (server.max_tls_handshakes_per_peer): connection closed"
            );
            continue;
        };
        let acceptor = tls.acceptor(client_certificate_required);
        let plaintext = tls.accepts_plaintext();
        let sender = sender.clone();
        tokio::spawn(async move {
            let _permits = (permit, peer_slot);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(stream, acceptor, plaintext)).await {
                Ok(Ok((io, caller))) => {
                    let _ = sender.send(Box::new((io, Peer { address, caller }))).await;
                }
                Ok(Err(reason)) => tracing::debug!(peer = %address, %reason, "connection refused"),
                Err(_) => tracing::debug!(peer = %address, "TLS handshake not done in time: connection closed"),
            }
        });
    }
}

/// One handshake's place among those from its address; given back when dropped.
struct PeerSlot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    address: IpAddr,
}

impl PeerSlot {
    fn take(counts: &Arc<Mutex<HashMap<IpAddr, usize>>>, address: IpAddr, limit: usize) -> Option<PeerSlot> {
        let mut map = counts.lock().expect("handshake counts lock");
        let count = map.entry(address).or_default();
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(PeerSlot { counts: counts.clone(), address })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self.counts.lock().expect("handshake counts lock");
        if let Some(count) = map.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.address);
            }
        }
    }
}

/// TLS or plaintext, told apart by the first byte; the caller's identity from its
/// certificate.
async fn handshake(
    stream: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    plaintext: bool,
) -> Result<(Io, Caller), String> {
    let mut first = [0u8; 1];
    if stream.peek(&mut first).await.map_err(|e| e.to_string())? == 0 {
        return Err("closed before sending anything".into());
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        if plaintext {
            return Ok((Either::Right(stream), Caller::Plaintext));
        }
        return Err("plaintext on a port that only speaks TLS".into());
    }
    let stream = acceptor.accept(stream).await.map_err(|e| format!("TLS handshake: {e}"))?;
    let caller = match stream.get_ref().1.peer_certificates().and_then(|chain| chain.first()) {
        Some(certificate) => Caller::Verified(Identity::of_certificate(certificate)?),
        None => Caller::Anonymous,
    };
    Ok((Either::Left(stream), caller))
}

impl axum::serve::Listener for SecureListener {
    type Io = Io;
    type Addr = Peer;

    async fn accept(&mut self) -> (Io, Peer) {
        match self.incoming.recv().await {
            Some(accepted) => *accepted,
            // The accept loop ended (it only does when aborted): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Peer> {
        Ok(Peer { address: self.local, caller: Caller::Plaintext })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, SecureListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, SecureListener>) -> Self {
        stream.remote_addr().clone()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::tls::issue::{Request, issue, new_ca};
    use crate::tls::{Role, TlsConfig};

    /// A coord node's TLS, from a CA made for the test, its files in `dir`.
    fn tls(dir: &std::path::Path) -> Arc<Tls> {
        let ca = new_ca(1).unwrap();
        let node = issue(&ca, &Request { role: Role::Coord, id: Some("1"), dns: &[], ip: &[], days: 1 }).unwrap();
        std::fs::write(dir.join("ca.pem"), &ca.cert).unwrap();
        std::fs::write(dir.join("node.pem"), &node.cert).unwrap();
        std::fs::write(dir.join("node-key.pem"), &node.key).unwrap();
        Tls::load(&TlsConfig::in_dir(dir, "node")).unwrap().expect("configured")
    }

    /// Whether the server closed `stream` within `wait`.
    async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
        let mut byte = [0u8; 1];
        matches!(tokio::time::timeout(wait, stream.read(&mut byte)).await, Ok(Ok(0) | Err(_)))
    }

    /// Silent connections (no ClientHello) from one address hold handshake slots: beyond
    /// the bound, the next is closed at once — and a higher bound (callers behind one NAT,
    /// a cluster on loopback) lets it wait like the others.
    #[tokio::test]
    async fn handshakes_in_progress_from_one_address_are_bounded_as_configured() {
        let dir = tempfile::tempdir().unwrap();
        let tls = tls(dir.path());
        for (bound, third_closed) in [(2, true), (3, false)] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let _secure = SecureListener::new(listener, Some(tls.clone()), true, bound).unwrap();
            let mut silent = Vec::new();
            for _ in 0..2 {
                silent.push(TcpStream::connect(address).await.unwrap());
            }
            let mut third = TcpStream::connect(address).await.unwrap();
            // Everything below ends well inside the handshake timeout (5 s), when the silent
            // connections would be closed anyway: a refusal is awaited up to 3 s (a busy
            // machine accepts late), a connection left waiting is watched 300 ms.
            if third_closed {
                assert!(closed_within(&mut third, Duration::from_secs(3)).await, "bound {bound}: the third is refused");
            } else {
                assert!(!closed_within(&mut third, Duration::from_millis(300)).await, "bound {bound}: the third waits");
            }
            for stream in &mut silent {
                let closed = closed_within(stream, Duration::from_millis(300)).await;
                assert!(!closed, "bound {bound}: the first two wait for their handshakes");
            }
        }
    }
}
