//! An etcd cluster of `etcd` processes on loopback (Debian's `etcd-server`, etcd 3.4), each
//! with its own data dir in a temp dir, for the coord comparison; with TLS, as etcd is
//! secured in production: peer and client TLS, client certificates required, certificates
//! from a CA made for the run (with Marina's own `marina certs` code).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use marina_daemon::tls::Role;
use tempfile::TempDir;

use crate::daemon::{Daemon, find_program, wait_for};

pub const INSTALL_HINT: &str = "install etcd 3.4 with scripts/setup-bench (Debian package etcd-server)";

/// Generous: three servers forming a cluster on a loaded 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The `etcd` binary: `$MARINA_BENCH_ETCD`, Debian's, or one on `PATH`.
pub fn binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("MARINA_BENCH_ETCD") {
        return Some(PathBuf::from(path)).filter(|path| path.is_file());
    }
    find_program("etcd", &["/usr/bin/etcd"])
}

pub struct EtcdCluster {
    /// Client URLs (`http://127.0.0.1:port`, `https://` with TLS), one per member.
    pub endpoints: Vec<String>,
    /// What clients present and trust, with TLS.
    tls: Option<TlsOptions>,
    // Declared before `dir`: the processes die before their data dirs are removed.
    daemons: Vec<Daemon>,
    _dir: TempDir,
}

impl EtcdCluster {
    /// Starts `size` members (with TLS, or without) and waits until all of them agree on a
    /// leader.
    pub async fn start(size: usize, tls: bool) -> anyhow::Result<Self> {
        let binary = binary().with_context(|| format!("etcd not found: {INSTALL_HINT}"))?;
        let dir = tempfile::Builder::new().prefix("marina-bench-etcd-").tempdir()?;
        let scheme = if tls { "https" } else { "http" };
        let ca = tls.then(|| marina_tests::TestCa::new(&dir.path().join("tls")));
        let client_ports: Vec<u16> = (0..size).map(|_| marina_tests::free_port()).collect();
        let peer_ports: Vec<u16> = (0..size).map(|_| marina_tests::free_port()).collect();
        let initial_cluster = peer_ports
            .iter()
            .enumerate()
            .map(|(i, port)| format!("n{}={scheme}://127.0.0.1:{port}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut daemons = Vec::new();
        for i in 0..size {
            let name = format!("n{}", i + 1);
            let client_url = format!("{scheme}://127.0.0.1:{}", client_ports[i]);
            let peer_url = format!("{scheme}://127.0.0.1:{}", peer_ports[i]);
            let mut args = vec![
                "--name",
                &name,
                "--data-dir",
                &dir.path().join(&name).display().to_string(),
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &initial_cluster,
                "--initial-cluster-token",
                "marina-bench",
                "--initial-cluster-state",
                "new",
                "--logger",
                "zap",
                "--log-level",
                "warn",
            ]
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
            if let Some(ca) = &ca {
                // A server (and peer) certificate valid for 127.0.0.1, for both TLS roles.
                let member = ca.config(Role::Coord, Some(&name));
                let path = |path: Option<PathBuf>| path.expect("set").display().to_string();
                let (cert, key, trusted) = (path(member.cert), path(member.key), path(member.ca));
                for (flag, value) in [
                    ("--cert-file", &cert),
                    ("--key-file", &key),
                    ("--trusted-ca-file", &trusted),
                    ("--peer-cert-file", &cert),
                    ("--peer-key-file", &key),
                    ("--peer-trusted-ca-file", &trusted),
                ] {
                    args.extend([flag.to_owned(), value.clone()]);
                }
                args.extend(["--client-cert-auth".to_owned(), "--peer-client-cert-auth".to_owned()]);
            }
            let log = dir.path().join(format!("{name}.log"));
            daemons.push(Daemon::spawn(&format!("etcd {name}"), &binary, &args, &log)?);
        }
        let endpoints = client_ports.iter().map(|port| format!("{scheme}://127.0.0.1:{port}")).collect();
        let tls = match &ca {
            Some(ca) => {
                let client = ca.config(Role::Operator, None);
                let read = |path: Option<PathBuf>| std::fs::read(path.expect("set"));
                Some(
                    TlsOptions::new()
                        .ca_certificate(Certificate::from_pem(read(client.ca)?))
                        .identity(Identity::from_pem(read(client.cert)?, read(client.key)?))
                        .domain_name("localhost"),
                )
            }
            None => None,
        };
        let mut cluster = Self { endpoints, tls, daemons, _dir: dir };
        cluster.wait_for_leader().await?;
        Ok(cluster)
    }

    /// Every member answers `Status` with the same, non-zero leader.
    async fn wait_for_leader(&mut self) -> anyhow::Result<()> {
        let endpoints = self.endpoints.clone();
        let tls = self.tls.clone();
        let daemons = &mut self.daemons;
        wait_for(START_TIMEOUT, "an etcd leader all members agree on", || {
            let endpoints = endpoints.clone();
            let tls = tls.clone();
            let died = daemons.iter_mut().try_for_each(Daemon::check_running);
            async move {
                died?;
                let mut leaders = Vec::new();
                for endpoint in &endpoints {
                    let mut options = ConnectOptions::new()
                        .with_connect_timeout(Duration::from_secs(1))
                        .with_timeout(Duration::from_secs(2));
                    if let Some(tls) = &tls {
                        options = options.with_tls(tls.clone());
                    }
                    let Ok(mut client) = Client::connect([endpoint], Some(options)).await else { return Ok(None) };
                    let Ok(status) = client.status().await else { return Ok(None) };
                    leaders.push(status.leader());
                }
                let agreed = leaders[0] != 0 && leaders.iter().all(|&leader| leader == leaders[0]);
                Ok(agreed.then_some(()))
            }
        })
        .await
    }

    /// A new client with its own connections (balanced over every member, as etcd's own
    /// clients are configured in production).
    pub async fn client(&self) -> anyhow::Result<Client> {
        let options = self.tls.clone().map(|tls| ConnectOptions::new().with_tls(tls));
        Ok(Client::connect(&self.endpoints, options).await?)
    }
}
