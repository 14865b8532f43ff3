//! Replay of the food-delivery orders (`food-delivery/deliverytime.csv`): each row is a task
//! (restaurant -> pickup, customer -> dropoff, `Time_taken(min)` -> when it was delivered;
//! the promise quoted as a platform would from the table's own history (`promise.rs`), late =
//! delivered after it). The table has no clock times and no GPS tracks, so, as
//! in the model's training pipeline, a courier's orders follow one another from the start of
//! the window, pickups come 5/10/15 min after assignment after 1-5 min at the restaurant, and
//! pings (every ~60 s on the handset's own clock, not the status changes') run along straight legs.
//! Coordinates are used as they are, zeros and all.

use std::collections::{HashMap, VecDeque};
use std::path::Path;

use anyhow::Context as _;
use chrono::{FixedOffset, Timelike};
use fleet_host::event::EventType;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::promise::Promises;
use super::track::{Emitter, GpsNoise, along, haversine_km, offset_km};
use super::{Prepared, Scenario, TaskTruth, at, prepared_scenario};

struct Order {
    courier: String,
    age: Option<f32>,
    rating: Option<f32>,
    restaurant: (f64, f64),
    customer: (f64, f64),
    order_type: String,
    vehicle: String,
    taken_min: i64,
}

pub struct FoodConfig {
    pub seed: u64,
    pub start_ms: i64,
    pub offset: FixedOffset,
    pub ping_s: f64,
    pub couriers: Option<usize>,
    pub max_duration_ms: Option<i64>,
    pub promises: Promises,
}

pub fn scenario(csv: &Path, config: &FoodConfig) -> anyhow::Result<Scenario> {
    let text =
        std::fs::read_to_string(csv).with_context(|| format!("reading {}", csv.display()))?;
    let mut by_courier: Vec<(String, Vec<Order>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut skipped = 0;
    for line in text.lines().skip(1) {
        match parse(line) {
            Some(order) => {
                let i = *index.entry(order.courier.clone()).or_insert_with(|| {
                    by_courier.push((order.courier.clone(), Vec::new()));
                    by_courier.len() - 1
                });
                by_courier[i].1.push(order);
            }
            None => skipped += 1,
        }
    }
    if skipped > 0 {
        tracing::warn!(
            skipped,
            "food-delivery rows without the columns a task needs"
        );
    }
    if let Some(n) = config.couriers {
        by_courier.truncate(n);
    }
    let couriers = by_courier
        .into_iter()
        .enumerate()
        .map(|(i, (id, orders))| courier(config, i, &id, orders))
        .collect();
    Ok(prepared_scenario(
        format!("food-delivery replay ({})", csv.display()),
        couriers,
        None,
        config.max_duration_ms,
    ))
}

fn parse(line: &str) -> Option<Order> {
    let f: Vec<&str> = line.split(',').map(str::trim).collect();
    if f.len() < 11 {
        return None;
    }
    let num = |s: &str| s.parse::<f64>().ok();
    Some(Order {
        courier: f[1].to_string(),
        age: num(f[2]).map(|v| v as f32),
        rating: num(f[3]).map(|v| v as f32),
        restaurant: (num(f[4])?, num(f[5])?),
        customer: (num(f[6])?, num(f[7])?),
        order_type: f[8].to_lowercase(),
        vehicle: f[9].to_lowercase(),
        taken_min: f[10].parse().ok()?,
    })
}

fn courier(config: &FoodConfig, index: usize, id: &str, orders: Vec<Order>) -> Prepared {
    let mut rng = SmallRng::seed_from_u64(config.seed ^ (index as u64).wrapping_mul(0x9E37_79B9));
    let mut emit = Emitter {
        courier: id.to_string(),
        offset: config.offset,
        noise: GpsNoise {
            sigma_m: 8.0,
            jump_rate: 0.005,
            gap_rate: 0.03,
        },
        next_id: 0,
        gap_until_ms: 0,
    };
    let step = (config.ping_s * 1000.0) as i64;
    let mut events = VecDeque::new();
    let mut truth = HashMap::new();
    let mut t = config.start_ms + rng.random_range(0..1_800_000);
    for (k, o) in orders.into_iter().enumerate() {
        let task = format!("{id}-T{}", k + 1);
        let start = offset_km(
            o.restaurant,
            rng.random_range(0.3..2.5),
            rng.random::<f64>() * std::f64::consts::TAU,
        );
        let taken = o.taken_min.max(2) * 60_000;
        let picked = t + [5, 10, 15][rng.random_range(0..3)] * 60_000;
        let picked = picked.min(t + taken - 120_000).max(t + 60_000);
        // At the restaurant 1 to 5 minutes before pickup, as the training simulation has it.
        let wait = rng.random_range(60_000..=(picked - t - 30_000).clamp(60_000, 300_000));
        let at_pickup = (picked - wait).max(t + 60_000).min(picked);
        let at_dropoff = t + taken - 60_000;
        let delivered = t + taken;

        // The platform's estimate, fitted to the table's own history: 19.5 minutes and 0.6 a
        // kilometre from the restaurant to the customer (the table's times grow that slowly
        // with distance).
        let estimate = || {
            let eta_min = 19.5 + 0.6 * haversine_km(o.restaurant, o.customer);
            (eta_min, at(t, config.offset).hour())
        };
        let promised = config.promises.promise(t, estimate, &mut rng);
        let mut assigned = emit.assigned(&task, t, start, o.restaurant, o.customer, promised);
        assigned.order_type = Some(o.order_type.clone());
        assigned.vehicle_type = Some(o.vehicle.clone());
        assigned.courier_rating = o.rating;
        assigned.courier_age = o.age;
        truth.insert(
            assigned.event_id.clone(),
            TaskTruth {
                task_id: task.clone(),
                late: delivered > promised,
                promised_ms: promised,
                ended_ms: delivered,
            },
        );
        events.push_back(assigned);
        let legs = [
            (
                t,
                at_pickup,
                start,
                o.restaurant,
                Some(EventType::ArrivedPickup),
            ),
            (
                at_pickup,
                picked,
                o.restaurant,
                o.restaurant,
                Some(EventType::PickedUp),
            ),
            (
                picked,
                at_dropoff,
                o.restaurant,
                o.customer,
                Some(EventType::ArrivedDropoff),
            ),
            (
                at_dropoff,
                delivered,
                o.customer,
                o.customer,
                Some(EventType::Delivered),
            ),
        ];
        // The handset pings on its own clock, whatever the courier's status does.
        let mut p = t + rng.random_range(20_000..=70_000);
        for (t0, t1, a, b, end) in legs {
            while p < t1 {
                if let Some(e) = emit.ping(&mut rng, Some(&task), p, along(a, b, t0, t1, p), 20.0) {
                    events.push_back(e);
                }
                // Handsets do not ping like a clock: within a sixth of the interval either
                // way, as the training simulation has it.
                p += step + rng.random_range(-step / 6..=step / 6);
            }
            if let Some(kind) = end {
                events.push_back(emit.event(kind, Some(&task), t1, b));
            }
        }
        t = delivered + rng.random_range(120_000..600_000);
    }
    Prepared {
        courier: id.to_string(),
        events,
        truth,
    }
}
