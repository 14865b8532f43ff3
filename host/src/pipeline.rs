//! The scoring pipeline: events in, decisions out, through the three modules.
//!
//! `ingest (validate, dedup) -> features (per key, state in/out) -> scorer -> policy`.
//! A batch runs on the module set current when it starts. Feature state and the dedup window
//! are committed only when the whole batch succeeded; a failed batch is dead-lettered whole,
//! the failing instance is dropped and re-created on the next call.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_128;

use crate::bindings::features::exports::fleet::edge::extract::{KeyBatch, KeyOutput};
use crate::bindings::policy::exports::fleet::edge::decide::{Context, DecisionInput};
use crate::bindings::types as wit;
use crate::decision::{Action, DeadLetter, Decision, DecisionMaker, Factor, ModuleVersions, Stage};
use crate::engine::SandboxEngine;
use crate::event::Event;
use crate::module::{Exports, Instance, LoadedModule};
use crate::registry::{ModuleRegistry, ModuleSet};
use crate::sandbox::ModuleError;

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

/// The 128-bit hash event ids are deduplicated by.
pub fn event_hash(event_id: &str) -> u128 {
    xxh3_128(event_id.as_bytes())
}

/// A hasher for keys that are already uniform hashes: it keeps their low 64 bits.
#[derive(Default, Clone, Copy)]
pub struct PreHashed(u64);

