//! Key encoding for the single-tree sled layout. Strings are length-prefixed so ids may hold
//! any byte; times are big-endian with the sign bit flipped so they sort.

use fleet_proto::Seq;

use super::alerts::AlertOf;

pub(crate) const DEVICE: u8 = b'D';
pub(crate) const RECORD: u8 = b'R';
pub(crate) const ROUTE: u8 = b'P';
pub(crate) const TASK: u8 = b'T';
/// Layout 3's alert per decision; no longer written (see [`ALERT_BY_TIME`]).
#[allow(dead_code)]
pub(crate) const ALERT: u8 = b'A';
/// Alert objects by the time they opened and their id.
pub(crate) const ALERT_BY_TIME: u8 = b'B';
/// An alert's open time by its id.
pub(crate) const ALERT_ID: u8 = b'O';
/// The open alert of a task (or of a courier without a task).
pub(crate) const ALERT_OPEN: u8 = b'Q';
/// Where a decision is stored, by its prediction id.
pub(crate) const PREDICTION: u8 = b'F';
pub(crate) const LATEST_TASK: u8 = b'L';
pub(crate) const LATEST_COURIER: u8 = b'M';
pub(crate) const SCHEMA: u8 = b'S';
pub(crate) const COUNTER: u8 = b'G';
pub(crate) const STATE: u8 = b'K';
pub(crate) const LAYOUT: u8 = b'V';
pub(crate) const SEEN: u8 = b'E';
pub(crate) const DEAD_LETTER: u8 = b'X';
/// Drift histograms by model, baseline fingerprint and window.
pub(crate) const DRIFT: u8 = b'H';
/// The first and newest drift window of a model's baseline.
pub(crate) const DRIFT_SPAN: u8 = b'W';

pub(crate) struct Key(pub(crate) Vec<u8>);

impl Key {
    pub(crate) fn new(prefix: u8) -> Self {
        Self(vec![prefix])
    }
    pub(crate) fn str(mut self, s: &str) -> Self {
        let len = u8::try_from(s.len().min(255)).expect("clamped");
        self.0.push(len);
        self.0.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
        self
    }
    pub(crate) fn time(mut self, ms: i64) -> Self {
        self.0
            .extend_from_slice(&((ms as u64) ^ (1 << 63)).to_be_bytes());
        self
    }
    pub(crate) fn u64(mut self, n: u64) -> Self {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }
    /// Records no index holds (decisions without a task).
    pub(crate) fn record(device: &str, seq: Seq) -> Self {
        Self::new(RECORD).str(device).u64(seq)
    }
    /// A dead-lettered event of a device.
    pub(crate) fn dead_letter(device: &str, event_id: &str) -> Self {
        Self::new(DEAD_LETTER).str(device).str(event_id)
    }
    /// A courier's event at `time_ms`: the route index, and where events are stored.
    pub(crate) fn route(courier: &str, time_ms: i64, device: &str, seq: Seq) -> Self {
        Self::new(ROUTE)
            .str(courier)
            .time(time_ms)
            .str(device)
            .u64(seq)
    }
    /// Where the decision with this prediction id is stored.
    pub(crate) fn prediction(id: &str) -> Self {
        Self::new(PREDICTION).str(id)
    }
    /// An alert object.
    pub(crate) fn alert(opened_ms: i64, id: &str) -> Self {
        Self::new(ALERT_BY_TIME).time(opened_ms).str(id)
    }
    /// Where an alert's open time is found by its id.
    pub(crate) fn alert_id(id: &str) -> Self {
        Self::new(ALERT_ID).str(id)
    }
    /// Where the open alert of a task, or of a courier without a task, is found.
    pub(crate) fn alert_open(of: AlertOf<'_>) -> Self {
        match of {
            AlertOf::Task(task) => Self::new(ALERT_OPEN).str("t").str(task),
            AlertOf::Courier(courier) => Self::new(ALERT_OPEN).str("c").str(courier),
        }
    }
    /// A model's drift histograms of one window, binned by the baseline `fingerprint`.
    pub(crate) fn drift(model: &str, fingerprint: u64, window_ms: i64) -> Self {
        Self::new(DRIFT).str(model).u64(fingerprint).time(window_ms)
    }
    /// Where the span of a model's drift windows is found.
    pub(crate) fn drift_span(model: &str, fingerprint: u64) -> Self {
        Self::new(DRIFT_SPAN).str(model).u64(fingerprint)
    }
    /// A task's event or decision at `time_ms`.
    pub(crate) fn task(task: &str, time_ms: i64, device: &str, seq: Seq) -> Self {
        Self::new(TASK).str(task).time(time_ms).str(device).u64(seq)
    }
}

/// Reads back what [`Key::time`] wrote at `at`.
pub(crate) fn time_at(key: &[u8], at: usize) -> Option<i64> {
    let b: [u8; 8] = key.get(at..at + 8)?.try_into().ok()?;
    Some((u64::from_be_bytes(b) ^ (1 << 63)) as i64)
}
