//! Mutual TLS between Marina's services, with rustls on ring (the crypto that builds fast
//! on small machines; rcgen uses it too).
//!
//! Every service has a `[tls]` section: the cluster CA, its certificate and its key. With
//! it, its port speaks TLS and asks every caller for a certificate signed by that CA (the
//! gateway's port lets REST clients in without one: they authenticate with credentials).
//! The caller's [`Identity`] — its role and id, from the certificate's URI SAN — is in every
//! request's extensions as a [`Caller`], for the port's access rules
//! ([`crate::Endpoint::allow`]) and for the checks a service makes itself.
//!
//! Marina's own clients check a server by the CA and by the role its certificate names (a
//! coord client wants a coord node), not by host name: certificates need no DNS names for
//! Marina's internal links, and a node can move without a new certificate.
//!
//! The files are read again on SIGHUP and when they change (checked every few seconds), so
//! certificates rotate without a restart; connections already open keep their handshake.

mod connector;
mod identity;
pub mod issue;
mod listener;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use serde::{Deserialize, Serialize};

pub use connector::{Connector, TlsIo};
pub use identity::{Caller, IDENTITY_PREFIX, Identity, Role};
pub use listener::{MAX_HANDSHAKES_PER_PEER, Peer, SecureListener};

use crate::config::ConfigError;

/// The `[tls]` section every service shares.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The cluster CA (PEM): callers' and servers' certificates must chain to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// This service's certificate (PEM), naming its role and id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Also take plaintext connections on the same port (told apart by their first byte).
    /// For the gateway on loopback, so that `curl http://127.0.0.1:8080` keeps working in
    /// `marina dev`; beyond loopback it needs `--insecure`.
    pub accept_plaintext: bool,
}

impl TlsConfig {
    /// Whether TLS is configured (all three files given).
    pub fn enabled(&self) -> bool {
        self.ca.is_some()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        match (&self.ca, &self.cert, &self.key) {
            (None, None, None) => {
                if self.accept_plaintext {
                    return Err(ConfigError::value("tls.accept_plaintext", "means nothing without tls.ca"));
                }
                Ok(())
            }
            (Some(_), Some(_), Some(_)) => Ok(()),
            _ => Err(ConfigError::value("tls", "set all of tls.ca, tls.cert and tls.key, or none")),
        }
    }

    /// The files of a directory made by `marina certs`: `ca.pem`, `<name>.pem`,
    /// `<name>-key.pem`.
    pub fn in_dir(dir: &Path, name: &str) -> Self {
        TlsConfig {
            ca: Some(dir.join("ca.pem")),
            cert: Some(dir.join(format!("{name}.pem"))),
            key: Some(dir.join(format!("{name}-key.pem"))),
            accept_plaintext: false,
        }
    }
}

/// Reading TLS files failed; names the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("tls: {path}: {reason}")]
pub struct TlsError {
    pub path: String,
    pub reason: String,
}

impl TlsError {
    fn new(path: &Path, reason: impl std::fmt::Display) -> Self {
        TlsError { path: path.display().to_string(), reason: reason.to_string() }
    }
}

/// A service's TLS: what it serves with, what it calls with, reloaded as its files change.
/// Shared (`Arc`) by its port and every client it makes.
pub struct Tls {
    config: TlsConfig,
    loaded: RwLock<Arc<Loaded>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("identity", &self.identity().to_string()).finish()
    }
}

/// One reading of the files.
struct Loaded {
    identity: Identity,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    /// Asks every caller for a certificate.
    server_mutual: Arc<rustls::ServerConfig>,
    /// Takes callers without one too (their requests are then [`Caller::Anonymous`]).
    server_optional: Arc<rustls::ServerConfig>,
    /// When each file was last changed, as read.
    modified: Vec<Option<SystemTime>>,
}

/// The crypto every TLS config here uses. rustls marks ring's provider deprecated because
/// it has no post-quantum key exchange; aws-lc-rs has, but takes minutes more to build on
/// two cores and needs cmake. Marina's links are between the members of one cluster, with
/// certificates that rotate: classical ECDHE is the trade made here (see the README).
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const ALPN_H2: &[u8] = b"h2";
const ALPN_HTTP1: &[u8] = b"http/1.1";

impl Tls {
    /// Reads the files of `config`; `None` when it configures no TLS.
    pub fn load(config: &TlsConfig) -> Result<Option<Arc<Tls>>, TlsError> {
        if !config.enabled() {
            return Ok(None);
        }
        let loaded = Loaded::read(config)?;
        tracing::info!(identity = %loaded.identity, "tls: mutual TLS with the cluster CA");
        Ok(Some(Arc::new(Tls { config: config.clone(), loaded: RwLock::new(Arc::new(loaded)) })))
    }

    /// The identity this service's certificate names.
    pub fn identity(&self) -> Identity {
        self.current().identity.clone()
    }

    pub fn accepts_plaintext(&self) -> bool {
        self.config.accept_plaintext
    }

    fn current(&self) -> Arc<Loaded> {
        self.loaded.read().expect("tls lock").clone()
    }

