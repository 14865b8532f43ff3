//! Signed releases on the host: a release file as a module set (`load.rs`: verify it against
//! the fleet's release keys, register its models, load its modules from their precompiled form
//! when the release carries one for this engine, compiling them otherwise), and a module
//! directory as a release's contents (`build.rs`, what `fleetctl release build` signs), and
//! the built-in modules and model as a module directory (`export.rs`).

mod build;
mod export;
mod load;

pub use build::{BuildError, ReleaseContents, build_contents};
pub use export::export_embedded;
pub(crate) use load::load_set;
pub use load::{LoadStats, module_set};

use std::path::PathBuf;

use fleet_release::{ReleaseError, ReleaseId, TrustedKeys, VerifiedRelease};
use thiserror::Error;

use crate::inference::InferenceError;

/// Which release a module set came from; decisions record its label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseInfo {
    pub id: ReleaseId,
    pub name: String,
    pub version: semver::Version,
    /// `name@version+` and 12 hex digits of the id.
    pub label: String,
}

impl ReleaseInfo {
    pub fn of(release: &VerifiedRelease) -> Self {
        Self {
            id: release.id,
            name: release.manifest.name.clone(),
            version: release.manifest.version.clone(),
            label: release.label(),
        }
    }
}

/// A release file and what it is checked against.
#[derive(Debug)]
pub struct ReleaseSource {
    pub path: PathBuf,
    pub trusted: TrustedKeys,
    /// Most bytes of artifacts this host takes.
    pub budget: u64,
}

/// Why a release did not become a module set (its modules' own failures are
/// [`RegistryError::Load`]).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ReleaseLoadError {
    /// The release file was refused: signature, digests, budget, format.
    #[error("release {path}: {error}")]
    Refused { path: PathBuf, error: ReleaseError },
    /// A model of the release did not load.
    #[error("release {release}: {error}")]
    Model {
        release: String,
        error: InferenceError,
    },
    /// The scorer names a model the release does not carry.
    #[error(
        "release {release}: the scorer reads model {model:?}, which the release does not carry"
    )]
    MissingModel { release: String, model: String },
}

impl ReleaseLoadError {
    /// A short code for the reason (metrics, the operator's status).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Refused { error, .. } => error.reason(),
            Self::Model { .. } | Self::MissingModel { .. } => "model",
        }
    }
}
