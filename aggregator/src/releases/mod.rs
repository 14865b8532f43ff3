//! The fleet's control plane at the aggregator: published releases (verified against the
//! fleet's release keys, kept content-addressed on disk in `DATA/releases/`, served to devices
//! in pieces read from disk), deployments (which devices should run which release,
//! `deployments.rs`), and what each device reports (its labels, the release it runs, where an
//! offered install stands). `control.rs` drives a device's control stream; `endpoints.rs` is
//! the operator's HTTP API.

mod control;
mod deployments;
mod endpoints;

pub use control::serve as serve_control;
pub use deployments::{Deployment, Deployments, Target};
pub use endpoints::{operator_routes, viewer_routes};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fleet_onnx::ModelProto;
use fleet_proto::distribution::{DeviceReport, Digest, Offer, Step};
use fleet_release::store::ReleaseStore;
use fleet_release::{ReleaseId, ReleaseManifest, TrustedKeys};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::drift::Baselines;
use crate::models::{BUILTIN_MODEL, ModelRegistry, ModelView};

/// Most bytes of a release file accepted by `POST /api/v1/releases`.
pub const MAX_PUBLISH: u64 = 512 << 20;

/// What the aggregator knows of a device's releases, from its reports.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DeviceReleases {
    pub labels: BTreeMap<String, String>,
    pub agent: String,
    /// The release it runs (hex id), `None` for the built-in modules.
    pub active: Option<String>,
    pub active_label: String,
    /// The release offered last (hex id) and where its install stands.
    pub offered: Option<(String, Step)>,
    /// When it last reported (ms since the epoch).
    pub reported_ms: i64,
    /// Whether its control stream is open now.
    #[serde(skip)]
    pub connected: bool,
}

/// A published release, as listed.
#[derive(Clone, Debug, Serialize)]
pub struct Published {
    pub id: String,
    pub label: String,
    pub name: String,
    pub version: String,
    /// Bytes of its artifacts' files (what is stored, and at most what a device fetches).
    pub size: u64,
    /// Bytes of its artifacts once decompressed.
    pub decompressed_size: u64,
    pub artifacts: usize,
    pub modules: BTreeMap<String, String>,
}

impl Published {
    fn of(id: &ReleaseId, manifest: &ReleaseManifest) -> Self {
        Self {
            id: id.hex(),
            label: manifest.label(),
            name: manifest.name.clone(),
            version: manifest.version.to_string(),
            size: manifest.file_size(None),
            decompressed_size: manifest.size(),
            artifacts: manifest.artifacts.len(),
            modules: manifest
                .modules
                .iter()
                .map(|m| (m.kind.to_string(), format!("{}@{}", m.name, m.version)))
                .collect(),
        }
    }
}

/// An offer ready to send: the signed manifest and the artifacts a device may fetch.
pub struct Ready {
    pub offer: Offer,
    pub artifacts: HashSet<Digest>,
}

#[derive(Default)]
struct Counters {
    /// Failed installs reported, by reason (each device and release counted once).
    refusals: BTreeMap<String, u64>,
    pieces: u64,
    bytes: u64,
}

/// The control plane's state.
pub struct FleetReleases {
    dir: PathBuf,
    store: ReleaseStore,
    /// Every published release (read from the store once, at open), by name, version and id
    /// (two builds may carry the same version).
    published: Mutex<BTreeMap<(String, semver::Version, ReleaseId), Published>>,
    deployments: Mutex<Deployments>,
    devices: Mutex<BTreeMap<String, DeviceReleases>>,
    offers: Mutex<HashMap<ReleaseId, Arc<Ready>>>,
    counters: Mutex<Counters>,
    /// Bumped on every deployment: control streams check whether their device's desired
    /// release changed.
    changes: watch::Sender<u64>,
    /// Bumped on every change to `devices`, for the saver.
    device_changes: std::sync::atomic::AtomicU64,
    /// The training baselines of the built-in model and of every published release's models.
    baselines: Arc<Baselines>,
    /// Those models, with what they say of themselves.
    models: ModelRegistry,
}

