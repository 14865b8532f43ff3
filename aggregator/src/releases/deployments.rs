//! Deployments: which release which devices should run. The newest deployment whose target
//! matches a device decides its desired release. Kept in one JSON file, written whole on
//! every change (a deployment is acknowledged only once it is on disk).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Which devices a deployment is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Target {
    All,
    /// These device ids.
    Devices(Vec<String>),
    /// Devices carrying every one of these labels.
    Labels(BTreeMap<String, String>),
}

impl Target {
    pub fn matches(&self, device: &str, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Self::All => true,
            Self::Devices(ids) => ids.iter().any(|d| d == device),
            Self::Labels(wanted) => wanted.iter().all(|(k, v)| labels.get(k) == Some(v)),
        }
    }
}

/// One deployment, as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    /// Increasing from 1.
    pub id: u64,
    /// The release id (hex).
    pub release: String,
    pub label: String,
    pub target: Target,
    pub created_ms: i64,
    /// The id of the token that made it.
    pub by: String,
}

/// Every deployment, oldest first.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployments {
    pub deployments: Vec<Deployment>,
}

impl Deployments {
    fn path(dir: &Path) -> PathBuf {
        dir.join("deployments.json")
    }

    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let path = Self::path(dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
        }
    }

    /// Adds a deployment and writes the file whole before returning it.
    pub fn add(
        &mut self,
        dir: &Path,
        release: String,
        label: String,
        target: Target,
        by: String,
    ) -> anyhow::Result<Deployment> {
        let deployment = Deployment {
            id: self.deployments.last().map_or(1, |d| d.id + 1),
            release,
            label,
            target,
            created_ms: crate::now_ms(),
            by,
        };
        self.deployments.push(deployment.clone());
        let mut bytes = serde_json::to_vec_pretty(self).expect("serializes");
        bytes.push(b'\n');
        if let Err(e) = super::write_whole(&Self::path(dir), &bytes) {
            self.deployments.pop();
            return Err(e);
        }
        Ok(deployment)
    }

    /// The release `device` should run: the newest deployment that targets it.
    pub fn desired(&self, device: &str, labels: &BTreeMap<String, String>) -> Option<&Deployment> {
        self.deployments
            .iter()
            .rev()
            .find(|d| d.target.matches(device, labels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_matching_deployment_decides_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Deployments::load(dir.path()).unwrap();
        let north = BTreeMap::from([("region".to_string(), "north".to_string())]);
        let south = BTreeMap::from([("region".to_string(), "south".to_string())]);
        d.add(
            dir.path(),
            "a".into(),
            "r@1".into(),
            Target::All,
            "t".into(),
        )
        .unwrap();
        d.add(
            dir.path(),
            "b".into(),
            "r@2".into(),
            Target::Labels(north.clone()),
            "t".into(),
        )
        .unwrap();
        d.add(
            dir.path(),
            "c".into(),
            "r@3".into(),
            Target::Devices(vec!["d9".into()]),
            "t".into(),
        )
        .unwrap();
        let d = Deployments::load(dir.path()).unwrap();
        assert_eq!(d.desired("d1", &north).unwrap().release, "b");
        assert_eq!(d.desired("d1", &south).unwrap().release, "a");
        assert_eq!(d.desired("d9", &north).unwrap().release, "c");
        assert_eq!(d.deployments.last().unwrap().id, 3);
    }
}
