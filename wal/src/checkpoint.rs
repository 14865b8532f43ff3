//! [`Checkpointer`]: flushes the store behind a [`SegmentLog`] on its own thread, then removes
//! the segments that flush covered.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::segments::{LogError, SegmentLog, remove_through};

/// When a checkpoint is due: whichever comes first.
///
/// A checkpoint serializes every leaf dirtied since the last one, once, however often it was
/// written in between. Keys spread over many leaves (a route index by courier, each courier
/// pinging every few seconds) are each dirtied about once per interval unless the interval is
/// longer than the time between their writes, so the interval is long (tens of seconds); the
/// segment size bounds the log, and so the replay after a crash, during bursts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointPolicy {
    pub every: Duration,
    pub max_segment_bytes: u64,
}

/// Free disk a checkpoint needs before it starts, besides [`FLUSH_ROOM_PER_LOGGED_BYTE`] per
/// byte of log it covers: a store flush that runs out of space can leave the store unusable
/// (sled 1.0 alpha then refuses every later write and never finishes another flush), while a
/// checkpoint put off only lets the log grow.
pub const MIN_FLUSH_ROOM: u64 = 16 << 20;
/// Free disk a checkpoint needs per byte of log it covers: the store rewrites every leaf
/// those writes dirtied, a few times their size.
pub const FLUSH_ROOM_PER_LOGGED_BYTE: u64 = 4;

/// Decides when a checkpoint is due and runs it in the background.
///
/// The owner must apply each commit to the store before appending it to the log: then a
/// store flush that starts after a segment is closed covers everything in it.
pub struct Checkpointer {
    idle: Arc<AtomicBool>,
    closed: Option<mpsc::Sender<u64>>,
    thread: Option<JoinHandle<()>>,
    policy: CheckpointPolicy,
    last: Instant,
    /// Set while due checkpoints wait for disk space.
    postponed: Arc<AtomicBool>,
}

impl Checkpointer {
    /// Starts the thread. `flush` makes the store durable; `report` hears how each
    /// checkpoint went (its duration, or the error, after which the segments are kept and
    /// the next checkpoint covers them).
    pub fn spawn(
        name: &str,
        dir: PathBuf,
        policy: CheckpointPolicy,
        mut flush: impl FnMut() -> Result<(), String> + Send + 'static,
        report: impl Fn(Result<Duration, String>) + Send + 'static,
    ) -> Self {
        let idle = Arc::new(AtomicBool::new(true));
        let (closed, segments) = mpsc::channel::<u64>();
        let flag = idle.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                for last in segments {
                    let started = Instant::now();
                    let done = flush()
                        .and_then(|()| remove_through(&dir, last).map_err(|e| e.to_string()));
                    report(done.map(|()| started.elapsed()));
                    flag.store(true, Ordering::Release);
                }
            })
            .expect("spawning a checkpointer thread");
        Self {
            idle,
            closed: Some(closed),
            thread: Some(thread),
            policy,
            last: Instant::now(),
            postponed: Arc::default(),
        }
    }

    /// Call after each successful [`SegmentLog::sync`]: when a checkpoint is due (the
    /// interval passed or the segment is large), none is running and the disk has room for
    /// the store's flush, closes the segment and starts a checkpoint through it.
    pub fn after_sync(&mut self, log: &mut SegmentLog) -> Result<(), LogError> {
        let due = self.last.elapsed() >= self.policy.every
            || log.segment_bytes() >= self.policy.max_segment_bytes;
        if !due || !self.idle.load(Ordering::Acquire) {
            return Ok(());
        }
        let needed = MIN_FLUSH_ROOM + FLUSH_ROOM_PER_LOGGED_BYTE * log.segment_bytes();
        match free_bytes(log.dir()) {
            Ok(free) if free < needed => {
                if !self.postponed.swap(true, Ordering::Relaxed) {
                    tracing::warn!(dir = %log.dir().display(), free, needed, "checkpoints put off until the disk has room for the store's flush; the log grows meanwhile");
                }
                return Ok(());
            }
            Ok(_) => {
                if self.postponed.swap(false, Ordering::Relaxed) {
                    tracing::info!(dir = %log.dir().display(), "the disk has room again; checkpoints resume");
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot read free disk space; checkpointing anyway")
            }
        }
        let closed = log.roll()?;
        self.idle.store(false, Ordering::Release);
        if let Some(tx) = &self.closed {
            let _ = tx.send(closed);
        }
        self.last = Instant::now();
        Ok(())
    }

    /// Whether due checkpoints are waiting for disk space.
    pub fn postponed(&self) -> bool {
        self.postponed.load(Ordering::Relaxed)
    }
}

/// Bytes an unprivileged process may still write on the filesystem holding `dir`.
pub fn free_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    let stat = rustix::fs::statvfs(dir)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

impl Drop for Checkpointer {
    /// Waits for a running checkpoint, so that the store is not in use once this is gone.
    fn drop(&mut self) {
        self.closed = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    type Reports = Arc<Mutex<Vec<Result<(), String>>>>;

    /// A fresh log in `dir`, one synced frame in it, and a checkpointer flushing with `flush`
    /// every `every`; what each checkpoint reports is collected.
    fn started(
        dir: &std::path::Path,
        every: Duration,
        flush: impl FnMut() -> Result<(), String> + Send + 'static,
    ) -> (SegmentLog, Checkpointer, Reports) {
        let (mut log, _) = SegmentLog::recover(dir, |_| unreachable!(), || Ok(())).unwrap();
        log.append_with(|b| b.push(1));
        log.sync().unwrap();
        let reports = Reports::default();
        let r = reports.clone();
        let checkpointer = Checkpointer::spawn(
            "test-checkpointer",
            dir.to_path_buf(),
            CheckpointPolicy {
                every,
                max_segment_bytes: u64::MAX,
            },
            flush,
            move |done| r.lock().unwrap().push(done.map(drop)),
        );
        (log, checkpointer, reports)
    }

    fn segment_names(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_due_checkpoint_flushes_then_removes_the_closed_segments_only() {
        let dir = tempfile::tempdir().unwrap();
        let flushes = Arc::new(Mutex::new(0));
        let f = flushes.clone();
        let (mut log, mut checkpointer, reports) =
            started(dir.path(), Duration::from_millis(50), move || {
                *f.lock().unwrap() += 1;
                Ok(())
            });
        checkpointer.after_sync(&mut log).unwrap();
        assert_eq!(*flushes.lock().unwrap(), 0, "not due yet");
        std::thread::sleep(Duration::from_millis(60));
        log.append_with(|b| b.push(2));
        log.sync().unwrap();
        checkpointer.after_sync(&mut log).unwrap();
        drop(checkpointer); // waits for the checkpoint
        assert_eq!(*flushes.lock().unwrap(), 1);
        assert_eq!(*reports.lock().unwrap(), [Ok(())]);
        assert_eq!(segment_names(dir.path()), ["segment-0000000000000001"]);
    }

    #[test]
    fn a_failed_flush_keeps_the_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, mut checkpointer, reports) =
            started(dir.path(), Duration::ZERO, || Err("disk full".into()));
        checkpointer.after_sync(&mut log).unwrap();
        drop(checkpointer);
        assert_eq!(*reports.lock().unwrap(), [Err("disk full".to_string())]);
        assert_eq!(
            segment_names(dir.path()),
            ["segment-0000000000000000", "segment-0000000000000001"]
        );
    }
}
