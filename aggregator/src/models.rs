//! The fleet's model registry: every model the aggregator knows (the one built into the
//! devices' binaries, and those in published releases), with what each says of itself (name,
//! version, features, training data, held-out metrics: its ONNX metadata) and where it runs.
//!
//! A model's stage follows from the deployments: `production` when the newest fleet-wide
//! deployment's release carries it (the built-in model until there is one), `canary` when a
//! narrower deployment newer than that carries it, `retired` when it ran once (built in, or
//! deployed) and neither holds any more, `published` when no deployment ever carried it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use fleet_onnx::{ModelInfo, ModelProto};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::releases::{Deployment, DeviceReleases, Published, Target};

/// The model the devices' built-in modules score with (`models/late_risk/model.onnx`).
pub(crate) const BUILTIN_MODEL: &[u8] = include_bytes!("../../models/late_risk/model.onnx");

struct Entry {
    info: ModelInfo,
    builtin: bool,
    /// Releases (id, hex) that carry it.
    releases: BTreeSet<String>,
}

/// Models by the sha256 of their file.
#[derive(Default)]
pub struct ModelRegistry(Mutex<BTreeMap<String, Entry>>);

/// How a model stands in the fleet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Production,
    Canary,
    Retired,
    Published,
}

/// A release that carries a model.
#[derive(Clone, Debug, Serialize)]
pub struct Carrier {
    pub id: String,
    pub label: String,
}

/// One model, as `GET /api/v1/models` lists it.
#[derive(Clone, Debug, Serialize)]
pub struct ModelView {
    /// `name@version`, as decisions name it.
    pub model: String,
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub features: Vec<String>,
    pub training: Option<serde_json::Value>,
    pub metrics: Option<serde_json::Value>,
    /// Built into the devices' binaries (what a device without a release runs).
    pub builtin: bool,
    pub releases: Vec<Carrier>,
    pub stage: Stage,
    /// Deployments (ids) whose release carries it.
    pub deployments: Vec<u64>,
    /// Devices that last reported running it.
    pub devices_running: usize,
}

impl ModelRegistry {
    /// Learns a model file (`onnx`, decoded as `model`): built in (`release` none) or carried
    /// by a release (id, hex).
    pub fn learn(&self, onnx: &[u8], model: &ModelProto, release: Option<&str>) {
        let info = ModelInfo::of_proto(model);
        let sha256: String = Sha256::digest(onnx)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut models = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let entry = models.entry(sha256).or_insert_with(|| Entry {
            info,
            builtin: false,
            releases: BTreeSet::new(),
        });
        match release {
            Some(id) => {
                entry.releases.insert(id.to_string());
            }
            None => entry.builtin = true,
        }
    }

