//! The ingest log: a write-ahead log of the batches the committer accepts. A group is
//! acknowledged once its batches are appended here and made durable with one `fdatasync`;
//! the history indexes them in memory at once and is flushed in the background (see
//! [`crate::committer`]). After a crash, [`IngestLog::open`] replays every segment still on
//! disk into the history: ingest is idempotent per (device, sequence), so replaying what the
//! history already holds changes nothing.
//!
//! Why a log in front of sled: a sled flush re-serializes and compresses every leaf a group
//! dirtied (about seven per event in history), 5-100 ms per group on this kind of machine,
//! while an append and an `fdatasync` take well under a millisecond, and a flush once a
//! second serializes each leaf once for all the groups that dirtied it.
//!
//! Layout: files `segment-{n:016x}` in one directory, each a run of frames
//! `length (u32 LE) | crc32 of the payload (u32 LE) | payload (postcard)`. A segment is
//! removed only after a history flush that covers all of it. Only the newest segment can end
//! in a torn frame (older ones were synced before the next was created), and nothing in a
//! torn frame was acknowledged: replay stops there.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use fleet_proto::{Entry, Seq};
use serde::{Deserialize, Serialize};
use thiserror::Error;

const PREFIX: &str = "segment-";
/// Largest frame accepted on replay (a batch is far smaller; this bounds a corrupt length).
const MAX_FRAME: usize = 256 << 20;

#[derive(Debug, Error)]
pub enum LogError {
    #[error("ingest log {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("ingest log: replaying a batch of device {device}: {message}")]
    Replay { device: String, message: String },
}

/// One accepted batch, as logged.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct LoggedBatch {
    pub device: String,
    pub through: Seq,
    /// Arrival time, so that a replay stores what the first ingest stored.
    pub now_ms: i64,
    pub entries: Vec<Entry>,
}

/// The same, borrowed, for appending without copying (same encoding).
#[derive(Serialize)]
struct LoggedBatchRef<'a> {
    device: &'a str,
    through: Seq,
    now_ms: i64,
    entries: &'a [Entry],
}

/// The open log: appends go to the newest segment.
pub struct IngestLog {
    dir: PathBuf,
    segment: u64,
    file: File,
    /// Frames appended since the last [`IngestLog::sync`].
    pending: Vec<u8>,
    segment_bytes: u64,
}

impl IngestLog {
    /// Opens the log in `dir`, first passing every logged batch, oldest first, to `replay`.
    /// The caller makes what it replayed durable and then calls [`IngestLog::remove_through`]
    /// with the returned segment number; appends go to a new segment after it.
    pub fn open(
        dir: &Path,
        mut replay: impl FnMut(LoggedBatch) -> Result<(), String>,
    ) -> Result<(Self, Option<u64>), LogError> {
        let io = |source| LogError::Io {
            path: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir).map_err(io)?;
        let segments = segments(dir).map_err(io)?;
        for &n in &segments {
            let path = segment_path(dir, n);
            let bytes = fs::read(&path).map_err(|source| LogError::Io {
                path: path.clone(),
                source,
            })?;
            let (batches, end) = decode_frames(&bytes);
            if end < bytes.len() {
                tracing::warn!(segment = %path.display(), at = end, of = bytes.len(), "ingest log segment ends in a torn or corrupt frame; replaying what precedes it");
            }
            for batch in batches {
                let device = batch.device.clone();
                replay(batch).map_err(|message| LogError::Replay { device, message })?;
            }
        }
        let last = segments.last().copied();
        let log = Self::create(dir, last.map_or(0, |n| n + 1))?;
        Ok((log, last))
    }

