//! [`JournalStore`]: the sled database journals live in, its write-ahead log, and its health.

use std::collections::{HashMap, hash_map};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fleet_proto::Seq;
use fleet_wal::{CheckpointPolicy, Checkpointer, SegmentLog};
use thiserror::Error;

pub(crate) use fleet_sled::{Db, Tree};

use crate::journal::Journal;
use crate::keys;
use crate::thinning::ThinPolicy;
use crate::writes::LoggedCommit;

/// The number of the last commit applied, stored in each journal's tree (see [`JournalStore`]).
pub(crate) const META_COMMIT: &str = "commit";

/// How often the store is flushed and its log trimmed: after 30 s or 8 MiB of log, which
/// bounds the replay after a crash to well under a second (see [`CheckpointPolicy`]).
pub const CHECKPOINTS: CheckpointPolicy = CheckpointPolicy {
    every: Duration::from_secs(30),
    max_segment_bytes: 8 << 20,
};
/// The write-ahead log's directory inside the store's.
pub const LOG_DIR: &str = "journal-log";

#[derive(Debug, Error)]
pub enum JournalError {
    /// The store could not be opened (another process has it, say).
    #[error(transparent)]
    Open(#[from] fleet_sled::OpenError),
    /// The store cannot take writes now (its disk is full, say); nothing was acknowledged,
    /// and it takes them again by itself once it can.
    #[error("journal at {path} cannot write now: {reason}")]
    Unavailable { path: PathBuf, reason: String },
    #[error("journal storage at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("journal entry {seq} is corrupt: {message}")]
    Corrupt { seq: Seq, message: String },
    #[error("journal log at {path}: {source}")]
    Log {
        path: PathBuf,
        #[source]
        source: fleet_wal::LogError,
    },
}

/// Where and how the journal keeps its data.
#[derive(Clone, Debug)]
pub struct JournalConfig {
    pub path: PathBuf,
    /// Event ids remembered for duplicate detection (oldest forgotten first).
    pub dedup_capacity: u64,
    pub thin: ThinPolicy,
    /// sled's page cache.
    pub cache_bytes: usize,
    /// When sled is flushed behind the write-ahead log ([`Journal::open`] only; a
    /// [`JournalStore`] has its own).
    pub checkpoints: CheckpointPolicy,
}

impl JournalConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            dedup_capacity: 1_000_000,
            thin: ThinPolicy::default(),
            cache_bytes: 64 << 20,
            checkpoints: CHECKPOINTS,
        }
    }
}

/// What opening found.
#[derive(Clone, Debug)]
pub struct Recovery {
    pub last_seq: Seq,
    pub acked: Seq,
    /// Entries journaled and not yet acknowledged by the aggregator.
    pub backlog: u64,
    /// Whether the counters had to be rebuilt from the journal (they lag a crash by at most
    /// one commit only if sled's batch atomicity did not hold; counted to catch that).
    pub repaired: bool,
    pub took: Duration,
}

/// Figures for reports and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JournalStats {
    pub last_seq: Seq,
    pub acked: Seq,
    pub unacked_bytes: u64,
    /// Location pings not journaled because the budget was spent (by policy).
    pub thinned: u64,
    pub dedup_marks: u64,
    /// Events parked for a retry (see [`crate::Parking`]).
    pub parked: u64,
    /// Entries skipped on read because they did not decode.
    pub corrupt: u64,
}

/// The outcome of one commit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Commit {
    /// Sequence numbers given, `first..=last` (empty when `first > last`).
    pub first: Seq,
    pub last: Seq,
    pub thinned: u64,
}

/// One sled database holding any number of journals, one tree each: a process that hosts
/// many devices (a simulator, an edge node) commits them all with one fsync
/// ([`Journal::flush_all`]).
///
/// Commits are made durable in a write-ahead log (`journal-log/` inside the store's
/// directory, see [`fleet_wal`]) and sled is flushed behind it as [`CHECKPOINTS`] says. Each
/// logged commit carries its journal's commit number, which the same sled batch stores; on
/// open, commits the store already holds are skipped and the rest applied in order, so the
/// store ends exactly as it was at the last logged commit (sled may have flushed later,
/// unacknowledged commits on its own: those are kept).
pub struct JournalStore {
    /// sled 1.0's handle is `Send` but not `Sync`: each use works on its own clone.
    db: Mutex<Db>,
    path: PathBuf,
    log: Mutex<StoreLog>,
    /// Set when a checkpoint's flush failed: sled 1.0 alpha then refuses reads and never
    /// completes another flush, so only a new process can open the store again (the log
    /// holds everything acknowledged meanwhile).
    broken: Arc<Mutex<Option<String>>>,
}

