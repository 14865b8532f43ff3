//! What a release is: its name and version, the modules (component, configuration, optional
//! precompiled forms), the models, and every artifact by sha256. The manifest is stored and
//! signed in one canonical encoding; a manifest that is not in it is refused, so what was
//! signed is exactly what is read.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::ReleaseError;

/// The manifest format this crate reads and writes.
pub const FORMAT: u32 = 1;

/// The three module kinds, one WIT world each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModuleKind {
    Features,
    Scorer,
    Policy,
}

impl ModuleKind {
    pub const ALL: [Self; 3] = [Self::Features, Self::Scorer, Self::Policy];
}

impl fmt::Display for ModuleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Features => "features",
            Self::Scorer => "scorer",
            Self::Policy => "policy",
        })
    }
}

/// A sha256 digest, written `sha256:` and 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// The 64 hex digits alone (an artifact's file name).
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses the 64 hex digits alone.
    pub fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self(out))
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Sha256Digest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.strip_prefix("sha256:")
            .and_then(Self::from_hex)
            .ok_or_else(|| format!("{s:?} is not `sha256:` and 64 lowercase hex digits"))
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What an artifact holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactKind {
    /// A WebAssembly component.
    Component,
    /// A component compiled ahead of time for one engine configuration.
    Precompiled,
    /// An ONNX model.
    Model,
}

/// How an artifact's file holds its content. The digest and size are the file's: what is
/// fetched, stored and checked; the content is decoded after that check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Encoding {
    /// The file is the content.
    #[default]
    Identity,
    /// One zstd frame that decompresses to `size` bytes of digest `sha256`.
    Zstd { size: u64, sha256: Sha256Digest },
}

impl Encoding {
    pub fn is_identity(&self) -> bool {
        *self == Self::Identity
    }
}

/// One file of the release, named by its content.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    pub sha256: Sha256Digest,
    pub size: u64,
    pub kind: ArtifactKind,
    /// Absent from the manifest when the file is the content.
    #[serde(default, skip_serializing_if = "Encoding::is_identity")]
    pub encoding: Encoding,
}

impl Artifact {
    /// Bytes of the content once decoded.
    pub fn decoded_size(&self) -> u64 {
        match self.encoding {
            Encoding::Identity => self.size,
            Encoding::Zstd { size, .. } => size,
        }
    }

    /// The digest of the content once decoded: what a module's identity is made of, however
    /// its component travelled.
    pub fn content_digest(&self) -> Sha256Digest {
        match self.encoding {
            Encoding::Identity => self.sha256,
            Encoding::Zstd { sha256, .. } => sha256,
        }
    }
}

/// A component compiled ahead of time, and the engine it fits.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Precompiled {
    /// The engine's compatibility hash (wasmtime's `precompile_compatibility_hash`), in hex.
    pub engine: String,
    pub artifact: Sha256Digest,
}

/// One module of the release.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleEntry {
    pub name: String,
    pub kind: ModuleKind,
    pub version: String,
    pub component: Sha256Digest,
    /// Handed to the module's `init`, as the strings it receives.
    pub config: BTreeMap<String, String>,
    /// Precompiled forms of `component`, one per engine.
    pub precompiled: Vec<Precompiled>,
}

/// One model of the release, registered under `name`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub name: String,
    pub artifact: Sha256Digest,
}

/// The signed description of a release.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseManifest {
    pub format: u32,
    pub name: String,
    pub version: semver::Version,
    /// One per kind, in kind order.
    pub modules: Vec<ModuleEntry>,
    /// In name order.
    pub models: Vec<ModelEntry>,
    /// Every file the release is made of, in digest order.
    pub artifacts: Vec<Artifact>,
}

/// A release's identity: the digest of its canonical manifest.
pub type ReleaseId = Sha256Digest;

impl ReleaseManifest {
    /// Puts lists in their canonical order (modules by kind, models by name, artifacts by
    /// digest, precompiled forms by engine).
    pub fn normalize(&mut self) {
        self.modules.sort_by_key(|m| m.kind);
        for module in &mut self.modules {
            module.precompiled.sort_by(|a, b| a.engine.cmp(&b.engine));
        }
        self.models.sort_by(|a, b| a.name.cmp(&b.name));
        self.artifacts.sort_by_key(|a| a.sha256);
        self.artifacts.dedup_by_key(|a| a.sha256);
    }

