//! [`SegmentLog`]: files `segment-{n:016x}` in one directory, each a run of frames
//! `length (u32 LE) | crc32 of the payload (u32 LE) | payload`. Only the newest segment can
//! end in a torn frame (older ones were synced before the next was created), and nothing in
//! a torn frame was acknowledged: replay of a segment stops at its first frame that is not
//! whole and intact.
//!
//! A failed write or sync (a full disk, say) loses nothing and tears nothing: the frames it
//! was writing stay pending, and the next sync first cuts the segment back to what was last
//! synced (or, if it cannot, moves to a new segment) and writes them again, so no frame that
//! a later sync makes durable ever sits behind a torn one. Segments can be preallocated
//! ([`SegmentLog::preallocate`]), so appends do not compete for disk space with the store
//! flushing behind the log.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use thiserror::Error;

const PREFIX: &str = "segment-";
/// Largest frame accepted on replay (a commit is far smaller; this bounds a corrupt length).
const MAX_FRAME: usize = 256 << 20;
const HEADER: usize = 8;

#[derive(Debug, Error)]
pub enum LogError {
    #[error("write-ahead log {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("write-ahead log {segment}: replaying a frame: {message}")]
    Replay { segment: PathBuf, message: String },
    #[error("write-ahead log {dir}: making the replayed frames durable in the store: {message}")]
    Store { dir: PathBuf, message: String },
}

/// The open log: appends go to the newest segment.
pub struct SegmentLog {
    dir: PathBuf,
    segment: u64,
    file: File,
    /// Frames appended and not yet made durable (kept across a failed sync).
    pending: Vec<u8>,
    /// Bytes of the current segment known to be on disk.
    segment_bytes: u64,
    /// A write or sync failed since the last success: the segment may hold a torn tail past
    /// `segment_bytes`, to be cut off before anything else is written.
    torn: bool,
    /// Bytes to reserve for each new segment (0: none).
    preallocate: u64,
}

impl SegmentLog {
    /// Opens the log in `dir` after a stop or a crash, in the only safe order: the payload of
    /// every intact frame, oldest first, to `replay`; then `make_durable` (the store's flush);
    /// only then are the replayed segments removed. Appends go to a new segment. Returns the
    /// log and the number of frames replayed.
    pub fn recover(
        dir: &Path,
        mut replay: impl FnMut(&[u8]) -> Result<(), String>,
        make_durable: impl FnOnce() -> Result<(), String>,
    ) -> Result<(Self, u64), LogError> {
        let mut frames = 0;
        let (log, last) = Self::open(dir, |payload| {
            frames += 1;
            replay(payload)
        })?;
        if let Some(last) = last {
            make_durable().map_err(|message| LogError::Store {
                dir: dir.to_path_buf(),
                message,
            })?;
            remove_through(dir, last)?;
        }
        Ok((log, frames))
    }