struct StoreLog {
    log: SegmentLog,
    checkpointer: Checkpointer,
}

/// Whether a store can take writes, and why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreHealth {
    Ok,
    /// Writes fail now (the disk is full); the store recovers by itself when they succeed.
    Failing(String),
    /// The store flush failed and the database refuses reads: reopen it in a new process once
    /// the disk has room ([`JournalStore::broken`]).
    Broken(String),
}

impl JournalStore {
    /// Opens (or creates) the database at `path`, replaying its log.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Arc<Self>, JournalError> {
        Self::open_with(path, cache_bytes, CHECKPOINTS)
    }

    /// [`JournalStore::open`] with its own checkpoint policy.
    pub fn open_with(
        path: &Path,
        cache_bytes: usize,
        checkpoints: CheckpointPolicy,
    ) -> Result<Arc<Self>, JournalError> {
        let db = fleet_sled::open(path, cache_bytes)?;
        let log_dir = path.join(LOG_DIR);
        let log_error = |source| JournalError::Log {
            path: log_dir.clone(),
            source,
        };
        let (mut log, _) = SegmentLog::recover(&log_dir, replayer(&db), || {
            db.flush().map(drop).map_err(|e| e.to_string())
        })
        .map_err(log_error)?;
        // Appends to a reserved segment do not compete with a checkpoint for the disk.
        log.preallocate(checkpoints.max_segment_bytes);
        let flusher = db.clone();
        let broken = Arc::new(Mutex::new(None));
        let broken_by_checkpoint = broken.clone();
        let checkpointer = Checkpointer::spawn(
            "journal-checkpointer",
            log_dir.clone(),
            checkpoints,
            move || flusher.flush().map(drop).map_err(|e| e.to_string()),
            move |done| {
                if let Err(e) = done {
                    tracing::error!(error = %e, "journal checkpoint failed; the log keeps everything, and the store must be reopened");
                    *broken_by_checkpoint
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = Some(e);
                }
            },
        );
        Ok(Arc::new(Self {
            db: Mutex::new(db),
            path: path.to_path_buf(),
            log: Mutex::new(StoreLog { log, checkpointer }),
            broken,
        }))
    }

    /// Opens (or creates) the journal called `name` in this store. `config.path` and
    /// `config.cache_bytes` are the store's; the rest applies to this journal.
    pub fn journal(
        self: &Arc<Self>,
        name: &str,
        mut config: JournalConfig,
    ) -> Result<(Journal, Recovery), JournalError> {
        let started = Instant::now();
        config.path.clone_from(&self.path);
        let tree = self
            .db()
            .open_tree(name.as_bytes())
            .map_err(|source| JournalError::Io {
                path: self.path.join(name),
                source,
            })?;
        Journal::on_tree(self.clone(), tree, Some(name.into()), config, started)
    }

    pub(crate) fn db(&self) -> Db {
        self.db.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn log(&self) -> MutexGuard<'_, StoreLog> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Why the store needs reopening, if it does (see [`StoreHealth::Broken`]).
    pub fn broken(&self) -> Option<String> {
        self.broken
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the store can take writes now.
    pub fn health(&self) -> StoreHealth {
        if let Some(why) = self.broken() {
            return StoreHealth::Broken(why);
        }
        if self.log().log.failing() {
            return StoreHealth::Failing(format!(
                "its write-ahead log in {} cannot be written (is the disk full?)",
                self.path.join(LOG_DIR).display()
            ));
        }
        StoreHealth::Ok
    }

    /// Refuses a write while the store is broken: sled would accept it in memory, but no
    /// read or flush can follow.
    pub(crate) fn writable(&self) -> Result<(), JournalError> {
        match self.broken() {
            Some(reason) => Err(JournalError::Unavailable {
                path: self.path.clone(),
                reason: format!("the store must be reopened: {reason}"),
            }),
            None => Ok(()),
        }
    }

    /// Logs a commit already applied to sled (in the order they were applied).
    pub(crate) fn logged(&self, commit: &LoggedCommit<'_>) {
        self.log().log.append_with(|buf| commit.encode(buf));
    }

    /// Makes every commit logged so far durable. On failure nothing is lost: the commits
    /// stay in the log's memory and the next sync writes them again.
    pub(crate) fn sync(&self) -> Result<(), JournalError> {
        self.writable()?;
        let mut log = self.log();
        let log = &mut *log;
        log.log.sync().map_err(|e| JournalError::Unavailable {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        if let Err(e) = log.checkpointer.after_sync(&mut log.log) {
            tracing::warn!(error = %e, "cannot start a new journal log segment");
        }
        Ok(())
    }
}

/// Applies logged commits the store does not hold yet, per journal in commit order.
fn replayer(db: &Db) -> impl FnMut(&[u8]) -> Result<(), String> + '_ {
    // Per journal (`None`: the default tree): its tree and the last commit it holds.
    let mut journals: HashMap<Option<String>, (Tree, u64)> = HashMap::new();
    move |payload| {
        let commit = LoggedCommit::decode(payload)?;
        let (tree, held) = match journals.entry(commit.tree.map(str::to_owned)) {
            hash_map::Entry::Occupied(slot) => slot.into_mut(),
            hash_map::Entry::Vacant(slot) => {
                let tree = match commit.tree {
                    Some(name) => db.open_tree(name.as_bytes()).map_err(|e| e.to_string())?,
                    None => (**db).clone(),
                };
                let held = meta_u64(&tree, META_COMMIT).map_err(|e| e.to_string())?;
                slot.insert((tree, held))
            }
        };
        if commit.number <= *held {
            return Ok(()); // the store holds it already
        }
        if commit.number != *held + 1 {
            return Err(format!(
                "journal {:?}: logged commit {} follows {held}: commits are missing",
                commit.tree, commit.number
            ));
        }
        tree.apply_batch(commit.writes.to_batch())
            .map_err(|e| e.to_string())?;
        *held = commit.number;
        Ok(())
    }
}

pub(crate) fn meta_u64(tree: &Tree, name: &str) -> std::io::Result<u64> {
    Ok(tree
        .get(keys::meta(name))?
        .and_then(|v| keys::read_u64(&v))
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writes::Writes;
    use std::borrow::Cow;

    fn payload(number: u64, value: &str) -> Vec<u8> {
        let mut writes = Writes::default();
        writes.insert(b"k", value);
        writes.insert(keys::meta(META_COMMIT), number.to_be_bytes());
        let mut buf = Vec::new();
        LoggedCommit {
            tree: Some("d1"),
            number,
            writes: Cow::Owned(writes),
        }
        .encode(&mut buf);
        buf
    }

    #[test]
    fn replay_skips_commits_the_store_holds_and_refuses_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let db: Db = sled::Config::new().path(dir.path()).open().unwrap();
        let tree = db.open_tree(b"d1").unwrap();
        // sled flushed commit 2 on its own; the log still holds 1 and 2, then 3.
        tree.insert(b"k", b"two").unwrap();
        tree.insert(keys::meta(META_COMMIT), 2u64.to_be_bytes())
            .unwrap();
        let mut replay = replayer(&db);
        let value = || tree.get(b"k").unwrap().map(|v| v.to_vec());
        replay(&payload(1, "one")).unwrap();
        assert_eq!(
            value().as_deref(),
            Some(&b"two"[..]),
            "an older commit would roll it back"
        );
        replay(&payload(2, "two")).unwrap();
        replay(&payload(3, "three")).unwrap();
        assert_eq!(value().as_deref(), Some(&b"three"[..]));
        assert_eq!(meta_u64(&tree, META_COMMIT).unwrap(), 3);
        let err = replay(&payload(5, "five")).unwrap_err();
        assert!(err.contains("commit 5 follows 3"), "{err}");
        assert!(replay(b"not a commit").is_err());
    }
}
