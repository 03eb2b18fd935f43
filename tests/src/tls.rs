//! The test clusters' certificates: one CA per cluster, a certificate per node issued on
//! demand (as `marina certs` would), and clients that call as an operator or any role.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use marina_daemon::link::{Link, Liveness};
use marina_daemon::tls::issue::{self, Pem, Request};
use marina_daemon::tls::{Role, Tls, TlsConfig};
use tonic::transport::Channel;

/// Roles a test client may expect to reach (any Marina server).
pub const ANY_SERVER: &[Role] = &[Role::Coord, Role::Master, Role::Agent, Role::Gateway];

/// A cluster's CA, its files in `dir`.
#[derive(Clone)]
pub struct TestCa {
    dir: PathBuf,
    ca: Arc<Pem>,
}

impl TestCa {
    /// A new CA in `dir` (made if missing).
    pub fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("creating the TLS dir");
        let ca = issue::new_ca(30).expect("making a test CA");
        issue::write(&dir.join("ca.pem"), &ca.cert, false).expect("writing ca.pem");
        TestCa { dir: dir.to_owned(), ca: Arc::new(ca) }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The files of a certificate for `role` (and `id`), issued on first use.
    pub fn config(&self, role: Role, id: Option<&str>) -> TlsConfig {
        let name = match id {
            Some(id) => format!("{role}-{id}"),
            None => role.to_string(),
        };
        let config = TlsConfig::in_dir(&self.dir, &name);
        let (cert, key) = (config.cert.clone().expect("set"), config.key.clone().expect("set"));
        if !cert.exists() {
            self.issue_to(role, id, &cert, &key);
        }
        config
    }

    /// Issues a certificate for `role` (and `id`) into `cert` and `key` (replacing them).
    pub fn issue_to(&self, role: Role, id: Option<&str>, cert: &Path, key: &Path) {
        let request = Request { role, id, dns: &[], ip: &[], days: 30 };
        let issued = issue::issue(&self.ca, &request).expect("issuing a test certificate");
        issue::write(key, &issued.key, true).expect("writing a key");
        issue::write(cert, &issued.cert, false).expect("writing a certificate");
    }

    /// Loaded TLS for `role` (and `id`).
    pub fn tls(&self, role: Role, id: Option<&str>) -> Arc<Tls> {
        Tls::load(&self.config(role, id)).expect("loading test TLS").expect("configured")
    }

    /// The directory, once it holds an operator certificate (what test processes are given
    /// to call as an operator, see [`operator_in`]).
    pub fn operator_dir(&self) -> String {
        self.config(Role::Operator, None);
        self.dir.display().to_string()
    }

    /// What an operator calls with.
    pub fn operator(&self) -> Arc<Tls> {
        self.tls(Role::Operator, None)
    }

    /// Environment variables setting a service process's `[tls]` (`MARINA_<SERVICE>_TLS__*`).
    pub fn env(&self, service: &str, role: Role, id: Option<&str>) -> Vec<(String, String)> {
        let config = self.config(role, id);
        let prefix = format!("MARINA_{}_TLS__", service.to_uppercase());
        [("CA", config.ca), ("CERT", config.cert), ("KEY", config.key)]
            .into_iter()
            .map(|(key, path)| (format!("{prefix}{key}"), path.expect("set").display().to_string()))
            .collect()
    }
}

/// The operator certificate a [`TestCa`] issued into `dir` (for test processes).
pub fn operator_in(dir: &Path) -> Arc<Tls> {
    Tls::load(&TlsConfig::in_dir(dir, "operator")).expect("loading the operator certificate").expect("configured")
}

/// A lazily connected gRPC channel to `address` calling with `tls`.
pub fn channel(tls: &Arc<Tls>, address: impl ToString) -> Channel {
    Link::new(&address.to_string(), Liveness::TO_LEADER, Some(tls), ANY_SERVER).expect("host:port").connect_lazy()
}

/// An HTTP client calling Marina servers with `tls` (`https://` URLs), failing fast.
pub fn http_client(tls: &Arc<Tls>) -> reqwest::Client {
    let config = tls.http1_client_config(ANY_SERVER).expect("client TLS config");
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .timeout(std::time::Duration::from_secs(2))
        .build()
        .expect("HTTP client")
}

/// [`http_client`] sending HTTP Basic credentials (`user:password`) with every request: an
/// operator of a gateway that requires them (`auth.http_credentials`).
pub fn http_client_with_credentials(tls: &Arc<Tls>, credentials: &str) -> reqwest::Client {
    use base64::Engine;
    let config = tls.http1_client_config(ANY_SERVER).expect("client TLS config");
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(credentials));
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, basic.parse().expect("a header value"));
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .default_headers(headers)
        .timeout(std::time::Duration::from_secs(2))
        .build()
        .expect("HTTP client")
}

/// An HTTPS client that trusts `ca` but presents no certificate of its own (a REST client
/// of the gateway; refused by every other port).
pub fn anonymous_client(ca: &TestCa) -> reqwest::Client {
    let pem = std::fs::read(ca.ca_file()).expect("reading ca.pem");
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("a PEM certificate"))
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .expect("HTTP client")
}

/// `https://address`.
pub fn https(address: &SocketAddr) -> String {
    format!("https://{address}")
}
