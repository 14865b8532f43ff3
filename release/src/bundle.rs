//! The release file: a tar archive of `release.json` (the canonical manifest), `release.sig`,
//! then `artifacts/<sha256 hex>` for every artifact, in digest order. Readable with `tar`;
//! read here with limits, the signature checked before any artifact is read, and every
//! artifact checked against its digest and size.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use crate::ReleaseError;
use crate::keys::{ReleaseSigner, SignatureFile, TrustedKeys};
use crate::manifest::{Artifact, Encoding, ReleaseId, ReleaseManifest, Sha256Digest};

const MANIFEST: &str = "release.json";
const SIGNATURE: &str = "release.sig";
const ARTIFACTS: &str = "artifacts/";
/// Larger than any real manifest or signature; a bigger entry is refused before it is read.
const MAX_MANIFEST: u64 = 1 << 20;
const MAX_SIGNATURE: u64 = 4 << 10;

/// A release whose signature, manifest and artifacts have all been checked: every artifact,
/// or those one engine loads it from (see [`ReleaseManifest::wanted`]).
#[derive(Clone)]
pub struct VerifiedRelease {
    pub manifest: ReleaseManifest,
    pub id: ReleaseId,
    /// The manifest exactly as signed.
    pub manifest_bytes: Arc<[u8]>,
    pub signature: SignatureFile,
    /// The artifacts' files and their content (the same bytes unless encoded).
    artifacts: BTreeMap<Sha256Digest, Held>,
}

/// One verified artifact.
#[derive(Clone)]
struct Held {
    file: Arc<[u8]>,
    content: Arc<[u8]>,
}

impl std::fmt::Debug for VerifiedRelease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VerifiedRelease({})", self.label())
    }
}

impl VerifiedRelease {
    /// The content of one artifact (decoded): present for every artifact the release was
    /// verified with.
    pub fn artifact(&self, digest: &Sha256Digest) -> Option<&Arc<[u8]>> {
        self.artifacts.get(digest).map(|h| &h.content)
    }

    /// The file of one artifact, as fetched and stored (what its digest is of).
    pub fn file(&self, digest: &Sha256Digest) -> Option<&Arc<[u8]>> {
        self.artifacts.get(digest).map(|h| &h.file)
    }

    /// `name@version+id`.
    pub fn label(&self) -> String {
        self.manifest.label()
    }

    /// Checks a manifest and its signature and then the artifacts an engine of compatibility
    /// `engine` loads it from (every artifact for `None`), from parts held apart (a device's
    /// store of artifacts fetched one by one, for instance).
    pub fn from_parts(
        manifest_bytes: &[u8],
        signature: &[u8],
        trusted: &TrustedKeys,
        budget: u64,
        engine: Option<&str>,
        mut artifact: impl FnMut(&Sha256Digest) -> Option<Vec<u8>>,
    ) -> Result<Self, ReleaseError> {
        let mut pending = Pending::new(manifest_bytes, signature, trusted, budget)?;
        for digest in pending.manifest.wanted(engine) {
            let bytes = artifact(&digest).ok_or(ReleaseError::Artifact {
                digest,
                reason: "missing".into(),
            })?;
            pending.add(digest, bytes)?;
        }
        pending.finish(engine)
    }
}

/// A manifest whose signature verified, collecting its artifacts.
struct Pending {
    manifest: ReleaseManifest,
    manifest_bytes: Arc<[u8]>,
    signature: SignatureFile,
    artifacts: BTreeMap<Sha256Digest, Held>,
}

impl Pending {
    fn new(
        manifest_bytes: &[u8],
        signature: &[u8],
        trusted: &TrustedKeys,
        budget: u64,
    ) -> Result<Self, ReleaseError> {
        let (manifest, signature) = verify_manifest(manifest_bytes, signature, trusted)?;
        if manifest.size() > budget {
            return Err(ReleaseError::TooLarge {
                size: manifest.size(),
                budget,
            });
        }
        Ok(Self {
            manifest,
            manifest_bytes: manifest_bytes.into(),
            signature,
            artifacts: BTreeMap::new(),
        })
    }

