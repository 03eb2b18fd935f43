//! Command-line pieces every service binary shares. Flags carry the same keys as the TOML
//! file; unset flags serialize to nothing, so they only override what they set.

use std::path::PathBuf;

use serde::Serialize;

/// `--config` and `--print-config`.
#[derive(clap::Args, Debug)]
pub struct ConfigFlags {
    /// TOML configuration file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (defaults < file < environment < flags) and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Once listening, write the address bound (`ip:port`) to this file: with `listen` on
    /// port 0, how a supervisor or a test learns the port the service got.
    #[arg(long)]
    pub address_file: Option<PathBuf>,
    /// Serve plaintext on an address other machines can reach. Without it a service that
    /// would listen beyond loopback without TLS refuses to start: anyone who reaches such a
    /// port could act as any service or client. A flag, never a file setting, so that it
    /// shows in `ps` and in the log.
    #[arg(long)]
    pub insecure: bool,
}

/// The `[log]` section as flags.
#[derive(clap::Args, Serialize, Debug, Default)]
pub struct LogFlags {
    /// `text` or `json`.
    #[arg(long = "log-format", value_parser = ["text", "json"])]
    #[serde(rename = "format", skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// A tracing filter such as `info` or `info,marina_master=debug`.
    #[arg(long = "log-level")]
    #[serde(rename = "level", skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
}

impl LogFlags {
    pub fn is_empty(&self) -> bool {
        self.format.is_none() && self.level.is_none()
    }
}

/// The `[tls]` section as flags.
#[derive(clap::Args, Serialize, Debug, Default)]
pub struct TlsFlags {
    /// The cluster CA (PEM).
    #[arg(long = "tls-ca")]
    #[serde(rename = "ca", skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// This service's certificate (PEM), made with `marina certs issue`.
    #[arg(long = "tls-cert")]
    #[serde(rename = "cert", skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long = "tls-key")]
    #[serde(rename = "key", skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

impl TlsFlags {
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }
}

/// What the shared `main` needs from a service's configuration.
pub trait ServiceConfig: serde::de::DeserializeOwned + Serialize + Default {
    /// The environment prefix: `coord` reads `MARINA_COORD_*`.
    const SERVICE: &'static str;
    fn validate(&self) -> Result<(), crate::config::ConfigError>;
    fn log(&self) -> &crate::telemetry::LogConfig;
    fn listen(&self) -> &str;
    fn tls(&self) -> &crate::tls::TlsConfig;
    /// Why anyone who reaches the port could act as any caller even with TLS (the
    /// gateway's API with no credentials configured, whose callers need no certificate);
    /// `None` when TLS decides who calls.
    fn open_to_anyone(&self) -> Option<&'static str> {
        None
    }
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every service binary's `main`: load the configuration (printing it with
/// `--print-config`), validate it, set up logs, bind, start the service with `start`, then
/// on SIGTERM or SIGINT shut it down and wait for `wait`. A panic, or anything that calls
/// [`crate::Shutdown::fail`], stops the service the same way and makes this an error (so the
/// binary exits non-zero and its supervisor restarts it).
pub async fn run<C, Start, Started, Wait>(
    flags: &ConfigFlags,
    overrides: &impl Serialize,
    start: Start,
) -> Result<(), BoxError>
where
    C: ServiceConfig,
    Start: FnOnce(C, tokio::net::TcpListener, crate::Shutdown) -> Started,
    Started: std::future::Future<Output = Result<Wait, BoxError>>,
    Wait: std::future::Future<Output = std::io::Result<()>>,
{
    let config: C = crate::config::load(C::SERVICE, flags.config.as_deref(), overrides)?;
    if flags.print_config {
        print!("{}", crate::config::render(&config));
        return Ok(());
    }
    config.validate()?;
    let exposure = exposure(config.listen(), config.tls(), config.open_to_anyone());
    if let Some(reason) = exposure
        && !flags.insecure
    {
        return Err(format!(
            "refusing to listen on {} {reason}: anyone who can reach it could act as any service or client. \
             Configure it (see `marina certs` and the README), listen on a loopback address, or pass --insecure \
             to accept that",
            config.listen()
        )
        .into());
    }
    let listener = tokio::net::TcpListener::bind(config.listen())
        .await
        .map_err(|error| format!("cannot listen on {}: {error}", config.listen()))?;
    let bound = listener.local_addr()?.to_string();
    let service = format!("marina-{}", C::SERVICE);
    let _telemetry =
        crate::telemetry::init(config.log(), crate::telemetry::Identity { service: &service, instance: &bound })?;
    tracing::info!(address = %bound, "listening");
    if let Some(reason) = exposure {
        tracing::warn!(address = %bound, "--insecure: listening beyond loopback {reason}; anyone who can reach this port can act as any service or client");
    }
    if let Some(path) = &flags.address_file {
        write_address(path, &bound).map_err(|error| format!("cannot write {}: {error}", path.display()))?;
    }
    let shutdown = crate::Shutdown::new();
    shutdown.fail_on_panic();
    let running = start(config, listener, shutdown.clone()).await?;
    until_stopped(&shutdown, running).await
}

