//! Group commit: one thread takes every request waiting, ingests the persists into the
//! history (in memory), appends them to the [ingest log](crate::ingest_log) and makes them
//! durable with one `fdatasync`, and only then answers each. A checkpointer thread flushes the
//! history as often as [`CHECKPOINTS`] says (when the disk has room for it) and then removes
//! the log segments that flush covered. The queue is bounded, so a slow disk slows the
//! connections, which slows the devices (QUIC flow control): nothing is dropped.
//!
//! The committer also opens journals for new connections, answering with what is *durable*:
//! after a failed sync the history holds more in memory than the log has on disk, and a
//! device told about that would drop from its journal what a crash could still lose. While
//! the log cannot be written (a full disk), persists are refused at once with
//! [`CommitError::Unavailable`] and each new group first tries the kept frames again: the
//! aggregator recovers by itself when space returns.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_proto::{Entry, JournalId, Seq};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use fleet_wal::{CheckpointPolicy, Checkpointer};

use crate::history::{Batch, History, HistoryError, IngestOutcome};
use crate::ingest_log::IngestLog;
use crate::live::{Derived, LiveFeed};
use crate::metrics::Metrics;
use crate::nearby::Nearby;

/// Most requests folded into one commit.
const MAX_GROUP: usize = 512;
/// How often the history is flushed and the log behind it trimmed: after 30 s or 32 MiB of
/// log, which bounds the replay after a crash (see [`CheckpointPolicy`] for why so long).
pub const CHECKPOINTS: CheckpointPolicy = CheckpointPolicy {
    every: Duration::from_secs(30),
    max_segment_bytes: 32 << 20,
};

/// Why a request was not done. Nothing of a refused persist is stored or acknowledged.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommitError {
    /// Storage cannot take writes now (a full disk, a history that must be reopened); the
    /// aggregator takes them again by itself once it can.
    #[error("storage unavailable, nothing stored; send it again later: {0}")]
    Unavailable(String),
    /// The device sent from a journal it has replaced.
    #[error("{0}")]
    StaleJournal(String),
    /// The history refused the request otherwise.
    #[error("history: {0}")]
    History(String),
    /// The committer thread has stopped.
    #[error("the committer has stopped")]
    Stopped,
}

impl From<HistoryError> for CommitError {
    fn from(e: HistoryError) -> Self {
        match e {
            HistoryError::StaleJournal { .. } => Self::StaleJournal(e.to_string()),
            e => Self::History(e.to_string()),
        }
    }
}

/// What the storage can do now, for health checks and the restart watch.
#[derive(Default)]
pub struct StorageHealth {
    log_failing: AtomicBool,
    broken: Mutex<Option<String>>,
}

impl StorageHealth {
    /// Why storage cannot take writes now, if it cannot.
    pub fn problem(&self) -> Option<String> {
        if let Some(why) = self.broken() {
            return Some(format!("the history must be reopened: {why}"));
        }
        self.log_failing
            .load(Ordering::Relaxed)
            .then(|| "the ingest log cannot be written (is the disk full?)".to_string())
    }

