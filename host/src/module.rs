//! A module artifact: its manifest, its compiled component, and instantiating it.
//!
//! A module on disk is `<name>.toml` (the manifest) beside the component it names. Loading
//! checks, in order: the manifest, that the bytes are a wasm component, that it compiles, that
//! its imports are only what its kind may use, and that it exports its kind's world; then one
//! instance is created and its configuration applied, so a bad configuration fails at load, not
//! at the first batch.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use thiserror::Error;
use wasmtime::Store;
use wasmtime::component::{HasSelf, Linker};

use crate::bindings::{features, policy, policy_keyed, scorer};
use crate::engine::SandboxEngine;
use crate::inference::{InferenceCtx, ModelRegistry};
use crate::sandbox::{HostState, ModuleError};

pub use fleet_release::ModuleKind;

/// `<name>.toml`: what a module is and how it is configured.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub kind: ModuleKind,
    pub version: String,
    /// The component file, relative to the manifest.
    pub component: PathBuf,
    /// Handed to the module's `init` as key/value strings.
    #[serde(default)]
    pub config: BTreeMap<String, toml::Value>,
}

impl Manifest {
    /// Reads `<name>.toml`; its `component` comes back as a path inside the manifest's
    /// directory.
    pub fn read(path: &Path) -> Result<Self, LoadError> {
        let manifest_error = |reason: String| LoadError::Manifest {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| manifest_error(e.to_string()))?;
        let mut manifest: Self =
            toml::from_str(&text).map_err(|e| manifest_error(e.to_string()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        manifest.component = confined(dir, &manifest.component).map_err(manifest_error)?;
        Ok(manifest)
    }

    /// The configuration as the strings the module receives.
    pub fn config_pairs(&self) -> Vec<(String, String)> {
        self.config
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect()
    }
}

/// Why a module could not be loaded. Loading never panics, whatever the bytes.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The manifest is missing or malformed.
    #[error("manifest {path}: {reason}")]
    Manifest { path: PathBuf, reason: String },
    /// The component file could not be read.
    #[error("module {module}: cannot read {path}: {error}")]
    Read {
        module: String,
        path: PathBuf,
        error: std::io::Error,
    },
    /// The bytes are not WebAssembly at all.
    #[error("module {module}: not a WebAssembly file")]
    NotWasm { module: String },
    /// A core module was given where a component is needed.
    #[error("module {module}: a core wasm module, not a component (build for wasm32-wasip2)")]
    NotComponent { module: String },
    /// The component failed validation or compilation.
    #[error("module {module}: does not compile: {reason}")]
    Compile { module: String, reason: String },
    /// The component imports something its kind may not use.
    #[error("module {module}: as a {kind} module it may not import what it imports: {reason}")]
    Imports {
        module: String,
        kind: ModuleKind,
        reason: String,
    },
    /// The component does not export its kind's world.
    #[error("module {module}: does not export the {kind} world: {reason}")]
    Exports {
        module: String,
        kind: ModuleKind,
        reason: String,
    },
    /// The module refused its configuration, or failed while initialising.
    #[error("module {module}: init failed: {error}")]
    Init { module: String, error: ModuleError },
}

/// Pre-instantiated component of one kind.
#[derive(Clone)]
enum Pre {
    Features(features::FeaturesPre<HostState>),
    Scorer(scorer::ScorerPre<HostState>),
    Policy(policy::PolicyPre<HostState>),
    KeyedPolicy(policy_keyed::PolicyKeyedPre<HostState>),
}

/// A compiled, checked module, ready to instantiate many times.
#[derive(Clone)]
pub struct LoadedModule {
    pub manifest: Arc<Manifest>,
    /// `sha256:` and the hex digest of the component bytes.
    pub digest: String,
    /// `sha256:` and the hex digest of what decides the module's behaviour: the component's
    /// digest and its configuration. Two modules differing only in a threshold differ here.
    pub identity: String,
    pre: Pre,
}

impl fmt::Debug for LoadedModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.label())
    }
}

