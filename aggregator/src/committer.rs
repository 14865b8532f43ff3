//! Group commit: one thread takes every persist request waiting, ingests them into the
//! history (in memory), appends them to the [ingest log](crate::ingest_log) and makes them
//! durable with one `fdatasync`, and only then answers each. A checkpointer thread flushes the
//! history as often as [`CHECKPOINTS`] says and then removes the log segments that flush
//! covered. The queue is bounded, so a slow disk slows the connections, which slows the
//! devices (QUIC flow control): nothing is dropped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_proto::{Entry, Seq};
use tokio::sync::{mpsc, oneshot};

use fleet_wal::{CheckpointPolicy, Checkpointer};

use crate::history::{History, IngestOutcome};
use crate::ingest_log::IngestLog;
use crate::metrics::Metrics;

/// Most requests folded into one commit.
const MAX_GROUP: usize = 512;
/// How often the history is flushed and the log behind it trimmed: after 30 s or 32 MiB of
/// log, which bounds the replay after a crash (see [`CheckpointPolicy`] for why so long).
pub const CHECKPOINTS: CheckpointPolicy = CheckpointPolicy {
    every: Duration::from_secs(30),
    max_segment_bytes: 32 << 20,
};

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

/// Starts the committer and its checkpointer. `log` must have been opened (and replayed into
/// `history`) by the caller.
pub fn spawn(
    history: Arc<dyn History>,
    log: IngestLog,
    checkpoints: CheckpointPolicy,
    metrics: Arc<Metrics>,
) -> CommitterHandle {
    let (tx, rx) = mpsc::channel::<Job>(1024);
    std::thread::Builder::new()
        .name("committer".into())
        .spawn(move || commit_loop(rx, history, log, checkpoints, metrics))
        .expect("spawning the committer thread");
    CommitterHandle(tx)
}

fn commit_loop(
    mut rx: mpsc::Receiver<Job>,
    history: Arc<dyn History>,
    mut log: IngestLog,
    checkpoints: CheckpointPolicy,
    metrics: Arc<Metrics>,
) {
    let mut checkpointer = {
        let (history, metrics) = (history.clone(), metrics.clone());
        // Everything in the closed segments was ingested before they were closed, so a
        // flush started now covers it.
        Checkpointer::spawn(
            "checkpointer",
            log.dir().to_path_buf(),
            checkpoints,
            move || history.flush().map_err(|e| e.to_string()),
            move |done| match done {
                Ok(took) => {
                    Metrics::add(&metrics.checkpoints, 1);
                    Metrics::add(&metrics.checkpoint_micros, took.as_micros() as u64);
                }
                Err(e) => {
                    Metrics::add(&metrics.storage_errors, 1);
                    tracing::error!(error = %e, "checkpoint failed; the log keeps its segments");
                }
            },
        )
    };
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
            .map(|j| {
                let outcome = history.ingest(&j.device, j.through, &j.entries, now)?;
                // The whole batch, duplicates too: a resend after a failed sync is what makes
                // its entries durable.
                log.append(&j.device, j.through, now, &j.entries);
                Ok(outcome)
            })
            .collect();
        let synced = log.sync();
        Metrics::add(&metrics.commits, 1);
        Metrics::add(&metrics.commit_micros, started.elapsed().as_micros() as u64);
        let log_failed = synced.is_err();
        for (job, result) in jobs.into_iter().zip(results) {
            let result = match (
                synced.as_ref().map_err(ToString::to_string),
                result.map_err(|e: crate::history::HistoryError| e.to_string()),
            ) {
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
        if let Err(e) = checkpointer.after_sync(&mut log, log_failed) {
            Metrics::add(&metrics.storage_errors, 1);
            tracing::error!(error = %e, "cannot start a new ingest log segment");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::SledHistory;
    use fleet_proto::record::{Record, StateRecord};
    use std::sync::atomic::Ordering;

    fn entries(from: Seq, through: Seq) -> Vec<Entry> {
        (from..=through)
            .map(|seq| Entry {
                seq,
                record: Record::State(StateRecord {
                    key: format!("T{seq}"),
                    module: "features@1".into(),
                    bytes: vec![1],
                }),
            })
            .collect()
    }

    #[test]
    fn a_checkpoint_flushes_history_and_trims_the_log_behind_it() {
        let dir = tempfile::tempdir().unwrap();
        let history: Arc<dyn History> =
            Arc::new(SledHistory::open(&dir.path().join("history")).unwrap());
        let log_dir = dir.path().join("log");
        let (log, _) = IngestLog::recover(&log_dir, |_| unreachable!(), || Ok(())).unwrap();
        let metrics = Arc::new(Metrics::default());
        let every = Duration::from_millis(200);
        let policy = CheckpointPolicy {
            every,
            max_segment_bytes: u64::MAX,
        };
        let committer = spawn(history.clone(), log, policy, metrics.clone());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let persist = |from, through| {
            rt.block_on(async {
                committer
                    .persist("d1".into(), through, entries(from, through))
                    .await
                    .await
                    .unwrap()
                    .unwrap()
            })
        };
        assert_eq!(persist(1, 3).stored, 3);
        assert_eq!(metrics.checkpoints.load(Ordering::Relaxed), 0);
        std::thread::sleep(every);
        // The first commit after the interval closes the segment and starts a checkpoint.
        assert_eq!(persist(4, 5).stored, 2);
        let deadline = Instant::now() + Duration::from_secs(10);
        while metrics.checkpoints.load(Ordering::Relaxed) == 0 {
            assert!(Instant::now() < deadline, "no checkpoint");
            std::thread::sleep(Duration::from_millis(10));
        }
        let left: Vec<_> = std::fs::read_dir(&log_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(
            left,
            ["segment-0000000000000001"],
            "only the open segment stays"
        );
        assert_eq!(history.cursor("d1").unwrap(), 5);
    }
}
