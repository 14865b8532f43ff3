//! What a durable batch means live: each event a position (and a task's status change a task
//! event), each alert step an alert event; devices and releases report through the same items.

use fleet_proto::record::{EventKind, EventRecord, Severity};
use fleet_proto::{Entry, Record};

use super::{LiveEvent, Topic};
use crate::history::AlertChange;

/// A live event before the feed numbers it.
#[derive(Debug)]
pub(crate) struct Item {
    pub(crate) topic: Topic,
    pub(crate) courier: Option<String>,
    pub(crate) task: Option<String>,
    pub(crate) position: Option<(f64, f64)>,
    pub(crate) severity: Option<Severity>,
    /// Event time, for thinning positions.
    pub(crate) time_ms: Option<i64>,
    pub(crate) data: serde_json::Value,
}

impl Item {
    pub(crate) fn numbered(self, seq: u64) -> LiveEvent {
        let json = serde_json::json!({"seq": seq, "topic": self.topic.as_str(), "data": self.data})
            .to_string();
        LiveEvent {
            seq,
            topic: self.topic,
            courier: self.courier,
            task: self.task,
            position: self.position,
            severity: self.severity,
            json,
        }
    }
}

/// Live events in the order they happened, not yet numbered.
#[derive(Debug, Default)]
pub struct Derived(Vec<Item>);

impl Derived {
    pub(crate) fn push(&mut self, item: Item) {
        self.0.push(item);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn into_items(self) -> Vec<Item> {
        self.0
    }

    /// The positions and task status changes of a device's stored entries, and the steps its
    /// alerts took.
    pub fn batch(&mut self, device: &str, entries: &[Entry], alert_steps: Vec<AlertChange>) {
        for entry in entries {
            if let Record::Event(e) = &entry.record {
                self.push(position(device, e));
                if e.task_id.is_some() && e.event_type != EventKind::Location {
                    self.push(task_status(device, e));
                }
            }
        }
        for change in alert_steps {
            self.push(alert(change));
        }
    }

    /// A device connected or went away.
    pub fn device(&mut self, device: &str, connected: bool, at_ms: i64) {
        self.push(device_item(serde_json::json!({
            "kind": if connected { "connected" } else { "disconnected" },
            "device": device,
            "time": crate::history::rfc3339(at_ms),
        })));
    }

    /// A device's report on a release (offered, downloading, verified, active, failed).
    pub fn release(&mut self, device: &str, report: serde_json::Value) {
        self.push(device_item(
            serde_json::json!({"kind": "release", "device": device, "release": report}),
        ));
    }
}

impl Derived {
    /// A model's drift alert was raised or cleared.
    pub fn drift(&mut self, report: &crate::drift::DriftReport) {
        self.push(Item {
            topic: Topic::Drift,
            courier: None,
            task: None,
            position: None,
            severity: report.alert.then_some(Severity::Warning),
            time_ms: None,
            data: serde_json::to_value(report).unwrap_or_default(),
        });
    }
}

fn device_item(data: serde_json::Value) -> Item {
    Item {
        topic: Topic::Devices,
        courier: None,
        task: None,
        position: None,
        severity: None,
        time_ms: None,
        data,
    }
}

fn position(device: &str, e: &EventRecord) -> Item {
    let (lat, lon) = (e.position.lat_deg(), e.position.lon_deg());
    Item {
        topic: Topic::Positions,
        courier: Some(e.courier_id.clone()),
        task: e.task_id.clone(),
        position: Some((lat, lon)),
        severity: None,
        time_ms: Some(e.time_ms),
        data: serde_json::json!({
            "event_id": e.event_id,
            "courier_id": e.courier_id,
            "task_id": e.task_id,
            "lat": lat,
            "lon": lon,
            "speed_kmh": e.speed_kmh,
            "time": crate::history::rfc3339(e.time_ms),
            "device": device,
        }),
    }
}

fn task_status(device: &str, e: &EventRecord) -> Item {
    let mut data = crate::history::event_json(e);
    data["device"] = device.into();
    Item {
        topic: Topic::Tasks,
        courier: Some(e.courier_id.clone()),
        task: e.task_id.clone(),
        position: Some((e.position.lat_deg(), e.position.lon_deg())),
        severity: None,
        time_ms: Some(e.time_ms),
        data,
    }
}

fn alert(change: AlertChange) -> Item {
    let a = &change.alert;
    Item {
        topic: Topic::Alerts,
        courier: Some(a.courier_id.clone()),
        task: a.task_id.clone(),
        position: None,
        severity: Severity::parse(&a.severity),
        time_ms: None,
        data: serde_json::json!({"step": change.step.as_str(), "alert": a}),
    }
}