/// A live instance: its store and typed exports.
pub struct Instance {
    pub store: Store<HostState>,
    pub exports: Exports,
}

/// The typed exports of an instance, by kind.
pub enum Exports {
    Features(features::Features),
    Scorer(scorer::Scorer),
    Policy(policy::Policy),
    /// A policy with state per key (`policy-keyed`, since `fleet:edge@0.2.1`).
    KeyedPolicy(policy_keyed::PolicyKeyed),
}

impl LoadedModule {
    /// Reads `<manifest>` and the component it names, then [`LoadedModule::from_bytes`].
    pub fn from_manifest_file(
        engine: &SandboxEngine,
        models: &Arc<ModelRegistry>,
        path: &Path,
    ) -> Result<Self, LoadError> {
        let manifest = Manifest::read(path)?;
        let bytes = std::fs::read(&manifest.component).map_err(|error| LoadError::Read {
            module: manifest.name.clone(),
            path: manifest.component.clone(),
            error,
        })?;
        Self::from_bytes(engine, models, manifest, &bytes)
    }

    /// Checks and compiles a component for `manifest.kind`, and proves it instantiates and
    /// accepts its configuration.
    pub fn from_bytes(
        engine: &SandboxEngine,
        models: &Arc<ModelRegistry>,
        manifest: Manifest,
        bytes: &[u8],
    ) -> Result<Self, LoadError> {
        let module = manifest.name.clone();
        if !bytes.starts_with(b"\0asm") {
            return Err(LoadError::NotWasm { module });
        }
        if wasmparser_is_core_module(bytes) {
            return Err(LoadError::NotComponent { module });
        }
        let digest = format!("sha256:{:x}", Sha256::digest(bytes));
        let component = engine
            .compile(&digest, bytes)
            .map_err(|e| LoadError::Compile {
                module: module.clone(),
                reason: format!("{e:#}"),
            })?;
        Self::from_component(engine, models, manifest, digest, &component)
    }

    /// Like [`Self::from_bytes`], from a component precompiled for this engine (see
    /// [`SandboxEngine::load_precompiled`]); `digest` is the digest of the component it was
    /// compiled from, which is what the module's identity is made of.
    ///
    /// # Safety
    ///
    /// As [`SandboxEngine::load_precompiled`]: the bytes must come from a verified release.
    pub unsafe fn from_precompiled(
        engine: &SandboxEngine,
        models: &Arc<ModelRegistry>,
        manifest: Manifest,
        digest: String,
        precompiled: &[u8],
    ) -> Result<Self, LoadError> {
        // SAFETY: passed on to the caller.
        let component = unsafe { engine.load_precompiled(&digest, precompiled) }.map_err(|e| {
            LoadError::Compile {
                module: manifest.name.clone(),
                reason: format!("precompiled: {e:#}"),
            }
        })?;
        Self::from_component(engine, models, manifest, digest, &component)
    }

