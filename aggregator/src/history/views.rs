//! What history answers with (JSON over the API), and the rows stored for the indexes.

use std::borrow::Cow;

use fleet_proto::record::{
    ActionRecord, DecisionRecord, EventRecord, FailureCause, Schema, Severity, Stage,
};
use serde::{Deserialize, Serialize};

pub(crate) fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// One position of a courier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoutePoint {
    pub time: String,
    pub lat: f64,
    pub lon: f64,
    pub event_type: String,
    pub event_id: String,
    pub task_id: Option<String>,
    pub speed_kmh: Option<f32>,
    pub device: String,
}

/// Stored under the task index: the event's courier (the event itself is stored once, under
/// the route index, at the same time, device and sequence), or the decision itself.
#[derive(Serialize, Deserialize)]
pub(crate) enum TaskItem<'a> {
    Event { courier_id: Cow<'a, str> },
    Decision(Box<Cow<'a, DecisionRecord>>),
}

/// The latest feature state of a key (task, or courier without a task), compacted: each
/// newer state overwrites the one before.
#[derive(Serialize, Deserialize)]
pub(crate) struct StateRow<'a> {
    pub(crate) device: Cow<'a, str>,
    pub(crate) seq: u64,
    pub(crate) module: Cow<'a, str>,
    pub(crate) bytes: Cow<'a, [u8]>,
}

/// What history holds of a key's feature state (the bytes are the module's own).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StateSummary {
    pub module: String,
    pub device: String,
    pub seq: u64,
    pub bytes: usize,
}

impl StateRow<'_> {
    pub(crate) fn summary(&self) -> StateSummary {
        StateSummary {
            module: self.module.to_string(),
            device: self.device.to_string(),
            seq: self.seq,
            bytes: self.bytes.len(),
        }
    }
}

/// An alert: one per task and episode of risk, from the decision that opened it to the one
/// that resolved it (or the task's end).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// The prediction id of the decision that opened it.
    pub id: String,
    pub state: super::alerts::AlertState,
    /// The highest it reached.
    pub severity: String,
    pub task_id: Option<String>,
    pub courier_id: String,
    pub device: String,
    pub opened: String,
    pub escalated: Option<String>,
    pub resolved: Option<String>,
    /// Why it resolved: the risk fell back, or the task ended.
    pub resolution: Option<String>,
    pub peak_score: f32,
    pub peak_at: String,
    /// The message and factors of the decision that last raised it.
    pub message: String,
    pub top_factors: Vec<FactorView>,
    /// `name@version` of the model, the modules (`name@version+digest`) and the release
    /// (`name@version+id`; none for modules outside a release) that last raised it.
    pub model: String,
    pub modules: ModulesView,
    pub release: Option<String>,
    /// Raises while it was open that changed nothing (a policy without state alerts on every
    /// risky event).
    pub repeats: u32,
}

/// A feature's signed contribution to a score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FactorView {
    pub feature: String,
    pub contribution: f32,
}

/// The modules that made a decision, by kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModulesView {
    pub features: String,
    pub scorer: String,
    pub policy: String,
}

impl ModulesView {
    pub(crate) fn of(m: &[String; 3]) -> Self {
        Self {
            features: m[0].clone(),
            scorer: m[1].clone(),
            policy: m[2].clone(),
        }
    }
}

/// Which alerts to list.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AlertFilter {
    /// Opened at or after.
    pub since_ms: Option<i64>,
    /// At least this severe.
    pub min: Option<Severity>,
    pub state: Option<super::alerts::AlertState>,
    pub task: Option<String>,
    pub courier: Option<String>,
    pub device: Option<String>,
    /// `name@version` of the model that last raised it.
    pub model: Option<String>,
}

/// The latest known of a task or courier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Latest {
    pub time: String,
    pub time_ms: i64,
    pub event_type: String,
    pub lat: f64,
    pub lon: f64,
    pub courier_id: String,
    pub task_id: Option<String>,
    pub score: Option<f32>,
    pub severity: Option<String>,
    pub device: String,
}

/// A task's history, oldest first.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskTimeline {
    pub task_id: String,
    pub latest: Option<Latest>,
    /// The task's latest feature state, as the device last synced it.
    pub state: Option<StateSummary>,
    pub items: Vec<TimelineItem>,
    /// The cursor of the next page of items (none: this was the last).
    pub next_cursor: Option<String>,
}

/// One event or decision of a task.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TimelineItem {
    pub kind: &'static str,
    pub time: String,
    pub device: String,
    pub seq: u64,
    pub data: serde_json::Value,
}

/// Sync status of one device.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceStatus {
    pub device: String,
    /// The journal the device syncs from (hex), and how many times it started over with a
    /// new one.
    pub journal: Option<String>,
    pub journal_resets: u32,
    /// Highest sequence of the current journal stored (everything up to it is in history).
    pub journal_seq: u64,
    /// The device's journal head when it last sent a batch.
    pub journaled: u64,
    /// Entries the device reported journaled that history does not hold yet.
    pub unsynced: u64,
    /// How long history has been missing entries the device reported journaled: 0 when it
    /// held all of them at the device's last batch. A device that went quiet keeps the lag it
    /// had; see `last_seen`.
    pub lag_ms: i64,
    /// Highest sequence stored in history's numbering, across the device's journals.
    pub last_seq: u64,
    pub last_seen: String,
    pub last_seen_ms: i64,
    pub events: u64,
    pub decisions: u64,
}

