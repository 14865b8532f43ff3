//! A module directory (one `*.toml` manifest per kind with its component, and `*.onnx`
//! models) as the contents of a release: its manifest and artifacts, each component also
//! precompiled for an engine when asked. `fleetctl release build` signs and writes them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fleet_release::manifest::FORMAT;
use fleet_release::{
    Artifact, ArtifactKind, ModelEntry, ModuleEntry, ModuleKind, Precompiled, ReleaseError,
    ReleaseId, ReleaseManifest, ReleaseSigner, Sha256Digest,
};
use thiserror::Error;

use crate::engine::SandboxEngine;
use crate::inference::{InferenceError, Model};
use crate::module::{LoadError, Manifest, manifests_in};

/// Why a module directory does not make a release.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BuildError {
    /// Not one module of each kind.
    #[error("{0}")]
    Layout(String),
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A module manifest is malformed.
    #[error(transparent)]
    Manifest(#[from] LoadError),
    /// A model does not load.
    #[error("model {}: {error}", path.display())]
    Model {
        path: PathBuf,
        error: InferenceError,
    },
    /// A component does not compile.
    #[error("{}: does not compile: {reason}", path.display())]
    Precompile { path: PathBuf, reason: String },
    #[error(transparent)]
    Release(#[from] ReleaseError),
}

/// A release's manifest and the bytes of its artifacts, not yet signed.
pub struct ReleaseContents {
    pub manifest: ReleaseManifest,
    pub artifacts: BTreeMap<Sha256Digest, Vec<u8>>,
}

impl ReleaseContents {
    fn add(&mut self, bytes: Vec<u8>, kind: ArtifactKind) -> Sha256Digest {
        let sha256 = Sha256Digest::of(&bytes);
        self.manifest.artifacts.push(Artifact {
            sha256,
            size: bytes.len() as u64,
            kind,
        });
        self.artifacts.insert(sha256, bytes);
        sha256
    }

    /// Signs the manifest and writes the release file.
    pub fn write(&self, out: &Path, signer: &ReleaseSigner) -> Result<ReleaseId, ReleaseError> {
        fleet_release::write_bundle(out, &self.manifest, signer, &self.artifacts)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, BuildError> {
    std::fs::read(path).map_err(|source| BuildError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The contents of release `name@version` from `dir` (and `extra_models`), each component
/// also precompiled for `precompile_for` if given.
pub fn build_contents(
    name: &str,
    version: semver::Version,
    dir: &Path,
    extra_models: &[PathBuf],
    precompile_for: Option<&SandboxEngine>,
) -> Result<ReleaseContents, BuildError> {
    let mut contents = ReleaseContents {
        manifest: ReleaseManifest {
            format: FORMAT,
            name: name.to_string(),
            version,
            modules: Vec::new(),
            models: Vec::new(),
            artifacts: Vec::new(),
        },
        artifacts: BTreeMap::new(),
    };
    add_modules(&mut contents, dir, precompile_for)?;
    add_models(&mut contents, dir, extra_models)?;
    contents.manifest.normalize();
    contents.manifest.validate()?;
    Ok(contents)
}

/// One module of each kind from the directory's manifests.
fn add_modules(
    contents: &mut ReleaseContents,
    dir: &Path,
    precompile_for: Option<&SandboxEngine>,
) -> Result<(), BuildError> {
    let paths = manifests_in(dir).map_err(|source| BuildError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    for path in paths {
        let manifest = Manifest::read(&path)?;
        if contents.manifest.module(manifest.kind).is_some() {
            return Err(BuildError::Layout(format!(
                "{}: a second {} module; a release holds one of each kind",
                path.display(),
                manifest.kind
            )));
        }
        let bytes = read(&manifest.component)?;
        let mut precompiled = Vec::new();
        if let Some(engine) = precompile_for {
            let compiled = engine
                .precompile(&bytes)
                .map_err(|e| BuildError::Precompile {
                    path: manifest.component.clone(),
                    reason: format!("{e:#}"),
                })?;
            precompiled.push(Precompiled {
                engine: engine.compatibility(),
                artifact: contents.add(compiled, ArtifactKind::Precompiled),
            });
        }
        let component = contents.add(bytes, ArtifactKind::Component);
        contents.manifest.modules.push(ModuleEntry {
            name: manifest.name.clone(),
            kind: manifest.kind,
            version: manifest.version.clone(),
            component,
            config: manifest.config_pairs().into_iter().collect(),
            precompiled,
        });
    }
    if let Some(kind) = ModuleKind::ALL
        .into_iter()
        .find(|&kind| contents.manifest.module(kind).is_none())
    {
        return Err(BuildError::Layout(format!(
            "{}: no {kind} module manifest (`fleetctl release export-builtin DIR` writes all three)",
            dir.display()
        )));
    }
    Ok(())
}

/// The directory's `*.onnx` files and `extra`, each checked to load, registered under their
/// file names without `.onnx`.
fn add_models(
    contents: &mut ReleaseContents,
    dir: &Path,
    extra: &[PathBuf],
) -> Result<(), BuildError> {
    let entries = std::fs::read_dir(dir).map_err(|source| BuildError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    paths.sort();
    paths.extend(extra.iter().cloned());
    for path in paths {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or_else(|| {
                BuildError::Layout(format!(
                    "{}: a model file needs a UTF-8 name",
                    path.display()
                ))
            })?
            .to_string();
        if contents.manifest.models.iter().any(|m| m.name == name) {
            return Err(BuildError::Layout(format!("two models named {name:?}")));
        }
        let bytes = read(&path)?;
        Model::load(&name, &bytes).map_err(|error| BuildError::Model {
            path: path.clone(),
            error,
        })?;
        let artifact = contents.add(bytes, ArtifactKind::Model);
        contents.manifest.models.push(ModelEntry { name, artifact });
    }
    Ok(())
}
