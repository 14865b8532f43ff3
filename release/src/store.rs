//! A device's releases on disk: the artifacts by digest, each release's signed manifest, and
//! which release is active, which was active before (the last known good) and which is being
//! installed. Every file is written whole (temporary file, fsync, rename, fsync of the
//! directory), and the state last: a crash at any instant leaves a state that names only
//! complete releases, and a release is verified again (signature, digests) whenever it is
//! loaded from here.
//!
//! ```text
//! DIR/objects/<sha256 hex>          artifacts, shared between releases
//! DIR/objects/<sha256 hex>.partial  an artifact being downloaded (resumed from its length)
//! DIR/releases/<id hex>/release.json, release.sig
//! DIR/state.json                    {"active", "previous", "candidate"}
//! ```

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{
    Artifact, ReleaseError, ReleaseId, ReleaseManifest, Sha256Digest, TrustedKeys, VerifiedRelease,
};
use serde::{Deserialize, Serialize};

/// Which releases the device runs, ran, and is installing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreState {
    pub active: Option<ReleaseId>,
    /// The release active before `active`: the last known good to roll back to.
    pub previous: Option<ReleaseId>,
    /// Staged (every artifact and the manifest on disk) and not yet active.
    pub candidate: Option<ReleaseId>,
}

/// The release store of one device.
#[derive(Debug)]
pub struct ReleaseStore {
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReleaseError + '_ {
    move |source| ReleaseError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` whole: a temporary file, fsync, rename, fsync of the directory.
pub fn write_whole(path: &Path, bytes: &[u8]) -> Result<(), ReleaseError> {
    replace_file(path, bytes)?;
    sync_dir(path.parent().expect("store paths have a parent"))
}

/// A temporary file, fsync, rename: whole once the directory is synced.
fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), ReleaseError> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn sync_dir(dir: &Path) -> Result<(), ReleaseError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

impl ReleaseStore {
    /// Opens (creating) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, ReleaseError> {
        for sub in ["objects", "releases"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(io(&path))?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    fn object(&self, digest: &Sha256Digest) -> PathBuf {
        self.dir.join("objects").join(digest.hex())
    }

    fn release_dir(&self, id: &ReleaseId) -> PathBuf {
        self.dir.join("releases").join(id.hex())
    }

    pub fn state(&self) -> Result<StoreState, ReleaseError> {
        let path = self.state_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| ReleaseError::Corrupt(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StoreState::default()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    fn set_state(&self, state: &StoreState) -> Result<(), ReleaseError> {
        let mut bytes = serde_json::to_vec_pretty(state).expect("serializes");
        bytes.push(b'\n');
        write_whole(&self.state_path(), &bytes)
    }

    /// Writes a verified release's artifacts (those not already here) and its manifest, then
    /// records it as the candidate.
    pub fn stage(&self, release: &VerifiedRelease) -> Result<(), ReleaseError> {
        self.publish(release)?;
        let mut state = self.state()?;
        state.candidate = Some(release.id);
        self.set_state(&state)
    }

    /// Writes a verified release's artifacts (those it was verified with and not already
    /// here) and its manifest, without naming it in the state: the aggregator's published
    /// releases.
    pub fn publish(&self, release: &VerifiedRelease) -> Result<(), ReleaseError> {
        for artifact in &release.manifest.artifacts {
            if let Some(file) = release.file(&artifact.sha256)
                && !self.has(artifact)
            {
                write_whole(&self.object(&artifact.sha256), file)?;
            }
        }
        self.write_signed(
            &release.id,
            &release.manifest_bytes,
            &release.signature.to_bytes(),
        )
    }

    fn write_signed(
        &self,
        id: &ReleaseId,
        manifest: &[u8],
        signature: &[u8],
    ) -> Result<(), ReleaseError> {
        let dir = self.release_dir(id);
        let new = !dir.exists();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        replace_file(&dir.join("release.json"), manifest)?;
        replace_file(&dir.join("release.sig"), signature)?;
        sync_dir(&dir)?;
        // A new release's directory entry is durable too, before any state names it.
        if new {
            sync_dir(&self.dir.join("releases"))?;
        }
        Ok(())
    }

    /// Whether the artifact is here whole (its size; its digest is checked when loaded).
    pub fn has(&self, artifact: &Artifact) -> bool {
        std::fs::metadata(self.object(&artifact.sha256)).is_ok_and(|m| m.len() == artifact.size)
    }

    /// A stored artifact's content: its file checked against the digest and size listed,
    /// then decoded (what a release's model is read from without loading the release).
    pub fn content(&self, artifact: &Artifact) -> Result<Arc<[u8]>, ReleaseError> {
        let path = self.object(&artifact.sha256);
        let file: Arc<[u8]> = std::fs::read(&path).map_err(io(&path))?.into();
        if file.len() as u64 != artifact.size || Sha256Digest::of(&file) != artifact.sha256 {
            return Err(ReleaseError::Corrupt(format!(
                "{} is not the artifact it is named after",
                path.display()
            )));
        }
        crate::bundle::decode(artifact, &file)
    }

    /// The path of a stored artifact, for serving it in pieces.
    pub fn object_path(&self, digest: &Sha256Digest) -> PathBuf {
        self.object(digest)
    }

    fn partial(&self, digest: &Sha256Digest) -> PathBuf {
        self.dir
            .join("objects")
            .join(format!("{}.partial", digest.hex()))
    }

    /// How much of the artifact is here: its size when whole, else the length of its
    /// partial download (where a download resumes).
    ///
    /// A partial download that is already whole (the device stopped between its last piece
    /// and its check) is checked now, and becomes an object or starts over.
    pub fn downloaded(&self, artifact: &Artifact) -> u64 {
        if self.has(artifact) {
            return artifact.size;
        }
        let have = std::fs::metadata(self.partial(&artifact.sha256)).map_or(0, |m| m.len());
        if have < artifact.size {
            return have;
        }
        match self.finish_partial(artifact) {
            Ok(()) => artifact.size,
            // Not what the manifest says: removed, fetched again from the start.
            Err(_) => 0,
        }
    }

    /// Writes a downloaded piece of an artifact at `offset`, which must be where its partial
    /// download ends; once the artifact is whole its digest is checked and it becomes an
    /// object. Returns how much of it is here. A piece past the artifact's size, or a whole
    /// artifact that is not what the manifest says, is refused and the download starts over.
    pub fn write_piece(
        &self,
        artifact: &Artifact,
        offset: u64,
        data: &[u8],
    ) -> Result<u64, ReleaseError> {
        use std::io::{Seek, SeekFrom};
        let have = self.downloaded(artifact);
        if have == artifact.size {
            return Ok(have);
        }
        let digest = artifact.sha256;
        let refused = |reason: String| ReleaseError::Artifact { digest, reason };
        if offset != have {
            return Err(refused(format!(
                "piece at {offset}, the download is at {have}"
            )));
        }
        let end = offset + data.len() as u64;
        if end > artifact.size {
            std::fs::remove_file(self.partial(&digest)).ok();
            return Err(refused(format!(
                "piece ends at {end}, past the artifact's {} bytes",
                artifact.size
            )));
        }
        let path = self.partial(&digest);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.write_all(data))
            .and_then(|()| file.set_len(end))
            .map_err(io(&path))?;
        if end < artifact.size {
            return Ok(end);
        }
        file.sync_all().map_err(io(&path))?;
        self.finish_partial(artifact)?;
        Ok(end)
    }

    /// A whole partial download becomes an object if it is what the manifest says; if not it
    /// is removed, and the download starts over.
    fn finish_partial(&self, artifact: &Artifact) -> Result<(), ReleaseError> {
        let digest = artifact.sha256;
        let path = self.partial(&digest);
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        if bytes.len() as u64 != artifact.size || Sha256Digest::of(&bytes) != digest {
            std::fs::remove_file(&path).ok();
            return Err(ReleaseError::Artifact {
                digest,
                reason: "downloaded bytes do not match the digest".into(),
            });
        }
        let object = self.object(&digest);
        std::fs::rename(&path, &object).map_err(io(&object))?;
        sync_dir(&self.dir.join("objects"))
    }

    /// Records a downloaded release as the candidate: its signed manifest is written, every
    /// artifact an engine of compatibility `engine` loads it from (see
    /// [`ReleaseManifest::wanted`]) must be here whole. It is verified again when loaded.
    pub fn stage_downloaded(
        &self,
        manifest: &ReleaseManifest,
        manifest_bytes: &[u8],
        signature: &[u8],
        engine: Option<&str>,
    ) -> Result<ReleaseId, ReleaseError> {
        let wanted = manifest.wanted(engine);
        if let Some(missing) = manifest
            .artifacts
            .iter()
            .find(|a| wanted.contains(&a.sha256) && !self.has(a))
        {
            return Err(ReleaseError::Artifact {
                digest: missing.sha256,
                reason: "missing".into(),
            });
        }
        let id = Sha256Digest::of(manifest_bytes);
        self.write_signed(&id, manifest_bytes, signature)?;
        let mut state = self.state()?;
        state.candidate = Some(id);
        self.set_state(&state)?;
        Ok(id)
    }

    /// The ids of the releases stored here (published, or ever staged).
    pub fn releases(&self) -> Result<Vec<ReleaseId>, ReleaseError> {
        let dir = self.dir.join("releases");
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            if let Some(id) = entry.file_name().to_str().and_then(Sha256Digest::from_hex)
                && entry.path().join("release.sig").is_file()
            {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// The signed manifest and signature of a stored release, as stored.
    pub fn signed(&self, id: &ReleaseId) -> Result<(Vec<u8>, Vec<u8>), ReleaseError> {
        let dir = self.release_dir(id);
        let manifest = dir.join("release.json");
        let signature = dir.join("release.sig");
        Ok((
            std::fs::read(&manifest).map_err(io(&manifest))?,
            std::fs::read(&signature).map_err(io(&signature))?,
        ))
    }

    /// The manifest of a stored release, its signature checked; its artifacts are not read.
    pub fn manifest(
        &self,
        id: &ReleaseId,
        trusted: &TrustedKeys,
    ) -> Result<ReleaseManifest, ReleaseError> {
        let (manifest, signature) = self.signed(id)?;
        Ok(crate::verify_manifest(&manifest, &signature, trusted)?.0)
    }

    /// Reads a stored release and verifies it again, as if it had just arrived: the artifacts
    /// an engine of compatibility `engine` loads it from, or every artifact for `None`.
    pub fn load(
        &self,
        id: &ReleaseId,
        trusted: &TrustedKeys,
        budget: u64,
        engine: Option<&str>,
    ) -> Result<VerifiedRelease, ReleaseError> {
        let dir = self.release_dir(id);
        let (manifest, signature) = self.signed(id)?;
        let release =
            VerifiedRelease::from_parts(&manifest, &signature, trusted, budget, engine, |d| {
                std::fs::read(self.object(d)).ok()
            })?;
        if release.id != *id {
            return Err(ReleaseError::Corrupt(format!(
                "{} holds release {}",
                dir.display(),
                release.id
            )));
        }
        Ok(release)
    }

    /// The candidate becomes active, the active one previous.
    pub fn activate(&self, id: &ReleaseId) -> Result<(), ReleaseError> {
        let mut state = self.state()?;
        if state.active != Some(*id) {
            state.previous = state.active.replace(*id);
        }
        if state.candidate == Some(*id) {
            state.candidate = None;
        }
        self.set_state(&state)
    }

    /// Makes `id`, stored whole in `from`, the active release here, as if installed: its
    /// artifacts hard-linked (objects never change; copied where linking fails), its signed
    /// manifest copied. Many devices of one machine (a simulator, an edge node's handsets)
    /// start on one release without a copy each. It is verified again when loaded.
    pub fn adopt(&self, from: &Self, id: &ReleaseId) -> Result<(), ReleaseError> {
        let (manifest_bytes, signature) = from.signed(id)?;
        let manifest = ReleaseManifest::from_canonical_bytes(&manifest_bytes)?;
        for artifact in &manifest.artifacts {
            if self.has(artifact) {
                continue;
            }
            let (source, target) = (from.object(&artifact.sha256), self.object(&artifact.sha256));
            if std::fs::hard_link(&source, &target).is_err() {
                let bytes = std::fs::read(&source).map_err(io(&source))?;
                write_whole(&target, &bytes)?;
            }
        }
        self.write_signed(id, &manifest_bytes, &signature)?;
        self.set_state(&StoreState {
            active: Some(*id),
            ..StoreState::default()
        })
    }

    /// Forgets a candidate that failed to install (its files stay until pruned).
    pub fn drop_candidate(&self, id: &ReleaseId) -> Result<(), ReleaseError> {
        let mut state = self.state()?;
        if state.candidate == Some(*id) {
            state.candidate = None;
            self.set_state(&state)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A signed release of made-up artifacts (the store does not load modules).
    fn release(signer: &crate::ReleaseSigner, version: &str, policy: &[u8]) -> VerifiedRelease {
        use crate::ArtifactKind::{Component, Model};
        let files: [(&[u8], _); 4] = [
            (b"features", Component),
            (b"scorer", Component),
            (policy, Component),
            (b"model", Model),
        ];
        crate::testing::verified(signer, version, &files).0
    }

    /// A signing key and the trusted keys holding it.
    fn signer_and_trust() -> (crate::ReleaseSigner, TrustedKeys) {
        let signer = crate::ReleaseSigner::generate().unwrap();
        let mut trusted = TrustedKeys::default();
        trusted.add_public_line(&signer.public_line("")).unwrap();
        (signer, trusted)
    }

    #[test]
    fn staged_releases_become_active_and_the_previous_one_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (signer, trusted) = signer_and_trust();
        let store = ReleaseStore::open(dir.path()).unwrap();
        assert_eq!(store.state().unwrap(), StoreState::default());

        let v1 = release(&signer, "1.0.0", b"policy one");
        store.stage(&v1).unwrap();
        assert_eq!(store.state().unwrap().candidate, Some(v1.id));
        store.activate(&v1.id).unwrap();
        let v2 = release(&signer, "1.1.0", b"policy two");
        store.stage(&v2).unwrap();
        // Reopened (a restart): the state and the releases are there.
        let store = ReleaseStore::open(dir.path()).unwrap();
        let state = store.state().unwrap();
        assert_eq!((state.active, state.candidate), (Some(v1.id), Some(v2.id)));
        assert_eq!(
            store.load(&v2.id, &trusted, u64::MAX, None).unwrap().id,
            v2.id
        );
        store.activate(&v2.id).unwrap();
        assert_eq!(
            store.state().unwrap(),
            StoreState {
                active: Some(v2.id),
                previous: Some(v1.id),
                candidate: None
            }
        );
        // Artifacts the two releases share are stored once.
        assert_eq!(
            std::fs::read_dir(dir.path().join("objects"))
                .unwrap()
                .count(),
            5
        );

        // A stored artifact changed on disk is caught when the release is loaded again.
        let policy = dir
            .path()
            .join("objects")
            .join(Sha256Digest::of(b"policy two").hex());
        std::fs::write(&policy, b"policy 2wo").unwrap();
        let err = store.load(&v2.id, &trusted, u64::MAX, None).unwrap_err();
        assert_eq!(err.reason(), "digest", "{err}");
    }

    #[test]
    fn a_download_resumes_where_it_stopped_and_only_whole_verified_artifacts_become_objects() {
        let dir = tempfile::tempdir().unwrap();
        let (signer, trusted) = signer_and_trust();
        let v1 = release(&signer, "1.0.0", &[7u8; 1000]);
        let store = ReleaseStore::open(dir.path()).unwrap();
        let policy = v1
            .manifest
            .artifacts
            .iter()
            .find(|a| a.size == 1000)
            .unwrap()
            .clone();
        let bytes = v1.file(&policy.sha256).unwrap().to_vec();
        assert_eq!(store.write_piece(&policy, 0, &bytes[..300]).unwrap(), 300);
        // A restart: the download resumes at 300; a piece elsewhere is refused.
        let store = ReleaseStore::open(dir.path()).unwrap();
        assert_eq!(store.downloaded(&policy), 300);
        assert!(store.write_piece(&policy, 0, &bytes[..300]).is_err());
        assert!(!store.has(&policy));
        // A piece that runs past the size is refused and the download starts over.
        assert!(store.write_piece(&policy, 300, &[0; 701]).is_err());
        assert_eq!(store.downloaded(&policy), 0);
        // Whole but not what the manifest says: refused, nothing kept.
        let err = store.write_piece(&policy, 0, &[8u8; 1000]).unwrap_err();
        assert_eq!(err.reason(), "digest");
        assert_eq!(store.downloaded(&policy), 0);
        assert_eq!(store.write_piece(&policy, 0, &bytes).unwrap(), 1000);
        assert!(store.has(&policy));

        // Stopped after the last piece was written and before it was checked: whole on
        // disk, not yet an object. It is checked when next asked about, not taken as done.
        let object = store.object(&policy.sha256);
        std::fs::rename(&object, store.partial(&policy.sha256)).unwrap();
        assert!(!store.has(&policy));
        assert_eq!(store.downloaded(&policy), 1000);
        assert!(store.has(&policy));
        std::fs::rename(&object, store.partial(&policy.sha256)).unwrap();
        std::fs::write(store.partial(&policy.sha256), [9u8; 1000]).unwrap();
        assert_eq!(
            store.downloaded(&policy),
            0,
            "a whole partial of other bytes starts over"
        );
        assert!(!store.partial(&policy.sha256).exists());
        assert_eq!(store.write_piece(&policy, 0, &bytes).unwrap(), 1000);

        // Staging needs every artifact; with them all, the release loads verified.
        let err = store
            .stage_downloaded(
                &v1.manifest,
                &v1.manifest_bytes,
                &v1.signature.to_bytes(),
                None,
            )
            .unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        for a in &v1.manifest.artifacts {
            store
                .write_piece(a, 0, v1.file(&a.sha256).unwrap())
                .unwrap();
        }
        let id = store
            .stage_downloaded(
                &v1.manifest,
                &v1.manifest_bytes,
                &v1.signature.to_bytes(),
                None,
            )
            .unwrap();
        assert_eq!(id, v1.id);
        assert_eq!(store.state().unwrap().candidate, Some(v1.id));
        assert_eq!(store.load(&id, &trusted, u64::MAX, None).unwrap().id, v1.id);
        assert_eq!(store.releases().unwrap(), vec![v1.id]);
    }

    #[test]
    fn an_adopted_release_is_active_and_loads_from_linked_objects() {
        let dir = tempfile::tempdir().unwrap();
        let (signer, trusted) = signer_and_trust();
        let v1 = release(&signer, "1.0.0", b"policy one");
        let seed = ReleaseStore::open(&dir.path().join("seed")).unwrap();
        seed.publish(&v1).unwrap();
        let device = ReleaseStore::open(&dir.path().join("device")).unwrap();
        device.adopt(&seed, &v1.id).unwrap();
        assert_eq!(
            device.state().unwrap(),
            StoreState {
                active: Some(v1.id),
                ..StoreState::default()
            }
        );
        assert_eq!(
            device.load(&v1.id, &trusted, u64::MAX, None).unwrap().id,
            v1.id
        );
        // A release the seed does not hold is an error, and changes nothing.
        let v2 = release(&signer, "2.0.0", b"policy two");
        assert!(device.adopt(&seed, &v2.id).is_err());
        assert_eq!(device.state().unwrap().active, Some(v1.id));
    }
}
