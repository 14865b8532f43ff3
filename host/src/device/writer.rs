//! The single writer: runs batches through the pipeline and journals events, decisions and
//! new states; one flush (fsync) per group of batches, then every producer in the group gets
//! its answer. An answer means durable. One writer can serve many devices, each with its
//! own journal (a simulator, an edge node): their journals share the flush when they share a
//! [`fleet_journal::JournalStore`].
//!
//! Parked events (dead letters) are scored again once per module set: when the set changes
//! (and after a start on another set), the writer works through every journal's parked
//! events that were last tried on another set, between groups; [`WriterHandle::retry`] tries
//! all of them at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_journal::{Journal, JournalError, StoreHealth};
use thiserror::Error;
use tokio::sync::{Notify, broadcast, mpsc, oneshot};

use crate::decision::Action;
use crate::event::Event;
use crate::registry::ModuleRegistry;

pub use super::runtime::{Accepted, DeviceRuntime, Retried};

/// Why a submission was not acknowledged. Nothing of it is durable; it may be sent again.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubmitError {
    /// The writer thread has stopped (the process is shutting down).
    #[error("the device writer has stopped")]
    Stopped,
    /// The journal cannot take writes now (its disk is full, say); it takes them again by
    /// itself once it can.
    #[error("not acknowledged, send it again later: {0}")]
    Unavailable(String),
    /// Writing the journal failed otherwise.
    #[error("journal write failed, not acknowledged: {0}")]
    Failed(String),
}

impl From<&JournalError> for SubmitError {
    fn from(e: &JournalError) -> Self {
        match e {
            JournalError::Unavailable { .. } => Self::Unavailable(e.to_string()),
            _ => Self::Failed(e.to_string()),
        }
    }
}

type Reply<T> = oneshot::Sender<Result<T, SubmitError>>;

enum Job {
    Batch {
        device: Device,
        events: Vec<Event>,
        reply: Reply<Accepted>,
    },
    /// Score every parked event of this device again now.
    Retry {
        device: Device,
        reply: Reply<Retried>,
    },
    /// Wakes the writer to look for parked events to retry.
    Tick,
}

/// A device as the writer knows it: its journal, who to wake after a durable group, and the
/// registry whose set its batches run on.
#[derive(Clone)]
struct Device {
    journal: Arc<Journal>,
    synced: Arc<Notify>,
    registry: Arc<ModuleRegistry>,
    /// What the policy asked to tell the device's couriers, once durable.
    courier_actions: broadcast::Sender<Arc<CourierAction>>,
}

/// Something a policy wants a courier to see: a notification, or a suggested reassignment.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CourierAction {
    pub courier_id: String,
    pub task_id: Option<String>,
    /// `notify_courier` or `reassign`.
    pub kind: &'static str,
    pub message: String,
    pub prediction_id: String,
    pub event_time: String,
}

impl CourierAction {
    /// The actions meant for couriers among a batch's decisions.
    fn of(accepted: &Accepted) -> Vec<Self> {
        let mut out = Vec::new();
        for d in &accepted.decisions {
            for a in &d.actions {
                let (kind, message) = match a {
                    Action::NotifyCourier { message } => ("notify_courier", message),
                    Action::Reassign { reason } => ("reassign", reason),
                    _ => continue,
                };
                out.push(Self {
                    courier_id: d.courier_id.clone(),
                    task_id: d.task_id.clone(),
                    kind,
                    message: message.clone(),
                    prediction_id: d.prediction_id.clone(),
                    event_time: d.event_time.to_rfc3339(),
                });
            }
        }
        out
    }
}

/// Courier actions kept for a subscriber that is behind (a handset app reading its stream).
const COURIER_ACTIONS: usize = 1024;

/// The writer thread, shared by any number of devices. Its pipeline remembers recent event
/// ids across all of them, so their ids must be unique fleet-wide (as UUIDs or
/// device-prefixed ids are); each journal's own index catches repeats per device.
#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
    devices: Arc<Mutex<Vec<Device>>>,
    /// The runtime's registry: devices without one of their own run on it.
    registry: Arc<ModuleRegistry>,
}

impl Writer {
    /// A device's way in: batches for `journal`; `synced` is woken after each durable group
    /// that held one of them. Its batches run on the runtime's registry.
    pub fn device(&self, journal: Arc<Journal>, synced: Arc<Notify>) -> WriterHandle {
        self.device_on(journal, synced, self.registry.clone())
    }

    /// [`Self::device`] for a device with a registry of its own (it takes releases by
    /// itself); the registry must share the runtime's engine.
    pub fn device_on(
        &self,
        journal: Arc<Journal>,
        synced: Arc<Notify>,
        registry: Arc<ModuleRegistry>,
    ) -> WriterHandle {
        let device = Device {
            journal,
            synced,
            registry,
            courier_actions: broadcast::channel(COURIER_ACTIONS).0,
        };
        self.devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(device.clone());
        WriterHandle {
            jobs: self.jobs.clone(),
            device,
        }
    }
}

/// Submits one device's batches to the writer thread.
#[derive(Clone)]
pub struct WriterHandle {
    jobs: mpsc::Sender<Job>,
    device: Device,
}

