//! `marina certs`: the cluster's certificate authority and the certificates of its services
//! and operators, made in pure Rust (rcgen), no openssl needed.
//!
//! One CA signs every certificate of a cluster. A certificate names who holds it in a URI
//! SAN, `spiffe://marina/<role>` or `spiffe://marina/<role>/<id>` (`coord/2`, `agent`,
//! `operator`): servers read the caller's role from it to decide what it may call. DNS names
//! and IP addresses are what clients check a server against.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// The roles a certificate may carry, and what each is for.
pub const ROLES: &[&str] = &["coord", "master", "agent", "gateway", "operator"];

/// The URI every identity is written under.
pub const IDENTITY_PREFIX: &str = "spiffe://marina/";

const CA_NAME: &str = "Marina cluster CA";

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
        /// coord, master, agent, gateway or operator.
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(ROLES))]
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
            let ca = new_ca(days)?;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            write(&cert, &ca.cert, false)?;
            write(&key, &ca.key, true)?;
            println!("CA: {} (key: {})", cert.display(), key.display());
        }
        CertsCommand::Issue { role, id, dns, ip, dir, days } => {
            let ca = Pem::read(&dir.join("ca.pem"), &dir.join("ca-key.pem"))?;
            let request = Request { role: &role, id: id.as_deref(), dns: &dns, ip: &ip, days };
            let issued = issue(&ca, &request)?;
            let name = match &id {
                Some(id) => format!("{role}-{id}"),
                None => role.clone(),
            };
            let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}-key.pem")));
            write(&cert, &issued.cert, false)?;
            write(&key, &issued.key, true)?;
            println!("{}: {} (key: {})", identity(&role, id.as_deref()), cert.display(), key.display());
        }
    }
    Ok(())
}

/// A certificate and its private key, PEM-encoded.
pub struct Pem {
    pub cert: String,
    pub key: String,
}

impl Pem {
    fn read(cert: &Path, key: &Path) -> anyhow::Result<Pem> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).with_context(|| {
                format!("reading {} (make a CA first with `marina certs init --dir DIR`)", path.display())
            })
        };
        Ok(Pem { cert: read(cert)?, key: read(key)? })
    }
}

/// What to issue.
pub struct Request<'a> {
    pub role: &'a str,
    pub id: Option<&'a str>,
    pub dns: &'a [String],
    pub ip: &'a [IpAddr],
    pub days: i64,
}

/// `spiffe://marina/<role>[/<id>]`.
pub fn identity(role: &str, id: Option<&str>) -> String {
    match id {
        Some(id) => format!("{IDENTITY_PREFIX}{role}/{id}"),
        None => format!("{IDENTITY_PREFIX}{role}"),
    }
}

/// A new CA, valid for `days`.
pub fn new_ca(days: i64) -> anyhow::Result<Pem> {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut params, days)?;
    let key = KeyPair::generate().context("generating the CA's key")?;
    let cert = params.self_signed(&key).context("signing the CA")?;
    Ok(Pem { cert: cert.pem(), key: key.serialize_pem() })
}

/// A certificate for `request`, signed by `ca`.
pub fn issue(ca: &Pem, request: &Request<'_>) -> anyhow::Result<Pem> {
    if !ROLES.contains(&request.role) {
        bail!("unknown role {:?} (one of {})", request.role, ROLES.join(", "));
    }
    if let Some(id) = request.id
        && (id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        bail!("--id {id:?}: only letters, digits, '-', '_' and '.'");
    }
    let ca_key = KeyPair::from_pem(&ca.key).context("reading the CA's key")?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key).context("reading the CA's certificate")?;
    let who = identity(request.role, request.id);
    let mut params = CertificateParams::default();
    params.distinguished_name = name(&who);
    params.subject_alt_names.push(SanType::URI(who.as_str().try_into().context("the identity URI")?));
    let (dns, ip): (Vec<String>, Vec<IpAddr>) = if request.dns.is_empty() && request.ip.is_empty() {
        (vec!["localhost".into()], vec![[127, 0, 0, 1].into(), std::net::Ipv6Addr::LOCALHOST.into()])
    } else {
        (request.dns.to_vec(), request.ip.to_vec())
    };
    for name in dns {
        let san = name.as_str().try_into().with_context(|| format!("--dns {name:?}"))?;
        params.subject_alt_names.push(SanType::DnsName(san));
    }
    params.subject_alt_names.extend(ip.into_iter().map(SanType::IpAddress));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    // Services are servers to their clients and clients of each other; operators only call.
    params.extended_key_usages = match request.role {
        "operator" => vec![ExtendedKeyUsagePurpose::ClientAuth],
        _ => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, request.days)?;
    let key = KeyPair::generate().context("generating the key")?;
    let cert = params.signed_by(&key, &issuer).context("signing the certificate")?;
    Ok(Pem { cert: cert.pem(), key: key.serialize_pem() })
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Marina");
    name.push(DnType::CommonName, common_name);
    name
}

/// Valid from a minute ago (clocks of a cluster differ a little) for `days`.
fn validity(params: &mut CertificateParams, days: i64) -> anyhow::Result<()> {
    if !(1..=36_500).contains(&days) {
        bail!("--days {days}: between 1 and 36500");
    }
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(1);
    params.not_after = now + Duration::days(days);
    Ok(())
}

/// Writes `contents` to `path`; a private key readable by its owner only.
fn write(path: &Path, contents: &str, private: bool) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mode = if private { 0o600 } else { 0o644 };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(contents.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_name_their_holder_and_refuse_bad_requests() {
        let ca = new_ca(10).unwrap();
        assert!(ca.cert.starts_with("-----BEGIN CERTIFICATE-----") && ca.key.contains("PRIVATE KEY"));
        let ip = ["10.0.0.2".parse().unwrap()];
        let request = Request { role: "coord", id: Some("2"), dns: &[], ip: &ip, days: 30 };
        let issued = issue(&ca, &request).unwrap();
        assert!(issued.cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(identity("coord", Some("2")), "spiffe://marina/coord/2");
        assert!(issue(&ca, &Request { role: "root", ..request }).is_err(), "an unknown role");
        assert!(issue(&ca, &Request { id: Some("../x"), ..request }).is_err(), "an id that is not a name");
        assert!(issue(&ca, &Request { days: 0, ..request }).is_err());
    }
}