/// Writes a file whole (temporary file, fsync, rename, fsync of the directory).
pub(crate) fn write_whole(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    fleet_release::store::write_whole(path, bytes).map_err(anyhow::Error::from)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FleetReleases {
    /// Opens (creating) the control plane's directory.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let store = ReleaseStore::open(dir)?;
        let deployments = Deployments::load(dir)?;
        let devices = match std::fs::read(dir.join("devices.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "devices.json unreadable; devices report again");
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        };
        let releases = Self {
            dir: dir.to_path_buf(),
            store,
            published: Mutex::new(BTreeMap::new()),
            deployments: Mutex::new(deployments),
            devices: Mutex::new(devices),
            offers: Mutex::new(HashMap::new()),
            counters: Mutex::new(Counters::default()),
            changes: watch::Sender::new(0),
            device_changes: std::sync::atomic::AtomicU64::new(0),
            baselines: Arc::new(Baselines::default()),
            models: ModelRegistry::default(),
        };
        releases.learn_model(None, BUILTIN_MODEL);
        for id in releases.store.releases()? {
            let (manifest, _) = releases.store.signed(&id)?;
            let manifest = ReleaseManifest::from_canonical_bytes(&manifest)?;
            for model in &manifest.models {
                // A stored model that no longer reads back costs its drift and registry
                // entry, not the aggregator's start (devices fetching it are refused then).
                let content = manifest.artifact(&model.artifact).and_then(|a| {
                    releases
                        .store
                        .content(a)
                        .inspect_err(|e| tracing::warn!(release = %manifest.label(), error = %e, "a stored model does not read back"))
                        .ok()
                });
                if let Some(content) = content {
                    releases.learn_model(Some((&id, &manifest)), &content);
                }
            }
            releases.remember(&id, &manifest);
        }
        Ok(releases)
    }

    /// The training baselines drift is measured against.
    pub fn baselines(&self) -> Arc<Baselines> {
        self.baselines.clone()
    }

    /// Learns a model, built in (`release` none) or a release's, decoded once: into the
    /// registry, and its baseline, if it ships one.
    fn learn_model(&self, release: Option<(&ReleaseId, &ReleaseManifest)>, onnx: &[u8]) {
        let label = release.map_or_else(|| "built in".to_string(), |(_, m)| m.label());
        let model = match ModelProto::parse(onnx) {
            Ok(model) => model,
            Err(e) => {
                tracing::warn!(release = %label, error = %e, "a model is unreadable; it is not in the registry and has no drift");
                return;
            }
        };
        let id = release.map(|(id, _)| id.hex());
        self.models.learn(onnx, &model, id.as_deref());
        if let Err(e) = self.baselines.add(&model) {
            tracing::warn!(release = %label, error = %e, "a model's baseline is unreadable; no drift for it");
        }
    }

    /// Every model the fleet knows, with its stage and the devices running it.
    pub fn models(&self) -> Vec<ModelView> {
        let deployments = self.deployments();
        self.models
            .view(&self.list(), &deployments, &self.devices())
    }

    fn remember(&self, id: &ReleaseId, manifest: &ReleaseManifest) -> Published {
        let published = Published::of(id, manifest);
        let key = (manifest.name.clone(), manifest.version.clone(), *id);
        lock(&self.published).insert(key, published.clone());
        published
    }

    /// Verifies a release file against `keys` and stores it; publishing the same release
    /// again is harmless.
    pub fn publish(&self, bundle: &[u8], keys: &Path) -> Result<Published, PublishError> {
        let trusted = TrustedKeys::load(keys).map_err(PublishError::Keys)?;
        if trusted.is_empty() {
            return Err(PublishError::NoKeys(keys.to_path_buf()));
        }
        let release = fleet_release::read_bundle(std::io::Cursor::new(bundle), &trusted, u64::MAX)
            .map_err(PublishError::Refused)?;
        self.store.publish(&release).map_err(PublishError::Store)?;
        for model in &release.manifest.models {
            if let Some(content) = release.artifact(&model.artifact) {
                self.learn_model(Some((&release.id, &release.manifest)), content);
            }
        }
        tracing::info!(release = %release.label(), "release published");
        Ok(self.remember(&release.id, &release.manifest))
    }

    /// Every published release, by name, oldest version first.
    pub fn list(&self) -> Vec<Published> {
        lock(&self.published).values().cloned().collect()
    }

    /// A published release by id (hex, or a unique prefix of at least 8) or label.
    pub fn find(&self, wanted: &str) -> Result<Option<Published>, String> {
        let all = self.list();
        let matches: Vec<&Published> = all
            .iter()
            .filter(|p| {
                p.label == wanted
                    || format!("{}@{}", p.name, p.version) == wanted
                    || (wanted.len() >= 8 && p.id.starts_with(wanted))
            })
            .collect();
        match matches.as_slice() {
            [one] => Ok(Some((*one).clone())),
            [] => Ok(None),
            _ => Err(format!(
                "{wanted:?} names more than one release; give its id"
            )),
        }
    }

    /// The offer for a published release (cached: the manifest is read once).
    pub fn ready(&self, id: &ReleaseId) -> anyhow::Result<Arc<Ready>> {
        if let Some(ready) = lock(&self.offers).get(id) {
            return Ok(ready.clone());
        }
        let (manifest_bytes, signature) = self.store.signed(id)?;
        let manifest = ReleaseManifest::from_canonical_bytes(&manifest_bytes)?;
        let ready = Arc::new(Ready {
            artifacts: manifest.artifacts.iter().map(|a| a.sha256.0).collect(),
            offer: Offer {
                release: id.0,
                manifest: manifest_bytes,
                signature,
            },
        });
        lock(&self.offers).insert(*id, ready.clone());
        Ok(ready)
    }

    /// Reads a piece of a stored artifact from disk (on the blocking pool): at most `len`
    /// bytes from `offset`, fewer at its end.
    pub async fn read_piece(
        &self,
        artifact: Digest,
        offset: u64,
        len: u32,
    ) -> std::io::Result<Vec<u8>> {
        let path = self
            .store
            .object_path(&fleet_release::Sha256Digest(artifact));
        let data = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            use std::io::{Read, Seek, SeekFrom};
            let mut file = std::fs::File::open(path)?;
            file.seek(SeekFrom::Start(offset))?;
            let mut data = Vec::with_capacity(len as usize);
            file.take(u64::from(len)).read_to_end(&mut data)?;
            Ok(data)
        })
        .await
        .map_err(std::io::Error::other)??;
        let mut counters = lock(&self.counters);
        counters.pieces += 1;
        counters.bytes += data.len() as u64;
        Ok(data)
    }

    /// Records a deployment (durably) and tells every control stream.
    pub fn deploy(
        &self,
        release: &Published,
        target: Target,
        by: &str,
    ) -> anyhow::Result<Deployment> {
        let deployment = lock(&self.deployments).add(
            &self.dir,
            release.id.clone(),
            release.label.clone(),
            target,
            by.to_string(),
        )?;
        self.changes.send_modify(|n| *n += 1);
        tracing::info!(release = %release.label, deployment = deployment.id, "deployed");
        Ok(deployment)
    }

    pub fn deployments(&self) -> Vec<Deployment> {
        lock(&self.deployments).deployments.clone()
    }

    /// Wakes on every deployment.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The release `device` should run, given its labels.
    pub fn desired(&self, device: &str, labels: &BTreeMap<String, String>) -> Option<ReleaseId> {
        let deployments = lock(&self.deployments);
        deployments
            .desired(device, labels)
            .and_then(|d| fleet_release::Sha256Digest::from_hex(&d.release))
    }

    /// Records what a device reported; counts a failure once per device and release.
    pub fn report(&self, device: &str, report: &DeviceReport) -> BTreeMap<String, String> {
        let hex = |d: &Digest| fleet_release::Sha256Digest(*d).hex();
        let labels: BTreeMap<String, String> = report.labels.iter().cloned().collect();
        let offered = report
            .offered
            .as_ref()
            .map(|(id, step)| (hex(id), step.clone()));
        self.devices_changed();
        let mut devices = lock(&self.devices);
        let entry = devices.entry(device.to_string()).or_default();
        if let Some((id, Step::Failed { reason, .. })) = &offered {
            let new = !matches!(&entry.offered, Some((was, Step::Failed { .. })) if was == id);
            if new {
                *lock(&self.counters)
                    .refusals
                    .entry(reason.clone())
                    .or_default() += 1;
                tracing::warn!(%device, release = %id, %reason, "device refused a release");
            }
        }
        *entry = DeviceReleases {
            labels: labels.clone(),
            agent: report.agent.clone(),
            active: report.active.as_ref().map(hex),
            active_label: report.active_label.clone(),
            offered: offered.or_else(|| entry.offered.take()),
            reported_ms: crate::now_ms(),
            connected: true,
        };
        labels
    }

    /// An offer was sent to `device` that it had not reported on yet.
    pub fn offered(&self, device: &str, release: &ReleaseId) {
        self.devices_changed();
        let mut devices = lock(&self.devices);
        let entry = devices.entry(device.to_string()).or_default();
        let hex = release.hex();
        if entry.offered.as_ref().is_none_or(|(id, _)| *id != hex) {
            entry.offered = Some((hex, Step::Offered));
        }
    }

    /// The device's control stream closed.
    pub fn disconnected(&self, device: &str) {
        self.devices_changed();
        if let Some(entry) = lock(&self.devices).get_mut(device) {
            entry.connected = false;
        }
    }

    fn devices_changed(&self) {
        self.device_changes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Every device that reported, by id.
    pub fn devices(&self) -> BTreeMap<String, DeviceReleases> {
        lock(&self.devices).clone()
    }

    /// Writes what devices reported (so the operator's view survives a restart; devices
    /// report again when they reconnect anyway).
    pub fn save_devices(&self) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec(&*lock(&self.devices)).expect("serializes");
        write_whole(&self.dir.join("devices.json"), &bytes)
    }

    /// Per release: devices targeted, by step.
    pub fn status(&self, release: &Published) -> ReleaseStatus {
        let devices = self.devices();
        let deployments = lock(&self.deployments);
        let mut status = ReleaseStatus {
            release: release.label.clone(),
            ..ReleaseStatus::default()
        };
        for (device, state) in &devices {
            let desired = deployments.desired(device, &state.labels);
            if desired.is_none_or(|d| d.release != release.id) {
                continue;
            }
            let (step, detail) = device_step(state, &release.id);
            *status.counts.entry(step.to_string()).or_default() += 1;
            status.devices.push(DeviceStep {
                device: device.clone(),
                step,
                detail,
                connected: state.connected,
                reported_ms: state.reported_ms,
            });
        }
        // Devices a deployment names that never reported.
        for d in deployments
            .deployments
            .iter()
            .filter(|d| d.release == release.id)
        {
            if let Target::Devices(ids) = &d.target {
                for id in ids.iter().filter(|id| !devices.contains_key(*id)) {
                    if status.devices.iter().any(|s| &s.device == id) {
                        continue;
                    }
                    *status.counts.entry("pending".into()).or_default() += 1;
                    status.devices.push(DeviceStep {
                        device: id.clone(),
                        step: "pending",
                        detail: "never connected".into(),
                        connected: false,
                        reported_ms: 0,
                    });
                }
            }
        }
        status.targeted = status.devices.len();
        status
    }

    /// Prometheus lines: refusals by reason, pieces and bytes served, devices by step.
    pub fn render_metrics(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let counters = lock(&self.counters);
        let _ = writeln!(
            out,
            "# HELP fleet_release_refusals_total Releases devices refused, by reason.\n# TYPE fleet_release_refusals_total counter"
        );
        for (reason, n) in &counters.refusals {
            let _ = writeln!(
                out,
                "fleet_release_refusals_total{{reason=\"{reason}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP fleet_release_pieces_served_total Artifact pieces sent to devices.\n# TYPE fleet_release_pieces_served_total counter\nfleet_release_pieces_served_total {}",
            counters.pieces
        );
        let _ = writeln!(
            out,
            "# HELP fleet_release_bytes_served_total Artifact bytes sent to devices.\n# TYPE fleet_release_bytes_served_total counter\nfleet_release_bytes_served_total {}",
            counters.bytes
        );
        let mut running: BTreeMap<String, u64> = BTreeMap::new();
        for state in lock(&self.devices).values() {
            *running.entry(state.active_label.clone()).or_default() += 1;
        }
        let _ = writeln!(
            out,
            "# HELP fleet_release_devices Devices by the release they last reported running.\n# TYPE fleet_release_devices gauge"
        );
        for (label, n) in running {
            let label = label.replace(['"', '\\', '\n'], "_");
            let _ = writeln!(out, "fleet_release_devices{{release=\"{label}\"}} {n}");
        }
        out
    }
}

