//! Where the aggregator keeps history, behind [`History`] so a PostgreSQL backend can sit
//! beside the embedded sled one.

mod alerts;
mod keys;
mod plan;
mod rows;
mod sled;
mod views;

pub use alerts::AlertState;
pub use sled::SledHistory;
pub use views::{
    Alert, AlertFilter, DeadLetter, DeadLetterFilter, DeadLetterState, DeadLetters, DeviceStatus,
    Failures, Latest, RoutePoint, StateSummary, Stats, TaskTimeline, TimelineItem,
};
pub(crate) use views::{event_json, rfc3339};

use fleet_proto::{Entry, JournalId, Seq};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum HistoryError {
    #[error("history storage: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "history in {path} has layout version {found}, this aggregator reads version {expected}: start it with a new --data directory"
    )]
    Layout {
        path: String,
        found: u8,
        expected: u8,
    },
    #[error("history entry {key} is corrupt: {message}")]
    Corrupt { key: String, message: String },
    /// A device sent from a journal it replaced by a newer one: a second process is using
    /// its identity (a cloned handset, a restored backup).
    #[error(
        "device {device} sent from journal {journal:016x}, which journal {current:016x} replaced: is another process using this device's identity?"
    )]
    StaleJournal {
        device: String,
        journal: JournalId,
        current: JournalId,
    },
    /// A page cursor that this history did not hand out.
    #[error("cursor {0:?} is not one this endpoint handed out")]
    BadCursor(String),
}

/// What one ingest did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IngestOutcome {
    pub stored: u64,
    /// Entries at or below the device's cursor: already in history, absorbed.
    pub duplicates: u64,
    pub events: u64,
    pub decisions: u64,
    pub alerts: u64,
    /// The first entry stored (in the journal's numbering): entries from it on were new.
    pub fresh_from: Option<Seq>,
    /// Every step an alert took, in order, with the alert right after it (what live streams
    /// push once the ingest is durable).
    pub alert_steps: Vec<AlertChange>,
}

/// A step an alert took, and the alert right after it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct AlertChange {
    pub step: fleet_proto::record::AlertStep,
    pub alert: Alert,
}

/// One batch from a device's journal, as the committer hands it to history.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    pub device: &'a str,
    pub journal: JournalId,
    /// The last journal sequence the batch covers (in the journal's own numbering).
    pub through: Seq,
    /// The device's durable journal head when it sent the batch.
    pub journaled: Seq,
    pub entries: &'a [Entry],
    pub now_ms: i64,
}

/// What history holds of one device's journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalView {
    /// Everything up to here is stored, in the journal's own numbering.
    pub cursor: Seq,
    /// Where the journal's sequence 1 falls in the device's history: history numbers a
    /// device's entries across all the journals it had, one after another.
    pub base: Seq,
    /// Whether opening it replaced the device's previous journal (the device started over).
    pub replaced: Option<JournalId>,
}

/// A page of a list: at most `limit` items after `after` (an opaque cursor from the previous
/// page's [`Page::next`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: usize,
    pub after: Option<String>,
}

/// One page of a list, and the cursor of the next one (none: this was the last).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// Durable, idempotent history of what devices sent.
///
/// A device's entries are numbered by its journal; a device that starts over with a new
/// journal (the [`JournalId`] in its hello is new) gets a new range after everything stored
/// before, so nothing of the old journal is overwritten or absorbed by the new one's numbers.
pub trait History: Send + Sync + 'static {
    /// What history holds of `journal` of `device`. A journal not seen before replaces the
    /// device's current one (recorded); one that was replaced before is refused with
    /// [`HistoryError::StaleJournal`]. Not durable until [`History::flush`], and needs not be:
    /// the first ingest from the journal does the same.
    fn open_journal(
        &self,
        device: &str,
        journal: JournalId,
        now_ms: i64,
    ) -> Result<JournalView, HistoryError>;
    /// The device's cursor in history's numbering (across its journals; 0 for a new device).
    fn cursor(&self, device: &str) -> Result<Seq, HistoryError>;
    /// Stores the entries above the journal's cursor and moves the cursor to `through`.
    /// Idempotent: anything at or below the cursor is absorbed, however late it comes. Not
    /// durable until [`History::flush`].
    fn ingest(&self, batch: &Batch<'_>) -> Result<IngestOutcome, HistoryError>;
    /// Makes every ingest so far durable.
    fn flush(&self) -> Result<(), HistoryError>;
    /// Records that a device connected (for the device list).
    fn seen(&self, device: &str, now_ms: i64) -> Result<(), HistoryError>;

    fn route(
        &self,
        courier: &str,
        from_ms: i64,
        to_ms: i64,
        page: &PageRequest,
    ) -> Result<Page<RoutePoint>, HistoryError>;
    fn task(&self, task: &str, page: &PageRequest) -> Result<Option<TaskTimeline>, HistoryError>;
    /// Alerts by the time they opened, oldest first.
    fn alerts(&self, filter: &AlertFilter, page: &PageRequest)
    -> Result<Page<Alert>, HistoryError>;
    /// One decision with its prediction log (features, score, factors, model, modules,
    /// release, alert step) by its prediction id, and the device that made it.
    fn prediction(&self, id: &str) -> Result<Option<serde_json::Value>, HistoryError>;
    /// One alert by its id (the prediction id of the decision that opened it).
    fn alert(&self, id: &str) -> Result<Option<Alert>, HistoryError>;
    fn latest_courier(&self, courier: &str) -> Result<Option<Latest>, HistoryError>;
    /// The latest known of every courier, by courier id.
    fn latest_couriers(&self, page: &PageRequest) -> Result<Page<Latest>, HistoryError>;
    /// Every alert open now (one per task, or per courier without a task).
    fn open_alerts(&self, page: &PageRequest) -> Result<Page<Alert>, HistoryError>;
    fn devices(&self, now_ms: i64, page: &PageRequest) -> Result<Page<DeviceStatus>, HistoryError>;
    fn dead_letters(
        &self,
        filter: &DeadLetterFilter,
        page: &PageRequest,
    ) -> Result<DeadLetters, HistoryError>;
    fn stats(&self) -> Result<Stats, HistoryError>;
    /// Drift windows of `model` binned by the baseline `fingerprint`, those starting in
    /// `[from_ms, to_ms)` (event time), in time order.
    fn drift(
        &self,
        model: &str,
        fingerprint: u64,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(i64, crate::drift::DriftRow)>, HistoryError>;
    /// The first and the newest window of `model`'s drift under that baseline.
    fn drift_span(&self, model: &str, fingerprint: u64)
    -> Result<Option<(i64, i64)>, HistoryError>;
}
