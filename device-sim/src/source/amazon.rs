//! Replay of the Amazon Last Mile Routing Challenge routes (`amazon-lmrrc/`): each route is a
//! courier (a van) leaving its station at its real departure time and visiting the stops in
//! the driver's real order. Every drop-off stop is a task, assigned and loaded at departure,
//! from the station to the stop, promised by the earliest end of its packages' delivery
//! windows, or by the end of the route day when none has one. The data has no travel times
//! or arrival stamps, so the clock is simulated: legs at `VAN_KMH` over a road distance of
//! `DETOUR` times the straight line, and the packages' planned service times at each stop.
//! Late = delivered after the promise. The 13 routes ran on different dates; each keeps its
//! time of day on the first route's date, so they run as one fleet-day. Stations' local time:
//! Los Angeles and Seattle UTC-7, Chicago UTC-5, Boston UTC-4 (summer 2018).

use std::collections::{HashMap, VecDeque};
use std::path::Path;

use anyhow::Context as _;
use chrono::{FixedOffset, NaiveDateTime};
use fleet_host::event::EventType;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::Deserialize;

use super::track::{Emitter, along, haversine_km};
use super::{Prepared, Scenario, TaskTruth, prepared_scenario};

/// Average van speed between stops, km/h.
const VAN_KMH: f64 = 30.0;
/// Road distance over straight-line distance.
const DETOUR: f64 = 1.3;
/// Stops without a delivery window are promised by departure plus this.
const ROUTE_DAY_H: i64 = 10;

#[derive(Deserialize)]
struct Route {
    station_code: String,
    #[serde(rename = "date_YYYY_MM_DD")]
    date: String,
    departure_time_utc: String,
    stops: HashMap<String, Stop>,
}