    /// The checks after compilation: imports, exports, and `init` with the configuration.
    fn from_component(
        engine: &SandboxEngine,
        models: &Arc<ModelRegistry>,
        manifest: Manifest,
        digest: String,
        component: &wasmtime::component::Component,
    ) -> Result<Self, LoadError> {
        let module = manifest.name.clone();
        let kind = manifest.kind;
        let linker = linker_for(engine, kind).map_err(|e| LoadError::Compile {
            module: module.clone(),
            reason: format!("linker: {e:#}"),
        })?;
        let instance_pre = linker
            .instantiate_pre(component)
            .map_err(|e| LoadError::Imports {
                module: module.clone(),
                kind,
                reason: format!("{e:#}"),
            })?;
        let exports_error = |e: wasmtime::Error| LoadError::Exports {
            module: module.clone(),
            kind,
            reason: format!("{e:#}"),
        };
        let pre = match kind {
            ModuleKind::Features => {
                Pre::Features(features::FeaturesPre::new(instance_pre).map_err(exports_error)?)
            }
            ModuleKind::Scorer => {
                Pre::Scorer(scorer::ScorerPre::new(instance_pre).map_err(exports_error)?)
            }
            // A policy exports `decide-keyed` (state per key) or, as before 0.2.1, `decide`.
            ModuleKind::Policy => match policy_keyed::PolicyKeyedPre::new(instance_pre.clone()) {
                Ok(pre) => Pre::KeyedPolicy(pre),
                Err(keyed) => Pre::Policy(policy::PolicyPre::new(instance_pre).map_err(|e| {
                    exports_error(e.context(format!("nor the policy-keyed world: {keyed:#}")))
                })?),
            },
        };
        let identity = identity_digest(&digest, &manifest.config_pairs());
        let loaded = Self {
            manifest: Arc::new(manifest),
            digest,
            identity,
            pre,
        };
        loaded
            .instantiate(engine, models)
            .map_err(|error| LoadError::Init { module, error })?;
        Ok(loaded)
    }

    /// `name@version` and a short digest of component and configuration ([`Self::identity`]),
    /// as decisions and logs record it.
    pub fn label(&self) -> String {
        let short = self
            .identity
            .strip_prefix("sha256:")
            .unwrap_or(&self.identity);
        format!(
            "{}@{}+{}",
            self.manifest.name,
            self.manifest.version,
            &short[..12.min(short.len())]
        )
    }

    pub fn kind(&self) -> ModuleKind {
        self.manifest.kind
    }

    /// Whether this is a policy that keeps state per key (`policy-keyed`).
    pub fn is_keyed(&self) -> bool {
        matches!(self.pre, Pre::KeyedPolicy(_))
    }

    /// A fresh instance with its configuration applied.
    pub fn instantiate(
        &self,
        engine: &SandboxEngine,
        models: &Arc<ModelRegistry>,
    ) -> Result<Instance, ModuleError> {
        let inference = match self.pre {
            Pre::Scorer(_) => InferenceCtx::new(models.clone()),
            _ => InferenceCtx::default(),
        };
        let mut store = HostState::new_store(engine, inference);
        store.set_epoch_deadline(engine.setup_ticks());
        let trap = |e: wasmtime::Error, store: &Store<HostState>| {
            ModuleError::from_call(e, engine, store.data().stderr())
        };
        let config = self.manifest.config_pairs();
        let (exports, init) = match &self.pre {
            Pre::Features(pre) => {
                let b = pre.instantiate(&mut store).map_err(|e| trap(e, &store))?;
                let r = b.fleet_edge_module().call_init(&mut store, &config);
                (Exports::Features(b), r)
            }
            Pre::Scorer(pre) => {
                let b = pre.instantiate(&mut store).map_err(|e| trap(e, &store))?;
                let r = b.fleet_edge_module().call_init(&mut store, &config);
                (Exports::Scorer(b), r)
            }
            Pre::Policy(pre) => {
                let b = pre.instantiate(&mut store).map_err(|e| trap(e, &store))?;
                let r = b.fleet_edge_module().call_init(&mut store, &config);
                (Exports::Policy(b), r)
            }
            Pre::KeyedPolicy(pre) => {
                let b = pre.instantiate(&mut store).map_err(|e| trap(e, &store))?;
                let r = b.fleet_edge_module().call_init(&mut store, &config);
                (Exports::KeyedPolicy(b), r)
            }
        };
        match init {
            Ok(Ok(())) => Ok(Instance { store, exports }),
            Ok(Err(message)) => Err(ModuleError::Returned(message)),
            Err(e) => Err(trap(e, &store)),
        }
    }
}

