//! The rows history keeps per device, per task and courier (latest), and its counters, with
//! the rules that move them.

use fleet_proto::Seq;
use fleet_proto::record::{DecisionRecord, EventRecord, GeoE7, Severity};
use serde::{Deserialize, Serialize};

use super::plan::Fold;
use super::views::{self, Latest};

/// Stored per device.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct DeviceRow {
    pub(crate) cursor: Seq,
    pub(crate) last_seen_ms: i64,
    pub(crate) last_event_ms: Option<i64>,
    pub(crate) last_ingest_ms: Option<i64>,
    pub(crate) events: u64,
    pub(crate) decisions: u64,
}

/// Stored per task and per courier.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct LatestRow {
    pub(crate) time_ms: i64,
    pub(crate) event_type: String,
    pub(crate) position: Option<GeoE7>,
    pub(crate) courier_id: String,
    pub(crate) task_id: Option<String>,
    pub(crate) score_time_ms: i64,
    pub(crate) score: Option<f32>,
    pub(crate) severity: Option<Severity>,
    pub(crate) device: String,
}

impl LatestRow {
    /// Moves the row by one event or decision: the newest by event time wins.
    pub(crate) fn fold(&mut self, device: &str, fold: Fold<'_>) {
        match fold {
            Fold::Event(e) => self.fold_event(device, e),
            Fold::Decision(d) => self.fold_decision(d),
        }
    }

    fn fold_event(&mut self, device: &str, e: &EventRecord) {
        if e.time_ms >= self.time_ms || self.event_type.is_empty() {
            self.time_ms = e.time_ms;
            self.event_type = e.event_type.as_str().into();
            self.position = Some(e.position);
            self.courier_id.clone_from(&e.courier_id);
            self.task_id.clone_from(&e.task_id);
            self.device = device.into();
        }
    }

    fn fold_decision(&mut self, d: &DecisionRecord) {
        if d.time_ms >= self.score_time_ms || self.score.is_none() {
            self.score_time_ms = d.time_ms;
            self.score = Some(d.score);
            self.severity = Some(d.severity);
        }
    }

    pub(crate) fn view(&self) -> Latest {
        let p = self.position.unwrap_or(GeoE7 { lat: 0, lon: 0 });
        Latest {
            time: views::rfc3339(self.time_ms),
            time_ms: self.time_ms,
            event_type: self.event_type.clone(),
            lat: p.lat_deg(),
            lon: p.lon_deg(),
            courier_id: self.courier_id.clone(),
            task_id: self.task_id.clone(),
            score: self.score,
            severity: self.severity.map(|s| s.as_str().into()),
            device: self.device.clone(),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Counters {
    pub(crate) events: u64,
    pub(crate) decisions: u64,
    pub(crate) alerts: u64,
    pub(crate) states: u64,
    pub(crate) duplicates: u64,
}
