//! A device's side of release distribution, without the network: what to make of an offered
//! release (its signature, its size against the budget, whether it is newer than the active
//! one, which artifacts are missing), storing downloaded pieces, and installing the release
//! once whole: staged as the candidate in the store, then loaded through the registry (which
//! verifies it again and activates it only once loaded). Every refusal has a short reason
//! code, reported back to the aggregator and counted in the host's refusals.
//!
//! The control stream (`device/control.rs`) drives it; each call blocks on files (and the
//! install on compiling), so it runs on the blocking pool.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};

use fleet_proto::distribution::{DeviceReport, Digest, FetchConfig, Need, Offer, Step};
use fleet_release::{ReleaseManifest, Sha256Digest};

use super::install::{check_newer, stored};
use super::{ReleaseLoadError, ReleaseSource, ReleaseStore};
use crate::registry::{ModuleRegistry, ModuleSource, RegistryError};

/// What a device says about itself beyond its releases.
#[derive(Clone, Debug, Default)]
pub struct DeviceLabels {
    pub labels: Vec<(String, String)>,
    pub agent: String,
}

/// An offer that verified, and what of it is missing.
#[derive(Debug)]
pub struct Accepted {
    pub manifest: ReleaseManifest,
    pub offer: Offer,
    pub needs: Vec<Need>,
}

/// The device's release agent.
pub struct ReleaseAgent {
    registry: Arc<ModuleRegistry>,
    about: DeviceLabels,
    /// Releases refused here, and why: an offer of one is answered at once, without work.
    refused: Mutex<HashMap<Digest, Step>>,
    /// Most bytes per second a download takes (`None`: as fast as the link goes).
    download_limit: Option<u64>,
    /// Pieces asked for at once, and their size.
    fetch: FetchConfig,
}

impl ReleaseAgent {
    pub fn new(registry: Arc<ModuleRegistry>, about: DeviceLabels) -> Self {
        Self {
            registry,
            about,
            refused: Mutex::new(HashMap::new()),
            download_limit: None,
            fetch: FetchConfig::default(),
        }
    }

    /// Downloads ask for pieces of `bytes` (smaller pieces send less again after a link is
    /// cut mid-piece; larger ones take fewer round trips).
    pub fn with_piece_size(mut self, bytes: u32) -> Self {
        self.fetch.piece = bytes;
        self
    }

    pub fn fetch_config(&self) -> FetchConfig {
        self.fetch.clone()
    }

    /// Downloads take at most `bytes_per_s` (a handset on a metered or thin link).
    pub fn with_download_limit(mut self, bytes_per_s: Option<u64>) -> Self {
        self.download_limit = bytes_per_s.filter(|&b| b > 0);
        self
    }

    pub fn download_limit(&self) -> Option<u64> {
        self.download_limit
    }

    fn source(&self) -> Option<&ReleaseSource> {
        match self.registry.source() {
            ModuleSource::Release(source) if source.store.is_some() => Some(source),
            _ => None,
        }
    }

    /// The store an offer [`Self::consider`] accepted goes to (only a source with a store
    /// accepts one).
    fn store(&self) -> &ReleaseStore {
        let source = self.source().expect("accepted by a source with a store");
        source.store.as_ref().expect("a source with a store")
    }

    /// The report for the aggregator: what runs, and where `offered` stands.
    pub fn report(&self, offered: Option<(Digest, Step)>) -> DeviceReport {
        let set = self.registry.current();
        let (active, active_label) = match &set.release {
            Some(release) => (Some(release.id.0), release.label.clone()),
            // No release: the built-in modules, or a module directory (`--modules`).
            None => {
                let origin = if self.source().is_some() {
                    "built-in"
                } else {
                    "directory"
                };
                (None, format!("{origin}:{:016x}", set.identity()))
            }
        };
        DeviceReport {
            active,
            active_label,
            labels: self.about.labels.clone(),
            agent: self.about.agent.clone(),
            offered,
        }
    }

    /// Refuses a release for what it is (its signature, its size, its modules): an offer of it
    /// again is answered at once.
    fn refuse(&self, release: Digest, error: &RegistryError) -> Step {
        let step = self.failed(error);
        self.lock().insert(release, step.clone());
        step
    }