#[derive(Deserialize)]
struct Stop {
    lat: f64,
    lng: f64,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct Package {
    time_window: Window,
    planned_service_time_seconds: Option<f64>,
}

#[derive(Deserialize)]
struct Window {
    end_time_utc: Option<String>,
}

#[derive(Deserialize)]
struct Sequence {
    actual: HashMap<String, usize>,
}

pub struct AmazonConfig {
    pub seed: u64,
    pub ping_s: f64,
    pub couriers: Option<usize>,
    pub max_duration_ms: Option<i64>,
}

/// The files' bare `NaN` tokens (empty windows, missing zones) are not JSON; they become
/// `null`, which the fields above read as "none".
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let text = text.replace(": NaN", ": null").replace(":NaN", ":null");
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn utc_ms(s: &str, format: &str) -> anyhow::Result<i64> {
    Ok(NaiveDateTime::parse_from_str(s, format)
        .with_context(|| format!("reading the time {s:?}"))?
        .and_utc()
        .timestamp_millis())
}

fn station_offset(station: &str) -> FixedOffset {
    let hours = match station.get(1..3) {
        Some("CH") => 5,
        Some("BO") => 4,
        _ => 7,
    };
    FixedOffset::west_opt(hours * 3600).expect("valid offset")
}

pub fn scenario(dir: &Path, config: &AmazonConfig) -> anyhow::Result<Scenario> {
    let routes: HashMap<String, Route> = read_json(&dir.join("new_route_data.json"))?;
    let packages: HashMap<String, HashMap<String, HashMap<String, Package>>> =
        read_json(&dir.join("new_package_data.json"))?;
    let sequences: HashMap<String, Sequence> = read_json(&dir.join("new_actual_sequences.json"))?;
    let mut ids: Vec<&String> = routes.keys().collect();
    ids.sort();
    let mut day0: Option<i64> = None;
    let mut couriers = Vec::new();
    for (n, id) in ids.into_iter().enumerate() {
        let route = &routes[id];
        let departure = utc_ms(
            &format!("{} {}", route.date, route.departure_time_utc),
            "%Y-%m-%d %H:%M:%S",
        )?;
        let day = utc_ms(&format!("{} 00:00:00", route.date), "%Y-%m-%d %H:%M:%S")?;
        let shift = *day0.get_or_insert(day) - day;
        let order = sequences
            .get(id)
            .with_context(|| format!("{id}: no actual sequence"))?;
        let mut visits: Vec<(&String, &Stop)> = route.stops.iter().collect();
        visits.sort_by_key(|(s, _)| order.actual.get(*s).copied().unwrap_or(usize::MAX));
        let empty = HashMap::new();
        let parcels = packages.get(id).unwrap_or(&empty);
        couriers.push(van(
            &format!("AMZ{:02}-{}", n + 1, route.station_code),
            &visits,
            parcels,
            departure + shift,
            shift,
            station_offset(&route.station_code),
            config,
        )?);
    }
    Ok(prepared_scenario(
        format!("Amazon LMRRC route replay ({})", dir.display()),
        couriers,
        config.couriers,
        config.max_duration_ms,
    ))
}

fn van(
    courier: &str,
    visits: &[(&String, &Stop)],
    parcels: &HashMap<String, HashMap<String, Package>>,
    departure: i64,
    shift: i64,
    offset: FixedOffset,
    config: &AmazonConfig,
) -> anyhow::Result<Prepared> {
    let mut emit = Emitter {
        courier: courier.to_string(),
        offset,
        noise: Default::default(),
        next_id: 0,
        gap_until_ms: 0,
    };
    let mut rng = SmallRng::seed_from_u64(config.seed ^ departure as u64);
    let station = visits
        .iter()
        .find(|(_, s)| s.kind == "Station")
        .map(|(_, s)| (s.lat, s.lng))
        .context("a route without a station")?;
    let drops: Vec<(&String, (f64, f64))> = visits
        .iter()
        .filter(|(_, s)| s.kind != "Station")
        .map(|(id, s)| (*id, (s.lat, s.lng)))
        .collect();
    let task = |stop: &str| format!("T-{courier}-{stop}");
    let mut events = VecDeque::new();
    let mut truth = HashMap::new();
    // Per stop: the assignment's id, the promise, the service time.
    let mut promised = HashMap::new();
    // Loading at the station: every stop becomes a task.
    for (rank, (stop, pos)) in drops.iter().enumerate() {
        let packages: Vec<&Package> = parcels
            .get(*stop)
            .into_iter()
            .flat_map(|p| p.values())
            .collect();
        let service_s: f64 = packages
            .iter()
            .filter_map(|p| p.planned_service_time_seconds)
            .sum();
        let window_end = packages
            .iter()
            .filter_map(|p| p.time_window.end_time_utc.as_deref())
            .map(|end| utc_ms(end, "%Y-%m-%d %H:%M:%S").map(|t| t + shift))
            .collect::<anyhow::Result<Vec<_>>>()?
            .into_iter()
            .min();
        let due = window_end.unwrap_or(departure + ROUTE_DAY_H * 3_600_000);
        let mut assigned = emit.assigned(&task(stop), departure, station, station, *pos, due);
        assigned.stops_remaining = Some(rank as u32);
        assigned.order_type = Some("parcel".into());
        assigned.vehicle_type = Some("van".into());
        let service_ms = (service_s * 1000.0) as i64;
        promised.insert(
            stop.to_string(),
            (assigned.event_id.clone(), due, service_ms),
        );
        events.push_back(assigned);
    }
    for (stop, _) in &drops {
        events.push_back(emit.event(EventType::PickedUp, Some(&task(stop)), departure, station));
    }
    let step = ((config.ping_s * 1000.0) as i64).max(1000);
    let (mut here, mut now) = (station, departure);
    for (stop, pos) in &drops {
        let t = task(stop);
        let leg_ms = (haversine_km(here, *pos) * DETOUR / VAN_KMH * 3.6e6) as i64;
        let arrive = now + leg_ms;
        let mut p = now + step;
        while p < arrive {
            let fix = along(here, *pos, now, arrive, p);
            if let Some(e) = emit.ping(&mut rng, Some(&t), p, fix, VAN_KMH as f32) {
                events.push_back(e);
            }
            p += step;
        }
        events.push_back(emit.event(EventType::ArrivedDropoff, Some(&t), arrive, *pos));
        let (assigned_id, due, service_ms) = &promised[stop.as_str()];
        let delivered = arrive + service_ms;
        events.push_back(emit.event(EventType::Delivered, Some(&t), delivered, *pos));
        truth.insert(
            assigned_id.clone(),
            TaskTruth {
                task_id: t,
                late: delivered > *due,
                promised_ms: *due,
                ended_ms: delivered,
            },
        );
        (here, now) = (*pos, delivered);
    }
    Ok(Prepared {
        courier: courier.to_string(),
        events,
        truth,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_become_vans_with_tasks_per_stop_and_a_truth_for_each() {
        let dir = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/data/amazon-lmrrc"
        ));
        let s = scenario(
            dir,
            &AmazonConfig {
                seed: 1,
                ping_s: 60.0,
                couriers: None,
                max_duration_ms: None,
            },
        )
        .unwrap();
        assert_eq!(s.feeds.len(), 13);
        let mut events = Vec::new();
        let mut truth = Vec::new();
        let mut feeds = s.feeds;
        for f in &mut feeds {
            f.advance(s.end_ms, &mut events, &mut truth);
            assert!(f.done());
        }
        // 2,038 drop-off stops, each a task with a truth, assigned, delivered.
        assert_eq!(truth.len(), 2038);
        let count = |k: EventType| events.iter().filter(|e| e.event_type == k).count();
        assert_eq!(count(EventType::TaskAssigned), 2038);
        assert_eq!(count(EventType::Delivered), 2038);
        assert!(count(EventType::Location) > 500);
        let late = truth.iter().filter(|t| t.late).count();
        assert!(late > 0 && late < truth.len(), "{late} late");
        // One fleet-day, not 36.
        assert!(s.end_ms - s.start_ms < 24 * 3_600_000);
    }
}
