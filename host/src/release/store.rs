//! A device's releases on disk: the artifacts by digest, each release's signed manifest, and
//! which release is active, which was active before (the last known good) and which is being
//! installed. Every file is written whole (temporary file, fsync, rename, fsync of the
//! directory), and the state last: a crash at any instant leaves a state that names only
//! complete releases, and a release is verified again (signature, digests) whenever it is
//! loaded from here.
//!
//! ```text
//! DIR/objects/<sha256 hex>          artifacts, shared between releases
//! DIR/releases/<id hex>/release.json, release.sig
//! DIR/state.json                    {"active", "previous", "candidate"}
//! ```

use std::io::Write as _;
use std::path::{Path, PathBuf};

use fleet_release::{
    ReleaseError, ReleaseId, ReleaseManifest, Sha256Digest, TrustedKeys, VerifiedRelease,
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
fn write_whole(path: &Path, bytes: &[u8]) -> Result<(), ReleaseError> {
    let dir = path.parent().expect("store paths have a parent");
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
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
        for artifact in &release.manifest.artifacts {
            let path = self.object(&artifact.sha256);
            let present = std::fs::metadata(&path).is_ok_and(|m| m.len() == artifact.size);
            if !present {
                let bytes = release.artifact(&artifact.sha256).expect("verified");
                write_whole(&path, bytes)?;
            }
        }
        let dir = self.release_dir(&release.id);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        write_whole(&dir.join("release.json"), &release.manifest_bytes)?;
        write_whole(&dir.join("release.sig"), &release.signature.to_bytes())?;
        let mut state = self.state()?;
        state.candidate = Some(release.id);
        self.set_state(&state)
    }

    /// The signed manifest and signature of a stored release, as stored.
    fn signed(&self, id: &ReleaseId) -> Result<(Vec<u8>, Vec<u8>), ReleaseError> {
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
        Ok(fleet_release::verify_manifest(&manifest, &signature, trusted)?.0)
    }

    /// Reads a stored release and verifies it again, as if it had just arrived.
    pub fn load(
        &self,
        id: &ReleaseId,
        trusted: &TrustedKeys,
        budget: u64,
    ) -> Result<VerifiedRelease, ReleaseError> {
        let dir = self.release_dir(id);
        let (manifest, signature) = self.signed(id)?;
        let release = VerifiedRelease::from_parts(&manifest, &signature, trusted, budget, |d| {
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
    fn release(
        signer: &fleet_release::ReleaseSigner,
        version: &str,
        policy: &[u8],
    ) -> VerifiedRelease {
        use fleet_release::ArtifactKind::{Component, Model};
        let files: [(&[u8], _); 4] = [
            (b"features", Component),
            (b"scorer", Component),
            (policy, Component),
            (b"model", Model),
        ];
        fleet_release::testing::verified(signer, version, &files).0
    }

    #[test]
    fn staged_releases_become_active_and_the_previous_one_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let signer = fleet_release::ReleaseSigner::generate().unwrap();
        let mut trusted = TrustedKeys::default();
        trusted.add_public_line(&signer.public_line("")).unwrap();
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
        assert_eq!(store.load(&v2.id, &trusted, u64::MAX).unwrap().id, v2.id);
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
        let err = store.load(&v2.id, &trusted, u64::MAX).unwrap_err();
        assert_eq!(err.reason(), "digest", "{err}");
    }
}