    /// A failure counted and reported, not held against the release: a download that
    /// arrived corrupt is fetched again on the next offer (the next connection), so a copy
    /// repaired at the aggregator gets through.
    fn failed(&self, error: &RegistryError) -> Step {
        if let Some(source) = self.source() {
            source.refusals.record(error);
        }
        Step::Failed {
            reason: error.reason().into(),
            message: error.to_string(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Step>> {
        self.refused.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What to do with an offer: `Ok` with the artifacts to fetch, or the step to report
    /// (active already, or refused with its reason).
    pub fn consider(&self, offer: Offer) -> Result<Accepted, Step> {
        let release = offer.release;
        if let Some(step) = self.lock().get(&release) {
            return Err(step.clone());
        }
        if self.registry.current().release.as_ref().map(|r| r.id.0) == Some(release) {
            return Err(Step::Active);
        }
        let Some(source) = self.source() else {
            return Err(Step::Failed {
                reason: "no-store".into(),
                message: "this host runs modules from a directory (--modules), not releases".into(),
            });
        };
        self.check(source, &offer)
            .map(|(manifest, needs)| Accepted {
                manifest,
                offer,
                needs,
            })
            .map_err(|e| self.refuse(release, &e))
    }

    fn check(
        &self,
        source: &ReleaseSource,
        offer: &Offer,
    ) -> Result<(ReleaseManifest, Vec<Need>), RegistryError> {
        let store = source.store.as_ref().expect("a source with a store");
        let refused = |error| ReleaseLoadError::Refused {
            path: "(offered by the aggregator)".into(),
            error,
        };
        let (manifest, _) =
            fleet_release::verify_manifest(&offer.manifest, &offer.signature, &source.trusted)
                .map_err(refused)?;
        if Sha256Digest::of(&offer.manifest).0 != offer.release {
            return Err(refused(fleet_release::ReleaseError::Manifest(
                "the offered id is not the manifest's".into(),
            ))
            .into());
        }
        if manifest.size() > source.budget {
            return Err(refused(fleet_release::ReleaseError::TooLarge {
                size: manifest.size(),
                budget: source.budget,
            })
            .into());
        }
        check_newer(store, &source.trusted, &manifest)?;
        // Only what this engine loads: its precompiled form of each module where the release
        // has one, the component otherwise, and the models.
        let wanted = manifest.wanted(Some(self.registry.engine().compatibility()));
        let needs = manifest
            .artifacts
            .iter()
            .filter(|a| wanted.contains(&a.sha256))
            .map(|a| Need {
                artifact: a.sha256.0,
                size: a.size,
                have: store.downloaded(a),
            })
            .collect();
        Ok((manifest, needs))
    }

    /// Stores a downloaded piece; returns how much of the artifact is here. A refused piece
    /// (out of place, past the size, or completing an artifact that is not what the manifest
    /// says) fails the release.
    pub fn write_piece(
        &self,
        accepted: &Accepted,
        artifact: Digest,
        offset: u64,
        data: &[u8],
    ) -> Result<u64, Step> {
        let store = self.store();
        let Some(entry) = accepted.manifest.artifact(&Sha256Digest(artifact)) else {
            return Err(Step::Failed {
                reason: "corrupt".into(),
                message: "a piece of an artifact the release does not name".into(),
            });
        };
        store.write_piece(entry, offset, data).map_err(|error| {
            self.failed(&RegistryError::from(ReleaseLoadError::Refused {
                path: "(downloaded)".into(),
                error,
            }))
        })
    }

    /// Every artifact is here: stages the release as the candidate and installs it through
    /// the registry. `Active`, or `Failed` with the reason (the device stays on its release).
    /// Verifying and loading is work the device's batches must not wait for: it runs at a
    /// lower priority, at most one install per core at a time in a process (one serving many
    /// devices, an edge node or a simulator, gets an offer for each of them at once).
    pub fn install(&self, accepted: &Accepted) -> Step {
        static INSTALLING: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());
        let most = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (running, turn) = &INSTALLING;
        {
            let mut n = running.lock().unwrap_or_else(|e| e.into_inner());
            while *n >= most {
                n = turn.wait(n).unwrap_or_else(|e| e.into_inner());
            }
            *n += 1;
        }
        let step = fleet_process::in_background(|| self.install_now(accepted));
        *running.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        turn.notify_one();
        step
    }

    fn install_now(&self, accepted: &Accepted) -> Step {
        let release = accepted.offer.release;
        let store = self.store();
        let staged = store
            .stage_downloaded(
                &accepted.manifest,
                &accepted.offer.manifest,
                &accepted.offer.signature,
                Some(self.registry.engine().compatibility()),
            )
            .map_err(|e| RegistryError::from(stored(store)(e)));
        let installed = staged.and_then(|_| self.registry.reload());
        match installed {
            Ok(set) if set.release.as_ref().map(|r| r.id.0) == Some(release) => Step::Active,
            Ok(set) => {
                // Another install (a release file, say) won the race; this one stays staged
                // for the next start only if it is still the candidate.
                let running = set.release_label().unwrap_or("built-in").to_string();
                Step::Failed {
                    reason: "superseded".into(),
                    message: format!("{running} was installed instead"),
                }
            }
            Err(e) => self.refuse(release, &e),
        }
    }
}