impl WriterHandle {
    /// Resolves once the batch is durable (or failed: then nothing of it is acknowledged).
    pub async fn submit(&self, events: Vec<Event>) -> Result<Accepted, SubmitError> {
        let (job, rx) = self.batch(events);
        self.jobs
            .send(job)
            .await
            .map_err(|_| SubmitError::Stopped)?;
        rx.await.unwrap_or(Err(SubmitError::Stopped))
    }

    /// Blocking form, for threads outside the runtime.
    pub fn submit_blocking(&self, events: Vec<Event>) -> Result<Accepted, SubmitError> {
        let (job, rx) = self.batch(events);
        self.jobs
            .blocking_send(job)
            .map_err(|_| SubmitError::Stopped)?;
        rx.blocking_recv().unwrap_or(Err(SubmitError::Stopped))
    }

    fn batch(&self, events: Vec<Event>) -> (Job, oneshot::Receiver<Result<Accepted, SubmitError>>) {
        let (reply, rx) = oneshot::channel();
        let job = Job::Batch {
            device: self.device.clone(),
            events,
            reply,
        };
        (job, rx)
    }

    /// Scores every parked event again now; resolves once the outcome is durable.
    pub async fn retry(&self) -> Result<Retried, SubmitError> {
        let (reply, rx) = oneshot::channel();
        let job = Job::Retry {
            device: self.device.clone(),
            reply,
        };
        self.jobs
            .send(job)
            .await
            .map_err(|_| SubmitError::Stopped)?;
        rx.await.unwrap_or(Err(SubmitError::Stopped))
    }

    pub fn journal(&self) -> &Arc<Journal> {
        &self.device.journal
    }

    /// What the policy asks to tell this device's couriers from now on, each once its
    /// decision is durable.
    pub fn courier_actions(&self) -> broadcast::Receiver<Arc<CourierAction>> {
        self.device.courier_actions.subscribe()
    }
}

/// Most submissions folded into one flush.
const MAX_GROUP: usize = 256;
/// Parked events retried per journal between two groups, so retries never hold producers
/// up for long.
const RETRY_CHUNK: usize = 256;
/// How often an idle writer looks for parked events to retry (after a module swap).
const TICK: Duration = Duration::from_secs(1);

/// Starts a writer thread for one device.
pub fn spawn(runtime: DeviceRuntime, journal: Arc<Journal>, synced: Arc<Notify>) -> WriterHandle {
    spawn_shared(runtime).device(journal, synced)
}

/// Starts a writer thread that devices join with [`Writer::device`].
pub fn spawn_shared(runtime: DeviceRuntime) -> Writer {
    let (tx, rx) = mpsc::channel::<Job>(1024);
    let devices = Arc::new(Mutex::new(Vec::new()));
    let registry = runtime.registry().clone();
    let mut thread = WriterThread {
        runtime,
        complaints: Complaints::default(),
        devices: devices.clone(),
        sweeps: HashMap::new(),
    };
    std::thread::Builder::new()
        .name("device-writer".into())
        .spawn(move || thread.run(rx))
        .expect("spawning the device writer");
    let ticks = tx.downgrade();
    std::thread::Builder::new()
        .name("device-writer-tick".into())
        .spawn(move || {
            while let Some(tx) = ticks.upgrade() {
                let _ = tx.try_send(Job::Tick);
                drop(tx);
                std::thread::sleep(TICK);
            }
        })
        .expect("spawning the writer's ticker");
    Writer {
        jobs: tx,
        devices,
        registry,
    }
}

struct WriterThread {
    runtime: DeviceRuntime,
    complaints: Complaints,
    devices: Arc<Mutex<Vec<Device>>>,
    /// Per journal: the module set its parked events were last swept for (its identity),
    /// and where that sweep stands (`None`: done).
    sweeps: HashMap<usize, (u64, Option<u64>)>,
}

/// What a group did, to be answered after its flush.
enum Done {
    Batch(Device, Reply<Accepted>, Result<Accepted, SubmitError>),
    Retry(Reply<Retried>, Result<Retried, SubmitError>),
}

