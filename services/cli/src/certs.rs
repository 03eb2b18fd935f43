//! `marina certs`: the cluster's certificate authority and the certificates of its services
//! and operators, made in pure Rust (rcgen), no openssl needed.
//!
//! One CA signs every certificate of a cluster. A certificate names who holds it in a URI
//! SAN, `spiffe://marina/<role>` or `spiffe://marina/<role>/<id>` (`coord/2`, `agent`,
//! `operator`): servers read the caller's role from it to decide what it may call, and
//! Marina's own clients check a server by it. DNS names and IP addresses are for other
//! clients of the gateway (curl, Marathon clients), which check a server by name.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use marina_daemon::tls::issue::{self, Pem, Request};
use marina_daemon::tls::{Identity, Role};

#[derive(Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    command: CertsCommand,
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Make the cluster's CA: `<dir>/ca.pem` (give it to every service and client) and
    /// `<dir>/ca-key.pem` (keep it secret, off the cluster's machines if you can).
    Init {
        /// Where the CA goes.
        #[arg(long, default_value = "tls")]
        dir: PathBuf,
        /// How long the CA is valid.
        #[arg(long, default_value_t = 3650)]
        days: i64,
        /// Replace an existing CA (every certificate it signed stops being trusted).
        #[arg(long)]
        force: bool,
    },
    /// Issue a certificate signed by the CA in `<dir>`: `<dir>/<role>[-<id>].pem` and its key
    /// `<dir>/<role>[-<id>]-key.pem`. Without --dns or --ip it is valid for localhost,
    /// 127.0.0.1 and ::1.
    Issue {
        /// coord, master, agent, gateway, framework (another scheduler on the masters),
        /// operator, or monitor (a metrics scraper: /metrics and /health only).
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(Role::names()))]
        role: String,
        /// Which one (a coord node's id, say), written into its identity.
        #[arg(long)]
        id: Option<String>,
        /// A DNS name clients reach it by (repeatable).
        #[arg(long)]
        dns: Vec<String>,
        /// An IP address clients reach it by (repeatable).
        #[arg(long)]
        ip: Vec<IpAddr>,
        /// Where the CA is, and where the certificate goes.
        #[arg(long, default_value = "tls")]
        dir: PathBuf,
        /// How long the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
}

pub fn run(args: CertsArgs) -> anyhow::Result<()> {
    match args.command {
        CertsCommand::Init { dir, days, force } => {
            let (cert, key) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
            if !force && (cert.exists() || key.exists()) {
                bail!("{} already holds a CA; --force replaces it (and distrusts what it signed)", dir.display());
            }
            let ca = issue::new_ca(days)?;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            write(&cert, &ca.cert, false)?;
            write(&key, &ca.key, true)?;
            println!("CA: {} (key: {})", cert.display(), key.display());
        }
        CertsCommand::Issue { role, id, dns, ip, dir, days } => {
            let role: Role = role.parse().map_err(anyhow::Error::msg)?;
            let ca = read_ca(&dir)?;
            let request = Request { role, id: id.as_deref(), dns: &dns, ip: &ip, days };
            let (cert, key) = issue_into(&ca, &request, &dir)?;
            println!("{}: {} (key: {})", Identity::new(role, id.as_deref()), cert.display(), key.display());
        }
    }
    Ok(())
}

/// The CA in `dir` (`ca.pem`, `ca-key.pem`).
pub fn read_ca(dir: &Path) -> anyhow::Result<Pem> {
    let read = |path: &Path| {
        std::fs::read_to_string(path)
            .with_context(|| format!("reading {} (make a CA first with `marina certs init --dir DIR`)", path.display()))
    };
    Ok(Pem { cert: read(&dir.join("ca.pem"))?, key: read(&dir.join("ca-key.pem"))? })
}

/// Issues `request` with `ca` into `<dir>/<role>[-<id>].pem` and its key; their paths.
pub fn issue_into(ca: &Pem, request: &Request<'_>, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let issued = issue::issue(ca, request)?;
    let name = match request.id {
        Some(id) => format!("{}-{id}", request.role),
        None => request.role.to_string(),
    };
    let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}-key.pem")));
    write(&key, &issued.key, true)?;
    write(&cert, &issued.cert, false)?;
    Ok((cert, key))
}

fn write(path: &Path, contents: &str, private: bool) -> anyhow::Result<()> {
    issue::write(path, contents, private).with_context(|| format!("writing {}", path.display()))
}
