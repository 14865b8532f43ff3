//! The scoring pipeline: events in, decisions out, through the three modules.
//!
//! `ingest (validate, dedup) -> features (per key, state in/out) -> scorer -> policy`.
//! A batch runs on the module set current when it starts. Feature state and the dedup window
//! are committed only when the whole batch succeeded; a failed batch is dead-lettered whole,
//! the failing instance is dropped and re-created on the next call.

mod dedup;
mod stages;

use std::collections::HashMap;
use std::sync::Arc;

use crate::decision::{DeadLetter, Decision, DecisionMaker, ModuleVersions, Stage};
use crate::event::Event;
use crate::module::{Instance, LoadedModule};
use crate::registry::{ModuleRegistry, ModuleSet};

use dedup::HashSet128;
pub use dedup::{DedupWindow, PreHashed, event_hash};
pub use stages::group_by_key;
use stages::run_batch;
pub(crate) use stages::{extract, feature_names};

/// Event ids remembered for deduplication by default.
pub const DEFAULT_DEDUP_WINDOW: usize = 1 << 20;

/// Per-key feature state, owned by the host.
pub trait StateStore {
    fn get(&self, key: &str) -> Option<Vec<u8>>;
    fn put(&mut self, key: String, state: Vec<u8>);
}

/// A [`StateStore`] in memory.
#[derive(Default, Debug)]
pub struct MemStateStore(HashMap<String, Vec<u8>>);

impl StateStore for MemStateStore {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.0.get(key).cloned()
    }

    fn put(&mut self, key: String, state: Vec<u8>) {
        self.0.insert(key, state);
    }
}

/// What one batch produced.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// One per scored event, in input order.
    pub decisions: Vec<Decision>,
    pub dead_letters: Vec<DeadLetter>,
    /// Events dropped as repeats of an event id already processed.
    pub duplicates: usize,
    /// Events folded into state but not scored (see the features module contract).
    pub unscored: usize,
    /// The new state of every key the batch touched (already committed to the state store).
    pub states: Vec<(String, Vec<u8>)>,
}

/// Live instances for one module set.
struct Live {
    set: Arc<ModuleSet>,
    features: Option<Instance>,
    scorer: Option<Instance>,
    policy: Option<Instance>,
    decisions: DecisionMaker,
}

/// Runs batches through the current module set. One pipeline is used by one thread at a time.
pub struct Pipeline {
    registry: Arc<ModuleRegistry>,
    live: Option<Live>,
    states: Box<dyn StateStore + Send>,
    dedup: DedupWindow,
}

impl Pipeline {
    pub fn new(registry: Arc<ModuleRegistry>) -> Self {
        Self::with_store(
            registry,
            Box::new(MemStateStore::default()),
            DEFAULT_DEDUP_WINDOW,
        )
    }

    pub fn with_store(
        registry: Arc<ModuleRegistry>,
        states: Box<dyn StateStore + Send>,
        dedup_window: usize,
    ) -> Self {
        Self {
            registry,
            live: None,
            states,
            dedup: DedupWindow::new(dedup_window),
        }
    }

    pub fn registry(&self) -> &Arc<ModuleRegistry> {
        &self.registry
    }

    /// Runs one batch of validated events.
    pub fn process(&mut self, events: Vec<Event>) -> BatchOutcome {
        let mut outcome = BatchOutcome::default();
        let set = self.registry.current();
        if self
            .live
            .as_ref()
            .is_none_or(|l| l.set.generation != set.generation)
        {
            match self.make_live(set.clone()) {
                Ok(live) => self.live = Some(live),
                Err((stage, module, error)) => {
                    outcome.dead_letters = dead_letters(events, stage, &module, &error);
                    return outcome;
                }
            }
        }
        // Drop repeats of ids already committed, and repeats inside this batch.
        let mut batch_ids = HashSet128::default();
        let mut hashes = Vec::with_capacity(events.len());
        let events: Vec<Event> = events
            .into_iter()
            .filter(|e| {
                let hash = event_hash(&e.event_id);
                let fresh = !self.dedup.contains_hash(hash) && batch_ids.insert(hash);
                outcome.duplicates += usize::from(!fresh);
                if fresh {
                    hashes.push(hash);
                }
                fresh
            })
            .collect();
        if events.is_empty() {
            return outcome;
        }
        let engine = self.registry.engine().clone();
        let models = self.registry.models().clone();
        let live = self.live.as_mut().expect("set above");
        match run_batch(live, &engine, &models, self.states.as_ref(), &events) {
            Ok((decisions, states, unscored)) => {
                for (key, state) in states {
                    outcome.states.push((key.clone(), state.clone()));
                    self.states.put(key, state);
                }
                for hash in hashes {
                    self.dedup.insert_hash(hash);
                }
                outcome.decisions = decisions;
                outcome.unscored = unscored;
            }
            Err((stage, error)) => {
                let module = match stage {
                    Stage::Features => &live.set.features,
                    Stage::Scorer => &live.set.scorer,
                    Stage::Policy => &live.set.policy,
                };
                let label = module.label();
                tracing::error!(module = %label, ?stage, events = events.len(), keys = %keys_of(&events), error = %error, "batch failed; events dead-lettered");
                outcome.dead_letters = dead_letters(events, stage, &label, &error.to_string());
            }
        }
        outcome
    }

    fn make_live(&self, set: Arc<ModuleSet>) -> Result<Live, (Stage, String, String)> {
        let engine = self.registry.engine();
        let models = self.registry.models();
        let make = |module: &LoadedModule, stage: Stage| {
            module
                .instantiate(engine, models)
                .map_err(|e| (stage, module.label(), format!("instantiate: {e}")))
        };
        let mut features = make(&set.features, Stage::Features)?;
        let scorer = make(&set.scorer, Stage::Scorer)?;
        let policy = make(&set.policy, Stage::Policy)?;
        let names = feature_names(&mut features)
            .map_err(|e| (Stage::Features, set.features.label(), e.to_string()))?;
        let (model_name, model_version, model_digest) = scorer
            .store
            .data()
            .inference
            .loaded()
            .first()
            .map(|m| (m.name.clone(), m.version.clone(), m.digest.clone()))
            .unwrap_or_default();
        let versions = ModuleVersions {
            features: set.features.label(),
            scorer: set.scorer.label(),
            policy: set.policy.label(),
        };
        Ok(Live {
            decisions: DecisionMaker::new(
                names.into(),
                versions,
                &model_name,
                &model_version,
                &model_digest,
            ),
            set,
            features: Some(features),
            scorer: Some(scorer),
            policy: Some(policy),
        })
    }
}

fn dead_letters(events: Vec<Event>, stage: Stage, module: &str, error: &str) -> Vec<DeadLetter> {
    events
        .into_iter()
        .map(|event| DeadLetter {
            stage,
            module: module.to_string(),
            key: event.state_key().to_string(),
            error: error.to_string(),
            event,
        })
        .collect()
}

fn keys_of(events: &[Event]) -> String {
    let mut keys: Vec<&str> = events.iter().map(Event::state_key).collect();
    keys.sort_unstable();
    keys.dedup();
    let shown: Vec<&str> = keys.iter().take(5).copied().collect();
    if keys.len() > 5 {
        format!("{} (+{} more)", shown.join(","), keys.len() - 5)
    } else {
        shown.join(",")
    }
}
