//! The policy stage: scores to actions. A policy exports `decide`, each input on its own, or
//! (since `fleet:edge@0.2.1`) `decide-keyed`: it is handed each key's state, as the features
//! module is, returns the new one, and says what each decision does to the key's alert.

use std::collections::HashMap;
use std::sync::Arc;

use crate::bindings::policy::exports::fleet::edge::decide::{Context, DecisionInput};
use crate::bindings::policy_keyed::exports::fleet::edge::decide_keyed::{
    self as keyed, KeyState, KeyedInput,
};
use crate::bindings::types as wit;
use crate::decision::{AlertStep, Stage};
use crate::engine::SandboxEngine;
use crate::event::Event;
use crate::inference::ModelRegistry;
use crate::module::Exports;
use crate::sandbox::ModuleError;

use super::stages::{StageFailure, call};
use super::{Live, StateStore, policy_state_key};

/// The policy's verdict on one scored event.
pub(super) struct Verdict {
    pub(super) score: wit::Score,
    pub(super) actions: Vec<wit::Action>,
    pub(super) alert_step: Option<AlertStep>,
}

/// What the policy stage returns: one verdict per input, and the new policy state of every
/// key (under [`policy_state_key`]; none from a policy without state).
pub(super) type Decided = (Vec<Verdict>, Vec<(String, Vec<u8>)>);

/// Runs the policy on `scored` (events with their scores, in input order; row `i` of `matrix`
/// is input `i`'s feature vector).
pub(super) fn decide(
    live: &mut Live,
    engine: &SandboxEngine,
    models: &Arc<ModelRegistry>,
    states: &dyn StateStore,
    matrix: &wit::FeatureMatrix,
    scored: Vec<(&Event, wit::Score)>,
) -> Result<Decided, StageFailure> {
    let names: Vec<String> = live.decisions.feature_names.to_vec();
    if live.set.policy.is_keyed() {
        decide_keyed(live, engine, models, states, &names, matrix, scored)
    } else {
        decide_each(live, engine, models, &names, matrix, scored)
    }
}

fn decide_each(
    live: &mut Live,
    engine: &SandboxEngine,
    models: &Arc<ModelRegistry>,
    names: &[String],
    matrix: &wit::FeatureMatrix,
    scored: Vec<(&Event, wit::Score)>,
) -> Result<Decided, StageFailure> {
    let inputs: Vec<DecisionInput> = scored
        .into_iter()
        .map(|(e, score)| DecisionInput {
            score,
            context: Context {
                courier_id: e.courier_id.clone(),
                task_id: e.task_id.clone(),
                event_type: e.event_type.into(),
                event_time_ms: e.event_time_ms(),
            },
        })
        .collect();
    let actions = call(
        &mut live.policy,
        &live.set.policy,
        engine,
        models,
        Stage::Policy,
        |exports, store| match exports {
            Exports::Policy(p) => p
                .fleet_edge_decide()
                .call_decide(store, names, matrix, &inputs)
                .map(Ok),
            _ => Ok(Err("the policy changed its interface".into())),
        },
    )?;
    check_count("action lists", actions.len(), inputs.len())?;
    let verdicts = inputs
        .into_iter()
        .zip(actions)
        .map(|(input, actions)| Verdict {
            score: input.score,
            actions,
            alert_step: None,
        })
        .collect();
    Ok((verdicts, Vec::new()))
}

