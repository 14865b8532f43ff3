//! [`DeviceRuntime`]: the pipeline run for one device's journal at a time: journal dedup,
//! scoring, and the records a batch journals. Events a module fails on are journaled as such
//! and parked in the journal; [`DeviceRuntime::retry`] scores them again (the writer does
//! when the module set changes, or on request), and each is scored exactly once: a producer
//! sending it again is answered "duplicate", and a retry that scores it unparks it in the
//! same commit that journals its decision.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use fleet_journal::{Journal, JournalError, Parked, Parking};
use fleet_proto::record::{DeadLetterOutcome, DeadLetterRecord, StateRecord};
use fleet_proto::{Record, Seq};

use crate::decision::{DeadLetter, Decision};
use crate::event::Event;
use crate::pipeline::{self, BatchOutcome, DEFAULT_DEDUP_WINDOW, Pipeline, StateStore};
use crate::registry::{ModuleRegistry, ModuleSet};

use super::blocked::{self, Blocked};
use super::records;

/// The pipeline reads feature state from the journal of the batch being run; new state
/// reaches the journal with the batch that made it (see [`DeviceRuntime::process`]), so `put`
/// has nothing left to do.
#[derive(Clone, Default)]
struct JournalStates(Arc<Mutex<Option<Arc<Journal>>>>);

impl JournalStates {
    fn set(&self, journal: &Arc<Journal>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(journal.clone());
    }
}

impl StateStore for JournalStates {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let journal = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
        match journal.state(key) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(key, error = %e, "reading state; starting the key afresh");
                None
            }
        }
    }

    fn put(&mut self, _key: String, _state: Vec<u8>) {}
}

/// What one submission came to.
#[derive(Debug, Default)]
pub struct Accepted {
    pub decisions: Vec<Decision>,
    /// Events a module failed on: journaled and parked, to be scored again later.
    pub dead_letters: Vec<DeadLetter>,
    /// Repeats of event ids already accepted (acknowledged, not journaled again).
    pub duplicates: usize,
    /// Location pings accepted but not journaled because the journal is over budget.
    pub thinned: u64,
    pub events: usize,
    /// The journal's last sequence number after this batch: once the aggregator has
    /// acknowledged it, the batch is in history.
    pub through: Seq,
}

/// What one retry of parked events came to.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Retried {
    /// Parked events run again.
    pub tried: usize,
    /// Scored now (or folded into state, for events that are not scored): no longer parked.
    pub rescored: usize,
    /// Failed again: still parked.
    pub failed: usize,
    /// Parked events left after this retry.
    pub parked: u64,
}

/// The pipeline, run for one journal at a time, by one thread.
pub struct DeviceRuntime {
    pipeline: Pipeline,
    states: JournalStates,
    /// Feature-name schemas already journaled, per journal.
    schemas: HashSet<(usize, u64)>,
    blocked: Blocked,
}

/// What a batch journals besides its events: decisions (with their schemas), the new states,
/// and its dead letters, parked.
struct Journaled {
    records: Vec<Record>,
    parking: Vec<Parking>,
}

impl DeviceRuntime {
    pub fn new(registry: Arc<ModuleRegistry>) -> Self {
        let states = JournalStates::default();
        let pipeline =
            Pipeline::with_store(registry, Box::new(states.clone()), DEFAULT_DEDUP_WINDOW);
        Self {
            pipeline,
            states,
            schemas: HashSet::new(),
            blocked: Blocked::default(),
        }
    }

    pub fn registry(&self) -> &Arc<ModuleRegistry> {
        self.pipeline.registry()
    }

    /// Runs `events` and journals them with their decisions, states and dead letters (not
    /// yet flushed). Every fresh event is journaled; the ones a module fails on are parked.
    pub fn process(
        &mut self,
        journal: &Arc<Journal>,
        events: Vec<Event>,
    ) -> Result<Accepted, JournalError> {
        let set = self.registry().current();
        self.process_on(journal, set, events)
    }

