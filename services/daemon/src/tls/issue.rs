//! Making the cluster's CA and its certificates, in pure Rust (rcgen): what `marina certs`,
//! `marina dev` and the test harness use.
//!
//! One CA signs every certificate of a cluster. A certificate names its holder in a URI
//! SAN, `spiffe://marina/<role>[/<id>]`: servers read the caller's role from it, and
//! Marina's own clients check a server by it (and the CA), not by host name. DNS names and
//! IP addresses are for other clients (curl or a Marathon client on the gateway's port).

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use super::{Identity, Role};

const CA_NAME: &str = "Marina cluster CA";

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: {source}")]
    Crypto { what: &'static str, source: rcgen::Error },
}

fn crypto(what: &'static str) -> impl FnOnce(rcgen::Error) -> IssueError {
    move |source| IssueError::Crypto { what, source }
}

/// A certificate and its private key, PEM-encoded.
#[derive(Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// What to issue.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    pub role: Role,
    pub id: Option<&'a str>,
    pub dns: &'a [String],
    pub ip: &'a [IpAddr],
    pub days: i64,
}

/// A new CA, valid for `days`.
pub fn new_ca(days: i64) -> Result<Pem, IssueError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut params, days)?;
    let key = KeyPair::generate().map_err(crypto("generating the CA's key"))?;
    let cert = params.self_signed(&key).map_err(crypto("signing the CA"))?;
    Ok(Pem { cert: cert.pem(), key: key.serialize_pem() })
}

/// A certificate for `request`, signed by `ca`. Without DNS names or IP addresses it is
/// valid for localhost, 127.0.0.1 and ::1.
pub fn issue(ca: &Pem, request: &Request<'_>) -> Result<Pem, IssueError> {
    if let Some(id) = request.id
        && !Identity::valid_id(id)
    {
        return Err(IssueError::Invalid(format!("id {id:?}: only letters, digits, '-', '_' and '.'")));
    }
    let ca_key = KeyPair::from_pem(&ca.key).map_err(crypto("reading the CA's key"))?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key).map_err(crypto("reading the CA's certificate"))?;
    let who = Identity::new(request.role, request.id).to_string();
    let mut params = CertificateParams::default();
    params.distinguished_name = name(&who);
    params.subject_alt_names.push(SanType::URI(who.as_str().try_into().map_err(crypto("the identity URI"))?));
    let (dns, ip): (Vec<String>, Vec<IpAddr>) = if request.dns.is_empty() && request.ip.is_empty() {
        (vec!["localhost".into()], vec![[127, 0, 0, 1].into(), std::net::Ipv6Addr::LOCALHOST.into()])
    } else {
        (request.dns.to_vec(), request.ip.to_vec())
    };
    for name in dns {
        let san = name.as_str().try_into().map_err(|_| IssueError::Invalid(format!("{name:?} is not a DNS name")))?;
        params.subject_alt_names.push(SanType::DnsName(san));
    }
    params.subject_alt_names.extend(ip.into_iter().map(SanType::IpAddress));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    // Services are servers to their clients and clients of each other; the rest only call.
    params.extended_key_usages = if request.role.serves() {
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, request.days)?;
    let key = KeyPair::generate().map_err(crypto("generating the key"))?;
    let cert = params.signed_by(&key, &issuer).map_err(crypto("signing the certificate"))?;
    Ok(Pem { cert: cert.pem(), key: key.serialize_pem() })
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Marina");
    name.push(DnType::CommonName, common_name);
    name
}

/// Valid from a minute ago (clocks of a cluster differ a little) for `days`.
fn validity(params: &mut CertificateParams, days: i64) -> Result<(), IssueError> {
    if !(1..=36_500).contains(&days) {
        return Err(IssueError::Invalid(format!("{days} days: between 1 and 36500")));
    }
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(1);
    params.not_after = now + Duration::days(days);
    Ok(())
}

/// Writes `contents` to `path` whole (through a file beside it, renamed: a service that
/// reloads on change never reads half a certificate); a private key readable by its owner
/// only.
pub fn write(path: &std::path::Path, contents: &str, private: bool) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mode = if private { 0o600 } else { 0o644 };
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&partial)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&partial, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_name_their_holder_and_refuse_bad_requests() {
        let ca = new_ca(10).unwrap();
        assert!(ca.cert.starts_with("-----BEGIN CERTIFICATE-----") && ca.key.contains("PRIVATE KEY"));
        let ip = ["10.0.0.2".parse().unwrap()];
        let request = Request { role: Role::Coord, id: Some("2"), dns: &[], ip: &ip, days: 30 };
        let issued = issue(&ca, &request).unwrap();
        let der = rustls::pki_types::CertificateDer::from_pem_slice(issued.cert.as_bytes()).unwrap();
        assert_eq!(Identity::of_certificate(&der).unwrap().to_string(), "spiffe://marina/coord/2");
        assert!(issue(&ca, &Request { id: Some("../x"), ..request }).is_err(), "an id that is not a name");
        assert!(issue(&ca, &Request { days: 0, ..request }).is_err());
    }

    use rustls::pki_types::pem::PemObject;
}
