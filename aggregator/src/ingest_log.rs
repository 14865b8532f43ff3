//! The ingest log: a [write-ahead log](fleet_wal) of the batches the committer accepts. A
//! group is acknowledged once its batches are appended here and made durable with one
//! `fdatasync`; the history indexes them in memory at once and is flushed in the background
//! (see [`crate::committer`]). After a crash, [`IngestLog::recover`] replays every segment
//! still on disk into the history: ingest is idempotent per (device, sequence), so replaying
//! what the history already holds changes nothing.
//!
//! Each frame's payload is one [`LoggedBatch`] in postcard.

use std::ops::{Deref, DerefMut};
use std::path::Path;

use fleet_proto::{Entry, JournalId, Seq};
use fleet_wal::{LogError, SegmentLog};
use serde::{Deserialize, Serialize};

use crate::history::Batch;

/// One accepted batch, as logged.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct LoggedBatch {
    pub device: String,
    pub journal: JournalId,
    pub through: Seq,
    pub journaled: Seq,
    /// Arrival time, so that a replay stores what the first ingest stored.
    pub now_ms: i64,
    pub entries: Vec<Entry>,
}

impl LoggedBatch {
    /// The batch as history ingests it.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            device: &self.device,
            journal: self.journal,
            through: self.through,
            journaled: self.journaled,
            entries: &self.entries,
            now_ms: self.now_ms,
        }
    }
}

/// The same, borrowed, for appending without copying (same encoding).
#[derive(Serialize)]
struct LoggedBatchRef<'a> {
    device: &'a str,
    journal: JournalId,
    through: Seq,
    journaled: Seq,
    now_ms: i64,
    entries: &'a [Entry],
}

/// The open log (its segments, syncing and rolling are [`SegmentLog`]'s).
pub struct IngestLog(SegmentLog);

impl IngestLog {
    /// Opens the log in `dir`, first passing every logged batch, oldest first, to `replay`,
    /// then `make_durable` (see [`SegmentLog::recover`]). Returns the log and the number of
    /// batches replayed.
    pub fn recover(
        dir: &Path,
        mut replay: impl FnMut(LoggedBatch) -> Result<(), String>,
        make_durable: impl FnOnce() -> Result<(), String>,
    ) -> Result<(Self, u64), LogError> {
        let (log, batches) = SegmentLog::recover(
            dir,
            |payload| {
                let batch: LoggedBatch = postcard::from_bytes(payload)
                    .map_err(|e| format!("an intact frame does not decode as a batch: {e}"))?;
                let device = batch.device.clone();
                replay(batch).map_err(|message| format!("a batch of device {device}: {message}"))
            },
            make_durable,
        )?;
        Ok((Self(log), batches))
    }

    /// Adds a batch to the next sync.
    pub fn append(&mut self, batch: &Batch<'_>) {
        let batch = LoggedBatchRef {
            device: batch.device,
            journal: batch.journal,
            through: batch.through,
            journaled: batch.journaled,
            now_ms: batch.now_ms,
            entries: batch.entries,
        };
        // Writing into a Vec cannot fail.
        self.0.append_with(|buf| {
            postcard::to_io(&batch, buf).expect("encoding into memory");
        });
    }
}

impl Deref for IngestLog {
    type Target = SegmentLog;
    fn deref(&self) -> &SegmentLog {
        &self.0
    }
}

impl DerefMut for IngestLog {
    fn deref_mut(&mut self) -> &mut SegmentLog {
        &mut self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_proto::record::{Record, StateRecord};

    fn entries(from: Seq, n: u64) -> Vec<Entry> {
        (from..from + n)
            .map(|seq| Entry {
                seq,
                record: Record::State(StateRecord {
                    key: format!("T{seq}"),
                    module: "features@1".into(),
                    bytes: seq.to_le_bytes().to_vec(),
                }),
            })
            .collect()
    }

    fn batch<'a>(device: &'a str, through: Seq, now_ms: i64, entries: &'a [Entry]) -> Batch<'a> {
        Batch {
            device,
            journal: 7,
            through,
            journaled: through,
            entries,
            now_ms,
        }
    }

    #[test]
    fn logged_batches_come_back_whole_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = IngestLog::recover(dir.path(), |_| unreachable!(), || Ok(())).unwrap();
        let (e1, e2) = (entries(1, 3), entries(1, 1));
        log.append(&batch("d1", 3, 10, &e1));
        log.append(&batch("d2", 1, 11, &e2));
        log.sync().unwrap();
        drop(log);
        let mut seen = Vec::new();
        let (_, batches) = IngestLog::recover(
            dir.path(),
            |b| {
                seen.push(b);
                Ok(())
            },
            || Ok(()),
        )
        .unwrap();
        assert_eq!(batches, 2);
        assert_eq!(
            seen,
            [
                LoggedBatch {
                    device: "d1".into(),
                    journal: 7,
                    through: 3,
                    journaled: 3,
                    now_ms: 10,
                    entries: entries(1, 3)
                },
                LoggedBatch {
                    device: "d2".into(),
                    journal: 7,
                    through: 1,
                    journaled: 1,
                    now_ms: 11,
                    entries: entries(1, 1)
                }
            ]
        );
    }

    #[test]
    fn a_replay_failure_is_an_error_naming_the_device() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = IngestLog::recover(dir.path(), |_| unreachable!(), || Ok(())).unwrap();
        let e = entries(1, 1);
        log.append(&batch("d7", 1, 10, &e));
        log.sync().unwrap();
        drop(log);
        let err = IngestLog::recover(dir.path(), |_| Err("disk full".into()), || Ok(()))
            .err()
            .unwrap();
        assert!(err.to_string().contains("d7") && err.to_string().contains("disk full"));
    }
}
