//! The transport under the sync protocol.
//!
//! - [`pki`]: the fleet CA, per-device and server certificates, revocation (files in one
//!   directory, made by `aggregator certs ...`).
//! - [`tls`]: quinn endpoints with mutual TLS. The aggregator trusts only the fleet CA and
//!   refuses revoked or expired certificates; the device trusts only the fleet CA.
//! - [`identity`]: the device id, taken from the verified certificate, never from a payload.
//! - [`framed`]: [`fleet_proto::Frame`]s over QUIC streams.

pub mod framed;
pub mod identity;
pub mod pki;
pub mod tls;

/// ALPN of the sync protocol.
pub const ALPN: &[u8] = b"fleet-sync/1";

/// The time types the PKI API takes.
pub use time;