    fn create(dir: &Path, segment: u64) -> Result<Self, LogError> {
        let path = segment_path(dir, segment);
        let io = |source| LogError::Io {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        // The new name must survive a power loss before anything in it is acknowledged.
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            segment,
            file,
            pending: Vec::new(),
            segment_bytes: 0,
        })
    }

    /// Adds a batch to the next [`IngestLog::sync`].
    pub fn append(&mut self, device: &str, through: Seq, now_ms: i64, entries: &[Entry]) {
        let start = self.pending.len();
        self.pending.extend_from_slice(&[0; 8]);
        let batch = LoggedBatchRef {
            device,
            through,
            now_ms,
            entries,
        };
        // Writing into a Vec cannot fail.
        postcard::to_io(&batch, &mut self.pending).expect("encoding into memory");
        let payload = &self.pending[start + 8..];
        let (len, crc) = (payload.len() as u32, crc32fast::hash(payload));
        self.pending[start..start + 4].copy_from_slice(&len.to_le_bytes());
        self.pending[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    /// Writes what was appended and waits until it is on disk. After an error the segment
    /// cannot be trusted to take more (part of a write may have landed): [`IngestLog::roll`].
    pub fn sync(&mut self) -> Result<(), LogError> {
        let io = |source| LogError::Io {
            path: segment_path(&self.dir, self.segment),
            source,
        };
        let written = self.file.write_all(&self.pending);
        self.segment_bytes += self.pending.len() as u64;
        self.pending.clear();
        written.map_err(io)?;
        self.file.sync_data().map_err(io)
    }

    /// Bytes in the current segment.
    pub fn segment_bytes(&self) -> u64 {
        self.segment_bytes
    }

    /// Closes the current segment (after a [`IngestLog::sync`]) and starts the next; returns
    /// the closed segment's number.
    pub fn roll(&mut self) -> Result<u64, LogError> {
        let closed = self.segment;
        *self = Self::create(&self.dir, closed + 1)?;
        Ok(closed)
    }

    /// Where the segments live (for [`remove_through`]).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Removes the segments numbered `last` and below: call only once the history holds all of
/// them durably.
pub fn remove_through(dir: &Path, last: u64) -> Result<(), LogError> {
    let io = |source| LogError::Io {
        path: dir.to_path_buf(),
        source,
    };
    for n in segments(dir).map_err(io)? {
        if n <= last {
            let path = segment_path(dir, n);
            fs::remove_file(&path).map_err(|source| LogError::Io { path, source })?;
        }
    }
    Ok(())
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{PREFIX}{n:016x}"))
}

/// Segment numbers in `dir`, ascending.
fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        if let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        {
            found.push(n);
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// The batches of whole, intact frames at the start of `bytes`, and where they end.
fn decode_frames(bytes: &[u8]) -> (Vec<LoggedBatch>, usize) {
    let mut batches = Vec::new();
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + 8) {
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        let Some(payload) = bytes.get(at + 8..).and_then(|rest| rest.get(..len)) else {
            break;
        };
        if len > MAX_FRAME || crc32fast::hash(payload) != crc {
            break;
        }
        let Ok(batch) = postcard::from_bytes::<LoggedBatch>(payload) else {
            break;
        };
        batches.push(batch);
        at += 8 + len;
    }
    (batches, at)
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

    fn replayed(dir: &Path) -> (Vec<LoggedBatch>, Option<u64>) {
        let mut seen = Vec::new();
        let (_, last) = IngestLog::open(dir, |b| {
            seen.push(b);
            Ok(())
        })
        .unwrap();
        (seen, last)
    }

    #[test]
    fn synced_batches_come_back_in_order_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, last) = IngestLog::open(dir.path(), |_| unreachable!()).unwrap();
        assert_eq!(last, None);
        log.append("d1", 3, 10, &entries(1, 3));
        log.append("d2", 1, 11, &entries(1, 1));
        log.sync().unwrap();
        assert_eq!(log.roll().unwrap(), 0);
        log.append("d1", 5, 12, &entries(4, 2));
        log.sync().unwrap();
        drop(log);

        let (seen, last) = replayed(dir.path());
        assert_eq!(last, Some(1));
        let summary: Vec<_> = seen
            .iter()
            .map(|b| (b.device.as_str(), b.through, b.now_ms, b.entries.len()))
            .collect();
        assert_eq!(
            summary,
            [("d1", 3, 10, 3), ("d2", 1, 11, 1), ("d1", 5, 12, 2)]
        );
        assert_eq!(seen[2].entries, entries(4, 2));
        // Reopening starts a new segment after the replayed ones; removing them leaves it.
        remove_through(dir.path(), 1).unwrap();
        assert_eq!(segments(dir.path()).unwrap(), [2]);
    }

    #[test]
    fn a_torn_or_corrupt_tail_ends_the_replay_of_its_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = IngestLog::open(dir.path(), |_| unreachable!()).unwrap();
        log.append("d1", 2, 10, &entries(1, 2));
        log.append("d1", 4, 10, &entries(3, 2));
        log.sync().unwrap();
        drop(log);
        let path = segment_path(dir.path(), 0);
        let whole = fs::read(&path).unwrap();
        let first_frame = 8 + u32::from_le_bytes(whole[..4].try_into().unwrap()) as usize;
        // Every cut inside the second frame, and a flipped bit in it, keep the first batch only.
        for cut in first_frame..whole.len() {
            fs::write(&path, &whole[..cut]).unwrap();
            let (seen, _) = replayed(dir.path());
            assert_eq!(seen.len(), 1, "cut at {cut}");
            remove_through(dir.path(), u64::MAX).unwrap();
        }
        let mut flipped = whole.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        fs::write(&path, &flipped).unwrap();
        let (seen, _) = replayed(dir.path());
        assert_eq!(seen.len(), 1);
    }

    #[test]
    fn a_replay_failure_is_an_error_naming_the_device() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = IngestLog::open(dir.path(), |_| unreachable!()).unwrap();
        log.append("d7", 1, 10, &entries(1, 1));
        log.sync().unwrap();
        drop(log);
        let err = IngestLog::open(dir.path(), |_| Err("disk full".into()))
            .err()
            .unwrap();
        assert!(err.to_string().contains("d7") && err.to_string().contains("disk full"));
    }
}