    /// Reads the files again; on any error keeps what it had (and says so).
    /// A certificate naming another holder is refused: a service's identity (a coord node's
    /// id, an agent's binding) changes with a restart, not under it.
    pub fn reload(&self) -> Result<(), TlsError> {
        let loaded = Loaded::read(&self.config)?;
        let identity = loaded.identity.clone();
        let current = self.identity();
        if identity != current {
            let cert = self.config.cert.as_deref().unwrap_or(Path::new("tls.cert"));
            return Err(TlsError::new(cert, format!("names {identity}, not {current}: restart to change identity")));
        }
        *self.loaded.write().expect("tls lock") = Arc::new(loaded);
        tracing::info!(%identity, "tls: certificates reloaded");
        Ok(())
    }

    /// Reloads on SIGHUP and whenever a file changes, until `shutdown`.
    pub fn watch(self: &Arc<Self>, shutdown: &crate::Shutdown) {
        let tls = Arc::downgrade(self);
        let token = shutdown.token();
        tokio::spawn(async move {
            let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut tick = tokio::time::interval(RELOAD_CHECK_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let hung_up = tokio::select! {
                    () = token.cancelled() => return,
                    _ = tick.tick() => false,
                    Some(()) = async { match hangup.as_mut() { Some(signal) => signal.recv().await, None => None } } => true,
                };
                let Some(tls) = tls.upgrade() else { return };
                if (hung_up || tls.changed())
                    && let Err(error) = tls.reload()
                {
                    tracing::error!(%error, "tls: reload failed; keeping the certificates loaded before");
                }
            }
        });
    }

    fn changed(&self) -> bool {
        self.current().modified != modified(&self.config)
    }

    /// The server side of a connection: mutual TLS, or a client certificate optional.
    pub(crate) fn acceptor(&self, client_certificate_required: bool) -> tokio_rustls::TlsAcceptor {
        let loaded = self.current();
        let config = if client_certificate_required { &loaded.server_mutual } else { &loaded.server_optional };
        tokio_rustls::TlsAcceptor::from(config.clone())
    }

    /// How this service connects to a server of one of `expect`'s roles.
    pub fn connector(self: &Arc<Self>, expect: &'static [Role]) -> Connector {
        Connector::new(self.clone(), expect)
    }

    /// The client side for an HTTP/1.1 client of a server of one of `expect`'s roles (an
    /// HTTP client library's own TLS, reqwest's `use_preconfigured_tls`).
    pub fn http1_client_config(&self, expect: &'static [Role]) -> Result<rustls::ClientConfig, rustls::Error> {
        self.client_config(expect, true).map(|config| (*config).clone())
    }

    fn client_config(&self, expect: &'static [Role], http1: bool) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
        let loaded = self.current();
        let verifier = Arc::new(connector::ServerRole::new(loaded.roots.clone(), expect));
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(loaded.chain.clone(), loaded.key.clone_key())?;
        config.alpn_protocols = vec![if http1 { ALPN_HTTP1 } else { ALPN_H2 }.to_vec()];
        Ok(Arc::new(config))
    }
}

/// How often certificate files are checked for changes.
const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(5);

fn modified(config: &TlsConfig) -> Vec<Option<SystemTime>> {
    [&config.ca, &config.cert, &config.key]
        .into_iter()
        .map(|path| path.as_ref().and_then(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok()))
        .collect()
}

impl Loaded {
    fn read(config: &TlsConfig) -> Result<Loaded, TlsError> {
        let modified = modified(config);
        let (Some(ca), Some(cert), Some(key)) = (&config.ca, &config.cert, &config.key) else {
            return Err(TlsError::new(Path::new("tls"), "set all of tls.ca, tls.cert and tls.key"));
        };
        let certificates = |path: &Path| -> Result<Vec<CertificateDer<'static>>, TlsError> {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| TlsError::new(path, e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TlsError::new(path, e))?;
            if certs.is_empty() {
                return Err(TlsError::new(path, "holds no certificate"));
            }
            Ok(certs)
        };
        let mut roots = RootCertStore::empty();
        for root in certificates(ca)? {
            roots.add(root).map_err(|e| TlsError::new(ca, format!("not a CA certificate: {e}")))?;
        }
        let roots = Arc::new(roots);
        let chain = certificates(cert)?;
        let identity = Identity::of_certificate(&chain[0]).map_err(|e| TlsError::new(cert, e))?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::new(key, e))?;

        let server = |required: bool| -> Result<Arc<rustls::ServerConfig>, TlsError> {
            let builder = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider());
            let builder = if required { builder } else { builder.allow_unauthenticated() };
            let verifier = builder.build().map_err(|e| TlsError::new(ca, e))?;
            let mut config = rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError::new(cert, e))?
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain.clone(), key.clone_key())
                .map_err(|e| TlsError::new(cert, format!("does not go with its key: {e}")))?;
            config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
            Ok(Arc::new(config))
        };
        Ok(Loaded {
            identity,
            server_mutual: server(true)?,
            server_optional: server(false)?,
            roots,
            chain,
            key: Arc::new(key),
            modified,
        })
    }
}