/// Where one device stands with `release` (hex id): a step name and its detail.
fn device_step(state: &DeviceReleases, release: &str) -> (&'static str, String) {
    if state.active.as_deref() == Some(release) {
        return ("active", String::new());
    }
    match &state.offered {
        Some((id, step)) if id == release => {
            let detail = match step {
                Step::Downloading { have, total } => format!("{have}/{total} bytes"),
                Step::Failed { reason, message } => format!("{reason}: {message}"),
                _ => String::new(),
            };
            (step.name(), detail)
        }
        _ if state.connected => ("pending", "not offered yet".into()),
        _ => ("pending", "offline".into()),
    }
}

/// `fleetctl status` for one release.
#[derive(Debug, Default, Serialize)]
pub struct ReleaseStatus {
    pub release: String,
    pub targeted: usize,
    pub counts: BTreeMap<String, u64>,
    pub devices: Vec<DeviceStep>,
}

#[derive(Debug, Serialize)]
pub struct DeviceStep {
    pub device: String,
    pub step: &'static str,
    pub detail: String,
    pub connected: bool,
    pub reported_ms: i64,
}

/// Why a release was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the aggregator trusts no release keys: put the operator's public key in {0}")]
    NoKeys(PathBuf),
    #[error("reading the release keys: {0}")]
    Keys(fleet_release::ReleaseError),
    #[error("release refused: {0}")]
    Refused(fleet_release::ReleaseError),
    #[error("storing the release: {0}")]
    Store(fleet_release::ReleaseError),
}