    /// [`Self::process`] on `set`: the current set of the journal's own device, when one
    /// runtime serves devices that each take releases (their registries share this
    /// runtime's engine).
    pub fn process_on(
        &mut self,
        journal: &Arc<Journal>,
        set: Arc<ModuleSet>,
        events: Vec<Event>,
    ) -> Result<Accepted, JournalError> {
        let mut accepted = Accepted {
            through: journal.stats().last_seq,
            ..Accepted::default()
        };
        let mut fresh = Vec::with_capacity(events.len());
        let mut seen_here = HashSet::new();
        for e in events {
            if journal.is_duplicate(&e.event_id)? || !seen_here.insert(e.event_id.clone()) {
                accepted.duplicates += 1;
            } else {
                fresh.push(e);
            }
        }
        accepted.events = fresh.len();
        if fresh.is_empty() {
            return Ok(accepted);
        }
        let mut journaled = Journaled {
            records: fresh
                .iter()
                .map(|e| Record::Event(records::event_record(e)))
                .collect(),
            parking: Vec::new(),
        };
        // Events of keys with parked events wait behind them, without running.
        let keys = self.blocked.of(journal)?;
        let (run, held): (Vec<Event>, Vec<Event>) = fresh
            .into_iter()
            .partition(|e| !keys.contains_key(e.state_key()));
        let held: Vec<DeadLetter> = held
            .into_iter()
            .map(|e| keys[e.state_key()].hold(e))
            .collect();
        self.states.set(journal);
        let mut outcome = self.pipeline.process_on(set, run);
        outcome.dead_letters.extend(held);
        accepted.duplicates += outcome.duplicates;
        self.journal_outcome(journal, &outcome, &mut journaled);
        let keys = self.blocked.of(journal)?;
        for d in &outcome.dead_letters {
            journaled.park(d, outcome.module_set);
            blocked::parked(keys, d);
        }
        let commit = journal.append_parking(journaled.records, journaled.parking)?;
        accepted.thinned = commit.thinned;
        accepted.through = commit.last;
        accepted.decisions = outcome.decisions;
        accepted.dead_letters = outcome.dead_letters;
        Ok(accepted)
    }

    /// Runs `journal`'s parked events after parked id `after` again, up to `max` of them
    /// looked at (not yet flushed): those scored now leave the parking with their decisions
    /// journaled, the rest count one more attempt. With `stale_only`, events whose last
    /// attempt ran on the current module set are left alone. Returns the outcome and the last
    /// parked id looked at.
    pub fn retry(
        &mut self,
        journal: &Arc<Journal>,
        after: u64,
        max: usize,
        stale_only: bool,
    ) -> Result<(Retried, u64), JournalError> {
        let set = self.registry().current();
        self.retry_on(journal, set, after, max, stale_only)
    }

