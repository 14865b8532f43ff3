//! A synthetic city: couriers take orders one after another; each order is a task with a
//! pickup, a dropoff and a promise quoted as platforms do (their estimate for the distances
//! at the hour's expected speed, plus a buffer for the load: `promise.rs`). Speeds vary with
//! the hour (rush hours are slow) and by task; kitchens are slow at random; handsets add GPS
//! scatter, jumps and gaps. Deterministic for a seed.

use std::collections::VecDeque;

use chrono::{FixedOffset, Timelike};
use fleet_host::event::{Event, EventType};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::promise::{self, Promises};
use super::track::{Emitter, GpsNoise, along, gaussian, haversine_km, offset_km};
use super::{CourierFeed, Scenario, TaskTruth, at};

/// The kitchen time the platform expects when it quotes a promise, minutes.
const PLATFORM_PREP_MIN: f64 = 8.0;
/// The speed the platform expects outside rush hours, km/h.
const PLATFORM_KMH: f64 = 21.0;

#[derive(Clone, Debug)]
pub struct CityConfig {
    pub couriers: usize,
    pub center: (f64, f64),
    pub radius_km: f64,
    pub seed: u64,
    /// Simulated start (ms since the epoch) and its UTC offset.
    pub start_ms: i64,
    pub offset: FixedOffset,
    pub duration_ms: i64,
    /// Seconds between location pings.
    pub ping_s: f64,
    /// Couriers take their first order within this many seconds of the start (a shift
    /// beginning); 0 puts the whole fleet on the road at once.
    pub shift_start_s: f64,
    pub noise: GpsNoise,
    pub promises: Promises,
}

pub fn scenario(config: &CityConfig) -> Scenario {
    let feeds = (0..config.couriers)
        .map(|i| Box::new(CityCourier::new(config, i)) as Box<dyn CourierFeed>)
        .collect();
    Scenario {
        name: format!("synthetic city, {} couriers", config.couriers),
        feeds,
        start_ms: config.start_ms,
        end_ms: config.start_ms + config.duration_ms,
    }
}

struct CityCourier {
    config: CityConfig,
    rng: SmallRng,
    emit: Emitter,
    pos: (f64, f64),
    /// Base riding speed, km/h.
    speed_kmh: f64,
    vehicle: &'static str,
    rating: f32,
    age: f32,
    /// When the next task is assigned.
    next_task_ms: i64,
    tasks: u64,
    planned: VecDeque<Event>,
    pending_truth: Option<TaskTruth>,
    /// Where in its `ping_s` cycle this courier's handset pings.
    ping_phase_ms: i64,
}

