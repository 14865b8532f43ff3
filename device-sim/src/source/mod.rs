//! Where a fleet's events come from: a synthetic city, or a replay of real data. Each source
//! gives one feed per courier that yields its events in event-time order, lazily, up to a
//! simulated time; and the ground truth (late or not) of every task it starts.

pub mod amazon;
pub mod cabs;
pub mod city;
pub mod dump;
pub mod food;
pub mod promise;
pub(crate) mod track;

pub use track::GpsNoise;

use chrono::{DateTime, FixedOffset, TimeZone};
use fleet_host::event::Event;

/// Whether a task ended after its promise: what the alerts are judged against.
#[derive(Clone, Debug)]
pub struct TaskTruth {
    pub task_id: String,
    pub late: bool,
    /// When the task was promised for, and when it ended (simulated ms since the epoch).
    pub promised_ms: i64,
    pub ended_ms: i64,
}

/// One courier's events.
pub trait CourierFeed: Send {
    fn courier_id(&self) -> &str;
    /// Appends every event due at or before `until_ms` (simulated, ms since the epoch) and
    /// the truth of each task that starts among them.
    fn advance(&mut self, until_ms: i64, out: &mut Vec<Event>, truth: &mut Vec<TaskTruth>);
    /// When (simulated ms) the next event may be due, at the earliest; `None` when nothing
    /// more will come. The fleet advances a courier only once this time is reached.
    fn next_ms(&self) -> Option<i64>;
    /// Nothing more will come.
    fn done(&self) -> bool {
        self.next_ms().is_none()
    }
}

/// A fleet ready to run: feeds and the simulated window they cover.
pub struct Scenario {
    pub name: String,
    pub feeds: Vec<Box<dyn CourierFeed>>,
    pub start_ms: i64,
    pub end_ms: i64,
}

/// Milliseconds since the epoch as a time in `offset`.
pub(crate) fn at(ms: i64, offset: FixedOffset) -> DateTime<FixedOffset> {
    offset
        .timestamp_millis_opt(ms)
        .single()
        .expect("simulated times are in range")
}

/// A courier whose events were all prepared up front (replays).
pub(crate) struct Prepared {
    pub courier: String,
    pub events: std::collections::VecDeque<Event>,
    /// Truth of each task, released with its assignment event (by event id).
    pub truth: std::collections::HashMap<String, TaskTruth>,
}

impl CourierFeed for Prepared {
    fn courier_id(&self) -> &str {
        &self.courier
    }

    fn advance(&mut self, until_ms: i64, out: &mut Vec<Event>, truth: &mut Vec<TaskTruth>) {
        while let Some(e) = self.events.front() {
            if e.event_time.timestamp_millis() > until_ms {
                return;
            }
            let e = self.events.pop_front().expect("front exists");
            if let Some(t) = self.truth.remove(&e.event_id) {
                truth.push(t);
            }
            out.push(e);
        }
    }

    fn next_ms(&self) -> Option<i64> {
        self.events.front().map(|e| e.event_time.timestamp_millis())
    }
}

/// Keeps the first `limit` couriers (all when `None`) and sets the window to what is left.
pub(crate) fn prepared_scenario(
    name: String,
    mut couriers: Vec<Prepared>,
    limit: Option<usize>,
    max_duration_ms: Option<i64>,
) -> Scenario {
    if let Some(n) = limit {
        couriers.truncate(n);
    }
    let first = couriers
        .iter()
        .filter_map(|c| c.events.front())
        .map(|e| e.event_time.timestamp_millis())
        .min()
        .unwrap_or(0);
    let last = couriers
        .iter()
        .filter_map(|c| c.events.back())
        .map(|e| e.event_time.timestamp_millis())
        .max()
        .unwrap_or(0);
    let end = max_duration_ms.map_or(last, |d| last.min(first + d));
    Scenario {
        name,
        feeds: couriers
            .into_iter()
            .map(|c| Box::new(c) as Box<dyn CourierFeed>)
            .collect(),
        start_ms: first,
        end_ms: end,
    }
}
