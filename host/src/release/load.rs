use std::path::PathBuf;
use std::sync::Arc;

use fleet_release::VerifiedRelease;

use super::{ReleaseInfo, ReleaseLoadError};
use crate::engine::SandboxEngine;
use crate::inference::ModelRegistry;
use crate::module::{LoadError, LoadedModule, Manifest};
use crate::registry::{ModuleSet, RegistryError, check_features, scorer_model};

/// How each module of a loaded release was obtained.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadStats {
    /// Modules loaded from a precompiled artifact.
    pub precompiled: usize,
    /// Modules compiled here (no precompiled form for this engine, or it failed to load).
    pub compiled: usize,
}

/// The module set of a verified release.
pub fn module_set(
    engine: &SandboxEngine,
    release: &VerifiedRelease,
    generation: u64,
) -> Result<(ModuleSet, LoadStats), RegistryError> {
    let label = release.label();
    let mut models = ModelRegistry::new();
    for entry in &release.manifest.models {
        let bytes = release.artifact(&entry.artifact).expect("verified");
        let model = engine
            .load_model(&entry.name, &entry.artifact.to_string(), bytes)
            .map_err(|error| ReleaseLoadError::Model {
                release: label.clone(),
                error,
            })?;
        models.insert_shared(model);
    }
    let models = Arc::new(models);
    let mut stats = LoadStats::default();
    let compatibility = engine.compatibility();
    let mut load = |kind| -> Result<LoadedModule, RegistryError> {
        let entry = release
            .manifest
            .module(kind)
            .expect("a verified manifest has every kind");
        let manifest = Manifest {
            name: entry.name.clone(),
            kind,
            version: entry.version.clone(),
            component: PathBuf::from(format!("{label}/{}", entry.component)),
            config: entry
                .config
                .iter()
                .map(|(k, v)| (k.clone(), toml::Value::String(v.clone())))
                .collect(),
        };
        let digest = release
            .manifest
            .artifact(&entry.component)
            .expect("a verified manifest lists its components")
            .content_digest()
            .to_string();
        let mut refused = None;
        if let Some(pre) = entry.precompiled.iter().find(|p| p.engine == compatibility) {
            let bytes = release.artifact(&pre.artifact).expect("verified");
            // SAFETY: the bytes are an artifact of a release whose signature and digests were
            // verified above, precompiled for an engine of this compatibility.
            match unsafe {
                LoadedModule::from_precompiled(
                    engine,
                    &models,
                    manifest.clone(),
                    digest.clone(),
                    bytes,
                )
            } {
                Ok(module) => {
                    stats.precompiled += 1;
                    return Ok(module);
                }
                Err(LoadError::Compile { reason, .. }) => {
                    tracing::warn!(module = %entry.name, %reason, "precompiled form refused; compiling");
                    refused = Some(reason);
                }
                Err(other) => return Err(other.into()),
            }
        }
        // A device fetches only the form it loads: with the precompiled one refused, there
        // is no component to compile.
        let Some(bytes) = release.artifact(&entry.component) else {
            return Err(LoadError::Compile {
                module: entry.name.clone(),
                reason: format!(
                    "{}; the component was not fetched",
                    refused.unwrap_or_else(|| "no form of it to load".into())
                ),
            }
            .into());
        };
        stats.compiled += 1;
        Ok(LoadedModule::from_bytes(engine, &models, manifest, bytes)?)
    };
    let features = load(fleet_release::ModuleKind::Features)?;
    let scorer = load(fleet_release::ModuleKind::Scorer)?;
    let policy = load(fleet_release::ModuleKind::Policy)?;
    let scorer_model = scorer_model(&scorer);
    if models.get(&scorer_model).is_none() {
        return Err(ReleaseLoadError::MissingModel {
            release: label,
            model: scorer_model,
        }
        .into());
    }
    let set = ModuleSet {
        generation,
        features,
        scorer,
        policy,
        models,
        release: Some(Arc::new(ReleaseInfo::of(release))),
    };
    check_features(engine, &set)?;
    Ok((set, stats))
}
