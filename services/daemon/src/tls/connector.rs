//! The client side: connecting to a Marina server over mutual TLS, checking that it is a
//! server of the expected role (and signed by the cluster CA).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;

use super::{Identity, Role, Tls};

/// Connects to `host:port` of a URI over mutual TLS; for tonic channels
/// (`Endpoint::connect_with_connector`) and hyper clients alike.
#[derive(Clone)]
pub struct Connector {
    tls: Arc<Tls>,
    expect: &'static [Role],
    http1: bool,
}

impl Connector {
    pub(super) fn new(tls: Arc<Tls>, expect: &'static [Role]) -> Self {
        Connector { tls, expect, http1: false }
    }

    /// Offers HTTP/1.1 instead of HTTP/2 (for an HTTP/1.1 client).
    pub fn http1(mut self) -> Self {
        self.http1 = true;
        self
    }
}

impl tower::Service<http::Uri> for Connector {
    type Response = TlsIo;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<TlsIo>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let (tls, expect, http1) = (self.tls.clone(), self.expect, self.http1);
        Box::pin(async move {
            let invalid =
                |reason: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{uri}: {reason}"));
            let host = uri.host().ok_or_else(|| invalid("no host"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
            let port = uri.port_u16().ok_or_else(|| invalid("no port"))?;
            let stream = TcpStream::connect((host.as_str(), port)).await?;
            stream.set_nodelay(true)?;
            let config = tls.client_config(expect, http1).map_err(std::io::Error::other)?;
            // The name is sent (SNI) but not checked: the server is checked by its role.
            let name = ServerName::try_from(host).map_err(|_| invalid("not a host name or address"))?;
            let stream = tokio_rustls::TlsConnector::from(config).connect(name, stream).await?;
            Ok(TlsIo { inner: TokioIo::new(stream) })
        })
    }
}

/// A client connection over TLS, as hyper and tonic read and write it.
pub struct TlsIo {
    inner: TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
}

impl hyper::rt::Read for TlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for TlsIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
}

impl Connection for TlsIo {
    fn connected(&self) -> Connected {
        let connected = Connected::new();
        if self.inner.inner().get_ref().1.alpn_protocol() == Some(super::ALPN_H2) {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

/// Checks a server's certificate: signed by the cluster CA, naming one of the roles the
/// client expects.
#[derive(Debug)]
pub(super) struct ServerRole {
    roots: Arc<RootCertStore>,
    expect: &'static [Role],
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerRole {
    pub(super) fn new(roots: Arc<RootCertStore>, expect: &'static [Role]) -> Self {
        ServerRole { roots, expect, algorithms: super::provider().signature_verification_algorithms }
    }
}

impl ServerCertVerifier for ServerRole {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let identity = Identity::of_certificate(end_entity).map_err(rustls::Error::General)?;
        if !self.expect.contains(&identity.role) {
            let expected: Vec<&str> = self.expect.iter().map(|role| role.as_str()).collect();
            return Err(rustls::Error::General(format!(
                "the server is {identity}, not a {} the client meant to reach",
                expected.join(" or ")
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
