//! The device's single writer: runs batches through the pipeline and journals events,
//! decisions and new states; one flush (fsync) per group of batches, then every producer in
//! the group gets its answer. An answer means durable.

use std::collections::HashSet;
use std::sync::Arc;

use fleet_journal::{Journal, JournalError};
use fleet_proto::Record;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::decision::{DeadLetter, Decision};
use crate::event::Event;
use crate::pipeline::{DEFAULT_DEDUP_WINDOW, Pipeline, StateStore};
use crate::registry::ModuleRegistry;

use super::records;

/// The pipeline reads feature state from the journal; new state reaches the journal with the
/// batch that made it (see [`DeviceRuntime::process`]), so `put` has nothing left to do.
struct JournalStates(Arc<Journal>);

impl StateStore for JournalStates {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        match self.0.state(key) {
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
}

/// Pipeline + journal, used by one thread.
pub struct DeviceRuntime {
    pipeline: Pipeline,
    journal: Arc<Journal>,
    schemas: HashSet<u64>,
}

impl DeviceRuntime {
    pub fn new(registry: Arc<ModuleRegistry>, journal: Arc<Journal>) -> Self {
        let pipeline = Pipeline::with_store(
            registry,
            Box::new(JournalStates(journal.clone())),
            DEFAULT_DEDUP_WINDOW,
        );
        Self {
            pipeline,
            journal,
            schemas: HashSet::new(),
        }
    }

    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }

    pub fn registry(&self) -> &Arc<ModuleRegistry> {
        self.pipeline.registry()
    }

    /// Runs `events` and journals them with their decisions and states (not yet flushed).
    /// Every fresh event is journaled, scored or dead-lettered.
    pub fn process(&mut self, events: Vec<Event>) -> Result<Accepted, JournalError> {
        let mut accepted = Accepted::default();
        let mut fresh = Vec::with_capacity(events.len());
        let mut seen_here = HashSet::new();
        for e in events {
            if self.journal.is_duplicate(&e.event_id)? || !seen_here.insert(e.event_id.clone()) {
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
        let outcome = self.pipeline.process(fresh);
        accepted.duplicates += outcome.duplicates;
        for d in &outcome.decisions {
            let schema = records::schema_of(d);
            let record = records::decision_record(d, &schema);
            if self.schemas.insert(schema.id) {
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
        let commit = self.journal.append(journaled)?;
        accepted.thinned = commit.thinned;
        accepted.decisions = outcome.decisions;
        accepted.dead_letters = outcome.dead_letters;
        Ok(accepted)
    }
}

type Reply = oneshot::Sender<Result<Accepted, String>>;

/// Submits batches to the writer thread.
#[derive(Clone)]
pub struct WriterHandle(mpsc::Sender<(Vec<Event>, Reply)>);

impl WriterHandle {
    /// Resolves once the batch is durable (or failed: then nothing of it is acknowledged).
    pub async fn submit(&self, events: Vec<Event>) -> Result<Accepted, String> {
        let (tx, rx) = oneshot::channel();
        self.0
            .send((events, tx))
            .await
            .map_err(|_| "the device writer has stopped".to_string())?;
        rx.await
            .unwrap_or_else(|_| Err("the device writer dropped the batch".into()))
    }

    /// Blocking form, for threads outside the runtime.
    pub fn submit_blocking(&self, events: Vec<Event>) -> Result<Accepted, String> {
        let (tx, rx) = oneshot::channel();
        self.0
            .blocking_send((events, tx))
            .map_err(|_| "the device writer has stopped".to_string())?;
        rx.blocking_recv()
            .unwrap_or_else(|_| Err("the device writer dropped the batch".into()))
    }
}

/// Most submissions folded into one flush.
const MAX_GROUP: usize = 64;

/// Starts the writer thread; `synced` is woken after every durable group.
pub fn spawn(mut runtime: DeviceRuntime, synced: Arc<Notify>) -> WriterHandle {
    let (tx, mut rx) = mpsc::channel::<(Vec<Event>, Reply)>(256);
    std::thread::Builder::new()
        .name("device-writer".into())
        .spawn(move || {
            while let Some(first) = rx.blocking_recv() {
                let mut group = vec![first];
                while group.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(item) => group.push(item),
                        Err(_) => break,
                    }
                }
                let results: Vec<_> = group
                    .iter_mut()
                    .map(|(events, _)| runtime.process(std::mem::take(events)))
                    .collect();
                let flushed = runtime.journal().flush();
                for ((_, reply), result) in group.into_iter().zip(results) {
                    let result = match (&flushed, result) {
                        (Ok(()), Ok(accepted)) => Ok(accepted),
                        (Err(e), _) => {
                            Err(format!("journal flush failed, batch not acknowledged: {e}"))
                        }
                        (_, Err(e)) => {
                            Err(format!("journal write failed, batch not acknowledged: {e}"))
                        }
                    };
                    if let Err(e) = &result {
                        tracing::error!(error = %e);
                    }
                    let _ = reply.send(result);
                }
                synced.notify_one();
            }
        })
        .expect("spawning the device writer");
    WriterHandle(tx)
}
