//! The module set a pipeline runs (one features, one scorer, one policy module) and its hot
//! swap: a new set is loaded and checked off to the side, then published atomically. A batch
//! takes the current set when it starts and finishes on it, so a swap lands between batches.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use thiserror::Error;

use crate::engine::SandboxEngine;
use crate::inference::ModelRegistry;
use crate::module::{LoadError, LoadedModule, Manifest, ModuleKind, manifests_in};
use crate::release::{ReleaseInfo, ReleaseLoadError, ReleaseSource};

/// The modules one batch runs through and the models its scorer reads (a release swaps them
/// together), with a generation number that changes on every swap.
#[derive(Debug)]
pub struct ModuleSet {
    pub generation: u64,
    pub features: LoadedModule,
    pub scorer: LoadedModule,
    pub policy: LoadedModule,
    pub models: Arc<ModelRegistry>,
    /// The signed release the set came from, if it came from one.
    pub release: Option<Arc<ReleaseInfo>>,
}

impl ModuleSet {
    /// What decides how the set behaves, as one number: a hash of its modules' labels
    /// (component and configuration) and its models' digests. Two sets with the same identity
    /// decide alike.
    pub fn identity(&self) -> u64 {
        let mut parts = vec![
            self.features.label(),
            self.scorer.label(),
            self.policy.label(),
        ];
        let mut models: Vec<String> = self
            .models
            .iter()
            .map(|m| format!("{}={}", m.name, m.digest))
            .collect();
        models.sort();
        parts.extend(models);
        xxhash_rust::xxh3::xxh3_64(parts.join("\u{1f}").as_bytes())
    }

    /// The release label decisions record (`name@version+id`), if the set is a release.
    pub fn release_label(&self) -> Option<&str> {
        self.release.as_deref().map(|r| r.label.as_str())
    }

    /// The module of one stage.
    pub fn module(&self, stage: crate::decision::Stage) -> &LoadedModule {
        use crate::decision::Stage;
        match stage {
            Stage::Features => &self.features,
            Stage::Scorer => &self.scorer,
            Stage::Policy => &self.policy,
        }
    }
}

/// Why a module set could not be assembled.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// One module failed to load.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The directory does not hold exactly one module of each kind.
    #[error("module directory {dir}: {reason}")]
    Layout { dir: PathBuf, reason: String },
    /// A release was refused (signature, digests, budget) or its models did not load.
    #[error(transparent)]
    Release(#[from] ReleaseLoadError),
    /// The features module and the model disagree on the feature list.
    #[error("features module {module} produces {produced:?} but model {model} reads {expected:?}")]
    FeatureMismatch {
        module: String,
        model: String,
        produced: Vec<String>,
        expected: Vec<String>,
    },
}

impl RegistryError {
    /// A short code for the reason (a refused release's report, metrics).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Load(_) => "module",
            Self::Layout { .. } => "layout",
            Self::Release(e) => e.reason(),
            Self::FeatureMismatch { .. } => "features",
        }
    }
}

/// Where modules come from.
#[derive(Clone, Debug)]
pub enum ModuleSource {
    /// The components built into this binary, with default configuration.
    Embedded,
    /// A directory of `<name>.toml` manifests and their components.
    Dir(PathBuf),
    /// A signed release file, verified against the fleet's release keys on every load.
    Release(Arc<ReleaseSource>),
}

/// Holds the current [`ModuleSet`] and swaps it.
pub struct ModuleRegistry {
    engine: Arc<SandboxEngine>,
    models: Arc<ModelRegistry>,
    source: ModuleSource,
    current: ArcSwap<ModuleSet>,
    generations: AtomicU64,
    /// Serializes writers (reload, replace), so one never overwrites another's set; readers
    /// never take it.
    writer: Mutex<()>,
}

impl ModuleRegistry {
    /// Loads the first set from `source`.
    pub fn new(
        engine: Arc<SandboxEngine>,
        models: Arc<ModelRegistry>,
        source: ModuleSource,
    ) -> Result<Self, RegistryError> {
        let set = load_set(&engine, &models, &source, 1)?;
        Ok(Self {
            engine,
            models,
            source,
            current: ArcSwap::from_pointee(set),
            generations: AtomicU64::new(1),
            writer: Mutex::new(()),
        })
    }