impl std::hash::Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u128` is used for our keys; fold anything else in anyway.
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(b);
        }
    }

    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

type HashSet128 = HashSet<u128, std::hash::BuildHasherDefault<PreHashed>>;

/// The last `capacity` event ids seen, by [`event_hash`].
#[derive(Debug)]
pub struct DedupWindow {
    seen: HashSet128,
    order: VecDeque<u128>,
    capacity: usize,
}

impl DedupWindow {
    pub fn new(capacity: usize) -> Self {
        Self {
            seen: HashSet128::default(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn contains(&self, event_id: &str) -> bool {
        self.contains_hash(event_hash(event_id))
    }

    pub fn contains_hash(&self, hash: u128) -> bool {
        self.seen.contains(&hash)
    }

    pub fn insert(&mut self, event_id: &str) {
        self.insert_hash(event_hash(event_id));
    }

    pub fn insert_hash(&mut self, hash: u128) {
        if self.seen.insert(hash) {
            self.order.push_back(hash);
            if self.order.len() > self.capacity
                && let Some(old) = self.order.pop_front()
            {
                self.seen.remove(&old);
            }
        }
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

pub(crate) type StageFailure = (Stage, ModuleError);
type Decided = (Vec<Decision>, Vec<(String, Vec<u8>)>, usize);

fn run_batch(
    live: &mut Live,
    engine: &SandboxEngine,
    models: &Arc<crate::inference::ModelRegistry>,
    states: &dyn StateStore,
    events: &[Event],
) -> Result<Decided, StageFailure> {
    let (new_states, scored) = extract(
        &mut live.features,
        &live.set.features,
        engine,
        models,
        states,
        events,
        live.decisions.feature_names.len(),
    )?;
    let unscored = events.len() - scored.len();
    if scored.is_empty() {
        return Ok((Vec::new(), new_states, unscored));
    }

    let (index, vectors): (Vec<usize>, Vec<Vec<f32>>) = scored.into_iter().unzip();
    let matrix = wit::FeatureMatrix {
        width: live.decisions.feature_names.len() as u32,
        values: vectors.concat(),
    };
    let scores = call(
        &mut live.scorer,
        &live.set.scorer,
        engine,
        models,
        Stage::Scorer,
        |exports, store| match exports {
            Exports::Scorer(s) => s.fleet_edge_scoring().call_score_batch(store, &matrix),
            _ => unreachable!("scorer slot holds a scorer instance"),
        },
    )?;
    if scores.len() != vectors.len() {
        return Err((
            Stage::Scorer,
            ModuleError::Contract(format!(
                "{} scores for {} vectors",
                scores.len(),
                vectors.len()
            )),
        ));
    }

    let inputs: Vec<DecisionInput> = index
        .iter()
        .zip(scores)
        .map(|(&i, score)| {
            let e = &events[i];
            DecisionInput {
                score,
                context: Context {
                    courier_id: e.courier_id.clone(),
                    task_id: e.task_id.clone(),
                    event_type: e.event_type.into(),
                    event_time_ms: e.event_time_ms(),
                },
            }
        })
        .collect();
    let names: Vec<String> = live.decisions.feature_names.to_vec();
    let actions = call(
        &mut live.policy,
        &live.set.policy,
        engine,
        models,
        Stage::Policy,
        |exports, store| match exports {
            Exports::Policy(p) => p
                .fleet_edge_decide()
                .call_decide(store, &names, &matrix, &inputs)
                .map(Ok),
            _ => unreachable!("policy slot holds a policy instance"),
        },
    )?;
    if actions.len() != inputs.len() {
        return Err((
            Stage::Policy,
            ModuleError::Contract(format!(
                "{} action lists for {} inputs",
                actions.len(),
                inputs.len()
            )),
        ));
    }

    let decisions = index
        .into_iter()
        .zip(vectors)
        .zip(inputs)
        .zip(actions)
        .map(|(((i, values), input), actions)| {
            decision(live, &events[i], values, input.score, actions)
        })
        .collect();
    Ok((decisions, new_states, unscored))
}

/// Calls into one stage's instance (creating it if the last call poisoned it) under the
/// sandbox deadline.
fn call<T>(
    slot: &mut Option<Instance>,
    module: &LoadedModule,
    engine: &SandboxEngine,
    models: &Arc<crate::inference::ModelRegistry>,
    stage: Stage,
    f: impl FnOnce(
        &Exports,
        &mut wasmtime::Store<crate::sandbox::HostState>,
    ) -> wasmtime::Result<Result<T, String>>,
) -> Result<T, StageFailure> {
    if slot.is_none() {
        *slot = Some(module.instantiate(engine, models).map_err(|e| (stage, e))?);
    }
    let instance = slot.as_mut().expect("set above");
    instance.store.set_epoch_deadline(engine.deadline_ticks());
    let result = f(&instance.exports, &mut instance.store);
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(message)) => Err((stage, ModuleError::Returned(message))),
        Err(e) => {
            let error = ModuleError::from_call(e, engine, instance.store.data().stderr());
            if error.poisons_instance() {
                *slot = None;
            }
            Err((stage, error))
        }
    }
}

type Scored = (usize, Vec<f32>);
/// New per-key states, and the scored events' feature vectors by input index.
type Extracted = (Vec<(String, Vec<u8>)>, Vec<Scored>);

/// The events' state keys in order of first appearance, each with the indices of its events
/// in arrival order.
pub fn group_by_key(events: &[Event]) -> Vec<(String, Vec<usize>)> {
    let mut key_index: HashMap<&str, usize> = HashMap::new();
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let key = e.state_key();
        let g = *key_index.entry(key).or_insert_with(|| {
            groups.push((key.to_string(), Vec::new()));
            groups.len() - 1
        });
        groups[g].1.push(i);
    }
    groups
}

/// Runs the features stage: groups `events` by key, folds them into each key's state, and
/// returns the new states and the feature vectors of scored events, in input order.
pub(crate) fn extract(
    slot: &mut Option<Instance>,
    module: &LoadedModule,
    engine: &SandboxEngine,
    models: &Arc<crate::inference::ModelRegistry>,
    states: &dyn StateStore,
    events: &[Event],
    width: usize,
) -> Result<Extracted, StageFailure> {
    let groups = group_by_key(events);
    let batches: Vec<KeyBatch> = groups
        .iter()
        .map(|(key, idx)| KeyBatch {
            key: key.clone(),
            state: states.get(key),
            events: idx.iter().map(|&i| events[i].to_wit()).collect(),
        })
        .collect();
    let outputs = call(
        slot,
        module,
        engine,
        models,
        Stage::Features,
        |exports, store| match exports {
            Exports::Features(f) => f.fleet_edge_extract().call_extract(store, &batches).map(Ok),
            _ => unreachable!("features slot holds a features instance"),
        },
    )?;
    let (new_states, mut scored) =
        check_features(&groups, outputs, width).map_err(|e| (Stage::Features, e))?;
    scored.sort_by_key(|(i, _)| *i);
    Ok((new_states, scored))
}

/// Checks the features module's output against its contract and flattens it.
fn check_features(
    groups: &[(String, Vec<usize>)],
    outputs: Vec<KeyOutput>,
    width: usize,
) -> Result<Extracted, ModuleError> {
    if outputs.len() != groups.len() {
        return Err(ModuleError::Contract(format!(
            "{} outputs for {} keys",
            outputs.len(),
            groups.len()
        )));
    }
    let mut states = Vec::with_capacity(groups.len());
    let mut scored = Vec::new();
    for ((key, idx), out) in groups.iter().zip(outputs) {
        if out.features.len() != idx.len() {
            return Err(ModuleError::Contract(format!(
                "key {key}: {} feature entries for {} events",
                out.features.len(),
                idx.len()
            )));
        }
        for (&i, v) in idx.iter().zip(out.features) {
            if let Some(v) = v {
                if v.len() != width {
                    return Err(ModuleError::Contract(format!(
                        "key {key}: vector of {} values, expected {width}",
                        v.len()
                    )));
                }
                scored.push((i, v));
            }
        }
        states.push((key.clone(), out.state));
    }
    Ok((states, scored))
}

fn decision(
    live: &Live,
    event: &Event,
    values: Vec<f32>,
    score: wit::Score,
    actions: Vec<wit::Action>,
) -> Decision {
    let names = &live.decisions.feature_names;
    let factors = score
        .top_factors
        .into_iter()
        .map(|f| Factor {
            feature: names
                .get(f.feature as usize)
                .cloned()
                .unwrap_or_else(|| format!("#{}", f.feature)),
            contribution: f.contribution,
        })
        .collect();
    let actions = actions.into_iter().map(Action::from).collect();
    live.decisions
        .make(event, values, score.probability, factors, actions)
}

/// Asks a features instance for its feature names.
pub(crate) fn feature_names(instance: &mut Instance) -> Result<Vec<String>, ModuleError> {
    let Exports::Features(f) = &instance.exports else {
        return Err(ModuleError::Contract("not a features module".into()));
    };
    // The deadline is absolute: re-arm it for this call.
    instance.store.set_epoch_deadline(1000);
    f.fleet_edge_extract()
        .call_feature_names(&mut instance.store)
        .map_err(|e| ModuleError::Trap(format!("{e:#}")))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_window_forgets_the_oldest_ids_past_its_capacity() {
        let mut window = DedupWindow::new(2);
        window.insert("a");
        window.insert("b");
        assert!(window.contains("a") && window.contains("b"));
        window.insert("c");
        assert!(!window.contains("a") && window.contains("b") && window.contains("c"));
        // A repeat is not a new id: it evicts nothing.
        window.insert("c");
        assert!(window.contains("b"));
        assert_eq!(window.contains_hash(event_hash("c")), window.contains("c"));
    }
}