impl WriterThread {
    fn run(&mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(first) = rx.blocking_recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(job) => group.push(job),
                    Err(_) => break,
                }
            }
            let mut touched: Vec<Device> = Vec::new();
            let mut done = Vec::with_capacity(group.len());
            let mut refusals: HashMap<usize, Option<SubmitError>> = HashMap::new();
            for job in group {
                match job {
                    Job::Batch { reply, device, .. }
                        if let Some(e) = refusal(&device.journal, &mut refusals) =>
                    {
                        self.complaints.note(&e);
                        let _ = reply.send(Err(e));
                    }
                    Job::Batch {
                        device,
                        events,
                        reply,
                    } => {
                        let set = device.registry.current();
                        let result = self.runtime.process_on(&device.journal, set, events);
                        done.push(Done::Batch(
                            device.clone(),
                            reply,
                            result.map_err(|e| (&e).into()),
                        ));
                        note(&mut touched, device);
                    }
                    Job::Retry { device, reply } => {
                        let result = self.retry_all(&device);
                        done.push(Done::Retry(reply, result.map_err(|e| (&e).into())));
                        note(&mut touched, device);
                    }
                    Job::Tick => {}
                }
            }
            for device in self.sweep() {
                note(&mut touched, device);
            }
            let journals: Vec<&Journal> = touched.iter().map(|d| &*d.journal).collect();
            let flushed = Journal::flush_all(&journals).map_err(|e| SubmitError::from(&e));
            if let Err(e) = &flushed {
                self.complaints.note(e);
            }
            for d in done {
                match d {
                    Done::Batch(device, reply, result) => {
                        if let (Ok(()), Ok(accepted)) = (&flushed, &result) {
                            for action in CourierAction::of(accepted) {
                                // Nobody listening is not an error.
                                let _ = device.courier_actions.send(Arc::new(action));
                            }
                        }
                        answer(reply, &flushed, result)
                    }
                    Done::Retry(reply, result) => answer(reply, &flushed, result),
                }
            }
            for device in touched {
                device.synced.notify_one();
            }
        }
    }

    /// Retries every parked event of `device`, in chunks.
    fn retry_all(&mut self, device: &Device) -> Result<Retried, JournalError> {
        let mut total = Retried::default();
        let mut after = 0;
        loop {
            let set = device.registry.current();
            let (r, last) =
                self.runtime
                    .retry_on(&device.journal, set, after, RETRY_CHUNK, false)?;
            total.tried += r.tried;
            total.rescored += r.rescored;
            total.failed += r.failed;
            total.parked = r.parked;
            if last == after {
                return Ok(total);
            }
            after = last;
        }
    }

    /// Moves each journal's sweep of its parked events on by one chunk when the module set
    /// changed since its last sweep (events last tried on the current set are left alone);
    /// returns the devices it wrote to.
    fn sweep(&mut self) -> Vec<Device> {
        let devices = self
            .devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut touched = Vec::new();
        for device in devices {
            if device.journal.stats().parked == 0 {
                continue;
            }
            let key = Arc::as_ptr(&device.journal) as usize;
            let set = device.registry.current();
            let identity = set.identity();
            let sweep = self.sweeps.entry(key).or_insert((0, None));
            if sweep.0 != identity {
                *sweep = (identity, Some(0));
            }
            let Some(after) = sweep.1 else { continue };
            match self
                .runtime
                .retry_on(&device.journal, set, after, RETRY_CHUNK, true)
            {
                Ok((r, last)) => {
                    if r.tried > 0 {
                        tracing::info!(
                            tried = r.tried,
                            rescored = r.rescored,
                            failed = r.failed,
                            parked = r.parked,
                            "dead letters retried on the current module set"
                        );
                    }
                    sweep.1 = (last != after).then_some(last);
                    touched.push(device);
                }
                Err(e) => tracing::warn!(error = %e, "retrying dead letters; trying again later"),
            }
        }
        touched
    }
}

fn note(touched: &mut Vec<Device>, device: Device) {
    if !touched
        .iter()
        .any(|d| Arc::ptr_eq(&d.journal, &device.journal))
    {
        touched.push(device);
    }
}

fn answer<T>(reply: Reply<T>, flushed: &Result<(), SubmitError>, result: Result<T, SubmitError>) {
    let result = match flushed {
        Ok(()) => result,
        Err(e) => Err(e.clone()),
    };
    let _ = reply.send(result);
}

/// Why a batch for `journal` is refused before it is run: its store cannot write (the kept
/// log frames are tried once more first, once per store and group). Refusing up front keeps
/// a long outage from piling up work that cannot be made durable.
fn refusal(
    journal: &Journal,
    seen: &mut HashMap<usize, Option<SubmitError>>,
) -> Option<SubmitError> {
    let store = Arc::as_ptr(journal.store()) as usize;
    seen.entry(store)
        .or_insert_with(|| match journal.store().health() {
            StoreHealth::Ok => None,
            StoreHealth::Failing(_) => match Journal::flush_all(&[journal]) {
                Ok(()) => {
                    tracing::info!(store = %journal.store().path().display(), "the journal can be written again");
                    None
                }
                Err(e) => Some(SubmitError::from(&e)),
            },
            StoreHealth::Broken(why) => Some(SubmitError::Unavailable(format!(
                "the journal store must be reopened: {why}"
            ))),
        })
        .clone()
}

/// Refused submissions, logged at most every [`COMPLAIN_EVERY`] with how many there were:
/// a producer resends while the disk is full, and each refusal is not worth a line.
#[derive(Default)]
struct Complaints {
    last: Option<Instant>,
    since: u64,
}

const COMPLAIN_EVERY: Duration = Duration::from_secs(10);

impl Complaints {
    fn note(&mut self, e: &SubmitError) {
        self.since += 1;
        if self.last.is_none_or(|t| t.elapsed() >= COMPLAIN_EVERY) {
            tracing::error!(refused = self.since, error = %e, "batches not acknowledged (producers send them again)");
            self.last = Some(Instant::now());
            self.since = 0;
        }
    }
}
