//! Conversions from what the pipeline speaks (producer events, decisions) to what the journal
//! and the wire carry ([`fleet_proto::record`]).

use fleet_proto::record::{
    ActionRecord, DecisionRecord, EventKind, EventRecord, GeoE7, Schema, Severity as WireSeverity,
    TaskContext,
};
use xxhash_rust::xxh3::xxh3_64;

use crate::decision::{Action, Decision, Severity};
use crate::event::{Event, EventType};

fn kind(t: EventType) -> EventKind {
    match t {
        EventType::TaskAssigned => EventKind::TaskAssigned,
        EventType::Location => EventKind::Location,
        EventType::ArrivedPickup => EventKind::ArrivedPickup,
        EventType::PickedUp => EventKind::PickedUp,
        EventType::ArrivedDropoff => EventKind::ArrivedDropoff,
        EventType::Delivered => EventKind::Delivered,
        EventType::DeliveryFailed => EventKind::DeliveryFailed,
    }
}

fn severity(s: Severity) -> WireSeverity {
    match s {
        Severity::Info => WireSeverity::Info,
        Severity::Warning => WireSeverity::Warning,
        Severity::Critical => WireSeverity::Critical,
    }
}

pub fn event_record(e: &Event) -> EventRecord {
    let has_context = e.pickup.is_some()
        || e.dropoff.is_some()
        || e.promised_at.is_some()
        || e.stops_remaining.is_some()
        || e.order_type.is_some()
        || e.vehicle_type.is_some()
        || e.courier_rating.is_some()
        || e.courier_age.is_some();
    EventRecord {
        event_id: e.event_id.clone(),
        courier_id: e.courier_id.clone(),
        task_id: e.task_id.clone(),
        event_type: kind(e.event_type),
        time_ms: e.event_time_ms(),
        utc_offset_s: e.event_time.offset().local_minus_utc(),
        position: GeoE7::from_degrees(e.lat, e.lon),
        speed_kmh: e.speed_kmh,
        accuracy_m: e.accuracy_m,
        context: has_context.then(|| {
            Box::new(TaskContext {
                pickup: e.pickup.map(|g| GeoE7::from_degrees(g.lat, g.lon)),
                dropoff: e.dropoff.map(|g| GeoE7::from_degrees(g.lat, g.lon)),
                promised_at_ms: e.promised_at.map(|t| t.timestamp_millis()),
                stops_remaining: e.stops_remaining,
                order_type: e.order_type.clone(),
                vehicle_type: e.vehicle_type.clone(),
                courier_rating: e.courier_rating,
                courier_age: e.courier_age,
            })
        }),
    }
}

/// The schema naming a decision's features (its id is a hash of model and names).
pub fn schema_of(d: &Decision) -> Schema {
    let model = format!("{}@{}", d.model_name, d.model_version);
    let mut h = model.clone();
    for n in d.features.names.iter() {
        h.push('\0');
        h.push_str(n);
    }
    Schema {
        id: xxh3_64(h.as_bytes()),
        model,
        feature_names: d.features.names.to_vec(),
    }
}

pub fn decision_record(d: &Decision, schema: &Schema) -> DecisionRecord {
    DecisionRecord {
        event_id: d.event_id.clone(),
        prediction_id: d.prediction_id.clone(),
        courier_id: d.courier_id.clone(),
        task_id: d.task_id.clone(),
        time_ms: d.event_time.timestamp_millis(),
        score: d.score,
        severity: severity(d.severity),
        actions: d
            .actions
            .iter()
            .map(|a| match a {
                Action::Alert {
                    severity: s,
                    message,
                } => ActionRecord::Alert {
                    severity: severity(*s),
                    message: message.clone(),
                },
                Action::NotifyCourier { message } => ActionRecord::NotifyCourier {
                    message: message.clone(),
                },
                Action::Reassign { reason } => ActionRecord::Reassign {
                    reason: reason.clone(),
                },
                Action::Surge { multiplier } => ActionRecord::Surge {
                    multiplier: *multiplier,
                },
            })
            .collect(),
        model: schema.model.clone(),
        modules: [
            d.modules.features.clone(),
            d.modules.scorer.clone(),
            d.modules.policy.clone(),
        ],
        schema: schema.id,
        features: d.features.values.clone(),
        top_factors: d
            .top_factors
            .iter()
            .filter_map(|f| {
                let i = d.features.names.iter().position(|n| *n == f.feature)?;
                Some((i as u32, f.contribution))
            })
            .collect(),
        release: d.modules.release.clone(),
        alert_step: d.alert_step,
    }
}