impl PublishError {
    /// The refusal's short code (`untrusted-key`, `digest`, ...), when the release was refused.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Self::Refused(e) => Some(e.reason()),
            _ => None,
        }
    }
}

/// Saves device reports every few seconds when they changed, until the process ends.
pub fn spawn_saver(releases: Arc<FleetReleases>) {
    tokio::spawn(async move {
        let mut saved_at = 0;
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            let now = releases
                .device_changes
                .load(std::sync::atomic::Ordering::Relaxed);
            if now != saved_at {
                let releases = releases.clone();
                let saved = tokio::task::spawn_blocking(move || releases.save_devices()).await;
                if let Ok(Err(e)) = saved {
                    tracing::warn!(error = %e, "saving device release reports");
                }
                saved_at = now;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_release::ArtifactKind::{Component, Model};

    fn publish(releases: &FleetReleases, signer: &fleet_release::ReleaseSigner, version: &str) {
        let files: [(&[u8], _); 4] = [
            (b"features", Component),
            (b"scorer", Component),
            (version.as_bytes(), Component),
            (b"model", Model),
        ];
        let (release, _) = fleet_release::testing::verified(signer, version, &files);
        releases.store.publish(&release).unwrap();
        releases.remember(&release.id, &release.manifest);
    }

    #[test]
    fn published_releases_are_listed_by_semantic_version_and_found_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let signer = fleet_release::ReleaseSigner::generate().unwrap();
        let releases = FleetReleases::open(dir.path()).unwrap();
        for version in ["1.10.0", "1.9.0", "1.9.1"] {
            publish(&releases, &signer, version);
        }
        let versions = |r: &FleetReleases| -> Vec<String> {
            r.list().into_iter().map(|p| p.version).collect()
        };
        assert_eq!(versions(&releases), ["1.9.0", "1.9.1", "1.10.0"]);
        // A restart reads them back from the store.
        drop(releases);
        let releases = FleetReleases::open(dir.path()).unwrap();
        assert_eq!(versions(&releases), ["1.9.0", "1.9.1", "1.10.0"]);
        let newest = releases.list().pop().unwrap();
        let name_version = format!("{}@{}", newest.name, newest.version);
        for wanted in [&newest.label, &name_version, &newest.id[..8].to_string()] {
            assert_eq!(releases.find(wanted).unwrap().unwrap().id, newest.id);
        }
        assert!(releases.find("nothing@1.0.0").unwrap().is_none());
        // Too short to be an id prefix.
        assert!(releases.find(&newest.id[..7]).unwrap().is_none());

        // Stored artifacts that no longer read back (a disk error, a hand edit) cost their
        // models' registry entries, not the aggregator's start.
        drop(releases);
        for entry in std::fs::read_dir(dir.path().join("objects")).unwrap() {
            std::fs::write(entry.unwrap().path(), b"corrupt").unwrap();
        }
        let releases = FleetReleases::open(dir.path()).unwrap();
        assert_eq!(versions(&releases), ["1.9.0", "1.9.1", "1.10.0"]);
        assert_eq!(releases.models().len(), 1, "the built-in model only");
    }
}
