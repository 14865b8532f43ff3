//! What one batch adds to history, decided once for every backend: each event stored once,
//! decisions on their task's timeline (or apart when they have none), what moves alerts, which latest rows an entry moves, and which feature states survive compaction.
//! A backend turns a [`Plan`] into its own writes; it decides nothing about the domain.

use fleet_proto::record::{
    DeadLetterRecord, DecisionRecord, EventRecord, Schema, Severity, StateRecord,
};
use fleet_proto::{Entry, Record, Seq};

use super::IngestOutcome;
use super::alerts::{AlertMove, AlertOf};

/// A latest row: of a task, or of a courier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum LatestOf<'a> {
    Task(&'a str),
    Courier(&'a str),
}

/// What moves a latest row.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Fold<'a> {
    Event(&'a EventRecord),
    Decision(&'a DecisionRecord),
}

/// One batch's additions.
#[derive(Default)]
pub(crate) struct Plan<'a> {
    pub(crate) outcome: IngestOutcome,
    /// Every event, stored once, with its sequence.
    pub(crate) events: Vec<(Seq, &'a EventRecord)>,
    /// Every decision: a task's go on its timeline, the others apart.
    pub(crate) decisions: Vec<(Seq, &'a DecisionRecord)>,
    /// What moves alerts, in journal order: every decision, and every task's end.
    pub(crate) alert_moves: Vec<(AlertOf<'a>, AlertMove<'a>)>,
    /// Latest-row moves, in journal order.
    pub(crate) folds: Vec<(LatestOf<'a>, Fold<'a>)>,
    /// The newest state of each key the batch carries (older ones are compacted away).
    pub(crate) states: Vec<(Seq, &'a StateRecord)>,
    /// States the batch carried, compacted or not.
    pub(crate) states_received: u64,
    pub(crate) schemas: Vec<&'a Schema>,
    /// Failures and rescorings of dead-lettered events, in journal order.
    pub(crate) dead_letters: Vec<&'a DeadLetterRecord>,
    /// The newest event time in the batch.
    pub(crate) newest_event_ms: Option<i64>,
}

/// The plan for a batch whose journal numbering starts after `base` in history's: entries at
/// or below `cursor` (history's numbering) are duplicates; the plan's sequences are history's.
pub(crate) fn plan(cursor: Seq, base: Seq, entries: &[Entry]) -> Plan<'_> {
    let mut plan = Plan::default();
    let mut state_at = std::collections::HashMap::new();
    for entry in entries {
        let seq = base + entry.seq;
        if seq <= cursor {
            plan.outcome.duplicates += 1;
            continue;
        }
        plan.outcome.stored += 1;
        plan.outcome.fresh_from.get_or_insert(entry.seq);
        match &entry.record {
            Record::Event(e) => {
                plan.outcome.events += 1;
                plan.newest_event_ms =
                    Some(plan.newest_event_ms.map_or(e.time_ms, |t| t.max(e.time_ms)));
                plan.events.push((seq, e));
                if let Some(task) = &e.task_id {
                    plan.folds.push((LatestOf::Task(task), Fold::Event(e)));
                    if AlertMove::ends_task(e) {
                        plan.alert_moves
                            .push((AlertOf::Task(task), AlertMove::Ended(e)));
                    }
                }
                plan.folds
                    .push((LatestOf::Courier(&e.courier_id), Fold::Event(e)));
            }
            Record::Decision(d) => {
                plan.outcome.decisions += 1;
                plan.decisions.push((seq, d));
                if let Some(task) = &d.task_id {
                    plan.folds.push((LatestOf::Task(task), Fold::Decision(d)));
                }
                plan.folds
                    .push((LatestOf::Courier(&d.courier_id), Fold::Decision(d)));
                if d.severity >= Severity::Warning {
                    plan.outcome.alerts += 1;
                }
                plan.alert_moves
                    .push((AlertOf::of_decision(d), AlertMove::Decision(d)));
            }
            Record::State(s) => {
                plan.states_received += 1;
                match state_at.get(s.key.as_str()) {
                    Some(&i) => plan.states[i] = (seq, s),
                    None => {
                        state_at.insert(s.key.as_str(), plan.states.len());
                        plan.states.push((seq, s));
                    }
                }
            }
            Record::Schema(s) => plan.schemas.push(s),
            Record::DeadLetter(d) => plan.dead_letters.push(d),
        }
    }
    plan
}
