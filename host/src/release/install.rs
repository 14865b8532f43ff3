//! Installing a release: the module set a [`ReleaseSource`] stands for. Without a store, the
//! release file is verified and loaded. With a device's store, an offered release file that
//! is newer than the active release is staged (written whole, as the candidate), loaded from
//! the store (verified again) and only then made active; a crash at any point leaves the
//! device on one complete release, and the next start resumes the install.

use fleet_release::{ReleaseError, ReleaseManifest, TrustedKeys, VerifiedRelease};

use super::load::module_set;
use super::{ReleaseLoadError, ReleaseSource, ReleaseStore};
use crate::engine::SandboxEngine;
use crate::registry::{ModuleSet, RegistryError};

/// The set to run from `source`, counting what is refused in `source.refusals`.
pub(crate) fn load_set(
    engine: &SandboxEngine,
    source: &ReleaseSource,
    generation: u64,
) -> Result<ModuleSet, RegistryError> {
    install(engine, source, generation).inspect_err(|e| {
        if !matches!(e, RegistryError::Release(ReleaseLoadError::Nothing)) {
            source.refusals.record(e);
        }
    })
}

/// The set to run from `source`. `generation` 1 is the host's start: a refused offer is then
/// logged and the installed release runs; later (a reload), a refused offer is an error and
/// the running set stays.
fn install(
    engine: &SandboxEngine,
    source: &ReleaseSource,
    generation: u64,
) -> Result<ModuleSet, RegistryError> {
    let Some(store) = &source.store else {
        let path = source.path.as_ref().ok_or(ReleaseLoadError::Nothing)?;
        let release =
            fleet_release::open_bundle(path, &source.trusted, source.budget).map_err(|error| {
                ReleaseLoadError::Refused {
                    path: path.clone(),
                    error,
                }
            })?;
        return loaded(engine, &release, generation);
    };
    let starting = generation == 1;
    if let Err(refused) = offer(store, source) {
        let refused = RegistryError::from(refused);
        if !starting {
            return Err(refused);
        }
        tracing::error!(error = %refused, "release refused; starting on the installed release");
        source.refusals.record(&refused);
    }
    let stored = stored(store);
    let state = store.state().map_err(stored)?;
    if let Some(candidate) = state.candidate {
        let installed = store
            .load(
                &candidate,
                &source.trusted,
                source.budget,
                Some(engine.compatibility()),
            )
            .map_err(stored)
            .map_err(RegistryError::from)
            .and_then(|release| loaded(engine, &release, generation));
        match installed {
            Ok(set) => {
                store.activate(&candidate).map_err(stored)?;
                tracing::info!(release = %candidate, "release installed and active");
                return Ok(set);
            }
            Err(e) => {
                store.drop_candidate(&candidate).map_err(stored)?;
                // At start a device stays on its active release (or its built-in modules);
                // a host given only a release file has nothing else to run.
                if !starting || (state.active.is_none() && source.path.is_some()) {
                    return Err(e);
                }
                tracing::error!(error = %e, "the staged release does not load; staying on the active one");
                source.refusals.record(&e);
            }
        }
    }
    let active = state.active.ok_or(ReleaseLoadError::Nothing)?;
    let release = store
        .load(
            &active,
            &source.trusted,
            source.budget,
            Some(engine.compatibility()),
        )
        .map_err(stored)?;
    loaded(engine, &release, generation)
}

/// Stages the offered release file if it verifies and is newer than the active release.
fn offer(store: &ReleaseStore, source: &ReleaseSource) -> Result<(), ReleaseLoadError> {
    let Some(path) = &source.path else {
        return Ok(());
    };
    let refused = |error| ReleaseLoadError::Refused {
        path: path.clone(),
        error,
    };
    let stored = stored(store);
    let offered =
        fleet_release::open_bundle(path, &source.trusted, source.budget).map_err(refused)?;
    let state = store.state().map_err(stored)?;
    if state.active == Some(offered.id) || state.candidate == Some(offered.id) {
        return Ok(());
    }
    check_newer(store, &source.trusted, &offered.manifest)?;
    store.stage(&offered).map_err(stored)?;
    tracing::info!(release = %offered.label(), "release verified and staged");
    Ok(())
}

/// Refuses an offered release that is not newer than the active release of the same name
/// (a replayed or older release). The active release's signed manifest says its version; its
/// artifacts are verified when it is loaded.
pub(crate) fn check_newer(
    store: &ReleaseStore,
    trusted: &TrustedKeys,
    offered: &ReleaseManifest,
) -> Result<(), ReleaseLoadError> {
    let stored = stored(store);
    let Some(active) = store.state().map_err(stored)?.active else {
        return Ok(());
    };
    let active = store.manifest(&active, trusted).map_err(stored)?;
    if active.name == offered.name && offered.version <= active.version {
        return Err(ReleaseLoadError::NotNewer {
            offered: offered.label(),
            active: active.label(),
        });
    }
    Ok(())
}

/// How a store failure is reported.
pub(crate) fn stored(
    store: &ReleaseStore,
) -> impl Fn(ReleaseError) -> ReleaseLoadError + Copy + '_ {
    move |error| ReleaseLoadError::Store {
        dir: store.dir().to_path_buf(),
        error,
    }
}

fn loaded(
    engine: &SandboxEngine,
    release: &VerifiedRelease,
    generation: u64,
) -> Result<ModuleSet, RegistryError> {
    let (set, stats) = module_set(engine, release, generation)?;
    tracing::info!(
        release = %release.label(),
        precompiled = stats.precompiled,
        compiled = stats.compiled,
        "release verified and loaded"
    );
    Ok(set)
}