    fn add(&mut self, digest: Sha256Digest, bytes: Vec<u8>) -> Result<(), ReleaseError> {
        let listed = self
            .manifest
            .artifact(&digest)
            .ok_or_else(|| ReleaseError::Artifact {
                digest,
                reason: "not listed in the manifest".into(),
            })?;
        if bytes.len() as u64 != listed.size {
            return Err(ReleaseError::Artifact {
                digest,
                reason: format!("{} bytes, the manifest says {}", bytes.len(), listed.size),
            });
        }
        if Sha256Digest::of(&bytes) != digest {
            return Err(ReleaseError::Artifact {
                digest,
                reason: "content does not match its digest (tampered or corrupt)".into(),
            });
        }
        let file: Arc<[u8]> = bytes.into();
        let content = decode(listed, &file)?;
        if self
            .artifacts
            .insert(digest, Held { file, content })
            .is_some()
        {
            return Err(ReleaseError::Artifact {
                digest,
                reason: "present twice".into(),
            });
        }
        Ok(())
    }

    fn finish(self, engine: Option<&str>) -> Result<VerifiedRelease, ReleaseError> {
        if let Some(missing) = self
            .manifest
            .wanted(engine)
            .into_iter()
            .find(|a| !self.artifacts.contains_key(a))
        {
            return Err(ReleaseError::Artifact {
                digest: missing,
                reason: "missing (a truncated release?)".into(),
            });
        }
        Ok(VerifiedRelease {
            id: Sha256Digest::of(&self.manifest_bytes),
            manifest: self.manifest,
            manifest_bytes: self.manifest_bytes,
            signature: self.signature,
            artifacts: self.artifacts,
        })
    }
}

/// An artifact's content from its file (whose digest and size were checked): the file itself,
/// or for a zstd-encoded one exactly the `size` bytes of digest `sha256` the manifest says,
/// or refused.
pub(crate) fn decode(listed: &Artifact, file: &Arc<[u8]>) -> Result<Arc<[u8]>, ReleaseError> {
    let Encoding::Zstd { size, sha256 } = listed.encoding else {
        return Ok(file.clone());
    };
    let refused = |reason: String| ReleaseError::Artifact {
        digest: listed.sha256,
        reason,
    };
    let capacity =
        usize::try_from(size).map_err(|_| refused(format!("decodes to {size} bytes")))?;
    let content = zstd::bulk::decompress(file.as_ref(), capacity)
        .map_err(|e| refused(format!("not a zstd frame of at most {size} bytes: {e}")))?;
    if content.len() as u64 != size {
        return Err(refused(format!(
            "decodes to {} bytes, the manifest says {size}",
            content.len()
        )));
    }
    if Sha256Digest::of(&content) != sha256 {
        return Err(refused(format!("decodes to content other than {sha256}")));
    }
    Ok(content.into())
}

/// Checks a signature over a manifest and reads the manifest, without its artifacts: what a
/// release says about itself (name, version), trustworthy, for the cost of one signature check.
pub fn verify_manifest(
    manifest_bytes: &[u8],
    signature: &[u8],
    trusted: &TrustedKeys,
) -> Result<(ReleaseManifest, SignatureFile), ReleaseError> {
    let signature = SignatureFile::from_bytes(signature)?;
    trusted.verify(manifest_bytes, &signature)?;
    Ok((
        ReleaseManifest::from_canonical_bytes(manifest_bytes)?,
        signature,
    ))
}

