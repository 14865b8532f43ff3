//! The single writer: runs batches through the pipeline and journals events, decisions and
//! new states; one flush (fsync) per group of batches, then every producer in the group gets
//! its answer. An answer means durable. One writer can serve many devices, each with its
//! own journal (a simulator, an edge node): their journals share the flush when they share a
//! [`fleet_journal::JournalStore`].

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use fleet_journal::{Journal, JournalError};
use fleet_proto::{Record, Seq};
use tokio::sync::{Notify, mpsc, oneshot};

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

type Reply = oneshot::Sender<Result<Accepted, String>>;

struct Job {
    journal: Arc<Journal>,
    synced: Arc<Notify>,
    events: Vec<Event>,
    reply: Reply,
}

/// The writer thread, shared by any number of devices. Its pipeline remembers recent event
/// ids across all of them, so their ids must be unique fleet-wide (as UUIDs or
/// device-prefixed ids are); each journal's own index catches repeats per device.
#[derive(Clone)]
pub struct Writer(mpsc::Sender<Job>);

impl Writer {
    /// A device's way in: batches for `journal`; `synced` is woken after each durable group
    /// that held one of them.
    pub fn device(&self, journal: Arc<Journal>, synced: Arc<Notify>) -> WriterHandle {
        WriterHandle {
            jobs: self.0.clone(),
            journal,
            synced,
        }
    }
}

/// Submits one device's batches to the writer thread.
#[derive(Clone)]
pub struct WriterHandle {
    jobs: mpsc::Sender<Job>,
    journal: Arc<Journal>,
    synced: Arc<Notify>,
}

impl WriterHandle {
    fn job(&self, events: Vec<Event>) -> (Job, oneshot::Receiver<Result<Accepted, String>>) {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            journal: self.journal.clone(),
            synced: self.synced.clone(),
            events,
            reply,
        };
        (job, rx)
    }

    /// Resolves once the batch is durable (or failed: then nothing of it is acknowledged).
    pub async fn submit(&self, events: Vec<Event>) -> Result<Accepted, String> {
        let (job, rx) = self.job(events);
        self.jobs
            .send(job)
            .await
            .map_err(|_| "the device writer has stopped".to_string())?;
        rx.await
            .unwrap_or_else(|_| Err("the device writer dropped the batch".into()))
    }

    /// Blocking form, for threads outside the runtime.
    pub fn submit_blocking(&self, events: Vec<Event>) -> Result<Accepted, String> {
        let (job, rx) = self.job(events);
        self.jobs
            .blocking_send(job)
            .map_err(|_| "the device writer has stopped".to_string())?;
        rx.blocking_recv()
            .unwrap_or_else(|_| Err("the device writer dropped the batch".into()))
    }
}

/// Most submissions folded into one flush.
const MAX_GROUP: usize = 256;

/// Starts a writer thread for one device.
pub fn spawn(runtime: DeviceRuntime, journal: Arc<Journal>, synced: Arc<Notify>) -> WriterHandle {
    spawn_shared(runtime).device(journal, synced)
}

/// Starts a writer thread that devices join with [`Writer::device`].
pub fn spawn_shared(mut runtime: DeviceRuntime) -> Writer {
    let (tx, mut rx) = mpsc::channel::<Job>(1024);
    std::thread::Builder::new()
        .name("device-writer".into())
        .spawn(move || {
            while let Some(first) = rx.blocking_recv() {
                let mut group = vec![first];
                while group.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(job) => group.push(job),
                        Err(_) => break,
                    }
                }
                let results: Vec<_> = group
                    .iter_mut()
                    .map(|job| runtime.process(&job.journal, std::mem::take(&mut job.events)))
                    .collect();
                let mut journals: Vec<&Journal> = Vec::new();
                for job in &group {
                    if !journals.iter().any(|j| std::ptr::eq(*j, &*job.journal)) {
                        journals.push(&job.journal);
                    }
                }
                let flushed = Journal::flush_all(&journals);
                let mut woken: Vec<Arc<Notify>> = Vec::new();
                for (job, result) in group.into_iter().zip(results) {
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
                    let _ = job.reply.send(result);
                    if !woken.iter().any(|n| Arc::ptr_eq(n, &job.synced)) {
                        job.synced.notify_one();
                        woken.push(job.synced);
                    }
                }
            }
        })
        .expect("spawning the device writer");
    Writer(tx)
}