fn decide_keyed(
    live: &mut Live,
    engine: &SandboxEngine,
    models: &Arc<ModelRegistry>,
    states: &dyn StateStore,
    names: &[String],
    matrix: &wit::FeatureMatrix,
    scored: Vec<(&Event, wit::Score)>,
) -> Result<Decided, StageFailure> {
    let mut key_index: HashMap<&str, u32> = HashMap::new();
    let mut keys: Vec<KeyState> = Vec::new();
    let inputs: Vec<KeyedInput> = scored
        .into_iter()
        .map(|(e, score)| {
            let key = *key_index.entry(e.state_key()).or_insert_with(|| {
                keys.push(KeyState {
                    key: e.state_key().to_string(),
                    state: states.get(&policy_state_key(e.state_key())),
                });
                keys.len() as u32 - 1
            });
            KeyedInput {
                key,
                score,
                courier_id: e.courier_id.clone(),
                task_id: e.task_id.clone(),
                event_type: e.event_type.into(),
                event_time_ms: e.event_time_ms(),
            }
        })
        .collect();
    let decided = call(
        &mut live.policy,
        &live.set.policy,
        engine,
        models,
        Stage::Policy,
        |exports, store| match exports {
            Exports::KeyedPolicy(p) => p
                .fleet_edge_decide_keyed()
                .call_decide(store, names, matrix, &keys, &inputs)
                .map(Ok),
            _ => Ok(Err("the policy changed its interface".into())),
        },
    )?;
    check_count("states", decided.states.len(), keys.len())?;
    check_count("outcomes", decided.outcomes.len(), inputs.len())?;
    let mut verdicts = Vec::with_capacity(inputs.len());
    for (input, outcome) in inputs.into_iter().zip(decided.outcomes) {
        let alert_step = outcome.alert_step.map(|s| match s {
            keyed::AlertStep::Opened => AlertStep::Opened,
            keyed::AlertStep::Escalated => AlertStep::Escalated,
            keyed::AlertStep::Resolved => AlertStep::Resolved,
        });
        check_step(alert_step, &outcome.actions).map_err(|e| (Stage::Policy, e))?;
        verdicts.push(Verdict {
            score: input.score,
            actions: outcome.actions,
            alert_step,
        });
    }
    let new_states = keys
        .into_iter()
        .zip(decided.states)
        .map(|(k, state)| (policy_state_key(&k.key), state))
        .collect();
    Ok((verdicts, new_states))
}

fn check_count(what: &str, got: usize, inputs: usize) -> Result<(), StageFailure> {
    if got == inputs {
        return Ok(());
    }
    Err((
        Stage::Policy,
        ModuleError::Contract(format!("{got} {what} for {inputs}")),
    ))
}

/// An `alert` action goes with `opened` and `escalated`, one of it, and with nothing else: an
/// alert object is made of exactly the decisions that move it.
fn check_step(step: Option<AlertStep>, actions: &[wit::Action]) -> Result<(), ModuleError> {
    let alerts = actions
        .iter()
        .filter(|a| matches!(a, wit::Action::Alert(_)))
        .count();
    let wanted = usize::from(matches!(
        step,
        Some(AlertStep::Opened | AlertStep::Escalated)
    ));
    if alerts == wanted {
        return Ok(());
    }
    let step = step.map_or("no alert step", AlertStep::as_str);
    Err(ModuleError::Contract(format!(
        "{alerts} alert actions with {step} (an opened or escalated step takes one, any other none)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert() -> wit::Action {
        wit::Action::Alert(wit::Alert {
            severity: wit::Severity::Warning,
            message: "late".into(),
        })
    }

    #[test]
    fn an_alert_action_goes_with_opening_and_escalating_only() {
        let notify = wit::Action::NotifyCourier("hurry".into());
        for (step, actions, ok) in [
            (Some(AlertStep::Opened), vec![alert()], true),
            (
                Some(AlertStep::Escalated),
                vec![alert(), notify.clone()],
                true,
            ),
            (Some(AlertStep::Resolved), vec![], true),
            (None, vec![notify.clone()], true),
            (None, vec![alert()], false),
            (Some(AlertStep::Opened), vec![], false),
            (Some(AlertStep::Opened), vec![alert(), alert()], false),
            (Some(AlertStep::Resolved), vec![alert()], false),
        ] {
            assert_eq!(
                check_step(step, &actions).is_ok(),
                ok,
                "{step:?} {actions:?}"
            );
        }
    }
}