impl CityCourier {
    fn new(config: &CityConfig, index: usize) -> Self {
        let mut rng = SmallRng::seed_from_u64(
            config.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let pos = random_point(&mut rng, config.center, config.radius_km);
        let (vehicle, speed_kmh) = match rng.random_range(0..10) {
            0..=5 => ("motorcycle", 24.0),
            6..=8 => ("scooter", 20.0),
            _ => ("electric_scooter", 17.0),
        };
        let first = config.start_ms + (rng.random::<f64>() * config.shift_start_s * 1000.0) as i64;
        let ping_phase_ms = rng.random_range(0..((config.ping_s * 1000.0) as i64).max(1));
        Self {
            emit: Emitter {
                courier: format!("C{index:05}"),
                offset: config.offset,
                noise: config.noise,
                next_id: 0,
                gap_until_ms: 0,
            },
            rating: rng.random_range(3.5..5.0),
            age: rng.random_range(20.0..45.0f32).round(),
            config: config.clone(),
            rng,
            pos,
            speed_kmh,
            vehicle,
            next_task_ms: first,
            ping_phase_ms,
            tasks: 0,
            planned: VecDeque::new(),
            pending_truth: None,
        }
    }

    /// Rush hours (8-10, 17-20 local) slow traffic down.
    fn traffic(&self, ms: i64) -> f64 {
        let hour = at(ms, self.config.offset).hour();
        match hour {
            8..=9 | 17..=19 => 0.65,
            12..=13 => 0.85,
            _ => 1.0,
        }
    }

    /// Plans the whole next task: idle pings until assignment, then the task's events.
    fn plan_task(&mut self) {
        let t0 = self.next_task_ms;
        self.tasks += 1;
        let task = format!("T-{}-{}", self.emit.courier, self.tasks);
        // Dispatch offers orders near the courier; customers live 1-7 km from the kitchen.
        let (d1, b1) = (self.rng.random_range(0.2..3.0), self.rng.random::<f64>());
        let pickup = self.within_city(offset_km(self.pos, d1, b1 * std::f64::consts::TAU));
        let (d2, b2) = (self.rng.random_range(1.0..7.0), self.rng.random::<f64>());
        let dropoff = self.within_city(offset_km(pickup, d2, b2 * std::f64::consts::TAU));
        let platform_kmh = PLATFORM_KMH * self.traffic(t0);
        let ride_min = |km: f64| km / platform_kmh * 60.0;
        let (from, offset) = (self.pos, self.config.offset);
        let estimate = || {
            let eta_min = PLATFORM_PREP_MIN.max(ride_min(haversine_km(from, pickup)))
                + ride_min(haversine_km(pickup, dropoff))
                + promise::HANDOVER_MIN;
            (eta_min, at(t0, offset).hour())
        };
        let promised = self.config.promises.promise(t0, estimate, &mut self.rng);
        let mut assigned = self
            .emit
            .assigned(&task, t0, self.pos, pickup, dropoff, promised);
        assigned.order_type =
            Some(["snack", "meal", "drinks", "buffet"][self.rng.random_range(0..4)].to_string());
        assigned.vehicle_type = Some(self.vehicle.to_string());
        assigned.courier_rating = Some((self.rating * 10.0).round() / 10.0);
        assigned.courier_age = Some(self.age);
        self.planned.push_back(assigned);

        // This task's luck: traffic and the kitchen.
        let task_speed = self.speed_kmh
            * self.traffic(t0)
            * (gaussian(&mut self.rng) * 0.25).exp().clamp(0.4, 1.6);
        let prep_ms = if self.rng.random::<f64>() < 0.15 {
            self.rng.random_range(15..30) * 60_000
        } else {
            self.rng.random_range(3..12) * 60_000
        };
        let leg = |from: (f64, f64), to: (f64, f64)| {
            (haversine_km(from, to) / task_speed * 3_600_000.0) as i64
        };
        let at_pickup = t0 + leg(self.pos, pickup).max(60_000);
        let picked = (t0 + prep_ms).max(at_pickup + 60_000);
        let at_dropoff = picked + leg(pickup, dropoff).max(60_000);
        let delivered = at_dropoff + self.rng.random_range(60_000..180_000);

        self.pings(&task, t0, at_pickup, self.pos, pickup, task_speed as f32);
        self.status(EventType::ArrivedPickup, &task, at_pickup, pickup);
        self.pings(&task, at_pickup, picked, pickup, pickup, 0.0);
        self.status(EventType::PickedUp, &task, picked, pickup);
        self.pings(
            &task,
            picked,
            at_dropoff,
            pickup,
            dropoff,
            task_speed as f32,
        );
        self.status(EventType::ArrivedDropoff, &task, at_dropoff, dropoff);
        self.pings(&task, at_dropoff, delivered, dropoff, dropoff, 0.0);
        self.status(EventType::Delivered, &task, delivered, dropoff);

        self.pos = dropoff;
        self.pending_truth = Some(TaskTruth {
            task_id: task,
            late: delivered > promised,
            promised_ms: promised,
            ended_ms: delivered,
        });
        // Idle between orders, pinging without a task.
        let idle = self.rng.random_range(60_000..600_000);
        self.pings_idle(delivered, delivered + idle);
        self.next_task_ms = delivered + idle;
    }

    /// Points beyond the radius are pulled back toward the center.
    fn within_city(&self, p: (f64, f64)) -> (f64, f64) {
        let (c, r) = (self.config.center, self.config.radius_km);
        let d = haversine_km(c, p);
        if d <= r {
            return p;
        }
        let f = r / d;
        (c.0 + (p.0 - c.0) * f, c.1 + (p.1 - c.1) * f)
    }

    fn status(&mut self, kind: EventType, task: &str, ms: i64, pos: (f64, f64)) {
        let e = self.emit.event(kind, Some(task), ms, pos);
        self.planned.push_back(e);
    }

    /// The handset's ping timer: every `ping_s` on the courier's own phase, whatever the
    /// task is doing (a fleet whose shifts start together does not ping in lockstep).
    /// Yields the ping times strictly between `t0` and `t1`.
    fn ping_times(&self, t0: i64, t1: i64) -> impl Iterator<Item = i64> + use<> {
        let step = ((self.config.ping_s * 1000.0) as i64).max(1);
        let phase = self.ping_phase_ms.rem_euclid(step);
        let first = phase + ((t0 - phase).div_euclid(step) + 1) * step;
        (0..)
            .map(move |k| first + k * step)
            .take_while(move |t| *t < t1)
    }

    /// Pings strictly between `t0` and `t1` along the leg `a -> b`.
    fn pings(&mut self, task: &str, t0: i64, t1: i64, a: (f64, f64), b: (f64, f64), kmh: f32) {
        for t in self.ping_times(t0, t1) {
            let p = along(a, b, t0, t1, t);
            if let Some(e) = self.emit.ping(&mut self.rng, Some(task), t, p, kmh) {
                self.planned.push_back(e);
            }
        }
    }

    fn pings_idle(&mut self, t0: i64, t1: i64) {
        for t in self.ping_times(t0, t1) {
            if let Some(e) = self.emit.ping(&mut self.rng, None, t, self.pos, 0.0) {
                self.planned.push_back(e);
            }
        }
    }
}

impl CourierFeed for CityCourier {
    fn courier_id(&self) -> &str {
        &self.emit.courier
    }

