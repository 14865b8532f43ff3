//! Shared benchmark fixtures: the embedded runtime and a synthetic fleet's event stream.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use fleet_host::engine::{SandboxEngine, SandboxLimits};
use fleet_host::event::{Event, EventType, Geo};
use fleet_host::inference::ModelRegistry;
use fleet_host::registry::{ModuleRegistry, ModuleSource};

pub fn engine() -> Arc<SandboxEngine> {
    Arc::new(SandboxEngine::new(SandboxLimits::default()).expect("engine"))
}

pub fn models() -> Arc<ModelRegistry> {
    let mut models = ModelRegistry::new();
    models.insert(fleet_host::defaults::late_risk_model().expect("built-in model"));
    Arc::new(models)
}

pub fn registry() -> Arc<ModuleRegistry> {
    Arc::new(ModuleRegistry::new(engine(), models(), ModuleSource::Embedded).expect("modules"))
}

/// `tasks` couriers riding at once, each pinging every 5 s, interleaved the way they reach an
/// edge node; every task opens with its assignment. `n` events in all.
pub fn fleet_events(tasks: usize, n: usize) -> Vec<Event> {
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-11-22T10:00:00+05:30").unwrap();
    let mut out = Vec::with_capacity(n);
    let mut round = 0usize;
    while out.len() < n {
        for k in 0..tasks {
            if out.len() == n {
                break;
            }
            let (lat0, lon0) = (
                12.90 + (k % 50) as f64 * 0.002,
                77.55 + (k / 50) as f64 * 0.002,
            );
            let time = t0 + chrono::Duration::seconds((round * 5 + k % 5) as i64);
            let lat = lat0 + round as f64 * 0.00004;
            let mut e = Event::new(
                format!("e-{k}-{round}"),
                format!("c{k}"),
                Some(format!("T-{k}")),
                EventType::Location,
                time,
                lat,
                lon0,
            );
            e.speed_kmh = Some(18.0);
            e.accuracy_m = Some(8.0);
            if round == 0 {
                e.event_type = EventType::TaskAssigned;
                e.pickup = Some(Geo {
                    lat: lat0,
                    lon: lon0,
                });
                e.dropoff = Some(Geo {
                    lat: lat0 + 0.03,
                    lon: lon0 + 0.01,
                });
                e.promised_at = Some(time + chrono::Duration::minutes(30 + (k % 20) as i64));
                e.order_type = Some("meal".into());
                e.vehicle_type = Some("scooter".into());
                e.courier_rating = Some(4.0 + (k % 10) as f32 / 10.0);
                e.courier_age = Some(20.0 + (k % 30) as f32);
            }
            out.push(e);
        }
        round += 1;
    }
    out
}

/// Cycles through a pool of events in fixed-size batches, renaming ids on every lap so the
/// dedup window never drops them.
pub struct Feed {
    pool: Vec<Event>,
    at: usize,
    lap: usize,
}

impl Feed {
    pub fn new(pool: Vec<Event>) -> Self {
        Self {
            pool,
            at: 0,
            lap: 0,
        }
    }

    pub fn next_batch(&mut self, size: usize) -> Vec<Event> {
        let mut out = Vec::with_capacity(size);
        while out.len() < size {
            if self.at == self.pool.len() {
                self.at = 0;
                self.lap += 1;
            }
            let mut e = self.pool[self.at].clone();
            if self.lap > 0 {
                e.event_id = format!("{}~{}", e.event_id, self.lap);
            }
            out.push(e);
            self.at += 1;
        }
        out
    }
}

/// Resident set size of this process, in bytes.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
                    * 1024
            })
        })
        .unwrap_or(0)
}
