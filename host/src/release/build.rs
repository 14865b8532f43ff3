//! A module directory (one `*.toml` manifest per kind with its component, and `*.onnx`
//! models) as the contents of a release: its manifest and artifacts, each component also
//! precompiled for an engine when asked. `fleetctl release build` signs and writes them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fleet_release::manifest::FORMAT;
use fleet_release::{
    Artifact, ArtifactKind, Encoding, ModelEntry, ModuleEntry, ModuleKind, Precompiled,
    ReleaseError, ReleaseId, ReleaseManifest, ReleaseSigner, Sha256Digest,
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
    #[error("compressing an artifact: {0}")]
    Compress(std::io::Error),
    #[error(transparent)]
    Release(#[from] ReleaseError),
}

/// A release's manifest and its artifacts' files, not yet signed.
pub struct ReleaseContents {
    pub manifest: ReleaseManifest,
    pub artifacts: BTreeMap<Sha256Digest, Vec<u8>>,
}

/// zstd's level for artifacts: compressed once, when the release is built, and fetched by
/// every device (a precompiled policy of 277 KB is 91 KB at this level, 106 KB at level 3).
const ZSTD_LEVEL: i32 = 19;

/// An artifact is stored compressed when that saves at least this share of it.
const WORTH_COMPRESSING: f64 = 0.1;

impl ReleaseContents {
    /// Adds an artifact, compressed when that pays; returns the digest its file goes by.
    fn add(&mut self, content: Vec<u8>, kind: ArtifactKind) -> Result<Sha256Digest, BuildError> {
        let compressed =
            zstd::bulk::compress(&content, ZSTD_LEVEL).map_err(BuildError::Compress)?;
        let pays = (compressed.len() as f64) < content.len() as f64 * (1.0 - WORTH_COMPRESSING);
        let (file, encoding) = if pays {
            let encoding = Encoding::Zstd {
                size: content.len() as u64,
                sha256: Sha256Digest::of(&content),
            };
            (compressed, encoding)
        } else {
            (content, Encoding::Identity)
        };
        let sha256 = Sha256Digest::of(&file);
        self.manifest.artifacts.push(Artifact {
            sha256,
            size: file.len() as u64,
            kind,
            encoding,
        });
        self.artifacts.insert(sha256, file);
        Ok(sha256)
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
                engine: engine.compatibility().to_string(),
                artifact: contents.add(compiled, ArtifactKind::Precompiled)?,
            });
        }
        let component = contents.add(bytes, ArtifactKind::Component)?;
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
        let artifact = contents.add(bytes, ArtifactKind::Model)?;
        contents.manifest.models.push(ModelEntry { name, artifact });
    }
    Ok(())
}