    /// A registry whose first set is `set`, loaded already (many devices of one process
    /// starting on the same modules load them once); later reloads read `source`.
    pub fn starting_with(
        engine: Arc<SandboxEngine>,
        models: Arc<ModelRegistry>,
        source: ModuleSource,
        set: Arc<ModuleSet>,
    ) -> Self {
        let generation = set.generation;
        Self {
            engine,
            models,
            source,
            current: ArcSwap::new(set),
            generations: AtomicU64::new(generation),
            writer: Mutex::new(()),
        }
    }

    /// The set new batches run on.
    pub fn current(&self) -> Arc<ModuleSet> {
        self.current.load_full()
    }

    pub fn engine(&self) -> &Arc<SandboxEngine> {
        &self.engine
    }

    /// The models of sets that do not come from a release (a release carries its own).
    pub fn models(&self) -> &Arc<ModelRegistry> {
        &self.models
    }

    /// Reloads every module from the source and swaps the set in. On error the current set
    /// stays, untouched.
    pub fn reload(&self) -> Result<Arc<ModuleSet>, RegistryError> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let generation = self.generations.fetch_add(1, Ordering::SeqCst) + 1;
        let set = Arc::new(load_set(
            &self.engine,
            &self.models,
            &self.source,
            generation,
        )?);
        self.current.store(set.clone());
        tracing::info!(
            generation,
            features = %set.features.label(),
            scorer = %set.scorer.label(),
            policy = %set.policy.label(),
            "module set swapped in"
        );
        Ok(set)
    }

    /// Replaces one module (already loaded and checked) and swaps the set in.
    pub fn replace(&self, module: LoadedModule) -> Result<Arc<ModuleSet>, RegistryError> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.current();
        let generation = self.generations.fetch_add(1, Ordering::SeqCst) + 1;
        // With one module replaced the set is no longer the signed release it came from.
        let mut set = ModuleSet {
            generation,
            features: current.features.clone(),
            scorer: current.scorer.clone(),
            policy: current.policy.clone(),
            models: current.models.clone(),
            release: None,
        };
        match module.kind() {
            ModuleKind::Features => set.features = module,
            ModuleKind::Scorer => set.scorer = module,
            ModuleKind::Policy => set.policy = module,
        }
        check_features(&self.engine, &set)?;
        let set = Arc::new(set);
        self.current.store(set.clone());
        Ok(set)
    }

    pub fn source(&self) -> &ModuleSource {
        &self.source
    }

    /// Whether the source can change on disk (a directory or a release file).
    pub fn is_watchable(&self) -> bool {
        !matches!(self.source, ModuleSource::Embedded)
    }

    /// The manifest files a directory source is made of (for change detection).
    pub fn watched_files(&self) -> Vec<PathBuf> {
        match &self.source {
            ModuleSource::Embedded => Vec::new(),
            ModuleSource::Release(release) => release.path.iter().cloned().collect(),
            ModuleSource::Dir(dir) => {
                let mut files = manifests_in(dir).unwrap_or_default();
                let components: Vec<PathBuf> = files
                    .iter()
                    .filter_map(|m| Manifest::read(m).ok().map(|man| man.component))
                    .collect();
                files.extend(components);
                files
            }
        }
    }
}

