//! Folding events into a task's state, and reading the feature vector off the state.

use crate::fleet::edge::types::{Event, EventType};
use crate::geo::haversine_km;
use crate::state::{Context, Fix, MAX_FIXES, MAX_SEEN, TaskState};

/// The vector layout. `models/late_risk/features.toml` is the specification; a host test
/// fails if the two disagree.
pub(crate) const FEATURE_NAMES: [&str; 15] = [
    "distance_to_dropoff_km",
    "route_distance_km",
    "minutes_since_assigned",
    "minutes_since_pickup",
    "minutes_to_promise",
    "courier_speed_kmh",
    "gps_gap_s",
    "stops_remaining",
    "hour_of_day",
    "weekday",
    "phase",
    "courier_rating",
    "courier_age",
    "vehicle_type",
    "order_type",
];

/// Segments faster than this are GPS jumps, not movement, and do not count towards speed.
const MAX_PLAUSIBLE_KMH: f64 = 200.0;
/// The rolling speed needs at least this much time between the fixes it spans.
const MIN_SPEED_SPAN_MS: i64 = 5_000;
const MS_PER_MIN: f32 = 60_000.0;
const MS_PER_HOUR: i64 = 3_600_000;
const MS_PER_DAY: i64 = 86_400_000;

/// Folds `events` into `task` in event-time order and returns, in input order, the features
/// as of each event (none for events that are not scored).
pub(crate) fn fold_batch(task: &mut TaskState, events: &[Event]) -> Vec<Option<Vec<f32>>> {
    let mut order: Vec<usize> = (0..events.len()).collect();
    order.sort_by_key(|&i| events[i].event_time_ms);
    let mut out = vec![None; events.len()];
    for i in order {
        let event = &events[i];
        if !remember(task, &event.event_id) {
            continue;
        }
        fold_event(task, event);
        if scorable(task, event) {
            out[i] = Some(features(task));
        }
    }
    out
}

/// Records the event id; false when it was seen recently (a duplicate, counted once).
fn remember(task: &mut TaskState, event_id: &str) -> bool {
    // 32 bits are plenty to tell apart the last few dozen ids of one task.
    let hash = fnv1a(event_id.as_bytes()) as u32;
    if task.seen.contains(&hash) {
        return false;
    }
    if task.seen.len() == MAX_SEEN {
        task.seen.remove(0);
    }
    task.seen.push(hash);
    true
}

fn fold_event(task: &mut TaskState, event: &Event) {
    let t = event.event_time_ms;
    if task.seen.len() == 1 || t >= task.latest_ms {
        task.latest_ms = t;
        task.latest_utc_offset_min = event.utc_offset_min;
    }
    let first = |slot: &mut Option<i64>| *slot = Some(slot.map_or(t, |s| s.min(t)));
    match event.event_type {
        EventType::TaskAssigned => {
            first(&mut task.assigned_at);
            if let Some(ctx) = &event.task {
                // A re-assignment (new promise, new stops) replaces an older context.
                if task.context.as_ref().is_none_or(|c| t >= c.assigned_at) {
                    task.context = Some(Context {
                        assigned_at: t,
                        pickup: (ctx.pickup.lat, ctx.pickup.lon),
                        dropoff: (ctx.dropoff.lat, ctx.dropoff.lon),
                        route_km: haversine_km(
                            ctx.pickup.lat,
                            ctx.pickup.lon,
                            ctx.dropoff.lat,
                            ctx.dropoff.lon,
                        ) as f32,
                        promised_at: ctx.promised_at_ms,
                        stops_remaining: ctx.stops_remaining,
                        order_code: order_code(&ctx.order_type),
                        vehicle_code: vehicle_code(&ctx.vehicle_type),
                        rating: ctx.courier_rating.unwrap_or(f32::NAN),
                        age: ctx.courier_age.unwrap_or(f32::NAN),
                    });
                }
            }
        }
        EventType::ArrivedPickup => first(&mut task.arrived_pickup_at),
        EventType::PickedUp => first(&mut task.picked_up_at),
        EventType::ArrivedDropoff => first(&mut task.arrived_dropoff_at),
        EventType::Delivered | EventType::DeliveryFailed => first(&mut task.finished_at),
        EventType::Location => {}
    }
    add_fix(task, event);
}

