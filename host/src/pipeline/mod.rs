//! The scoring pipeline: events in, decisions out, through the three modules.
//!
//! `ingest (validate, dedup) -> features (per key, state in/out) -> scorer -> policy`.
//! A batch runs on the module set current when it starts. A failed batch is run again in
//! halves down to the events that fail alone (`isolate.rs`): those are dead-lettered, leave no
//! state and no dedup mark, and the rest of the batch is scored; a failing instance is
//! dropped and re-created on the next call.

mod dedup;
mod isolate;
mod policy;
mod stages;

use std::collections::HashMap;
use std::sync::Arc;

use crate::decision::{DeadLetter, Decision, DecisionMaker, FailureCause, ModuleVersions, Stage};
use crate::event::Event;
use crate::module::{Instance, LoadedModule};
use crate::registry::{ModuleRegistry, ModuleSet};
use crate::sandbox::ModuleError;

use dedup::HashSet128;
pub use dedup::{DedupWindow, PreHashed, event_hash};
pub use stages::group_by_key;
pub(crate) use stages::{extract, feature_names};

/// Event ids remembered for deduplication by default.
pub const DEFAULT_DEDUP_WINDOW: usize = 1 << 20;

/// Where a policy's state for `key` lives beside the features module's: a prefix of control
/// characters, which no valid id holds.
pub fn policy_state_key(key: &str) -> String {
    format!("{POLICY_STATE}{key}")
}

/// Whether a state key is a policy's ([`policy_state_key`]), not the features module's.
pub fn is_policy_state(key: &str) -> bool {
    key.starts_with(POLICY_STATE)
}

const POLICY_STATE: &str = "\u{1}policy\u{1}";

/// Per-key module state (the features module's, and a keyed policy's under
/// [`policy_state_key`]), owned by the host.
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
    /// The new state of every key the batch touched (already committed to the state store):
    /// the features module's, then the policy's ([`policy_state_key`]).
    pub states: Vec<(String, Vec<u8>)>,
    /// Label of the features module the batch ran on (the author of its states).
    pub features_module: Option<String>,
    /// Label of the policy the batch ran on (the author of the states under
    /// [`policy_state_key`]).
    pub policy_module: Option<String>,
    /// [`ModuleSet::identity`] of the set the batch ran on.
    pub module_set: u64,
    /// Calls into modules that failed while isolating the failing events.
    pub failed_calls: usize,
}

/// Live instances for one module set.
struct Live {
    set: Arc<ModuleSet>,
    /// `set.identity()`, computed once: batches of other registries' sets compare with it.
    identity: u64,
    features: Option<Instance>,
    scorer: Option<Instance>,
    policy: Option<Instance>,
    decisions: DecisionMaker,
}

/// Sets kept instantiated at once: one for a device; a few for a process whose devices run
/// different releases (a simulator, or devices in the middle of a fleet-wide swap).
const LIVE_SETS: usize = 4;

/// Runs batches through the current module set. One pipeline is used by one thread at a time.
pub struct Pipeline {
    registry: Arc<ModuleRegistry>,
    /// Instances of the sets run lately, the latest last.
    lives: Vec<Live>,
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
            lives: Vec::new(),
            states,
            dedup: DedupWindow::new(dedup_window),
        }
    }

    pub fn registry(&self) -> &Arc<ModuleRegistry> {
        &self.registry
    }

    /// Runs one batch of validated events on the registry's current set.
    pub fn process(&mut self, events: Vec<Event>) -> BatchOutcome {
        self.process_on(self.registry.current(), events)
    }

    /// Runs one batch on `set` (of this pipeline's engine): the set of the registry of the
    /// device the batch is for, when one pipeline serves devices with registries of their own.
    /// Sets that decide alike and name the same release share instances.
    pub fn process_on(&mut self, set: Arc<ModuleSet>, events: Vec<Event>) -> BatchOutcome {
        let mut outcome = BatchOutcome::default();
        let identity = set.identity();
        outcome.module_set = identity;
        let same = |live: &Live| {
            Arc::ptr_eq(&live.set, &set)
                || (live.identity == identity && live.set.release_label() == set.release_label())
        };
        if let Some(i) = self.lives.iter().position(same) {
            let live = self.lives.remove(i);
            self.lives.push(live);
        } else {
            match self.make_live(set.clone(), identity) {
                Ok(live) => {
                    if self.lives.len() == LIVE_SETS {
                        self.lives.remove(0);
                    }
                    self.lives.push(live);
                }
                Err((stage, module, error)) => {
                    tracing::error!(%module, %stage, %error, "the module set cannot be instantiated; the batch is dead-lettered");
                    outcome.dead_letters = events
                        .into_iter()
                        .map(|event| DeadLetter {
                            stage,
                            module: module.clone(),
                            key: event.state_key().to_string(),
                            cause: FailureCause::Instantiate,
                            error: format!("instantiate: {error}"),
                            event,
                        })
                        .collect();
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
        let live = self.lives.last_mut().expect("set above");
        let models = live.set.models.clone();
        outcome.features_module = Some(live.set.features.label());
        outcome.policy_module = Some(live.set.policy.label());
        let run = isolate::run(live, &engine, &models, self.states.as_ref(), &events);
        let failed: HashSet128 = run.failed.iter().map(|&(i, ..)| hashes[i]).collect();
        for hash in hashes.into_iter().filter(|h| !failed.contains(h)) {
            self.dedup.insert_hash(hash);
        }
        for (key, state) in &run.states {
            self.states.put(key.clone(), state.clone());
        }
        outcome.states = run.states;
        outcome.decisions = run.decisions;
        outcome.unscored = run.unscored;
        outcome.failed_calls = run.failed_calls;
        if !run.failed.is_empty() {
            let mut events: Vec<Option<Event>> = events.into_iter().map(Some).collect();
            for (i, failure) in run.failed {
                let stage = failure.stage();
                let label = live.set.module(stage).label();
                let event = events[i].take().expect("each index fails once");
                tracing::error!(module = %label, %stage, event = %event.event_id, key = %event.state_key(), error = %failure.message(), "dead-lettered");
                outcome.dead_letters.push(DeadLetter {
                    stage,
                    module: label,
                    key: event.state_key().to_string(),
                    cause: failure.cause(),
                    error: failure.message(),
                    event,
                });
            }
        }
        outcome
    }

    fn make_live(
        &self,
        set: Arc<ModuleSet>,
        identity: u64,
    ) -> Result<Live, (Stage, String, ModuleError)> {
        let engine = self.registry.engine();
        let models = &set.models;
        let make = |module: &LoadedModule, stage: Stage| {
            module
                .instantiate(engine, models)
                .map_err(|e| (stage, module.label(), e))
        };
        let mut features = make(&set.features, Stage::Features)?;
        let scorer = make(&set.scorer, Stage::Scorer)?;
        let policy = make(&set.policy, Stage::Policy)?;
        let names =
            feature_names(&mut features).map_err(|e| (Stage::Features, set.features.label(), e))?;
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
            release: set.release_label().map(str::to_string),
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
            identity,
            features: Some(features),
            scorer: Some(scorer),
            policy: Some(policy),
        })
    }
}
