//! Who is on the other end: the device id is the common name of the certificate the TLS
//! handshake verified against the fleet CA.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("the peer presented no certificate")]
    NoCertificate,
    #[error("the peer certificate does not parse: {0}")]
    Unparsable(String),
    #[error("the peer certificate has no usable common name")]
    NoCommonName,
}

/// The device id in a DER certificate (its subject common name).
pub fn device_id_from_der(der: &[u8]) -> Result<String, IdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| IdentityError::Unparsable(e.to_string()))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())
        .ok_or(IdentityError::NoCommonName)?;
    Ok(cn.to_string())
}

/// The device id of a connection's verified peer.
pub fn device_id(connection: &quinn::Connection) -> Result<String, IdentityError> {
    let identity = connection
        .peer_identity()
        .ok_or(IdentityError::NoCertificate)?;
    let certs = identity
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .map_err(|_| IdentityError::NoCertificate)?;
    let leaf = certs.first().ok_or(IdentityError::NoCertificate)?;
    device_id_from_der(leaf)
}
