//! Group commit: one thread takes every persist request waiting, ingests them, makes them
//! durable with one flush, and only then answers each. The queue is bounded, so a slow disk
//! slows the connections, which slows the devices (QUIC flow control): nothing is dropped.

use std::sync::Arc;
use std::time::Instant;

use fleet_proto::{Entry, Seq};
use tokio::sync::{mpsc, oneshot};

use crate::history::{History, IngestOutcome};
use crate::metrics::Metrics;

/// Most requests folded into one commit.
const MAX_GROUP: usize = 512;

struct Job {
    device: Arc<str>,
    through: Seq,
    entries: Vec<Entry>,
    done: oneshot::Sender<Result<IngestOutcome, String>>,
}

#[derive(Clone)]
pub struct CommitterHandle(mpsc::Sender<Job>);

impl CommitterHandle {
    /// Queues a persist; the receiver resolves once it is durable (or failed).
    pub async fn persist(
        &self,
        device: Arc<str>,
        through: Seq,
        entries: Vec<Entry>,
    ) -> oneshot::Receiver<Result<IngestOutcome, String>> {
        let (done, rx) = oneshot::channel();
        let job = Job {
            device,
            through,
            entries,
            done,
        };
        if let Err(mpsc::error::SendError(job)) = self.0.send(job).await {
            let _ = job.done.send(Err("the committer has stopped".into()));
        }
        rx
    }
}

pub fn spawn(history: Arc<dyn History>, metrics: Arc<Metrics>) -> CommitterHandle {
    let (tx, mut rx) = mpsc::channel::<Job>(1024);
    std::thread::Builder::new()
        .name("committer".into())
        .spawn(move || {
            while let Some(first) = rx.blocking_recv() {
                let mut jobs = vec![first];
                while jobs.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(job) => jobs.push(job),
                        Err(_) => break,
                    }
                }
                let started = Instant::now();
                let now = crate::now_ms();
                let results: Vec<_> = jobs
                    .iter()
                    .map(|j| history.ingest(&j.device, j.through, &j.entries, now))
                    .collect();
                let flushed = history.flush();
                Metrics::add(&metrics.commits, 1);
                Metrics::add(&metrics.commit_micros, started.elapsed().as_micros() as u64);
                for (job, result) in jobs.into_iter().zip(results) {
                    let result = match (flushed.as_ref().map_err(ToString::to_string), result.map_err(|e| e.to_string())) {
                        (Ok(()), Ok(outcome)) => {
                            Metrics::add(&metrics.events, outcome.events);
                            Metrics::add(&metrics.decisions, outcome.decisions);
                            Metrics::add(&metrics.duplicates, outcome.duplicates);
                            Metrics::add(&metrics.batches, 1);
                            Ok(outcome)
                        }
                        (Err(e), _) | (_, Err(e)) => {
                            Metrics::add(&metrics.storage_errors, 1);
                            tracing::error!(device = %job.device, through = job.through, error = %e, "batch not persisted");
                            Err(e)
                        }
                    };
                    let _ = job.done.send(result);
                }
            }
        })
        .expect("spawning the committer thread");
    CommitterHandle(tx)
}
