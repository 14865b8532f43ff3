//! Replay of the Cabspotting fleet-day (`cabspotting/*.csv`: `cab_id,unix_ts,lat,lon,occupied`):
//! each cab is a courier, each row a location ping at its real time and place. A 0 -> 1 change
//! of `occupied` is a pickup: a task is assigned and picked up there, with the place where
//! the fare ends as its dropoff and a promise quoted for the straight-line distance at 25 km/h
//! (`promise.rs`); the 1 -> 0 change is the drop-off (arrived and delivered). Late = the
//! fare ended after its promise. Trips already under way at
//! the start or still open at the end are pings without a task. Gaps, jumps, repeated
//! timestamps and far-off fixes reach the runtime as they are.

use std::collections::{HashMap, VecDeque};
use std::path::Path;

use anyhow::Context as _;
use chrono::{FixedOffset, Timelike};
use fleet_host::event::EventType;
use rand::SeedableRng;
use rand::rngs::SmallRng;

use super::promise::Promises;
use super::track::{Emitter, haversine_km};
use super::{Prepared, Scenario, TaskTruth, at, prepared_scenario};

struct Row {
    ms: i64,
    pos: (f64, f64),
    occupied: bool,
}

pub fn scenario(
    csv: &Path,
    offset: FixedOffset,
    couriers: Option<usize>,
    max_duration_ms: Option<i64>,
    promises: Promises,
) -> anyhow::Result<Scenario> {
    let text =
        std::fs::read_to_string(csv).with_context(|| format!("reading {}", csv.display()))?;
    let mut cabs: Vec<(String, Vec<Row>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let parsed = (f.len() == 5)
            .then(|| {
                Some(Row {
                    ms: f[1].trim().parse::<i64>().ok()? * 1000,
                    pos: (f[2].trim().parse().ok()?, f[3].trim().parse().ok()?),
                    occupied: f[4].trim() == "1",
                })
            })
            .flatten();
        let Some(row) = parsed else {
            anyhow::bail!(
                "{}:{}: expected cab_id,unix_ts,lat,lon,occupied",
                csv.display(),
                n + 1
            );
        };
        let i = *index.entry(f[0].to_string()).or_insert_with(|| {
            cabs.push((f[0].to_string(), Vec::new()));
            cabs.len() - 1
        });
        cabs[i].1.push(row);
    }
    let prepared = cabs
        .into_iter()
        .map(|(id, mut rows)| {
            // Stable: rows with the same timestamp keep their file order.
            rows.sort_by_key(|r| r.ms);
            cab(&id, &rows, offset, promises)
        })
        .collect();
    Ok(prepared_scenario(
        format!("cabspotting replay ({})", csv.display()),
        prepared,
        couriers,
        max_duration_ms,
    ))
}

fn cab(id: &str, rows: &[Row], offset: FixedOffset, promises: Promises) -> Prepared {
    let mut emit = Emitter {
        courier: id.to_string(),
        offset,
        noise: Default::default(),
        next_id: 0,
        gap_until_ms: 0,
    };
    let mut events = VecDeque::new();
    let mut truth = HashMap::new();
    // Each cab's quotes vary the same way on every run.
    let mut rng = SmallRng::seed_from_u64(xxhash_rust::xxh3::xxh3_64(id.as_bytes()));
    let mut task: Option<String> = None;
    let mut trips = 0;
    for (i, r) in rows.iter().enumerate() {
        let was = i > 0 && rows[i - 1].occupied;
        if r.occupied && !was && i > 0 {
            // A pickup: the task runs to the next row that is free again, if there is one.
            if let Some(end) = rows[i..].iter().find(|x| !x.occupied) {
                trips += 1;
                let t = format!("{id}-trip{trips}");
                // A ride quoted at 25 km/h as the crow flies, plus the wait at the door.
                let estimate = || {
                    let eta_min = haversine_km(r.pos, end.pos) / 25.0 * 60.0 + 3.0;
                    (eta_min, at(r.ms, offset).hour())
                };
                let promised = promises.promise(r.ms, estimate, &mut rng);
                let mut assigned = emit.assigned(&t, r.ms, r.pos, r.pos, end.pos, promised);
                assigned.order_type = Some("meal".into());
                assigned.vehicle_type = Some("motorcycle".into());
                truth.insert(
                    assigned.event_id.clone(),
                    TaskTruth {
                        task_id: t.clone(),
                        late: end.ms > promised,
                        promised_ms: promised,
                        ended_ms: end.ms,
                    },
                );
                events.push_back(assigned);
                events.push_back(emit.event(EventType::PickedUp, Some(&t), r.ms, r.pos));
                task = Some(t);
                continue;
            }
        }
        if !r.occupied
            && was
            && let Some(t) = task.take()
        {
            events.push_back(emit.event(EventType::ArrivedDropoff, Some(&t), r.ms, r.pos));
            events.push_back(emit.event(EventType::Delivered, Some(&t), r.ms, r.pos));
            continue;
        }
        events.push_back(emit.event(EventType::Location, task.as_deref(), r.ms, r.pos));
    }
    Prepared {
        courier: id.to_string(),
        events,
        truth,
    }
}
