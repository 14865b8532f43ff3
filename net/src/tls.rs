//! quinn endpoint configurations with mutual TLS 1.3 (rustls, ring).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use thiserror::Error;

use crate::ALPN;
use crate::pki::{DeviceFiles, Pki};

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("QUIC crypto configuration: {0}")]
    Quic(String),
}

fn pem_error(path: &Path) -> impl Fn(rustls::pki_types::pem::Error) -> TlsError + '_ {
    move |e| TlsError::Pem {
        path: path.into(),
        message: e.to_string(),
    }
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_file_iter(path)
        .map_err(pem_error(path))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error(path))
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(pem_error(path))
}

fn roots(ca: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(ca)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Transport settings shared by both ends: keep-alives under the idle timeout, so a quiet
/// but healthy link stays up and a dead one is noticed.
fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    // Three keep-alives per idle timeout survive a lost one; more only cost packets (with
    // ten thousand connections, 2 s keep-alives were as many packets as the events).
    t.keep_alive_interval(Some(Duration::from_secs(3)));
    t.max_idle_timeout(Some(Duration::from_secs(10).try_into().expect("in range")));
    Arc::new(t)
}

/// The aggregator: presents `server.pem`, accepts only clients with a certificate from the
/// fleet CA that is unexpired and not in `crl.pem`.
pub fn server_config(pki: &Pki) -> Result<quinn::ServerConfig, TlsError> {
    let crl_path = pki.crl();
    let crls = CertificateRevocationListDer::pem_file_iter(&crl_path)
        .map_err(pem_error(&crl_path))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error(&crl_path))?;
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(&pki.ca_cert())?), provider())
            .with_crls(crls)
            .only_check_end_entity_revocation()
            .build()?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&pki.server_cert())?, key(&pki.server_key())?)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport());
    Ok(config)
}

/// A device: presents its own certificate, trusts only the fleet CA.
pub fn client_config(ca: &Path, device: &DeviceFiles) -> Result<quinn::ClientConfig, TlsError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca)?)
        .with_client_auth_cert(certs(&device.cert)?, key(&device.key)?)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport());
    Ok(config)
}
