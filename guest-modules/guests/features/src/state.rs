//! What the module remembers about one task between batches, and its byte encoding.

use serde::{Deserialize, Serialize};

/// Bumped when the layout changes; a state of another version is discarded on decode.
const STATE_VERSION: u8 = 2;
/// Recent fixes kept for the rolling speed and the GPS gap, by event time.
pub(crate) const MAX_FIXES: usize = 6;
/// Recent event ids remembered for duplicate suppression inside the module. The host keeps the
/// long-horizon dedup index; this catches duplicates inside and across nearby batches.
pub(crate) const MAX_SEEN: usize = 32;
/// Room for the encoding of a state with every list full.
const ENCODED_CAPACITY: usize = 512;

#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
pub(crate) struct TaskState {
    pub(crate) context: Option<Context>,
    pub(crate) assigned_at: Option<i64>,
    pub(crate) arrived_pickup_at: Option<i64>,
    pub(crate) picked_up_at: Option<i64>,
    pub(crate) arrived_dropoff_at: Option<i64>,
    pub(crate) finished_at: Option<i64>,
    /// Sorted by time, oldest first.
    pub(crate) fixes: Vec<Fix>,
    /// The latest event time folded: the module's "now" for this task.
    pub(crate) latest_ms: i64,
    pub(crate) latest_utc_offset_min: i32,
    /// FNV-1a hashes (32-bit) of recent event ids, oldest first.
    pub(crate) seen: Vec<u32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub(crate) struct Context {
    pub(crate) assigned_at: i64,
    pub(crate) pickup: (f64, f64),
    pub(crate) dropoff: (f64, f64),
    /// Pickup to dropoff, computed once.
    pub(crate) route_km: f32,
    pub(crate) promised_at: i64,
    pub(crate) stops_remaining: u32,
    pub(crate) order_code: f32,
    pub(crate) vehicle_code: f32,
    pub(crate) rating: f32,
    pub(crate) age: f32,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub(crate) struct Fix {
    pub(crate) t: i64,
    pub(crate) lat: f64,
    pub(crate) lon: f64,
    pub(crate) speed_kmh: Option<f32>,
    /// Distance from the previous fix (0 for the oldest kept), kept up to date on insert.
    pub(crate) segment_km: f64,
}

impl TaskState {
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let (&version, rest) = bytes.split_first()?;
        if version != STATE_VERSION {
            return None;
        }
        postcard::from_bytes(rest).ok()
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        // One allocation that fits a full state (under 500 bytes) instead of a growing one.
        let mut out = Vec::with_capacity(ENCODED_CAPACITY);
        out.push(STATE_VERSION);
        // Serializing plain owned data into a Vec cannot fail.
        postcard::to_extend(self, out).unwrap_or_else(|_| vec![STATE_VERSION])
    }
}
