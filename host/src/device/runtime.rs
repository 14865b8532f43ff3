//! [`DeviceRuntime`]: the pipeline run for one device's journal at a time: journal dedup,
//! scoring, and the records a batch journals.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use fleet_journal::{Journal, JournalError};
use fleet_proto::{Record, Seq};

use crate::decision::{DeadLetter, Decision};
use crate::event::Event;
use crate::pipeline::{DEFAULT_DEDUP_WINDOW, Pipeline, StateStore};
use crate::registry::ModuleRegistry;

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

/// The pipeline, run for one journal at a time, by one thread.
pub struct DeviceRuntime {
    pipeline: Pipeline,
    states: JournalStates,
    /// Feature-name schemas already journaled, per journal.
    schemas: HashSet<(usize, u64)>,
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
        }
    }

    pub fn registry(&self) -> &Arc<ModuleRegistry> {
        self.pipeline.registry()
    }

    /// Runs `events` and journals them with their decisions and states (not yet flushed).
    /// Every fresh event is journaled, scored or dead-lettered.
    pub fn process(
        &mut self,
        journal: &Arc<Journal>,
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
        let mut journaled: Vec<Record> = fresh
            .iter()
            .map(|e| Record::Event(records::event_record(e)))
            .collect();
        self.states.set(journal);
        let outcome = self.pipeline.process(fresh);
        let journal_id = Arc::as_ptr(journal) as usize;
        accepted.duplicates += outcome.duplicates;
        for d in &outcome.decisions {
            let schema = records::schema_of(d);
            let record = records::decision_record(d, &schema);
            if self.schemas.insert((journal_id, schema.id)) {
                journaled.push(Record::Schema(schema));
            }
            journaled.push(Record::Decision(record));
        }
        let module = self.pipeline.registry().current().features.label();
        for (key, bytes) in outcome.states {
            journaled.push(Record::State(fleet_proto::record::StateRecord {
                key,
                module: module.clone(),
                bytes,
            }));
        }
        let commit = journal.append(journaled)?;
        accepted.thinned = commit.thinned;
        accepted.through = commit.last;
        accepted.decisions = outcome.decisions;
        accepted.dead_letters = outcome.dead_letters;
        Ok(accepted)
    }
}