/// Which dead letters to list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeadLetterFilter {
    pub state: Option<DeadLetterState>,
    pub device: Option<String>,
}

/// Where a dead letter stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeadLetterState {
    /// Its modules failed on it and no retry has scored it yet (it waits on its device).
    Open,
    /// A later retry scored it.
    Rescored,
}

/// One event a device's modules failed on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub device: String,
    pub event_id: String,
    pub courier_id: String,
    pub task_id: Option<String>,
    pub event_time: String,
    pub state: DeadLetterState,
    /// Attempts so far, the first included.
    pub attempts: u32,
    /// The last failure: where, why, which module, its message.
    pub stage: Stage,
    pub cause: FailureCause,
    pub module: String,
    pub error: String,
    /// The decision of the retry that scored it (none for an event only folded into state).
    pub prediction_id: Option<String>,
}

/// Failures of one module at one stage for one cause.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Failures {
    pub module: String,
    pub stage: Stage,
    pub cause: FailureCause,
    /// Failed attempts (an event that failed twice counts twice).
    pub count: u64,
}

/// Dead letters: the totals, the failures by module and cause, and one page of the list.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeadLetters {
    pub open: u64,
    pub rescored: u64,
    pub failures: Vec<Failures>,
    pub items: Vec<DeadLetter>,
    pub next_cursor: Option<String>,
}

/// Totals.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Stats {
    pub events: u64,
    pub decisions: u64,
    pub alerts: u64,
    pub states: u64,
    pub devices: u64,
    pub duplicates_absorbed: u64,
    /// Events whose modules failed on them and no retry has scored yet.
    pub dead_letters_open: u64,
    /// Dead letters a later retry scored.
    pub dead_letters_rescored: u64,
    /// Decisions since this aggregator started of models whose training baseline it does not
    /// know (not counted for drift).
    pub decisions_without_baseline: u64,
}

pub(crate) fn event_json(e: &EventRecord) -> serde_json::Value {
    let mut v = serde_json::json!({
        "event_id": e.event_id,
        "courier_id": e.courier_id,
        "task_id": e.task_id,
        "event_type": e.event_type.as_str(),
        "event_time": rfc3339(e.time_ms),
        "lat": e.position.lat_deg(),
        "lon": e.position.lon_deg(),
        "speed_kmh": e.speed_kmh,
        "accuracy_m": e.accuracy_m,
    });
    if let Some(c) = &e.context {
        v["context"] = serde_json::json!({
            "pickup": c.pickup.map(|g| [g.lat_deg(), g.lon_deg()]),
            "dropoff": c.dropoff.map(|g| [g.lat_deg(), g.lon_deg()]),
            "promised_at": c.promised_at_ms.map(rfc3339),
            "stops_remaining": c.stops_remaining,
            "order_type": c.order_type,
            "vehicle_type": c.vehicle_type,
            "courier_rating": c.courier_rating,
            "courier_age": c.courier_age,
        });
    }
    v
}

/// Feature `i` of a schema's `names`, or `f<i>` when the schema is not known.
pub(crate) fn feature_name(names: Option<&[String]>, i: usize) -> String {
    names
        .and_then(|n| n.get(i).cloned())
        .unwrap_or_else(|| format!("f{i}"))
}

pub(crate) fn decision_json(d: &DecisionRecord, schema: Option<&Schema>) -> serde_json::Value {
    let names = schema.map(|s| s.feature_names.as_slice());
    let name = |i: usize| feature_name(names, i);
    let features: serde_json::Map<String, serde_json::Value> = d
        .features
        .iter()
        .enumerate()
        .map(|(i, v)| (name(i), serde_json::json!(v.is_finite().then_some(*v))))
        .collect();
    let actions: Vec<serde_json::Value> = d
        .actions
        .iter()
        .map(|a| match a {
            ActionRecord::Alert { severity, message } => {
                serde_json::json!({"kind": "alert", "severity": severity.as_str(), "message": message})
            }
            ActionRecord::NotifyCourier { message } => {
                serde_json::json!({"kind": "notify_courier", "message": message})
            }
            ActionRecord::Reassign { reason } => serde_json::json!({"kind": "reassign", "reason": reason}),
            ActionRecord::Surge { multiplier } => serde_json::json!({"kind": "surge", "multiplier": multiplier}),
        })
        .collect();
    serde_json::json!({
        "event_id": d.event_id,
        "prediction_id": d.prediction_id,
        "courier_id": d.courier_id,
        "task_id": d.task_id,
        "event_time": rfc3339(d.time_ms),
        "score": d.score,
        "severity": d.severity.as_str(),
        "actions": actions,
        "model": d.model,
        "modules": {"features": d.modules[0], "scorer": d.modules[1], "policy": d.modules[2]},
        "release": d.release,
        "alert_step": d.alert_step.map(|s| s.as_str()),
        "features": features,
        "top_factors": d.top_factors.iter().map(|(i, c)| serde_json::json!({"feature": name(*i as usize), "contribution": c})).collect::<Vec<_>>(),
    })
}