    /// [`Self::retry`] on `set` (see [`Self::process_on`]).
    pub fn retry_on(
        &mut self,
        journal: &Arc<Journal>,
        set: Arc<ModuleSet>,
        after: u64,
        max: usize,
        stale_only: bool,
    ) -> Result<(Retried, u64), JournalError> {
        let mut parked = journal.parked(after, max)?;
        let last = parked.last().map_or(after, |p| p.id);
        if stale_only {
            let current = set.identity();
            parked.retain(|p| p.tag != current);
        }
        let mut journaled = Journaled {
            records: Vec::new(),
            parking: Vec::new(),
        };
        let mut by_id: HashMap<String, (Parked, DeadLetterRecord)> = HashMap::new();
        let mut events = Vec::with_capacity(parked.len());
        for p in parked {
            match serde_json::from_slice::<Event>(&p.payload) {
                Ok(e) => {
                    let record = DeadLetterRecord {
                        event_id: e.event_id.clone(),
                        courier_id: e.courier_id.clone(),
                        task_id: e.task_id.clone(),
                        time_ms: e.event_time_ms(),
                        attempt: p.attempts + 1,
                        outcome: DeadLetterOutcome::Rescored {
                            prediction_id: None,
                        },
                    };
                    by_id.insert(e.event_id.clone(), (p, record));
                    events.push(e);
                }
                Err(e) => {
                    // Written by this runtime; unreadable only if the event schema changed.
                    tracing::error!(parked = p.id, error = %e, "a parked event no longer reads as an event; dropped from the parking (it stays journaled)");
                    journaled.parking.push(Parking::Resolved { id: p.id });
                }
            }
        }
        let mut retried = Retried {
            tried: events.len(),
            ..Retried::default()
        };
        if !events.is_empty() {
            self.states.set(journal);
            let outcome = self.pipeline.process_on(set, events);
            self.journal_outcome(journal, &outcome, &mut journaled);
            for d in &outcome.dead_letters {
                let Some((mut p, _)) = by_id.remove(&d.event.event_id) else {
                    continue;
                };
                p.attempts += 1;
                p.tag = outcome.module_set;
                journaled
                    .records
                    .push(Record::DeadLetter(dead_letter_record(d, p.attempts)));
                journaled.parking.push(Parking::Retried { parked: p });
                retried.failed += 1;
            }
            // Everything else went through: scored, or folded into state only.
            for d in &outcome.decisions {
                if let Some((_, record)) = by_id.get_mut(&d.event_id) {
                    record.outcome = DeadLetterOutcome::Rescored {
                        prediction_id: Some(d.prediction_id.clone()),
                    };
                }
            }
            let mut resolved: Vec<(Parked, DeadLetterRecord)> = by_id.into_values().collect();
            resolved.sort_by_key(|(p, _)| p.id);
            let keys = self.blocked.of(journal)?;
            for (p, record) in resolved {
                let key = record.task_id.as_deref().unwrap_or(&record.courier_id);
                blocked::resolved(keys, key);
                journaled.records.push(Record::DeadLetter(record));
                journaled.parking.push(Parking::Resolved { id: p.id });
                retried.rescored += 1;
            }
        }
        if !journaled.parking.is_empty() {
            journal.append_parking(journaled.records, journaled.parking)?;
        }
        retried.parked = journal.stats().parked;
        Ok((retried, last))
    }

    /// The records an outcome journals besides its events: schemas and decisions, and the
    /// new states labelled with the features module the batch ran on.
    fn journal_outcome(
        &mut self,
        journal: &Arc<Journal>,
        outcome: &BatchOutcome,
        journaled: &mut Journaled,
    ) {
        let journal_id = Arc::as_ptr(journal) as usize;
        for d in &outcome.decisions {
            let schema = records::schema_of(d);
            let record = records::decision_record(d, &schema);
            if self.schemas.insert((journal_id, schema.id)) {
                journaled.records.push(Record::Schema(schema));
            }
            journaled.records.push(Record::Decision(record));
        }
        let features = outcome.features_module.clone().unwrap_or_default();
        let policy = outcome.policy_module.clone().unwrap_or_default();
        for (key, bytes) in &outcome.states {
            let module = if pipeline::is_policy_state(key) {
                &policy
            } else {
                &features
            };
            journaled.records.push(Record::State(StateRecord {
                key: key.clone(),
                module: module.clone(),
                bytes: bytes.clone(),
            }));
        }
    }
}

impl Journaled {
    /// Journals a dead letter's first failure (on module set `tag`) and parks its event (the
    /// payload is the dead letter as a JSON line: the event, with why beside it).
    fn park(&mut self, d: &DeadLetter, tag: u64) {
        self.records
            .push(Record::DeadLetter(dead_letter_record(d, 1)));
        self.parking.push(Parking::Park {
            attempts: 1,
            tag,
            payload: d.to_json_line().into_bytes(),
        });
    }
}

fn dead_letter_record(d: &DeadLetter, attempt: u32) -> DeadLetterRecord {
    DeadLetterRecord {
        event_id: d.event.event_id.clone(),
        courier_id: d.event.courier_id.clone(),
        task_id: d.event.task_id.clone(),
        time_ms: d.event.event_time_ms(),
        attempt,
        outcome: DeadLetterOutcome::Failed {
            stage: d.stage,
            cause: d.cause,
            module: d.module.clone(),
            error: d.error.clone(),
        },
    }
}