    /// Opens the log in `dir`, first passing the payload of every intact frame, oldest first,
    /// to `replay`; returns the last segment replayed, which is left on disk.
    fn open(
        dir: &Path,
        mut replay: impl FnMut(&[u8]) -> Result<(), String>,
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
            let (frames, end) = intact_frames(&bytes);
            if end < bytes.len() {
                tracing::warn!(segment = %path.display(), at = end, of = bytes.len(), "log segment ends in a torn or corrupt frame; replaying what precedes it");
            }
            for payload in frames {
                replay(payload).map_err(|message| LogError::Replay {
                    segment: path.clone(),
                    message,
                })?;
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
            torn: false,
            preallocate: 0,
        })
    }

    /// Reserves `bytes` of disk for the current segment and each new one (without changing
    /// their length), so appends up to that size need no new space. Where the filesystem
    /// cannot, or the disk is already too full, appends simply allocate as they go.
    pub fn preallocate(&mut self, bytes: u64) {
        self.preallocate = bytes;
        self.reserve();
    }

    fn reserve(&self) {
        if self.preallocate == 0 {
            return;
        }
        if let Err(e) = rustix::fs::fallocate(
            &self.file,
            rustix::fs::FallocateFlags::KEEP_SIZE,
            0,
            self.preallocate,
        ) {
            tracing::debug!(segment = self.segment, error = %e, "cannot preallocate a log segment");
        }
    }

    /// Adds a frame to the next [`SegmentLog::sync`]; `encode` writes its payload.
    pub fn append_with(&mut self, encode: impl FnOnce(&mut Vec<u8>)) {
        let start = self.pending.len();
        self.pending.extend_from_slice(&[0; HEADER]);
        encode(&mut self.pending);
        let payload = &self.pending[start + HEADER..];
        let (len, crc) = (payload.len() as u32, crc32fast::hash(payload));
        self.pending[start..start + 4].copy_from_slice(&len.to_le_bytes());
        self.pending[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
    }

    /// Whether anything was appended since the last sync.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Writes what was appended and waits until it is on disk. After an error nothing is
    /// lost: the frames stay pending and the next call writes them again, behind whatever
    /// this call may have left half-written.
    pub fn sync(&mut self) -> Result<(), LogError> {
        if self.torn {
            self.cut_torn_tail()?;
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        let io = |source| LogError::Io {
            path: segment_path(&self.dir, self.segment),
            source,
        };
        let written = self
            .file
            .write_all(&self.pending)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            self.torn = true;
            return Err(io(e));
        }
        self.segment_bytes += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    /// Whether the last write or sync failed (its frames are still pending).
    pub fn failing(&self) -> bool {
        self.torn
    }

    /// Cuts the segment back to what was synced; where that fails, moves to a new segment
    /// (the old one ends at its last synced frame or a torn one, which replay stops at).
    fn cut_torn_tail(&mut self) -> Result<(), LogError> {
        let cut = self
            .file
            .set_len(self.segment_bytes)
            .and_then(|()| self.file.sync_all());
        match cut {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(segment = self.segment, error = %e, "cannot cut a torn log tail; moving to a new segment");
                let mut next = Self::create(&self.dir, self.segment + 1)?;
                next.pending = std::mem::take(&mut self.pending);
                next.preallocate = self.preallocate;
                *self = next;
                self.reserve();
            }
        }
        self.torn = false;
        Ok(())
    }

    /// Bytes in the current segment.
    pub fn segment_bytes(&self) -> u64 {
        self.segment_bytes
    }

    /// Closes the current segment (after a successful [`SegmentLog::sync`]) and starts the
    /// next; returns the closed segment's number. Anything still pending moves with it.
    pub fn roll(&mut self) -> Result<u64, LogError> {
        if self.torn {
            self.cut_torn_tail()?;
        }
        let closed = self.segment;
        let mut next = Self::create(&self.dir, closed + 1)?;
        next.pending = std::mem::take(&mut self.pending);
        next.preallocate = self.preallocate;
        // Give back what the closed segment reserved and did not use.
        let _ = self.file.set_len(self.segment_bytes);
        *self = next;
        self.reserve();
        Ok(closed)
    }

    /// Where the segments live (for a [`Checkpointer`](crate::Checkpointer)).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Removes the segments numbered `last` and below: call only once the store holds all of
/// them durably.
pub(crate) fn remove_through(dir: &Path, last: u64) -> Result<(), LogError> {
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

/// The payloads of the whole, intact frames at the start of `bytes`, and where they end.
fn intact_frames(bytes: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut frames = Vec::new();
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + HEADER) {
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        let Some(payload) = bytes.get(at + HEADER..).and_then(|rest| rest.get(..len)) else {
            break;
        };
        if len > MAX_FRAME || crc32fast::hash(payload) != crc {
            break;
        }
        frames.push(payload);
        at += HEADER + len;
    }
    (frames, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replayed(dir: &Path) -> (Vec<Vec<u8>>, Option<u64>) {
        let mut seen = Vec::new();
        let (_, last) = SegmentLog::open(dir, |p| {
            seen.push(p.to_vec());
            Ok(())
        })
        .unwrap();
        (seen, last)
    }

    fn append(log: &mut SegmentLog, payload: &[u8]) {
        log.append_with(|buf| buf.extend_from_slice(payload));
    }

    #[test]
    fn synced_frames_come_back_in_order_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, last) = SegmentLog::open(dir.path(), |_| unreachable!()).unwrap();
        assert_eq!(last, None);
        append(&mut log, b"one");
        append(&mut log, b"");
        assert!(log.has_pending());
        log.sync().unwrap();
        assert!(!log.has_pending());
        assert_eq!(log.segment_bytes(), 2 * 8 + 3);
        assert_eq!(log.roll().unwrap(), 0);
        append(&mut log, b"three");
        log.sync().unwrap();
        // Appended but never synced: not on disk, not replayed.
        append(&mut log, b"lost");
        drop(log);

        let (seen, last) = replayed(dir.path());
        assert_eq!(last, Some(1));
        assert_eq!(seen, [&b"one"[..], b"", b"three"]);
        // Reopening started a new segment after the replayed ones; removing them leaves it.
        remove_through(dir.path(), 1).unwrap();
        assert_eq!(segments(dir.path()).unwrap(), [2]);
    }

    #[test]
    fn a_torn_or_corrupt_tail_ends_the_replay_of_its_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), |_| unreachable!()).unwrap();
        append(&mut log, b"first frame");
        append(&mut log, b"second frame");
        log.sync().unwrap();
        drop(log);
        let path = segment_path(dir.path(), 0);
        let whole = fs::read(&path).unwrap();
        let first_frame = HEADER + b"first frame".len();
        // Every cut inside the second frame, and a flipped bit in it, keep the first only.
        for cut in first_frame..whole.len() {
            fs::write(&path, &whole[..cut]).unwrap();
            let (seen, _) = replayed(dir.path());
            assert_eq!(seen, [b"first frame"], "cut at {cut}");
            remove_through(dir.path(), u64::MAX).unwrap();
        }
        let mut flipped = whole.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        fs::write(&path, &flipped).unwrap();
        let (seen, _) = replayed(dir.path());
        assert_eq!(seen, [b"first frame"]);
    }

    #[test]
    fn a_failed_write_keeps_its_frames_and_the_next_sync_writes_them_after_a_cut_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), |_| unreachable!()).unwrap();
        append(&mut log, b"acknowledged");
        log.sync().unwrap();
        // What a write cut short by a full disk leaves: part of the pending bytes on disk,
        // the sync reported failed.
        append(&mut log, b"refused at first");
        let half = log.pending.len() / 2;
        log.file.write_all(&log.pending[..half]).unwrap();
        log.torn = true;
        assert!(log.failing());
        // Space comes back: the next sync writes the kept frames and the new one.
        append(&mut log, b"later");
        log.sync().unwrap();
        assert!(!log.failing());
        drop(log);
        let (seen, _) = replayed(dir.path());
        assert_eq!(seen, [&b"acknowledged"[..], b"refused at first", b"later"]);
    }

    #[test]
    fn a_segment_can_be_preallocated_without_changing_what_replay_reads() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), |_| unreachable!()).unwrap();
        log.preallocate(1 << 20);
        append(&mut log, b"one");
        log.sync().unwrap();
        log.roll().unwrap();
        append(&mut log, b"two");
        log.sync().unwrap();
        let len = fs::metadata(segment_path(dir.path(), 1)).unwrap().len();
        assert_eq!(
            len,
            (HEADER + 3) as u64,
            "the reservation is not part of the file"
        );
        drop(log);
        assert_eq!(replayed(dir.path()).0, [b"one", b"two"]);
    }

    #[test]
    fn recovery_removes_the_replayed_segments_only_once_the_store_made_them_durable() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), |_| unreachable!()).unwrap();
        append(&mut log, b"a");
        append(&mut log, b"b");
        log.sync().unwrap();
        drop(log);
        let err = SegmentLog::recover(dir.path(), |_| Ok(()), || Err("disk full".into()))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("durable") && err.contains("disk full"),
            "{err}"
        );
        assert_eq!(
            segments(dir.path()).unwrap(),
            [0, 1],
            "kept for the next try"
        );
        let mut seen = Vec::new();
        let (_, frames) = SegmentLog::recover(
            dir.path(),
            |p| {
                seen.push(p.to_vec());
                Ok(())
            },
            || Ok(()),
        )
        .unwrap();
        assert_eq!((frames, seen), (2, vec![b"a".to_vec(), b"b".to_vec()]));
        assert_eq!(
            segments(dir.path()).unwrap(),
            [2],
            "only the new segment stays"
        );
    }

    #[test]
    fn a_replay_failure_is_an_error_naming_the_segment_and_the_cause() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), |_| unreachable!()).unwrap();
        append(&mut log, b"x");
        log.sync().unwrap();
        drop(log);
        let err = SegmentLog::open(dir.path(), |_| Err("disk full".into()))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("segment-0000000000000000") && err.contains("disk full"));
    }
}