/// Signs `manifest` and writes the release file to `out` (whole: a temporary file renamed into
/// place). `artifacts` must hold every artifact the manifest lists.
pub fn write_bundle(
    out: &Path,
    manifest: &ReleaseManifest,
    signer: &ReleaseSigner,
    artifacts: &BTreeMap<Sha256Digest, Vec<u8>>,
) -> Result<ReleaseId, ReleaseError> {
    manifest.validate()?;
    let manifest_bytes = manifest.canonical_bytes();
    let signature = signer.sign(&manifest_bytes).to_bytes();
    let io = |e: std::io::Error| ReleaseError::Io {
        path: out.to_path_buf(),
        source: e,
    };
    let tmp = out.with_extension("partial");
    let file = std::fs::File::create(&tmp).map_err(io)?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    let mut append = |path: &str, bytes: &[u8]| {
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, path, bytes)
    };
    append(MANIFEST, &manifest_bytes).map_err(io)?;
    append(SIGNATURE, &signature).map_err(io)?;
    for artifact in &manifest.artifacts {
        let bytes = artifacts
            .get(&artifact.sha256)
            .ok_or(ReleaseError::Artifact {
                digest: artifact.sha256,
                reason: "not given to the writer".into(),
            })?;
        append(&format!("{ARTIFACTS}{}", artifact.sha256.hex()), bytes).map_err(io)?;
    }
    let mut writer = tar.into_inner().map_err(io)?;
    writer.flush().map_err(io)?;
    writer
        .into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_all()
        .map_err(io)?;
    std::fs::rename(&tmp, out).map_err(io)?;
    Ok(Sha256Digest::of(&manifest_bytes))
}

/// Reads and verifies a release file. `budget` bounds the artifacts' total size.
pub fn read_bundle(
    reader: impl Read,
    trusted: &TrustedKeys,
    budget: u64,
) -> Result<VerifiedRelease, ReleaseError> {
    let corrupt = |e: std::io::Error| ReleaseError::Corrupt(e.to_string());
    let mut archive = tar::Archive::new(reader);
    let mut entries = archive.entries().map_err(corrupt)?;
    let mut next = |expected: &str, max: u64| -> Result<Vec<u8>, ReleaseError> {
        let mut entry = match entries.next() {
            Some(entry) => entry.map_err(corrupt)?,
            None if expected == SIGNATURE => return Err(ReleaseError::Unsigned),
            None => {
                return Err(ReleaseError::Corrupt(format!(
                    "no {expected}: not a release file"
                )));
            }
        };
        let path = entry_path(&entry)?;
        if path != expected {
            return Err(if expected == SIGNATURE {
                ReleaseError::Unsigned
            } else {
                ReleaseError::Corrupt(format!(
                    "{path:?} where {expected} belongs: not a release file"
                ))
            });
        }
        read_entry(&mut entry, max)
    };
    let manifest_bytes = next(MANIFEST, MAX_MANIFEST)?;
    let signature = next(SIGNATURE, MAX_SIGNATURE)?;
    let mut pending = Pending::new(&manifest_bytes, &signature, trusted, budget)?;
    for entry in entries {
        let mut entry = entry.map_err(corrupt)?;
        let path = entry_path(&entry)?;
        let digest = path
            .strip_prefix(ARTIFACTS)
            .and_then(Sha256Digest::from_hex)
            .ok_or_else(|| ReleaseError::Corrupt(format!("unexpected entry {path:?}")))?;
        let size = pending.manifest.artifact(&digest).map_or(0, |a| a.size);
        let bytes = read_entry(&mut entry, size)?;
        pending.add(digest, bytes)?;
    }
    pending.finish(None)
}

