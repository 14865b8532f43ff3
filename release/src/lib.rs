//! Signed fleet releases, without I/O beyond files: a release is one unit (the three module
//! components with their configuration, the models they need, optionally each component
//! precompiled for an engine), described by a manifest that names every artifact by sha256,
//! signed with an operator's ed25519 key and verified on the device against the keys its fleet
//! directory trusts.
//!
//! - [`manifest`]: the manifest, its canonical encoding and its rules.
//! - [`keys`]: signing keys, trusted keys, the signature file.
//! - [`bundle`]: the release file (a tar archive) and its verified form.
//! - [`store`]: releases on disk, content-addressed: a device's active, previous and candidate
//!   release; the aggregator's published releases.

pub mod bundle;
pub mod keys;
pub mod manifest;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::path::PathBuf;

use thiserror::Error;

pub use bundle::{VerifiedRelease, open_bundle, read_bundle, verify_manifest, write_bundle};
pub use keys::{KeyId, ReleaseSigner, SignatureFile, TrustedKeys};
pub use manifest::{
    Artifact, ArtifactKind, Encoding, ModelEntry, ModuleEntry, ModuleKind, Precompiled, ReleaseId,
    ReleaseManifest, Sha256Digest,
};

/// The default bound on a release's artifacts (a handset's budget may be smaller).
pub const DEFAULT_BUDGET: u64 = 64 << 20;

/// Why a release was refused. [`ReleaseError::reason`] is the short code reported to the
/// operator and counted in metrics.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ReleaseError {
    /// The manifest breaks a rule, or is not in canonical form.
    #[error("invalid release manifest: {0}")]
    Manifest(String),
    /// The release carries no signature.
    #[error("the release is not signed (no release.sig after release.json)")]
    Unsigned,
    /// Signed by a key this fleet does not trust.
    #[error("signed by key {key}, which this fleet does not trust (release-keys/)")]
    UntrustedKey { key: KeyId },
    /// The signature does not verify.
    #[error("bad signature: {0}")]
    Signature(String),
    /// An artifact is missing, unlisted, or not what the manifest says.
    #[error("artifact {digest}: {reason}")]
    Artifact {
        digest: Sha256Digest,
        reason: String,
    },
    /// The file is truncated or not a release file.
    #[error("corrupt release file: {0}")]
    Corrupt(String),
    /// Larger than the device may take.
    #[error("the release's artifacts take {size} bytes, over this device's budget of {budget}")]
    TooLarge { size: u64, budget: u64 },
    /// A key file is malformed, or no randomness to make one.
    #[error("{0}")]
    Key(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl ReleaseError {
    /// A short, stable code for the reason (`fleetctl status`, metrics labels).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Manifest(_) => "manifest",
            Self::Unsigned => "unsigned",
            Self::UntrustedKey { .. } => "untrusted-key",
            Self::Signature(_) => "signature",
            Self::Artifact { .. } => "digest",
            Self::Corrupt(_) => "corrupt",
            Self::TooLarge { .. } => "too-large",
            Self::Key(_) => "key",
            Self::Io { .. } => "io",
        }
    }
}