    /// Every model with its stage, given the releases published, the deployments (oldest
    /// first) and what devices report.
    pub fn view(
        &self,
        published: &[Published],
        deployments: &[Deployment],
        devices: &BTreeMap<String, DeviceReleases>,
    ) -> Vec<ModelView> {
        let fleet_wide = deployments
            .iter()
            .rposition(|d| matches!(d.target, Target::All));
        let models = self.0.lock().unwrap_or_else(|e| e.into_inner());
        models
            .iter()
            .map(|(sha256, e)| {
                let carries = |release: &str| e.releases.contains(release);
                let production = match fleet_wide {
                    Some(i) => carries(&deployments[i].release),
                    None => e.builtin,
                };
                let newer = fleet_wide.map_or(0, |i| i + 1);
                let canary = deployments[newer..].iter().any(|d| carries(&d.release));
                let ever = e.builtin || deployments.iter().any(|d| carries(&d.release));
                let stage = if production {
                    Stage::Production
                } else if canary {
                    Stage::Canary
                } else if ever {
                    Stage::Retired
                } else {
                    Stage::Published
                };
                ModelView {
                    model: e.info.label(),
                    name: e.info.name.clone(),
                    version: e.info.version.clone(),
                    sha256: sha256.clone(),
                    features: e.info.features.clone(),
                    training: e.info.training.clone(),
                    metrics: e.info.metrics.clone(),
                    builtin: e.builtin,
                    releases: published
                        .iter()
                        .filter(|p| carries(&p.id))
                        .map(|p| Carrier {
                            id: p.id.clone(),
                            label: p.label.clone(),
                        })
                        .collect(),
                    stage,
                    deployments: deployments
                        .iter()
                        .filter(|d| carries(&d.release))
                        .map(|d| d.id)
                        .collect(),
                    devices_running: devices
                        .values()
                        .filter(|d| match &d.active {
                            Some(release) => carries(release),
                            None => e.builtin,
                        })
                        .count(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(id: u64, release: &str, target: Target) -> Deployment {
        Deployment {
            id,
            release: release.into(),
            label: format!("r-{release}"),
            target,
            created_ms: 0,
            by: "t".into(),
        }
    }

    fn device(active: Option<&str>) -> DeviceReleases {
        DeviceReleases {
            active: active.map(Into::into),
            ..DeviceReleases::default()
        }
    }

    /// The built-in model runs in production until a fleet-wide deployment replaces it; a
    /// narrower, newer deployment puts its model in canary.
    #[test]
    fn stages_follow_the_deployments() {
        let registry = ModelRegistry::default();
        let learn = |onnx: &[u8], release| {
            registry.learn(onnx, &ModelProto::parse(onnx).unwrap(), release);
        };
        learn(BUILTIN_MODEL, None);
        let stage = |deployments: &[Deployment]| -> Vec<(String, bool, Stage)> {
            registry
                .view(&[], deployments, &BTreeMap::new())
                .into_iter()
                .map(|m| (m.model, m.builtin, m.stage))
                .collect()
        };
        let builtin = stage(&[]);
        assert_eq!(builtin.len(), 1);
        assert!(builtin[0].0.starts_with("late_risk@"));
        assert_eq!((builtin[0].1, builtin[0].2), (true, Stage::Production));

        // The same model file in release "aa"; a second model in release "bb".
        learn(BUILTIN_MODEL, Some("aa"));
        let mut other = ModelProto::parse(BUILTIN_MODEL).unwrap();
        for p in &mut other.metadata_props {
            if p.key == fleet_onnx::META_VERSION {
                p.value = "9.0.0".into();
            }
        }
        use prost::Message as _;
        learn(&other.encode_to_vec(), Some("bb"));
        let by_version = |deployments: &[Deployment]| -> BTreeMap<String, Stage> {
            registry
                .view(&[], deployments, &BTreeMap::new())
                .into_iter()
                .map(|m| (m.version, m.stage))
                .collect()
        };
        let v = |s: &str| s.to_string();
        assert_eq!(by_version(&[])[&v("9.0.0")], Stage::Published);

        let canary = [deployment(1, "bb", Target::Labels(BTreeMap::new()))];
        let stages = by_version(&canary);
        assert_eq!(stages[&v("9.0.0")], Stage::Canary);
        assert_eq!(stages[&v("1.0.0")], Stage::Production);

        let rolled = [
            deployment(1, "bb", Target::Labels(BTreeMap::new())),
            deployment(2, "bb", Target::All),
        ];
        let stages = by_version(&rolled);
        assert_eq!(stages[&v("9.0.0")], Stage::Production);
        assert_eq!(stages[&v("1.0.0")], Stage::Retired);

        // Devices say what they run.
        let devices: BTreeMap<String, DeviceReleases> = [
            ("d1".to_string(), device(Some("bb"))),
            ("d2".to_string(), device(None)),
            ("d3".to_string(), device(Some("aa"))),
        ]
        .into();
        let running: BTreeMap<String, usize> = registry
            .view(&[], &rolled, &devices)
            .into_iter()
            .map(|m| (m.version, m.devices_running))
            .collect();
        assert_eq!(running[&v("9.0.0")], 1);
        assert_eq!(
            running[&v("1.0.0")],
            2,
            "built in on d2, in release aa on d3"
        );
    }
}