    fn advance(&mut self, until_ms: i64, out: &mut Vec<Event>, truth: &mut Vec<TaskTruth>) {
        loop {
            if self.planned.is_empty() {
                if self.next_task_ms > until_ms || self.next_task_ms >= self.end_ms() {
                    return;
                }
                self.plan_task();
            }
            while let Some(e) = self.planned.front() {
                if e.event_time.timestamp_millis() > until_ms {
                    return;
                }
                let e = self.planned.pop_front().expect("front exists");
                if e.event_type == EventType::TaskAssigned
                    && let Some(t) = self.pending_truth.take()
                {
                    truth.push(t);
                }
                out.push(e);
            }
        }
    }

    fn next_ms(&self) -> Option<i64> {
        match self.planned.front() {
            Some(e) => Some(e.event_time.timestamp_millis()),
            None => (self.next_task_ms < self.end_ms()).then_some(self.next_task_ms),
        }
    }
}

impl CityCourier {
    fn end_ms(&self) -> i64 {
        self.config.start_ms + self.config.duration_ms
    }
}

/// A uniform point in the disc.
fn random_point(rng: &mut SmallRng, center: (f64, f64), radius_km: f64) -> (f64, f64) {
    let r = radius_km * rng.random::<f64>().sqrt();
    offset_km(center, r, rng.random::<f64>() * std::f64::consts::TAU)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(couriers: usize, seed: u64) -> CityConfig {
        CityConfig {
            couriers,
            center: (12.9716, 77.5946),
            radius_km: 8.0,
            seed,
            start_ms: 1_795_000_000_000,
            offset: FixedOffset::east_opt(19_800).unwrap(),
            duration_ms: 3 * 3_600_000,
            ping_s: 5.0,
            shift_start_s: 600.0,
            noise: GpsNoise::default(),
            promises: Promises::Fixed,
        }
    }

    fn run(config: &CityConfig) -> (Vec<Event>, Vec<TaskTruth>) {
        let mut s = scenario(config);
        let (mut out, mut truth) = (Vec::new(), Vec::new());
        for f in &mut s.feeds {
            f.advance(s.end_ms + 6 * 3_600_000, &mut out, &mut truth);
            assert!(f.done());
        }
        (out, truth)
    }

    #[test]
    fn a_seed_gives_the_same_fleet_and_events_validate_in_time_order() {
        let (a, truth) = run(&config(5, 7));
        let (b, _) = run(&config(5, 7));
        let (c, _) = run(&config(5, 8));
        assert_eq!(a, b);
        assert_ne!(a, c);
        for e in &a {
            e.validate().unwrap();
        }
        for w in a.windows(2) {
            if w[0].courier_id == w[1].courier_id {
                assert!(w[0].event_time <= w[1].event_time);
            }
        }
        let assigned = a
            .iter()
            .filter(|e| e.event_type == EventType::TaskAssigned)
            .count();
        assert_eq!(assigned, truth.len());
        // Three hours at 5 s pings: hundreds of events per courier.
        assert!(a.len() > 5 * 500, "{} events", a.len());
    }

    #[test]
    fn a_fleet_starting_together_pings_on_each_handsets_own_phase() {
        let mut c = config(50, 3);
        c.shift_start_s = 0.0;
        c.duration_ms = 60_000;
        let (events, _) = run(&c);
        let ping_ms: std::collections::HashSet<i64> = events
            .iter()
            .filter(|e| e.event_type == EventType::Location)
            .map(|e| e.event_time.timestamp_millis())
            .filter(|ms| *ms < c.start_ms + 60_000)
            .map(|ms| ms % 5_000)
            .collect();
        // In lockstep every courier would ping at the same point of the 5 s cycle.
        assert!(ping_ms.len() > 40, "{} phases", ping_ms.len());
    }

    #[test]
    fn some_tasks_are_late_and_most_are_not() {
        let (_, truth) = run(&config(40, 1));
        let late = truth.iter().filter(|t| t.late).count() as f64 / truth.len() as f64;
        assert!((0.1..0.6).contains(&late), "late share {late}");
    }

    /// Quoted promises follow each task's distances and the hour: they vary, in steps of 5
    /// minutes, and a tenth or so of tasks miss theirs, as on delivery platforms.
    #[test]
    fn quoted_promises_vary_and_a_few_tasks_miss_them() {
        let quoted = CityConfig {
            promises: Promises::Quoted,
            ..config(40, 1)
        };
        let (events, truth) = run(&quoted);
        let promised_min: std::collections::BTreeSet<i64> = events
            .iter()
            .filter(|e| e.event_type == EventType::TaskAssigned)
            .map(|e| (e.promised_at.unwrap() - e.event_time).num_minutes())
            .collect();
        assert!(promised_min.len() >= 5, "{promised_min:?}");
        assert!(promised_min.iter().all(|m| m % 5 == 0), "{promised_min:?}");
        let late = truth.iter().filter(|t| t.late).count() as f64 / truth.len() as f64;
        assert!((0.03..0.3).contains(&late), "late share {late}");
    }
}
