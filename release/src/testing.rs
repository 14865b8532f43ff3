//! Releases for tests (feature `testing`): a manifest over made-up artifacts, and that
//! release signed and verified.

use std::collections::{BTreeMap, HashMap};

use crate::manifest::{Encoding, FORMAT};
use crate::{
    Artifact, ArtifactKind, ModelEntry, ModuleEntry, ModuleKind, ReleaseManifest, ReleaseSigner,
    Sha256Digest, TrustedKeys, VerifiedRelease,
};

/// A valid manifest of release `late-risk@version` whose features, scorer and policy
/// components are `files[0..3]` and whose `late_risk` model is `files[3]`.
pub fn manifest_over(version: &str, files: &[(&[u8], ArtifactKind)]) -> ReleaseManifest {
    let artifacts: Vec<Artifact> = files
        .iter()
        .map(|(bytes, kind)| Artifact {
            sha256: Sha256Digest::of(bytes),
            size: bytes.len() as u64,
            kind: *kind,
            encoding: Encoding::Identity,
        })
        .collect();
    let modules = ModuleKind::ALL
        .iter()
        .enumerate()
        .map(|(i, &kind)| ModuleEntry {
            name: format!("m-{kind}"),
            kind,
            version: "1.0.0".into(),
            component: artifacts[i].sha256,
            config: BTreeMap::from([("threshold".to_string(), "0.9".to_string())]),
            precompiled: Vec::new(),
        })
        .collect();
    let models = vec![ModelEntry {
        name: "late_risk".into(),
        artifact: artifacts[3].sha256,
    }];
    let mut manifest = ReleaseManifest {
        format: FORMAT,
        name: "late-risk".into(),
        version: version.parse().expect("a semantic version"),
        modules,
        models,
        artifacts,
    };
    manifest.normalize();
    manifest
}

/// [`manifest_over`] signed by `signer` and verified, with the keys that trust it.
pub fn verified(
    signer: &ReleaseSigner,
    version: &str,
    files: &[(&[u8], ArtifactKind)],
) -> (VerifiedRelease, TrustedKeys) {
    let bytes = manifest_over(version, files).canonical_bytes();
    let signature = signer.sign(&bytes).to_bytes();
    let mut trusted = TrustedKeys::default();
    trusted
        .add_public_line(&signer.public_line(""))
        .expect("a key line this crate wrote");
    let by_digest: HashMap<Sha256Digest, Vec<u8>> = files
        .iter()
        .map(|(b, _)| (Sha256Digest::of(b), b.to_vec()))
        .collect();
    let release = VerifiedRelease::from_parts(&bytes, &signature, &trusted, u64::MAX, None, |d| {
        by_digest.get(d).cloned()
    })
    .expect("a release this function signed");
    (release, trusted)
}