    /// Set when a checkpoint's flush failed: sled then refuses reads and never completes
    /// another flush, so only a new process can open the history again (the log holds
    /// everything acknowledged).
    pub fn broken(&self) -> Option<String> {
        self.broken
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

type Done<T> = oneshot::Sender<Result<T, CommitError>>;

enum Job {
    Persist {
        device: Arc<str>,
        journal: JournalId,
        through: Seq,
        journaled: Seq,
        entries: Vec<Entry>,
        done: Done<IngestOutcome>,
    },
    Open {
        device: Arc<str>,
        journal: JournalId,
        done: Done<Seq>,
    },
}

#[derive(Clone)]
pub struct CommitterHandle(mpsc::Sender<Job>);

impl CommitterHandle {
    /// Queues a persist of a journal's entries through `through`; the receiver resolves once
    /// they are durable (or refused).
    pub async fn persist(
        &self,
        device: Arc<str>,
        journal: JournalId,
        through: Seq,
        journaled: Seq,
        entries: Vec<Entry>,
    ) -> oneshot::Receiver<Result<IngestOutcome, CommitError>> {
        let (done, rx) = oneshot::channel();
        let job = Job::Persist {
            device,
            journal,
            through,
            journaled,
            entries,
            done,
        };
        if let Err(mpsc::error::SendError(Job::Persist { done, .. })) = self.0.send(job).await {
            let _ = done.send(Err(CommitError::Stopped));
        }
        rx
    }

    /// Opens `journal` of `device` for a new connection: what history durably holds of it,
    /// in the journal's own numbering.
    pub async fn open(&self, device: Arc<str>, journal: JournalId) -> Result<Seq, CommitError> {
        let (done, rx) = oneshot::channel();
        let job = Job::Open {
            device,
            journal,
            done,
        };
        self.0.send(job).await.map_err(|_| CommitError::Stopped)?;
        rx.await.unwrap_or(Err(CommitError::Stopped))
    }
}

/// Starts the committer and its checkpointer. `log` must have been opened (and replayed into
/// `history`) by the caller.
pub fn spawn(
    history: Arc<dyn History>,
    mut log: IngestLog,
    checkpoints: CheckpointPolicy,
    metrics: Arc<Metrics>,
    live: Arc<LiveFeed>,
    nearby: Arc<Nearby>,
) -> (CommitterHandle, Arc<StorageHealth>) {
    let (tx, rx) = mpsc::channel::<Job>(1024);
    let health = Arc::new(StorageHealth::default());
    // Appends to a reserved segment do not compete with a checkpoint for the disk.
    log.preallocate(checkpoints.max_segment_bytes);
    let committer = Committer {
        checkpointer: checkpointer(&history, &log, checkpoints, &metrics, &health),
        history,
        log,
        metrics,
        live,
        nearby,
        health: health.clone(),
        durable: HashMap::new(),
        unsynced: HashSet::new(),
    };
    std::thread::Builder::new()
        .name("committer".into())
        .spawn(move || committer.run(rx))
        .expect("spawning the committer thread");
    (CommitterHandle(tx), health)
}

fn checkpointer(
    history: &Arc<dyn History>,
    log: &IngestLog,
    checkpoints: CheckpointPolicy,
    metrics: &Arc<Metrics>,
    health: &Arc<StorageHealth>,
) -> Checkpointer {
    let (history, metrics, health) = (history.clone(), metrics.clone(), health.clone());
    // Everything in the closed segments was ingested before they were closed, so a flush
    // started now covers it.
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
                tracing::error!(error = %e, "checkpoint failed; the log keeps everything, and the history must be reopened");
                *health.broken.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            }
        },
    )
}

struct Committer {
    history: Arc<dyn History>,
    log: IngestLog,
    checkpointer: Checkpointer,
    metrics: Arc<Metrics>,
    /// Where what a group made durable goes live.
    live: Arc<LiveFeed>,
    /// The couriers' latest positions, moved by what a group made durable.
    nearby: Arc<Nearby>,
    health: Arc<StorageHealth>,
    /// Per device touched since start: its cursor (history's numbering) as of the last
    /// successful sync. Devices not here have never been ingested by this process, so
    /// history's cursor is durable for them.
    durable: HashMap<Arc<str>, Seq>,
    /// Devices ingested since the last successful sync.
    unsynced: HashSet<Arc<str>>,
}

/// A persist that went into history and awaits the sync.
struct Ingested {
    device: Arc<str>,
    through: Seq,
    entries: Vec<Entry>,
    result: Result<IngestOutcome, CommitError>,
    done: Done<IngestOutcome>,
}

