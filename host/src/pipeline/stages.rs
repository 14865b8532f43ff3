//! One batch through the three stages: features per key, the scorer, the policy
//! (`policy.rs`); every module output checked against its contract before use.

use std::collections::HashMap;
use std::sync::Arc;

use crate::bindings::features::exports::fleet::edge::extract::{KeyBatch, KeyOutput};
use crate::bindings::types as wit;
use crate::decision::{Action, Decision, Factor, Stage};
use crate::engine::SandboxEngine;
use crate::event::Event;
use crate::module::{Exports, Instance, LoadedModule};
use crate::sandbox::ModuleError;

use super::policy::Verdict;
use super::{Live, StateStore};

pub(crate) type StageFailure = (Stage, ModuleError);
pub(super) type Decided = (Vec<Decision>, Vec<(String, Vec<u8>)>, usize);

pub(super) fn run_batch(
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

    let scored = index.iter().map(|&i| &events[i]).zip(scores).collect();
    let (verdicts, policy_states) =
        super::policy::decide(live, engine, models, states, &matrix, scored)?;
    let decisions = index
        .into_iter()
        .zip(vectors)
        .zip(verdicts)
        .map(|((i, values), verdict)| decision(live, &events[i], values, verdict))
        .collect();
    let mut new_states = new_states;
    new_states.extend(policy_states);
    Ok((decisions, new_states, unscored))
}

/// Calls into one stage's instance (creating it if the last call poisoned it) under the
/// sandbox deadline.
pub(super) fn call<T>(
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

fn decision(live: &Live, event: &Event, values: Vec<f32>, verdict: Verdict) -> Decision {
    let names = &live.decisions.feature_names;
    let factors = verdict
        .score
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
    let actions = verdict.actions.into_iter().map(Action::from).collect();
    live.decisions.make(
        event,
        values,
        verdict.score.probability,
        factors,
        actions,
        verdict.alert_step,
    )
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
