//! Signed releases on the host: a release file as a module set (`load.rs`: verify it against
//! the fleet's release keys, register its models, load its modules from their precompiled form
//! when the release carries one for this engine, compiling them otherwise), and a module
//! directory as a release's contents (`build.rs`, what `fleetctl release build` signs), and
//! the built-in modules and model as a module directory (`export.rs`); on a device, how an
//! offered release is installed through the releases it holds (`install.rs`, over
//! [`fleet_release::store`]: active, previous, candidate, durable), and a release offered by
//! the aggregator checked, fetched and installed (`agent.rs`).

mod agent;
#[cfg(feature = "compiler")]
mod build;
mod export;
mod install;
mod load;

pub use agent::{Accepted, DeviceLabels, ReleaseAgent};
#[cfg(feature = "compiler")]
pub use build::{BuildError, ReleaseContents, build_contents};
pub use export::export_embedded;
pub use fleet_release::store::{ReleaseStore, StoreState};
pub(crate) use install::load_set;
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

/// Where a host's release comes from and what it is checked against.
#[derive(Debug)]
pub struct ReleaseSource {
    /// A release file offered to the host (watched).
    pub path: Option<PathBuf>,
    pub trusted: TrustedKeys,
    /// Most bytes of artifacts this host takes.
    pub budget: u64,
    /// A device's store: what it installed survives restarts, an offered release is staged
    /// there and installed from there, and an older one is refused.
    pub store: Option<ReleaseStore>,
    /// Releases refused so far, by reason.
    pub refusals: Refusals,
}

impl ReleaseSource {
    pub fn new(
        path: Option<PathBuf>,
        trusted: TrustedKeys,
        budget: u64,
        store: Option<ReleaseStore>,
    ) -> Self {
        Self {
            path,
            trusted,
            budget,
            store,
            refusals: Refusals::default(),
        }
    }
}

/// Releases a host refused: counts by reason code, and the last refusal.
#[derive(Debug, Default)]
pub struct Refusals {
    inner: std::sync::Mutex<RefusalReport>,
}

/// What [`Refusals`] hold, as reported (`GET /v1/release` on a device).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RefusalReport {
    pub total: u64,
    pub by_reason: std::collections::BTreeMap<&'static str, u64>,
    /// The last refusal: its reason code, the error, and when (ms since the epoch).
    pub last: Option<(&'static str, String, i64)>,
}

impl Refusals {
    pub(crate) fn record(&self, error: &crate::registry::RegistryError) {
        let reason = error.reason();
        let mut report = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        report.total += 1;
        *report.by_reason.entry(reason).or_default() += 1;
        report.last = Some((
            reason,
            error.to_string(),
            chrono::Utc::now().timestamp_millis(),
        ));
    }

    pub fn report(&self) -> RefusalReport {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Why a release did not become a module set (its modules' own failures are
/// [`crate::registry::RegistryError::Load`]).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ReleaseLoadError {
    /// The release file was refused: signature, digests, budget, format.
    #[error("release {path}: {error}")]
    Refused { path: PathBuf, error: ReleaseError },
    /// The host's release store cannot be read or written.
    #[error("release store {dir}: {error}")]
    Store { dir: PathBuf, error: ReleaseError },
    /// Not newer than the active release of the same name (a replayed or older release).
    #[error("release {offered} is not newer than the active {active}; refused")]
    NotNewer { offered: String, active: String },
    /// Neither a release file nor an installed release.
    #[error("no release: no release file was given and none is installed")]
    Nothing,
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
            Self::Refused { error, .. } | Self::Store { error, .. } => error.reason(),
            Self::NotNewer { .. } => "not-newer",
            Self::Nothing => "none",
            Self::Model { .. } | Self::MissingModel { .. } => "model",
        }
    }
}
