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

/// Who a verified peer is: its device id and its certificate's serial number (what a
/// revocation names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub device: String,
    pub serial: Vec<u8>,
}

/// The device id in a DER certificate (its subject common name).
pub fn device_id_from_der(der: &[u8]) -> Result<String, IdentityError> {
    peer_from_der(der).map(|p| p.device)
}

/// The device id and serial number of a DER certificate.
pub fn peer_from_der(der: &[u8]) -> Result<Peer, IdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| IdentityError::Unparsable(e.to_string()))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())
        .ok_or(IdentityError::NoCommonName)?;
    Ok(Peer {
        device: cn.to_string(),
        serial: cert.raw_serial().to_vec(),
    })
}

/// The device id of a connection's verified peer.
pub fn device_id(connection: &quinn::Connection) -> Result<String, IdentityError> {
    peer(connection).map(|p| p.device)
}

/// The device id and certificate serial of a connection's verified peer.
pub fn peer(connection: &quinn::Connection) -> Result<Peer, IdentityError> {
    let identity = connection
        .peer_identity()
        .ok_or(IdentityError::NoCertificate)?;
    let certs = identity
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .map_err(|_| IdentityError::NoCertificate)?;
    let leaf = certs.first().ok_or(IdentityError::NoCertificate)?;
    peer_from_der(leaf)
}