/// Inserts the event's position among the recent fixes, by time, keeping the newest few.
fn add_fix(task: &mut TaskState, event: &Event) {
    let (lat, lon) = (event.position.lat, event.position.lon);
    // (0, 0) is what broken GPS stacks report for "no fix".
    if lat == 0.0 && lon == 0.0 {
        return;
    }
    let fix = Fix {
        t: event.event_time_ms,
        lat,
        lon,
        speed_kmh: event.speed_kmh,
        segment_km: 0.0,
    };
    let i = match task.fixes.binary_search_by_key(&fix.t, |f| f.t) {
        // Two fixes with one timestamp: keep the later report.
        Ok(i) => {
            task.fixes[i] = fix;
            i
        }
        Err(i) => {
            task.fixes.insert(i, fix);
            i
        }
    };
    // Only the new fix's segment and the one after it change.
    for j in [i, i + 1] {
        if j > 0 && j < task.fixes.len() {
            let (a, b) = (task.fixes[j - 1], task.fixes[j]);
            task.fixes[j].segment_km = haversine_km(a.lat, a.lon, b.lat, b.lon);
        }
    }
    if task.fixes.len() > MAX_FIXES {
        task.fixes.remove(0);
        task.fixes[0].segment_km = 0.0;
    }
}

fn scorable(task: &TaskState, event: &Event) -> bool {
    event.task_id.is_some()
        && task.context.is_some()
        && task.finished_at.is_none()
        && !matches!(
            event.event_type,
            EventType::Delivered | EventType::DeliveryFailed
        )
}

/// The feature vector as of the latest event folded, in `FEATURE_NAMES` order.
pub(crate) fn features(task: &TaskState) -> Vec<f32> {
    let nan = f32::NAN;
    let now = task.latest_ms;
    let minutes_since = |at: Option<i64>| at.map_or(nan, |at| (now - at) as f32 / MS_PER_MIN);
    let ctx = task.context.as_ref();
    let last = task.fixes.last();
    let distance_to_dropoff = match (ctx, last) {
        (Some(c), Some(f)) => haversine_km(f.lat, f.lon, c.dropoff.0, c.dropoff.1) as f32,
        _ => nan,
    };
    let gps_gap_s = match task.fixes.as_slice() {
        [.., a, b] => (b.t - a.t) as f32 / 1000.0,
        _ => nan,
    };
    let local = now + i64::from(task.latest_utc_offset_min) * 60_000;
    let phase = if task.arrived_dropoff_at.is_some() {
        3.0
    } else if task.picked_up_at.is_some() {
        2.0
    } else if task.arrived_pickup_at.is_some() {
        1.0
    } else {
        0.0
    };
    vec![
        distance_to_dropoff,
        ctx.map_or(nan, |c| c.route_km),
        minutes_since(task.assigned_at),
        minutes_since(task.picked_up_at),
        ctx.map_or(nan, |c| (c.promised_at - now) as f32 / MS_PER_MIN),
        rolling_speed_kmh(&task.fixes),
        gps_gap_s,
        ctx.map_or(nan, |c| c.stops_remaining as f32),
        local.rem_euclid(MS_PER_DAY).div_euclid(MS_PER_HOUR) as f32,
        // 1970-01-01 was a Thursday; Monday is 0.
        (local.div_euclid(MS_PER_DAY) + 3).rem_euclid(7) as f32,
        phase,
        ctx.map_or(nan, |c| c.rating),
        ctx.map_or(nan, |c| c.age),
        ctx.map_or(nan, |c| c.vehicle_code),
        ctx.map_or(nan, |c| c.order_code),
    ]
}

/// Path length over time across the recent fixes, skipping GPS jumps; falls back to the
/// handset's own speed reading when the fixes span too little time.
fn rolling_speed_kmh(fixes: &[Fix]) -> f32 {
    let (mut km, mut ms) = (0.0, 0i64);
    for pair in fixes.windows(2) {
        let dt = pair[1].t - pair[0].t;
        let d = pair[1].segment_km;
        if dt > 0 && d / (dt as f64 / MS_PER_HOUR as f64) <= MAX_PLAUSIBLE_KMH {
            km += d;
            ms += dt;
        }
    }
    if ms >= MIN_SPEED_SPAN_MS {
        (km / (ms as f64 / MS_PER_HOUR as f64)) as f32
    } else {
        fixes.last().and_then(|f| f.speed_kmh).unwrap_or(f32::NAN)
    }
}

fn order_code(order_type: &str) -> f32 {
    match order_type.trim().to_ascii_lowercase().as_str() {
        "snack" => 0.0,
        "meal" => 1.0,
        "drinks" => 2.0,
        "buffet" => 3.0,
        _ => f32::NAN,
    }
}

fn vehicle_code(vehicle_type: &str) -> f32 {
    match vehicle_type
        .trim()
        .to_ascii_lowercase()
        .replace('_', "-")
        .as_str()
    {
        "motorcycle" => 0.0,
        "scooter" => 1.0,
        "electric-scooter" => 2.0,
        "bicycle" => 3.0,
        _ => f32::NAN,
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