fn load_set(
    engine: &SandboxEngine,
    models: &Arc<ModelRegistry>,
    source: &ModuleSource,
    generation: u64,
) -> Result<ModuleSet, RegistryError> {
    let set = match source {
        ModuleSource::Release(release) => {
            match crate::release::load_set(engine, release, generation) {
                // A device whose store holds no release yet runs the built-in modules until
                // one is installed.
                Err(RegistryError::Release(ReleaseLoadError::Nothing))
                    if release.path.is_none() =>
                {
                    embedded_set(engine, models, generation)?
                }
                other => other?,
            }
        }
        ModuleSource::Embedded => embedded_set(engine, models, generation)?,
        ModuleSource::Dir(dir) => {
            let layout = |reason: String| RegistryError::Layout {
                dir: dir.clone(),
                reason,
            };
            let mut features = None;
            let mut scorer = None;
            let mut policy = None;
            for path in manifests_in(dir).map_err(|e| layout(e.to_string()))? {
                let module = LoadedModule::from_manifest_file(engine, models, &path)?;
                let slot = match module.kind() {
                    ModuleKind::Features => &mut features,
                    ModuleKind::Scorer => &mut scorer,
                    ModuleKind::Policy => &mut policy,
                };
                if let Some(other) = slot.replace(module) {
                    return Err(layout(format!(
                        "two {} modules ({} and {})",
                        other.kind(),
                        other.label(),
                        slot.as_ref().map(LoadedModule::label).unwrap_or_default()
                    )));
                }
            }
            let missing = |kind: &str| layout(format!("no {kind} module"));
            ModuleSet {
                generation,
                models: models.clone(),
                release: None,
                features: features.ok_or_else(|| missing("features"))?,
                scorer: scorer.ok_or_else(|| missing("scorer"))?,
                policy: policy.ok_or_else(|| missing("policy"))?,
            }
        }
    };
    check_features(engine, &set)?;
    Ok(set)
}

fn embedded_set(
    engine: &SandboxEngine,
    models: &Arc<ModelRegistry>,
    generation: u64,
) -> Result<ModuleSet, RegistryError> {
    let [features, scorer, policy] =
        EMBEDDED.map(|(name, kind, bytes)| embedded(engine, models, name, kind, bytes));
    Ok(ModuleSet {
        generation,
        models: models.clone(),
        release: None,
        features: features?,
        scorer: scorer?,
        policy: policy?,
    })
}

/// The modules built into this binary: name, kind and component.
pub const EMBEDDED: [(&str, ModuleKind, &[u8]); 3] = [
    (
        "late-risk-features",
        ModuleKind::Features,
        fleet_guest_modules::FEATURES_WASM,
    ),
    (
        "late-risk-scorer",
        ModuleKind::Scorer,
        fleet_guest_modules::SCORER_WASM,
    ),
    (
        "late-risk-policy",
        ModuleKind::Policy,
        fleet_guest_modules::POLICY_WASM,
    ),
];

/// The default manifest of an embedded module.
pub fn embedded_manifest(name: &str, kind: ModuleKind) -> Manifest {
    Manifest {
        name: name.to_string(),
        kind,
        version: env!("CARGO_PKG_VERSION").to_string(),
        component: PathBuf::from(format!("<embedded {kind}>")),
        config: Default::default(),
    }
}

/// Loads one of the modules built into this binary.
pub fn embedded(
    engine: &SandboxEngine,
    models: &Arc<ModelRegistry>,
    name: &str,
    kind: ModuleKind,
    bytes: &[u8],
) -> Result<LoadedModule, RegistryError> {
    Ok(LoadedModule::from_bytes(
        engine,
        models,
        embedded_manifest(name, kind),
        bytes,
    )?)
}

/// The features module must produce exactly the columns the scorer's model reads.
pub(crate) fn check_features(engine: &SandboxEngine, set: &ModuleSet) -> Result<(), RegistryError> {
    let models = &set.models;
    let mut instance =
        set.features
            .instantiate(engine, models)
            .map_err(|error| LoadError::Init {
                module: set.features.label(),
                error,
            })?;
    let produced =
        crate::pipeline::feature_names(&mut instance).map_err(|error| LoadError::Init {
            module: set.features.label(),
            error,
        })?;
    let model_name = scorer_model(&set.scorer);
    if let Some(model) = models.get(&model_name)
        && model.features != produced
    {
        return Err(RegistryError::FeatureMismatch {
            module: set.features.label(),
            model: format!("{}@{}", model.name, model.version),
            produced,
            expected: model.features.clone(),
        });
    }
    Ok(())
}

/// The model a scorer module reads: its `model` setting, else the built-in late-risk model.
pub(crate) fn scorer_model(scorer: &LoadedModule) -> String {
    scorer
        .manifest
        .config_pairs()
        .into_iter()
        .find(|(k, _)| k == "model")
        .map_or_else(|| crate::defaults::LATE_RISK.to_string(), |(_, v)| v)
}