impl Committer {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(first) = rx.blocking_recv() {
            let mut jobs = vec![first];
            while jobs.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            self.group(jobs);
        }
    }

    fn group(&mut self, jobs: Vec<Job>) {
        let started = Instant::now();
        // Frames kept from a failed sync go first; while they cannot, nothing new goes in.
        let refused = self.refusal();
        let now = crate::now_ms();
        let mut ingested = Vec::new();
        for job in jobs {
            match job {
                Job::Open {
                    device,
                    journal,
                    done,
                } => {
                    let _ = done.send(self.open(&device, journal, now));
                }
                Job::Persist { done, .. } if refused.is_some() => {
                    let _ = done.send(Err(refused.clone().expect("checked")));
                }
                Job::Persist {
                    device,
                    journal,
                    through,
                    journaled,
                    entries,
                    done,
                } => {
                    let batch = Batch {
                        device: &device,
                        journal,
                        through,
                        journaled,
                        entries: &entries,
                        now_ms: now,
                    };
                    let result = self.ingest(&batch);
                    ingested.push(Ingested {
                        device,
                        through,
                        entries,
                        result,
                        done,
                    });
                }
            }
        }
        if ingested.is_empty() {
            return;
        }
        let synced = self.sync();
        Metrics::add(&self.metrics.commits, 1);
        Metrics::add(
            &self.metrics.commit_micros,
            started.elapsed().as_micros() as u64,
        );
        let mut live = Derived::default();
        for i in ingested {
            let result = match (synced.clone(), i.result) {
                (Ok(()), Ok(mut outcome)) => {
                    // Durable now: what it changed goes live.
                    let steps = std::mem::take(&mut outcome.alert_steps);
                    if let Some(from) = outcome.fresh_from {
                        let fresh = i.entries.partition_point(|e| e.seq < from);
                        self.nearby.apply(&i.device, &i.entries[fresh..], &steps);
                        live.batch(&i.device, &i.entries[fresh..], steps);
                    }
                    Metrics::add(&self.metrics.events, outcome.events);
                    Metrics::add(&self.metrics.decisions, outcome.decisions);
                    Metrics::add(&self.metrics.duplicates, outcome.duplicates);
                    Metrics::add(&self.metrics.batches, 1);
                    Ok(outcome)
                }
                (Err(e), _) | (_, Err(e)) => {
                    Metrics::add(&self.metrics.storage_errors, 1);
                    tracing::warn!(device = %i.device, through = i.through, error = %e, "batch not persisted");
                    Err(e.clone())
                }
            };
            let _ = i.done.send(result);
        }
        self.live.publish(live);
    }

    /// Why persists are refused now: the history must be reopened, or the log still cannot
    /// take the frames a failed sync kept (tried again here).
    fn refusal(&mut self) -> Option<CommitError> {
        if let Some(why) = self.health.broken() {
            return Some(CommitError::Unavailable(format!(
                "the history must be reopened ({why}); the aggregator restarts itself once the disk has room"
            )));
        }
        if self.log.failing() {
            if let Err(e) = self.sync() {
                return Some(e);
            }
            tracing::info!("the ingest log can be written again");
        }
        None
    }

    fn open(
        &mut self,
        device: &Arc<str>,
        journal: JournalId,
        now: i64,
    ) -> Result<Seq, CommitError> {
        let view = self
            .history
            .open_journal(device, journal, now)
            .inspect_err(|e| {
                if matches!(e, HistoryError::StaleJournal { .. }) {
                    Metrics::add(&self.metrics.stale_journals, 1);
                }
            })?;
        if view.replaced.is_some() {
            Metrics::add(&self.metrics.journal_resets, 1);
        }
        let durable = match self.durable.get(device) {
            Some(&c) => c,
            None => self.history.cursor(device)?,
        };
        Ok(durable.saturating_sub(view.base).min(view.cursor))
    }

    fn ingest(&mut self, batch: &Batch<'_>) -> Result<IngestOutcome, CommitError> {
        if !self.durable.contains_key(batch.device) {
            let cursor = self.history.cursor(batch.device)?;
            self.durable.insert(batch.device.into(), cursor);
        }
        let outcome = self.history.ingest(batch).inspect_err(|e| {
            if matches!(e, HistoryError::StaleJournal { .. }) {
                Metrics::add(&self.metrics.stale_journals, 1);
            }
        })?;
        // The whole batch, duplicates too: a resend after a failed sync is what makes its
        // entries durable.
        self.log.append(batch);
        self.unsynced.insert(batch.device.into());
        Ok(outcome)
    }

    /// Makes everything logged durable; on success, what history holds of every device
    /// ingested since becomes its durable cursor.
    fn sync(&mut self) -> Result<(), CommitError> {
        let synced = self.log.sync();
        self.health
            .log_failing
            .store(synced.is_err(), Ordering::Relaxed);
        if let Err(e) = synced {
            return Err(CommitError::Unavailable(e.to_string()));
        }
        for device in std::mem::take(&mut self.unsynced) {
            match self.history.cursor(&device) {
                Ok(c) => {
                    self.durable.insert(device, c);
                }
                Err(e) => tracing::error!(%device, error = %e, "reading a cursor back"),
            }
        }
        if let Err(e) = self.checkpointer.after_sync(&mut self.log) {
            Metrics::add(&self.metrics.storage_errors, 1);
            tracing::error!(error = %e, "cannot start a new ingest log segment");
        }
        Ok(())
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
        let live = LiveFeed::new(crate::live::LiveConfig::default());
        let (committer, _) = spawn(
            history.clone(),
            log,
            policy,
            metrics.clone(),
            live,
            Arc::default(),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let persist = |from, through| {
            rt.block_on(async {
                committer
                    .persist("d1".into(), 7, through, through, entries(from, through))
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