/// Why `listen` (`ip:port`, validated) is exposed, if it reaches beyond this machine while
/// anyone may act on it: plaintext, or (`open`) a port that asks no one who they are.
fn exposure(listen: &str, tls: &crate::tls::TlsConfig, open: Option<&'static str>) -> Option<&'static str> {
    let beyond_loopback = listen.parse::<std::net::SocketAddr>().is_ok_and(|address| !address.ip().is_loopback());
    if !beyond_loopback {
        return None;
    }
    if !tls.enabled() {
        Some("without TLS")
    } else if tls.accept_plaintext {
        Some("with tls.accept_plaintext")
    } else {
        open
    }
}

/// Writes `address` to `path` whole or not at all (through a file beside it, renamed), so a
/// reader never sees half an address.
fn write_address(path: &std::path::Path, address: &str) -> std::io::Result<()> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    std::fs::write(&partial, address)?;
    std::fs::rename(&partial, path)
}

/// Runs a started service until SIGTERM, SIGINT or its failure ([`crate::Shutdown::fail`],
/// a panic once [`crate::Shutdown::fail_on_panic`] is set), then stops it: an error if it
/// failed, so that the binary exits non-zero.
pub async fn until_stopped(
    shutdown: &crate::Shutdown,
    running: impl std::future::Future<Output = std::io::Result<()>>,
) -> Result<(), BoxError> {
    tokio::select! {
        () = crate::shutdown::signal() => shutdown.trigger(),
        () = shutdown.cancelled() => {}
    }
    // A failed service may not stop cleanly (its tasks may be the broken ones): its stop is
    // bounded, and it exits non-zero whatever the stop did.
    let stopped = match shutdown.failure() {
        None => running.await,
        Some(_) => tokio::time::timeout(FAILED_STOP_TIMEOUT, running).await.unwrap_or(Ok(())),
    };
    if let Some(reason) = shutdown.failure() {
        return Err(format!("stopped after a fatal error: {reason}").into());
    }
    stopped?;
    Ok(())
}

/// How long a failed service may take to stop (resign, drain) before it exits anyway: the
/// longest drain plus the longest resignation.
const FAILED_STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The process exit for [`run`]'s result: errors on stderr, prefixed with the binary name.
pub fn exit(binary: &str, result: Result<(), BoxError>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{binary}: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The flags of a service that joins a cluster (master, agent, gateway): where it listens,
/// how others reach it, the quorum, its work dir, its logs.
#[derive(clap::Args, Serialize, Debug, Default)]
pub struct MemberFlags {
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// The quorum: coord://host:port,host:port,host:port/root.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coord: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub work_dir: Option<PathBuf>,
    #[command(flatten)]
    #[serde(skip_serializing_if = "LogFlags::is_empty")]
    pub log: LogFlags,
    #[command(flatten)]
    #[serde(skip_serializing_if = "TlsFlags::is_empty")]
    pub tls: TlsFlags,
}