/// Reads and verifies the release file at `path`.
pub fn open_bundle(
    path: &Path,
    trusted: &TrustedKeys,
    budget: u64,
) -> Result<VerifiedRelease, ReleaseError> {
    let file = std::fs::File::open(path).map_err(|e| ReleaseError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    read_bundle(std::io::BufReader::new(file), trusted, budget)
}

fn entry_path<R: Read>(entry: &tar::Entry<'_, R>) -> Result<String, ReleaseError> {
    if entry.header().entry_type() != tar::EntryType::Regular {
        return Err(ReleaseError::Corrupt(format!(
            "an entry of type {:?}: a release holds regular files only",
            entry.header().entry_type()
        )));
    }
    let path = entry
        .path()
        .map_err(|e| ReleaseError::Corrupt(e.to_string()))?;
    Ok(path.to_string_lossy().into_owned())
}

/// An entry's bytes, refusing one larger than `max` before reading it.
fn read_entry<R: Read>(entry: &mut tar::Entry<'_, R>, max: u64) -> Result<Vec<u8>, ReleaseError> {
    let size = entry.size();
    if size > max {
        return Err(ReleaseError::Corrupt(format!(
            "an entry of {size} bytes where at most {max} belong"
        )));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    entry
        .take(max)
        .read_to_end(&mut bytes)
        .map_err(|e| ReleaseError::Corrupt(format!("truncated: {e}")))?;
    if bytes.len() as u64 != size {
        return Err(ReleaseError::Corrupt(format!(
            "truncated: {} of {size} bytes",
            bytes.len()
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::ArtifactKind;

    struct Fixture {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
        trusted: TrustedKeys,
        manifest: ReleaseManifest,
    }

    fn files() -> Vec<(Vec<u8>, ArtifactKind)> {
        vec![
            (b"features component".to_vec(), ArtifactKind::Component),
            (b"scorer component".to_vec(), ArtifactKind::Component),
            (b"policy component".to_vec(), ArtifactKind::Component),
            (vec![7u8; 10_000], ArtifactKind::Model),
        ]
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let signer = ReleaseSigner::generate().unwrap();
        let mut trusted = TrustedKeys::default();
        trusted.add_public_line(&signer.public_line("")).unwrap();
        let files = files();
        let refs: Vec<(&[u8], ArtifactKind)> = files.iter().map(|(b, k)| (&b[..], *k)).collect();
        let manifest = crate::testing::manifest_over("1.4.0", &refs);
        let artifacts = files
            .iter()
            .map(|(b, _)| (Sha256Digest::of(b), b.clone()))
            .collect();
        let path = dir.path().join("release.tar");
        write_bundle(&path, &manifest, &signer, &artifacts).unwrap();
        Fixture {
            _dir: dir,
            path,
            trusted,
            manifest,
        }
    }

    #[test]
    fn a_written_release_reads_back_verified() {
        let f = fixture();
        let release = open_bundle(&f.path, &f.trusted, u64::MAX).unwrap();
        assert_eq!(release.manifest, f.manifest);
        assert_eq!(release.id, f.manifest.id());
        for (bytes, _) in files() {
            assert_eq!(
                &**release.artifact(&Sha256Digest::of(&bytes)).unwrap(),
                &bytes[..]
            );
        }
    }

    /// A release whose model travels compressed and whose policy has a form precompiled for
    /// engine `e1`; its files by digest.
    fn encoded_release(
        encoding: impl Fn(&[u8]) -> Encoding,
    ) -> (ReleaseManifest, BTreeMap<Sha256Digest, Vec<u8>>) {
        let files = files();
        let refs: Vec<(&[u8], ArtifactKind)> = files.iter().map(|(b, k)| (&b[..], *k)).collect();
        let mut manifest = crate::testing::manifest_over("1.4.0", &refs);
        let mut by_digest: BTreeMap<Sha256Digest, Vec<u8>> = files
            .iter()
            .map(|(b, _)| (Sha256Digest::of(b), b.clone()))
            .collect();
        let model = &files[3].0;
        let compressed = zstd::bulk::compress(model, 3).unwrap();
        let digest = Sha256Digest::of(&compressed);
        manifest
            .artifacts
            .retain(|a| a.sha256 != manifest.models[0].artifact);
        manifest.artifacts.push(Artifact {
            sha256: digest,
            size: compressed.len() as u64,
            kind: ArtifactKind::Model,
            encoding: encoding(model),
        });
        manifest.models[0].artifact = digest;
        by_digest.insert(digest, compressed);
        let machine_code = b"policy machine code".to_vec();
        let pre = Sha256Digest::of(&machine_code);
        manifest.artifacts.push(Artifact {
            sha256: pre,
            size: machine_code.len() as u64,
            kind: ArtifactKind::Precompiled,
            encoding: Encoding::Identity,
        });
        manifest.modules[2].precompiled.push(crate::Precompiled {
            engine: "e1".into(),
            artifact: pre,
        });
        by_digest.insert(pre, machine_code);
        manifest.normalize();
        manifest.validate().unwrap();
        (manifest, by_digest)
    }

    fn verify(
        manifest: &ReleaseManifest,
        engine: Option<&str>,
        files: impl Fn(&Sha256Digest) -> Option<Vec<u8>>,
    ) -> Result<VerifiedRelease, ReleaseError> {
        let signer = ReleaseSigner::generate().unwrap();
        let mut trusted = TrustedKeys::default();
        trusted.add_public_line(&signer.public_line("")).unwrap();
        let bytes = manifest.canonical_bytes();
        let signature = signer.sign(&bytes).to_bytes();
        VerifiedRelease::from_parts(&bytes, &signature, &trusted, u64::MAX, engine, files)
    }

    #[test]
    fn an_encoded_artifact_is_decoded_after_its_file_is_checked() {
        let zstd = |content: &[u8]| Encoding::Zstd {
            size: content.len() as u64,
            sha256: Sha256Digest::of(content),
        };
        let (manifest, files) = encoded_release(zstd);
        let release = verify(&manifest, None, |d| files.get(d).cloned()).unwrap();
        let model = manifest.models[0].artifact;
        assert_eq!(&**release.artifact(&model).unwrap(), &vec![7u8; 10_000][..]);
        assert_eq!(&**release.file(&model).unwrap(), &files[&model][..]);
        assert!(files[&model].len() < 100, "the model travels compressed");
        assert_eq!(
            manifest.size(),
            10_000 + 18 + 16 + 16 + 19,
            "content sizes bound the budget"
        );

        // The manifest signs what the content must be: a frame that decodes to anything else
        // is refused.
        let wrong_size: fn(&[u8]) -> Encoding = |c| Encoding::Zstd {
            size: c.len() as u64 - 1,
            sha256: Sha256Digest::of(c),
        };
        let wrong_content: fn(&[u8]) -> Encoding = |c| Encoding::Zstd {
            size: c.len() as u64,
            sha256: Sha256Digest::of(b"other"),
        };
        let cases = [
            (wrong_size, "not a zstd frame of at most 9999 bytes"),
            (wrong_content, "decodes to content other than"),
        ];
        for (encoding, expected) in cases {
            let (manifest, files) = encoded_release(encoding);
            let err = verify(&manifest, None, |d| files.get(d).cloned()).unwrap_err();
            assert!(err.to_string().contains(expected), "{expected}: {err}");
        }
    }

    #[test]
    fn a_device_verifies_only_the_artifacts_its_engine_loads() {
        let (manifest, files) = encoded_release(|_| Encoding::Identity);
        let policy = manifest.modules[2].clone();
        let precompiled = policy.precompiled[0].artifact;
        // Engine e1 loads the policy's precompiled form: its component is not needed.
        let wanted = manifest.wanted(Some("e1"));
        assert!(wanted.contains(&precompiled) && !wanted.contains(&policy.component));
        assert_eq!(wanted.len(), 4);
        let release = verify(&manifest, Some("e1"), |d| {
            (*d != policy.component).then(|| files[d].clone())
        })
        .unwrap();
        assert!(release.artifact(&policy.component).is_none());
        assert!(release.artifact(&precompiled).is_some());
        // Any other engine compiles the component, and does not need the precompiled form.
        let release = verify(&manifest, Some("e2"), |d| {
            (*d != precompiled).then(|| files[d].clone())
        })
        .unwrap();
        assert!(release.artifact(&policy.component).is_some());
        let err = verify(&manifest, Some("e2"), |d| {
            (*d != policy.component).then(|| files[d].clone())
        })
        .unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        assert_eq!(manifest.wanted(None).len(), manifest.artifacts.len());
    }

    /// Rewrites the release file's entries through `change`, keeping the tar well formed.
    fn rewrite(path: &Path, change: impl Fn(&str, Vec<u8>) -> Option<Vec<u8>>) {
        let bytes = std::fs::read(path).unwrap();
        let mut archive = tar::Archive::new(&bytes[..]);
        let mut out = tar::Builder::new(Vec::new());
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            if let Some(data) = change(&name, data) {
                let mut header = tar::Header::new_ustar();
                header.set_size(data.len() as u64);
                header.set_entry_type(tar::EntryType::Regular);
                out.append_data(&mut header, &name, &data[..]).unwrap();
            }
        }
        std::fs::write(path, out.into_inner().unwrap()).unwrap();
    }

    fn refused(f: &Fixture) -> ReleaseError {
        open_bundle(&f.path, &f.trusted, u64::MAX).unwrap_err()
    }

    #[test]
    fn every_kind_of_bad_release_is_refused_with_its_reason() {
        let f = fixture();
        rewrite(&f.path, |name, data| (name != SIGNATURE).then_some(data));
        assert_eq!(refused(&f).reason(), "unsigned");

        let f = fixture();
        let stranger = ReleaseSigner::generate().unwrap();
        let manifest = f.manifest.canonical_bytes();
        rewrite(&f.path, |name, data| {
            Some(if name == SIGNATURE {
                stranger.sign(&manifest).to_bytes()
            } else {
                data
            })
        });
        assert_eq!(refused(&f).reason(), "untrusted-key");

        // A threshold changed after signing.
        let f = fixture();
        rewrite(&f.path, |name, data| {
            Some(if name == MANIFEST {
                String::from_utf8(data)
                    .unwrap()
                    .replace("0.9", "0.1")
                    .into_bytes()
            } else {
                data
            })
        });
        assert_eq!(refused(&f).reason(), "signature");

        // An artifact changed after signing (same size).
        let f = fixture();
        rewrite(&f.path, |name, mut data| {
            if name.starts_with(ARTIFACTS) && data.len() == 10_000 {
                data[5000] ^= 1;
            }
            Some(data)
        });
        let err = refused(&f);
        assert_eq!(err.reason(), "digest", "{err}");
        assert!(
            err.to_string().contains("does not match its digest"),
            "{err}"
        );

        // An artifact left out.
        let f = fixture();
        rewrite(&f.path, |name, data| {
            (data.len() != 10_000 || !name.starts_with(ARTIFACTS)).then_some(data)
        });
        assert!(refused(&f).to_string().contains("missing"));

        // Over the device's budget: refused before the artifacts are read.
        let f = fixture();
        let err = open_bundle(&f.path, &f.trusted, 1000).unwrap_err();
        assert_eq!(err.reason(), "too-large", "{err}");

        // Not a release at all.
        let f = fixture();
        std::fs::write(&f.path, b"{\"not\": \"a tar\"}").unwrap();
        assert_eq!(refused(&f).reason(), "corrupt");
    }

    #[test]
    fn a_truncated_release_is_refused_at_every_length() {
        let f = fixture();
        let bytes = std::fs::read(&f.path).unwrap();
        // The last 1024 bytes are the end-of-archive marker, and 512 before them at most the
        // last artifact's padding: any shorter file lacks part of what was signed.
        for len in (0..bytes.len() - 1536).step_by(97) {
            let err = read_bundle(&bytes[..len], &f.trusted, u64::MAX).unwrap_err();
            assert!(
                matches!(
                    err.reason(),
                    "corrupt" | "unsigned" | "digest" | "signature" | "manifest"
                ),
                "{len}: {err}"
            );
        }
    }
}
