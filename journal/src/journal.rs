//! [`Journal`]: one device's journal in a [`JournalStore`]: records under dense sequence
//! numbers, the latest state per key, the dedup index, counters, and the outbox the sender
//! reads.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use fleet_proto::batch::Entry;
use fleet_proto::sender::Outbox;
use fleet_proto::{JournalId, Record, Seq};

use crate::dedup::DedupMarks;
use crate::keys::{self, DEDUP, JOURNAL, STATE};
use crate::parked::{self, Parked, Parking};
use crate::store::{
    Commit, JournalConfig, JournalError, JournalStats, JournalStore, META_COMMIT, Recovery, Tree,
    meta_u64,
};
use crate::thinning::Thinner;
use crate::writes::{LoggedCommit, Writes};

/// The device journal. One writer; reads may come from anywhere.
pub struct Journal {
    store: Arc<JournalStore>,
    /// sled 1.0's handle is `Send` but not `Sync`: each use works on its own clone.
    tree: Mutex<Tree>,
    /// The tree's name in the store (`None`: the default tree).
    name: Option<String>,
    config: JournalConfig,
    id: JournalId,
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
    /// The id the next parked event gets.
    next_parked: u64,
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
const META_PARKED: &str = "parked";
const META_PARKED_NEXT: &str = "parked_next";
const META_ID: &str = "journal_id";

impl Journal {
    /// Opens (or creates) the journal and checks its counters against its contents.
    pub fn open(config: JournalConfig) -> Result<(Self, Recovery), JournalError> {
        let started = Instant::now();
        let store = JournalStore::open_with(&config.path, config.cache_bytes, config.checkpoints)?;
        let tree: Tree = (*store.db()).clone();
        Self::on_tree(store, tree, None, config, started)
    }

    pub(crate) fn on_tree(
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
            parked: meta(META_PARKED)?,
            ..JournalStats::default()
        };
        let next_parked = meta(META_PARKED_NEXT)?.max(1);
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
        let id = meta(META_ID)?;
        let journal = Self {
            store,
            tree: Mutex::new(db),
            name,
            config,
            id: if id == 0 { new_id() } else { id },
            inner: Mutex::new(Inner {
                commits,
                durable_seq: stats.last_seq,
                acked_written: stats.acked,
                stats,
                dedup_head,
                dedup_tail,
                thinner: Thinner::default(),
                next_parked,
            }),
            corrupt: 0.into(),
        };
        if id == 0 {
            // Durable with the first flush, which any entry that leaves the device waits for.
            let mut writes = Writes::default();
            writes.insert(keys::meta(META_ID), journal.id.to_be_bytes());
            journal.commit(&mut journal.inner(), writes)?;
        }
        Ok((journal, recovery))
    }

    pub(crate) fn db(&self) -> Tree {
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
        self.append_parking(records, Vec::new())
    }

    /// [`Journal::append`], with changes to the parked events in the same atomic batch.
    pub fn append_parking(
        &self,
        records: Vec<Record>,
        parking: Vec<Parking>,
    ) -> Result<Commit, JournalError> {
        self.store.writable()?;
        let mut inner = self.inner();
        let mut batch = Writes::default();
        let mut stats = inner.stats.clone();
        let mut marks = DedupMarks::new(
            inner.dedup_head,
            inner.dedup_tail,
            self.config.dedup_capacity,
        );
        let read = |key: &[u8]| self.db().get(key).map_err(self.io());
        let mut commit = Commit {
            first: stats.last_seq + 1,
            last: stats.last_seq,
            thinned: 0,
        };
        for record in records {
            if let Record::Event(e) = &record {
                marks.mark(&e.event_id, &mut batch, &read)?;
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
        let mut next_parked = inner.next_parked;
        let parked_delta = parked::apply(parking, &mut batch, &mut next_parked);
        stats.parked = stats.parked.saturating_add_signed(parked_delta);
        commit.last = stats.last_seq;
        stats.thinned += commit.thinned;
        stats.dedup_marks = marks.len();
        for (name, value) in [
            (META_LAST, stats.last_seq),
            (META_BYTES, stats.unacked_bytes),
            (META_THINNED, stats.thinned),
            (META_DEDUP_HEAD, marks.head),
            (META_DEDUP_TAIL, marks.tail),
            (META_PARKED, stats.parked),
            (META_PARKED_NEXT, next_parked),
        ] {
            batch.insert(keys::meta(name), value.to_be_bytes());
        }
        self.commit(&mut inner, batch)?;
        inner.stats = stats;
        (inner.dedup_head, inner.dedup_tail) = (marks.head, marks.tail);
        inner.next_parked = next_parked;
        Ok(commit)
    }

    /// Parked events after `after` (ids in parking order), at most `max`.
    pub fn parked(&self, after: u64, max: usize) -> Result<Vec<Parked>, JournalError> {
        let mut out = Vec::new();
        let lo = parked::key(after.saturating_add(1));
        for item in fleet_sled::range::inclusive(&self.db(), &lo, &parked::key(u64::MAX)).take(max)
        {
            let (k, v) = item.map_err(self.io())?;
            let id = keys::read_u64(&k[1..]).unwrap_or(0);
            out.push(parked::decode(id, &v).map_err(|e| JournalError::Corrupt {
                seq: id,
                message: format!("parked event {id}: {e}"),
            })?);
        }
        Ok(out)
    }

    /// This journal's identity: drawn at random when it was created.
    pub fn id(&self) -> JournalId {
        self.id
    }

    /// The store this journal lives in.
    pub fn store(&self) -> &Arc<JournalStore> {
        &self.store
    }

    /// Applies `writes` and the next commit number to sled as one atomic batch, then logs
    /// them (durable at the next [`Journal::flush`]).
    fn commit(&self, inner: &mut Inner, mut writes: Writes) -> Result<(), JournalError> {
        self.store.writable()?;
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
                j.store.sync()?;
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
        for item in fleet_sled::range::inclusive(
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
        for item in fleet_sled::range::inclusive(
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
                Err(_) => break,
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

/// A random, nonzero journal id.
fn new_id() -> JournalId {
    loop {
        let id: JournalId = rand::random();
        if id != 0 {
            return id;
        }
    }
}
