//! The training baselines the aggregator knows, by model (`name@version`): the built-in
//! model's (the one every device runs without a release) and those of the models in
//! published releases. Decisions of a model without one are not binned (and counted).

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use fleet_onnx::{BaselineError, ModelBaseline, ModelProto};
use sha2::{Digest, Sha256};

use crate::models::BUILTIN_MODEL;

/// A model's baseline and its fingerprint: histograms binned by one baseline never merge
/// with another's (a model re-trained under the same version gets histograms of its own).
#[derive(Debug)]
pub struct KnownBaseline {
    pub baseline: ModelBaseline,
    pub fingerprint: u64,
}

impl KnownBaseline {
    fn new(baseline: ModelBaseline) -> Self {
        let json = serde_json::to_vec(&baseline).expect("a baseline serializes");
        let digest = Sha256::new().chain_update(&json).finalize();
        let fingerprint = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
        Self {
            baseline,
            fingerprint,
        }
    }
}

/// The baselines by model; read by ingest for every batch, added to when a release is
/// published.
#[derive(Default)]
pub struct Baselines {
    by_model: ArcSwap<HashMap<String, Arc<KnownBaseline>>>,
}

impl Baselines {
    /// The built-in model's baseline.
    pub fn with_builtin() -> Self {
        let book = Self::default();
        if let Err(e) = book.add_model(BUILTIN_MODEL) {
            tracing::warn!(error = %e, "the built-in model's baseline is unreadable; no drift for it");
        }
        book
    }

    /// Adds the baseline a model file ships, if any; returns it.
    pub fn add_model(&self, onnx: &[u8]) -> Result<Option<Arc<KnownBaseline>>, BaselineError> {
        self.add(&ModelProto::parse(onnx)?)
    }

    /// Adds the baseline a decoded model ships, if any; returns it.
    pub fn add(&self, model: &ModelProto) -> Result<Option<Arc<KnownBaseline>>, BaselineError> {
        let Some(baseline) = ModelBaseline::of_proto(model)? else {
            return Ok(None);
        };
        let known = Arc::new(KnownBaseline::new(baseline));
        self.by_model.rcu(|map| {
            let mut map = HashMap::clone(map);
            if let Some(old) = map.get(&known.baseline.model)
                && old.fingerprint != known.fingerprint
            {
                tracing::warn!(
                    model = %known.baseline.model,
                    "a model of this name and version with another baseline: drift from now on is measured against the newest"
                );
            }
            map.insert(known.baseline.model.clone(), known.clone());
            map
        });
        Ok(Some(known))
    }

    pub fn get(&self, model: &str) -> Option<Arc<KnownBaseline>> {
        self.by_model.load().get(model).cloned()
    }

    /// Every baseline, by model name.
    pub fn all(&self) -> Vec<Arc<KnownBaseline>> {
        let mut all: Vec<_> = self.by_model.load().values().cloned().collect();
        all.sort_by(|a, b| a.baseline.model.cmp(&b.baseline.model));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_model_ships_a_baseline_for_each_of_its_features() {
        let book = Baselines::with_builtin();
        let all = book.all();
        assert_eq!(all.len(), 1, "{all:?}");
        let b = &all[0].baseline;
        assert!(b.model.starts_with("late_risk@"), "{}", b.model);
        assert!(b.rows > 10_000, "{} rows", b.rows);
        assert_eq!(b.features.len(), 15);
        assert!(book.get(&b.model).is_some());
        // Added again: the same fingerprint.
        let again = book.add_model(BUILTIN_MODEL).unwrap().unwrap();
        assert_eq!(again.fingerprint, all[0].fingerprint);
    }
}
