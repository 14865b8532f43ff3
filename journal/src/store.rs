//! [`Journal`]: the sled-backed device store behind our own seam.

use std::collections::{HashMap, hash_map};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fleet_proto::batch::Entry;
use fleet_proto::sender::Outbox;
use fleet_proto::{Record, Seq};
use fleet_wal::{CheckpointPolicy, Checkpointer, SegmentLog};
use thiserror::Error;

use crate::keys::{self, DEDUP, JOURNAL, STATE};
use crate::thinning::{ThinPolicy, Thinner};
use crate::writes::{LoggedCommit, Writes};

type Db = sled::Db<64>;
type Tree = sled::Tree<64>;

/// sled's background flush interval: the checkpoints do the regular flushing.
const BACKGROUND_FLUSH_MS: usize = 600_000;
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
}

struct StoreLog {
    log: SegmentLog,
    checkpointer: Checkpointer,
    /// A log sync failed: the current segment may end in a torn frame, so commits are made
    /// durable by flushing sled until a flush after a fresh segment succeeds.
    degraded: bool,
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
        let io = |source| JournalError::Io {
            path: path.to_path_buf(),
            source,
        };
        let db: Db = sled::Config::new()
            .path(path)
            .cache_capacity_bytes(cache_bytes)
            // The checkpoints flush; sled's background flush only writes earlier (batches
            // stay atomic either way). With `None` instead, sled flushes (and fsyncs)
            // whenever any handle or iterator is dropped, i.e. on nearly every read.
            .flush_every_ms(Some(BACKGROUND_FLUSH_MS))
            .zstd_compression_level(1)
            .open()
            .map_err(io)?;
        let log_dir = path.join(LOG_DIR);
        let log_error = |source| JournalError::Log {
            path: log_dir.clone(),
            source,
        };
        let (log, _) = SegmentLog::recover(&log_dir, replayer(&db), || {
            db.flush().map(drop).map_err(|e| e.to_string())
        })
        .map_err(log_error)?;
        let flusher = db.clone();
        let checkpointer = Checkpointer::spawn(
            "journal-checkpointer",
            log_dir.clone(),
            checkpoints,
            move || flusher.flush().map(drop).map_err(|e| e.to_string()),
            |done| {
                if let Err(e) = done {
                    tracing::error!(error = %e, "journal checkpoint failed; the log keeps its segments");
                }
            },
        );
        Ok(Arc::new(Self {
            db: Mutex::new(db),
            path: path.to_path_buf(),
            log: Mutex::new(StoreLog {
                log,
                checkpointer,
                degraded: false,
            }),
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

    fn db(&self) -> Db {
        self.db.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn log(&self) -> MutexGuard<'_, StoreLog> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Logs a commit already applied to sled (in the order they were applied).
    fn logged(&self, commit: &LoggedCommit<'_>) {
        self.log().log.append_with(|buf| commit.encode(buf));
    }

    /// Makes every commit logged so far durable.
    fn sync(&self) -> std::io::Result<()> {
        let mut log = self.log();
        let log = &mut *log;
        if !log.degraded {
            match log.log.sync() {
                Ok(()) => {
                    if let Err(e) = log.checkpointer.after_sync(&mut log.log, false) {
                        tracing::warn!(error = %e, "cannot start a new journal log segment");
                    }
                    return Ok(());
                }
                Err(e) => {
                    tracing::error!(error = %e, "journal log sync failed; flushing the store instead");
                    log.degraded = true;
                }
            }
        }
        log.log.roll().map_err(std::io::Error::other)?;
        self.db().flush()?;
        log.degraded = false;
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

fn meta_u64(tree: &Tree, name: &str) -> std::io::Result<u64> {
    Ok(tree
        .get(keys::meta(name))?
        .and_then(|v| keys::read_u64(&v))
        .unwrap_or(0))
}

/// The device journal. One writer; reads may come from anywhere.
pub struct Journal {
    store: Arc<JournalStore>,
    /// sled 1.0's handle is `Send` but not `Sync`: each use works on its own clone.
    tree: Mutex<Tree>,
    /// The tree's name in the store (`None`: the default tree).
    name: Option<String>,
    config: JournalConfig,
    /// Held by writers (append, acknowledge) for the whole write, so they apply in order.
    inner: Mutex<Inner>,
    corrupt: std::sync::atomic::AtomicU64,
}

struct Inner {
    /// The number of the last commit applied.
    commits: u64,
    stats: JournalStats,
    /// `last_seq` as of the last successful flush: only durable entries may leave the device
    /// (a crash would otherwise hand the same sequence numbers to other records).
    durable_seq: Seq,
    dedup_head: u64,
    dedup_tail: u64,
    thinner: Thinner,
    /// The acknowledgement written to the tree: entries through it are deleted. Lags
    /// `stats.acked` by up to [`ACK_WRITE_EVERY`] entries.
    acked_written: Seq,
}

/// Acknowledged entries are deleted (and the cursor written) in runs of this many: one ack
/// per batch would dirty the journal's head and its counters for every event. A crash
/// forgets at most this many acknowledgements, and the aggregator absorbs the resent entries.
const ACK_WRITE_EVERY: Seq = 256;

const META_LAST: &str = "last_seq";
const META_ACKED: &str = "acked";
const META_BYTES: &str = "unacked_bytes";
const META_THINNED: &str = "thinned";
const META_DEDUP_HEAD: &str = "dedup_head";
const META_DEDUP_TAIL: &str = "dedup_tail";
/// The number of the last commit applied (see [`JournalStore`]).
const META_COMMIT: &str = "commit";

impl Journal {
    /// Opens (or creates) the journal and checks its counters against its contents.
    pub fn open(config: JournalConfig) -> Result<(Self, Recovery), JournalError> {
        let started = Instant::now();
        let store = JournalStore::open_with(&config.path, config.cache_bytes, config.checkpoints)?;
        let tree: Tree = (*store.db()).clone();
        Self::on_tree(store, tree, None, config, started)
    }

    fn on_tree(
        store: Arc<JournalStore>,
        db: Tree,
        name: Option<String>,
        config: JournalConfig,
        started: Instant,
    ) -> Result<(Self, Recovery), JournalError> {
        let io = |source| JournalError::Io {
            path: config.path.clone(),
            source,
        };
        let meta = |name: &str| meta_u64(&db, name).map_err(io);
        let mut stats = JournalStats {
            last_seq: meta(META_LAST)?,
            acked: meta(META_ACKED)?,
            unacked_bytes: meta(META_BYTES)?,
            thinned: meta(META_THINNED)?,
            ..JournalStats::default()
        };
        let dedup_head = meta(META_DEDUP_HEAD)?;
        let dedup_tail = meta(META_DEDUP_TAIL)?;
        let commits = meta(META_COMMIT)?;
        stats.dedup_marks = dedup_head - dedup_tail;
        // The last journal key must agree with the counter.
        let last_in_journal = db
            .get_lt(keys::journal(Seq::MAX))
            .map_err(io)?
            .filter(|(k, _)| k.first() == Some(&JOURNAL))
            .and_then(|(k, _)| keys::read_u64(&k[1..]));
        let repaired = last_in_journal.is_some_and(|l| l > stats.last_seq);
        if let Some(l) = last_in_journal {
            stats.last_seq = stats.last_seq.max(l);
        }
        let recovery = Recovery {
            last_seq: stats.last_seq,
            acked: stats.acked,
            backlog: stats.last_seq.saturating_sub(stats.acked),
            repaired,
            took: started.elapsed(),
        };
        let journal = Self {
            store,
            tree: Mutex::new(db),
            name,
            config,
            inner: Mutex::new(Inner {
                commits,
                durable_seq: stats.last_seq,
                acked_written: stats.acked,
                stats,
                dedup_head,
                dedup_tail,
                thinner: Thinner::default(),
            }),
            corrupt: 0.into(),
        };
        Ok((journal, recovery))
    }

    fn db(&self) -> Tree {
        self.tree.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding it cannot leave sled half-written (batches are atomic).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn io(&self) -> impl Fn(std::io::Error) -> JournalError + '_ {
        |source| JournalError::Io {
            path: self.config.path.clone(),
            source,
        }
    }

    /// Whether an event with this id was accepted before (within the retention).
    pub fn is_duplicate(&self, event_id: &str) -> Result<bool, JournalError> {
        self.db()
            .contains_key(keys::prefixed_str(DEDUP, event_id))
            .map_err(self.io())
    }

    /// The latest feature state of `key`.
    pub fn state(&self, key: &str) -> Result<Option<Vec<u8>>, JournalError> {
        Ok(self
            .db()
            .get(keys::prefixed_str(STATE, key))
            .map_err(self.io())?
            .map(|v| v[8..].to_vec()))
    }

    /// Journals `records` as one atomic batch (not yet durable: see [`Journal::flush`]).
    /// Every event gets a dedup mark, kept or thinned.
    pub fn append(&self, records: Vec<Record>) -> Result<Commit, JournalError> {
        let mut inner = self.inner();
        let mut batch = Writes::default();
        let mut stats = inner.stats.clone();
        let (mut head, mut tail) = (inner.dedup_head, inner.dedup_tail);
        let mut commit = Commit {
            first: stats.last_seq + 1,
            last: stats.last_seq,
            thinned: 0,
        };
        // Marks written by this commit are not in the tree yet: evicting them looks here.
        let mut marks_here: HashMap<u64, String> = Default::default();
        let mut latest_here: HashMap<String, u64> = Default::default();
        for record in records {
            if let Record::Event(e) = &record {
                batch.insert(keys::prefixed_str(DEDUP, &e.event_id), head.to_be_bytes());
                batch.insert(keys::dedup_order(head), e.event_id.as_bytes());
                marks_here.insert(head, e.event_id.clone());
                latest_here.insert(e.event_id.clone(), head);
                head += 1;
                while head - tail > self.config.dedup_capacity {
                    let id = match marks_here.remove(&tail) {
                        Some(id) => Some(id),
                        None => self
                            .db()
                            .get(keys::dedup_order(tail))
                            .map_err(self.io())?
                            .map(|v| String::from_utf8_lossy(&v).into_owned()),
                    };
                    if let Some(id) = id {
                        // Only if no newer mark for the same id replaced it.
                        let current = match latest_here.get(&id) {
                            Some(&m) => Some(m),
                            None => self
                                .db()
                                .get(keys::prefixed_str(DEDUP, &id))
                                .map_err(self.io())?
                                .as_deref()
                                .and_then(keys::read_u64),
                        };
                        if current == Some(tail) {
                            batch.remove(keys::prefixed_str(DEDUP, &id));
                        }
                    }
                    batch.remove(keys::dedup_order(tail));
                    tail += 1;
                }
            }
            let over = stats.unacked_bytes > self.config.thin.budget_bytes;
            if !inner.thinner.keep(&self.config.thin, over, &record) {
                commit.thinned += 1;
                continue;
            }
            let seq = stats.last_seq + 1;
            let bytes = postcard::to_stdvec(&record).expect("records always serialize");
            if let Record::State(s) = &record {
                let mut value = seq.to_be_bytes().to_vec();
                value.extend_from_slice(&s.bytes);
                batch.insert(keys::prefixed_str(STATE, &s.key), value);
            }
            stats.unacked_bytes += bytes.len() as u64;
            batch.insert(keys::journal(seq), bytes);
            stats.last_seq = seq;
        }
        commit.last = stats.last_seq;
        stats.thinned += commit.thinned;
        stats.dedup_marks = head - tail;
        for (name, value) in [
            (META_LAST, stats.last_seq),
            (META_BYTES, stats.unacked_bytes),
            (META_THINNED, stats.thinned),
            (META_DEDUP_HEAD, head),
            (META_DEDUP_TAIL, tail),
        ] {
            batch.insert(keys::meta(name), value.to_be_bytes());
        }
        self.commit(&mut inner, batch)?;
        inner.stats = stats;
        (inner.dedup_head, inner.dedup_tail) = (head, tail);
        Ok(commit)
    }

    /// Applies `writes` and the next commit number to sled as one atomic batch, then logs
    /// them (durable at the next [`Journal::flush`]).
    fn commit(&self, inner: &mut Inner, mut writes: Writes) -> Result<(), JournalError> {
        let number = inner.commits + 1;
        writes.insert(keys::meta(META_COMMIT), number.to_be_bytes());
        self.db()
            .apply_batch(writes.to_batch())
            .map_err(self.io())?;
        inner.commits = number;
        self.store.logged(&LoggedCommit {
            tree: self.name.as_deref(),
            number,
            writes: std::borrow::Cow::Owned(writes),
        });
        Ok(())
    }

    /// The group-commit point: everything appended (and acknowledged) so far is on disk
    /// when this returns.
    pub fn flush(&self) -> Result<(), JournalError> {
        {
            let mut inner = self.inner();
            self.write_ack(&mut inner)?;
        }
        Self::flush_all(&[self])
    }

    /// [`Journal::flush`] for many journals: one flush per store they live in.
    pub fn flush_all(journals: &[&Self]) -> Result<(), JournalError> {
        // Entries appended while the flush runs may or may not be in it: claim only those
        // appended before.
        let through: Vec<Seq> = journals.iter().map(|j| j.inner().stats.last_seq).collect();
        let mut flushed: Vec<&Arc<JournalStore>> = Vec::new();
        for j in journals {
            if !flushed.iter().any(|s| Arc::ptr_eq(s, &j.store)) {
                j.store.sync().map_err(j.io())?;
                flushed.push(&j.store);
            }
        }
        for (j, through) in journals.iter().zip(through) {
            j.made_durable(through);
        }
        Ok(())
    }

    fn made_durable(&self, through: Seq) {
        let mut inner = self.inner();
        inner.durable_seq = inner.durable_seq.max(through);
    }

    /// The last sequence number known to be on disk.
    pub fn durable_seq(&self) -> Seq {
        self.inner().durable_seq
    }

    /// The aggregator made everything through `through` durable: drop it from the outbox.
    /// Written in runs of 256 entries and not flushed by itself: losing it only
    /// means sending again, which history absorbs.
    pub fn acknowledge(&self, through: Seq) -> Result<(), JournalError> {
        let mut inner = self.inner();
        let through = through.min(inner.stats.last_seq);
        if through <= inner.stats.acked {
            return Ok(());
        }
        inner.stats.acked = through;
        if through - inner.acked_written >= ACK_WRITE_EVERY {
            self.write_ack(&mut inner)?;
        }
        Ok(())
    }

    /// Deletes the entries acknowledged since the last write and records the cursor.
    fn write_ack(&self, inner: &mut Inner) -> Result<(), JournalError> {
        let through = inner.stats.acked;
        if through <= inner.acked_written {
            return Ok(());
        }
        let mut batch = Writes::default();
        let mut freed = 0u64;
        for item in fleet_sled_range::inclusive(
            &self.db(),
            &keys::journal(inner.acked_written + 1),
            &keys::journal(through),
        ) {
            let (k, v) = item.map_err(self.io())?;
            freed += v.len() as u64;
            batch.remove(&*k);
        }
        let bytes = inner.stats.unacked_bytes.saturating_sub(freed);
        batch.insert(keys::meta(META_ACKED), through.to_be_bytes());
        batch.insert(keys::meta(META_BYTES), bytes.to_be_bytes());
        self.commit(inner, batch)?;
        inner.acked_written = through;
        inner.stats.unacked_bytes = bytes;
        Ok(())
    }

    /// Journal entries after `after` (for replay and inspection).
    pub fn entries_after(&self, after: Seq, max: usize) -> Result<Vec<Entry>, JournalError> {
        // Acknowledged entries not deleted yet are gone all the same.
        let after = after.max(self.inner().stats.acked);
        let mut out = Vec::new();
        for item in fleet_sled_range::inclusive(
            &self.db(),
            &keys::journal(after + 1),
            &keys::journal(Seq::MAX),
        )
        .take(max)
        {
            let (k, v) = item.map_err(self.io())?;
            let seq = keys::read_u64(&k[1..]).unwrap_or(0);
            match postcard::from_bytes::<Record>(&v) {
                Ok(record) => out.push(Entry { seq, record }),
                Err(e) => {
                    return Err(JournalError::Corrupt {
                        seq,
                        message: e.to_string(),
                    });
                }
            }
        }
        Ok(out)
    }

    pub fn stats(&self) -> JournalStats {
        JournalStats {
            corrupt: self.corrupt.load(std::sync::atomic::Ordering::Relaxed),
            ..self.inner().stats.clone()
        }
    }

    pub fn size_on_disk(&self) -> Result<u64, JournalError> {
        self.store.db().size_on_disk().map_err(self.io())
    }

    pub fn config(&self) -> &JournalConfig {
        &self.config
    }
}

impl Outbox for Journal {
    fn read_after(&self, after: Seq, max: usize) -> Vec<Entry> {
        let mut out = Vec::with_capacity(max.min(1024));
        let mut after = after;
        // A corrupt entry is skipped (and counted) rather than blocking the outbox forever.
        while out.len() < max {
            match self.entries_after(after, max - out.len()) {
                Ok(mut entries) => {
                    out.append(&mut entries);
                    break;
                }
                Err(JournalError::Corrupt { seq, .. }) => {
                    self.corrupt
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    out.extend(
                        self.entries_after(after, (seq - after - 1) as usize)
                            .unwrap_or_default(),
                    );
                    after = seq;
                }
                Err(JournalError::Io { .. } | JournalError::Log { .. }) => break,
            }
        }
        out
    }

    /// Only what is durable is offered to the aggregator.
    fn last_seq(&self) -> Seq {
        self.inner().durable_seq
    }

    fn superseded(&self, key: &str, seq: Seq) -> bool {
        matches!(
            self.db().get(keys::prefixed_str(STATE, key)),
            Ok(Some(v)) if keys::read_u64(&v).is_some_and(|latest| latest > seq)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
