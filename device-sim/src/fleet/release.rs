//! The simulated clock that releases each courier's events when they fall due, with the
//! at-least-once faults of a handset app: repeats, and events that arrive late.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Instant;

use fleet_host::event::Event;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::FleetOptions;
use super::baseline::BaselineJudge;
use crate::source::{CourierFeed, Scenario, TaskTruth};

/// One device's events of one tick: (courier, event, arrived late).
pub(super) type Batch = Vec<(usize, Event, bool)>;

pub(super) struct Release {
    pub(super) name: String,
    pub(super) feeds: Vec<Box<dyn CourierFeed>>,
    pub(super) truth: Vec<TaskTruth>,
    /// The rule without a model, following every task, to judge the model against.
    pub(super) baseline: BaselineJudge,
    rng: SmallRng,
    /// Events held back for the next tick, per courier.
    held: Vec<Vec<Event>>,
    /// Couriers by the time of their next event: a tick advances only those due (10,000
    /// couriers polled 100 times a second cost more than the events themselves).
    queue: BinaryHeap<Reverse<(i64, usize)>>,
    /// Couriers with events held back for the next tick.
    holding: Vec<usize>,
    pub(super) generated: u64,
    pub(super) sent: u64,
    pub(super) repeats: u64,
    pub(super) start_ms: i64,
    end_ms: i64,
    /// Simulated time released so far, and due (advanced tick by tick, faster in a burst).
    pub(super) sim_now: i64,
    sim_due: f64,
    last_wall: f64,
    /// Since when the machine could not keep up with the asked speed.
    pub(super) behind_since: Option<Instant>,
}

impl Release {
    pub(super) fn new(scenario: Scenario, seed: u64) -> Self {
        let couriers = scenario.feeds.len();
        let queue = scenario
            .feeds
            .iter()
            .enumerate()
            .filter_map(|(c, f)| f.next_ms().map(|at| Reverse((at, c))))
            .collect();
        Self {
            name: scenario.name,
            feeds: scenario.feeds,
            truth: Vec::new(),
            baseline: BaselineJudge::default(),
            rng: SmallRng::seed_from_u64(seed ^ 0x5EED),
            held: vec![Vec::new(); couriers],
            queue,
            holding: Vec::new(),
            generated: 0,
            sent: 0,
            repeats: 0,
            start_ms: scenario.start_ms,
            end_ms: scenario.end_ms,
            sim_now: scenario.start_ms,
            sim_due: scenario.start_ms as f64,
            last_wall: 0.0,
            behind_since: None,
        }
    }

    /// Releases what fell due by `wall` seconds from the start (the clock running `factor`
    /// times faster since the last tick), grouped by device; `skewed(device)` is the clock
    /// skew of a device's handset, seconds.
    pub(super) fn tick(
        &mut self,
        wall: f64,
        factor: f64,
        options: &FleetOptions,
        skew: impl Fn(usize) -> i64,
    ) -> HashMap<usize, Batch> {
        self.sim_due += (wall - self.last_wall) * options.speed * factor * 1000.0;
        self.last_wall = wall;
        let target = self.sim_due as i64;
        // Never release more than a few ticks at once: a slow machine falls behind real
        // time (reported) instead of flooding the devices.
        let step = (options.tick.as_secs_f64() * options.speed * factor * 4000.0) as i64;
        self.sim_now = target.min(self.sim_now + step).min(self.end_ms);
        if target > self.sim_now + step {
            self.behind_since.get_or_insert_with(Instant::now);
        }
        let per = options.couriers_per_device.max(1);
        let mut batches: HashMap<usize, Batch> = HashMap::new();
        let mut advanced = Vec::new();
        while let Some(&Reverse((at, c))) = self.queue.peek() {
            if at > self.sim_now {
                break;
            }
            self.queue.pop();
            advanced.push(c);
        }
        // In courier order, as if every courier were visited.
        let mut visit = std::mem::take(&mut self.holding);
        visit.extend_from_slice(&advanced);
        visit.sort_unstable();
        visit.dedup();
        for c in visit {
            let d = c / per;
            let batch = batches.entry(d).or_default();
            self.courier(c, skew(d), options, batch);
            if batch.is_empty() {
                batches.remove(&d);
            }
        }
        for c in advanced {
            if let Some(at) = self.feeds[c].next_ms() {
                self.queue.push(Reverse((at, c)));
            }
        }
        self.sent += batches.values().map(|b| b.len() as u64).sum::<u64>();
        batches
    }

    /// One courier's due events into its device's batch: some repeated, some held back to
    /// arrive after the next tick's.
    fn courier(&mut self, c: usize, skew_s: i64, options: &FleetOptions, batch: &mut Batch) {
        let mut fresh = Vec::new();
        self.feeds[c].advance(self.sim_now, &mut fresh, &mut self.truth);
        self.generated += fresh.len() as u64;
        for e in &fresh {
            self.baseline.observe(e);
        }
        let late = std::mem::take(&mut self.held[c]);
        for mut e in fresh {
            if skew_s != 0 {
                e.event_time += chrono::Duration::seconds(skew_s);
            }
            if self.rng.random::<f64>() < options.repeat_rate {
                self.held[c].push(e.clone());
                self.repeats += 1;
            }
            if self.rng.random::<f64>() < options.late_rate {
                self.held[c].push(e);
            } else {
                batch.push((c, e, false));
            }
        }
        // Last tick's held-back events arrive after this tick's.
        batch.extend(late.into_iter().map(|e| (c, e, true)));
        if !self.held[c].is_empty() {
            self.holding.push(c);
        }
    }

    /// Whether every event was released.
    pub(super) fn finished(&self) -> bool {
        (self.sim_now >= self.end_ms || self.queue.is_empty()) && self.holding.is_empty()
    }

    /// Simulated seconds released so far.
    pub(super) fn simulated_s(&self) -> u64 {
        ((self.sim_now - self.start_ms) / 1000) as u64
    }
}
