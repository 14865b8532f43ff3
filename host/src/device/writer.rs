//! The single writer: runs batches through the pipeline and journals events, decisions and
//! new states; one flush (fsync) per group of batches, then every producer in the group gets
//! its answer. An answer means durable. One writer can serve many devices, each with its
//! own journal (a simulator, an edge node): their journals share the flush when they share a
//! [`fleet_journal::JournalStore`].

use std::sync::Arc;

use fleet_journal::Journal;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::event::Event;

pub use super::runtime::{Accepted, DeviceRuntime};

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
