//! Where the aggregator keeps history, behind [`History`] so a PostgreSQL backend can sit
//! beside the embedded sled one.

mod keys;
mod plan;
mod rows;
mod sled_store;
mod views;

pub use sled_store::SledHistory;
pub use views::{
    Alert, DeviceStatus, Latest, RoutePoint, StateSummary, Stats, TaskTimeline, TimelineItem,
};

use fleet_proto::record::Severity;
use fleet_proto::{Entry, Seq};
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
}

/// What one ingest did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IngestOutcome {
    pub stored: u64,
    /// Entries at or below the device's cursor: already in history, absorbed.
    pub duplicates: u64,
    pub events: u64,
    pub decisions: u64,
    pub alerts: u64,
}

/// Durable, idempotent history of what devices sent.
pub trait History: Send + Sync + 'static {
    /// The highest sequence of `device` already in history (0 for a new device).
    fn cursor(&self, device: &str) -> Result<Seq, HistoryError>;
    /// Stores the entries above the device's cursor and moves the cursor to `through`.
    /// Idempotent: anything at or below the cursor is absorbed, however late it comes. Not
    /// durable until [`History::flush`].
    fn ingest(
        &self,
        device: &str,
        through: Seq,
        entries: &[Entry],
        now_ms: i64,
    ) -> Result<IngestOutcome, HistoryError>;
    /// Makes every ingest so far durable.
    fn flush(&self) -> Result<(), HistoryError>;
    /// Records that a device connected (for the device list).
    fn seen(&self, device: &str, now_ms: i64) -> Result<(), HistoryError>;

    fn route(
        &self,
        courier: &str,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<RoutePoint>, HistoryError>;
    fn task(&self, task: &str, limit: usize) -> Result<Option<TaskTimeline>, HistoryError>;
    fn alerts(
        &self,
        since_ms: i64,
        min: Severity,
        limit: usize,
    ) -> Result<Vec<Alert>, HistoryError>;
    fn latest_courier(&self, courier: &str) -> Result<Option<Latest>, HistoryError>;
    fn devices(&self) -> Result<Vec<DeviceStatus>, HistoryError>;
    fn stats(&self) -> Result<Stats, HistoryError>;
}