/// The digest of a component digest and a configuration (pairs in key order, as
/// [`Manifest::config_pairs`] gives them): lengths are written before each string, so no two
/// configurations encode alike.
fn identity_digest(component: &str, config: &[(String, String)]) -> String {
    let mut hash = Sha256::new();
    for part in std::iter::once(component).chain(config.iter().flat_map(|(k, v)| [&**k, &**v])) {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part.as_bytes());
    }
    format!("sha256:{:x}", hash.finalize())
}

/// Loads the one module of `kind` from a directory of manifests.
pub fn load_kind_from_dir(
    engine: &SandboxEngine,
    models: &Arc<ModelRegistry>,
    dir: &Path,
    kind: ModuleKind,
) -> Result<LoadedModule, LoadError> {
    let no_module = |reason: String| LoadError::Manifest {
        path: dir.to_path_buf(),
        reason,
    };
    for path in manifests_in(dir).map_err(|e| no_module(e.to_string()))? {
        let text = std::fs::read_to_string(&path).map_err(|e| no_module(e.to_string()))?;
        if toml::from_str::<Manifest>(&text).is_ok_and(|m| m.kind == kind) {
            return LoadedModule::from_manifest_file(engine, models, &path);
        }
    }
    Err(no_module(format!("no {kind} module")))
}

/// `component` inside `dir`: a relative path that stays in the module directory (no `..`,
/// no absolute path), so a manifest cannot make the host read files elsewhere.
pub(crate) fn confined(dir: &Path, component: &Path) -> Result<PathBuf, String> {
    use std::path::Component;
    let inside = component.components().count() > 0
        && component
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if inside {
        Ok(dir.join(component))
    } else {
        Err(format!(
            "component {:?} must be a path inside the module directory (no `..`, not absolute)",
            component.display().to_string()
        ))
    }
}

/// The `*.toml` files in `dir`, sorted.
pub fn manifests_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    out.sort();
    Ok(out)
}

/// Core modules carry version 1 in the 4 bytes after the magic; components a larger layer.
fn wasmparser_is_core_module(bytes: &[u8]) -> bool {
    bytes.get(4..8) == Some(&[1, 0, 0, 0])
}

/// The linker for one kind: WASI with nothing granted, plus `inference` for scorers.
fn linker_for(engine: &SandboxEngine, kind: ModuleKind) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine.engine());
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    if kind == ModuleKind::Scorer {
        crate::bindings::inference::add_to_linker::<HostState, HasSelf<HostState>>(
            &mut linker,
            |s| s,
        )?;
    }
    Ok(linker)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn configuration_is_part_of_a_modules_identity() {
        let a = identity_digest("sha256:c", &pairs(&[("critical_threshold", "0.95")]));
        let b = identity_digest("sha256:c", &pairs(&[("critical_threshold", "0.6")]));
        assert_ne!(a, b);
        assert_eq!(
            a,
            identity_digest("sha256:c", &pairs(&[("critical_threshold", "0.95")]))
        );
        assert_ne!(
            a,
            identity_digest("sha256:d", &pairs(&[("critical_threshold", "0.95")]))
        );
        // Lengths are hashed too: moving a boundary between key and value changes it.
        assert_ne!(
            identity_digest("c", &pairs(&[("ab", "c")])),
            identity_digest("c", &pairs(&[("a", "bc")]))
        );
    }

    #[test]
    fn a_component_path_must_stay_inside_the_module_directory() {
        let dir = Path::new("/modules");
        assert_eq!(
            confined(dir, Path::new("policy.wasm")).unwrap(),
            Path::new("/modules/policy.wasm")
        );
        assert_eq!(
            confined(dir, Path::new("./build/policy.wasm")).unwrap(),
            Path::new("/modules/./build/policy.wasm")
        );
        for bad in ["../policy.wasm", "/etc/passwd", "a/../../b.wasm", ""] {
            let err = confined(dir, Path::new(bad)).unwrap_err();
            assert!(err.contains("inside the module directory"), "{bad}: {err}");
        }
    }
}
