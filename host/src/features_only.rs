//! Feature extraction without scoring: the features module alone, over a stream of events
//! (what the training pipeline uses, so training and serving share one implementation).

use std::sync::Arc;

use anyhow::Context as _;

use crate::engine::SandboxEngine;
use crate::event::Event;
use crate::inference::ModelRegistry;
use crate::module::{Instance, LoadedModule};
use crate::pipeline::{self, MemStateStore, StateStore};

/// Runs one features module with in-memory state.
pub struct FeatureExtractor {
    engine: Arc<SandboxEngine>,
    models: Arc<ModelRegistry>,
    module: LoadedModule,
    instance: Option<Instance>,
    names: Vec<String>,
    states: MemStateStore,
}

impl FeatureExtractor {
    /// Runs `module`, which must be a features module.
    pub fn new(
        engine: Arc<SandboxEngine>,
        models: Arc<ModelRegistry>,
        module: LoadedModule,
    ) -> anyhow::Result<Self> {
        let mut instance = module
            .instantiate(&engine, &models)
            .with_context(|| format!("instantiating {}", module.label()))?;
        let names = pipeline::feature_names(&mut instance)
            .with_context(|| format!("{}: feature-names", module.label()))?;
        Ok(Self {
            engine,
            models,
            module,
            instance: Some(instance),
            names,
            states: MemStateStore::default(),
        })
    }

    /// Feature names, in vector order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Folds `events` in and returns the scored ones with their vectors, in input order.
    pub fn extract(&mut self, events: Vec<Event>) -> anyhow::Result<Vec<(Event, Vec<f32>)>> {
        let (states, scored) = pipeline::extract(
            &mut self.instance,
            &self.module,
            &self.engine,
            &self.models,
            &self.states,
            &events,
            self.names.len(),
        )
        .map_err(|(stage, e)| anyhow::anyhow!("{stage:?} module {}: {e}", self.module.label()))?;
        for (key, state) in states {
            self.states.put(key, state);
        }
        let mut events: Vec<Option<Event>> = events.into_iter().map(Some).collect();
        Ok(scored
            .into_iter()
            .filter_map(|(i, v)| events[i].take().map(|e| (e, v)))
            .collect())
    }
}