    /// The canonical encoding: what is signed, stored and hashed into the release id.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("a manifest always serializes");
        bytes.push(b'\n');
        bytes
    }

    /// Reads a manifest, which must be valid and in canonical form.
    pub fn from_canonical_bytes(bytes: &[u8]) -> Result<Self, ReleaseError> {
        let invalid = |reason: String| ReleaseError::Manifest(reason);
        let manifest: Self = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        manifest.validate()?;
        if manifest.canonical_bytes() != bytes {
            return Err(invalid(
                "not in canonical form (field order, list order, layout); \
                 rebuild it with `fleetctl release build`"
                    .into(),
            ));
        }
        Ok(manifest)
    }

    /// The release id of this manifest.
    pub fn id(&self) -> ReleaseId {
        Sha256Digest::of(&self.canonical_bytes())
    }

    /// `name@version` and a short release id, as decisions and logs show it.
    pub fn label(&self) -> String {
        format!("{}@{}+{}", self.name, self.version, &self.id().hex()[..12])
    }

    pub fn module(&self, kind: ModuleKind) -> Option<&ModuleEntry> {
        self.modules.iter().find(|m| m.kind == kind)
    }

    pub fn artifact(&self, digest: &Sha256Digest) -> Option<&Artifact> {
        self.artifacts
            .binary_search_by_key(digest, |a| a.sha256)
            .ok()
            .map(|i| &self.artifacts[i])
    }

    /// Total size of the artifacts: their files, or their content where that is larger
    /// (what a device's budget bounds).
    pub fn size(&self) -> u64 {
        self.artifacts
            .iter()
            .map(|a| a.size.max(a.decoded_size()))
            .sum()
    }

    /// Total size of the artifacts' files (what is fetched and stored), of all of them or of
    /// those in `only`.
    pub fn file_size(&self, only: Option<&BTreeSet<Sha256Digest>>) -> u64 {
        self.artifacts
            .iter()
            .filter(|a| only.is_none_or(|o| o.contains(&a.sha256)))
            .map(|a| a.size)
            .sum()
    }

    /// The artifacts an engine of compatibility `engine` loads the release from: every
    /// model, and for each module its form precompiled for that engine, or its component where
    /// the release has no such form. `None`: every artifact (a release file, the aggregator).
    pub fn wanted(&self, engine: Option<&str>) -> BTreeSet<Sha256Digest> {
        let Some(engine) = engine else {
            return self.artifacts.iter().map(|a| a.sha256).collect();
        };
        let modules = self.modules.iter().map(|m| {
            m.precompiled
                .iter()
                .find(|p| p.engine == engine)
                .map_or(m.component, |p| p.artifact)
        });
        let models = self.models.iter().map(|m| m.artifact);
        modules.chain(models).collect()
    }

    /// The rules every manifest keeps: one module of each kind, every reference to an artifact
    /// of the right kind, no artifact that nothing references.
    pub fn validate(&self) -> Result<(), ReleaseError> {
        let invalid = |reason: String| Err(ReleaseError::Manifest(reason));
        if self.format != FORMAT {
            return invalid(format!(
                "format {} (this build reads format {FORMAT})",
                self.format
            ));
        }
        if !valid_name(&self.name) {
            return invalid(format!(
                "release name {:?}: use 1-64 letters, digits, `-`, `_` or `.`",
                self.name
            ));
        }
        let mut sorted = self.clone();
        sorted.normalize();
        if sorted != *self {
            return invalid("lists out of canonical order, or an artifact listed twice".into());
        }
        let kinds: Vec<ModuleKind> = self.modules.iter().map(|m| m.kind).collect();
        if kinds != ModuleKind::ALL {
            return invalid(format!(
                "modules must be one features, one scorer and one policy module, in that order; found {kinds:?}"
            ));
        }
        let mut referenced = BTreeSet::new();
        let mut reference = |digest: &Sha256Digest, kind: ArtifactKind, what: &str| {
            referenced.insert(*digest);
            match self.artifact(digest) {
                Some(a) if a.kind == kind => Ok(()),
                Some(a) => Err(ReleaseError::Manifest(format!(
                    "{what}: artifact {digest} is a {:?}, not a {kind:?}",
                    a.kind
                ))),
                None => Err(ReleaseError::Manifest(format!(
                    "{what}: artifact {digest} is not listed"
                ))),
            }
        };
        for module in &self.modules {
            if !valid_name(&module.name) || module.version.is_empty() {
                return invalid(format!(
                    "module {:?} version {:?}: a name of letters, digits, `-`, `_` or `.`, and a version",
                    module.name, module.version
                ));
            }
            let what = format!("module {}", module.name);
            reference(&module.component, ArtifactKind::Component, &what)?;
            for pre in &module.precompiled {
                reference(&pre.artifact, ArtifactKind::Precompiled, &what)?;
            }
        }
        for model in &self.models {
            if !valid_name(&model.name) {
                return invalid(format!("model name {:?}", model.name));
            }
            reference(
                &model.artifact,
                ArtifactKind::Model,
                &format!("model {}", model.name),
            )?;
        }
        if let Some(unused) = self
            .artifacts
            .iter()
            .find(|a| !referenced.contains(&a.sha256))
        {
            return invalid(format!("artifact {} is listed but not used", unused.sha256));
        }
        Ok(())
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> ReleaseManifest {
        crate::testing::manifest_over(
            "1.4.0",
            &[
                (b"features", ArtifactKind::Component),
                (b"scorer", ArtifactKind::Component),
                (b"policy", ArtifactKind::Component),
                (b"model", ArtifactKind::Model),
            ],
        )
    }

    #[test]
    fn the_canonical_encoding_reads_back_and_nothing_else_does() {
        let manifest = sample();
        let bytes = manifest.canonical_bytes();
        assert_eq!(
            ReleaseManifest::from_canonical_bytes(&bytes).unwrap(),
            manifest
        );
        // The same content laid out differently is refused: only one byte string is valid.
        let compact = serde_json::to_vec(&manifest).unwrap();
        let err = ReleaseManifest::from_canonical_bytes(&compact).unwrap_err();
        assert!(err.to_string().contains("canonical"), "{err}");
    }

    #[test]
    fn configuration_changes_the_release_id() {
        let a = sample();
        let mut b = sample();
        b.modules[2].config.insert("threshold".into(), "0.6".into());
        assert_ne!(a.id(), b.id());
        assert_ne!(a.label(), b.label());
    }

    #[test]
    fn broken_manifests_are_refused_with_the_reason() {
        type Breakage = Box<dyn Fn(&mut ReleaseManifest)>;
        let cases: Vec<(&str, Breakage)> = vec![
            ("format", Box::new(|m| m.format = 2)),
            ("release name", Box::new(|m| m.name = "../x".into())),
            (
                "one features",
                Box::new(|m| {
                    m.modules.pop();
                }),
            ),
            (
                "not listed",
                Box::new(|m| {
                    m.artifacts.retain(|a| a.kind != ArtifactKind::Model);
                }),
            ),
            (
                "not a Component",
                Box::new(|m| m.modules[0].component = m.models[0].artifact),
            ),
            (
                "not used",
                Box::new(|m| {
                    m.artifacts.push(Artifact {
                        sha256: Sha256Digest::of(b"extra"),
                        size: 5,
                        kind: ArtifactKind::Model,
                        encoding: Encoding::Identity,
                    });
                    m.normalize();
                }),
            ),
            ("canonical order", Box::new(|m| m.artifacts.reverse())),
        ];
        for (expected, break_it) in cases {
            let mut manifest = sample();
            break_it(&mut manifest);
            let err = manifest.validate().unwrap_err().to_string();
            assert!(err.contains(expected), "{expected}: {err}");
        }
    }

    #[test]
    fn digests_print_and_parse() {
        let d = Sha256Digest::of(b"abc");
        assert_eq!(
            d.to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(d.to_string().parse::<Sha256Digest>().unwrap(), d);
        for bad in [
            "ba78",
            "sha256:BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD",
            "md5:00",
        ] {
            assert!(bad.parse::<Sha256Digest>().is_err(), "{bad}");
        }
    }
}
