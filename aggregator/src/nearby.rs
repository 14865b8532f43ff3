//! Couriers near a place: the latest position of every courier, in memory, in an R-tree
//! (rstar) of (lat, lon). The committer moves a courier after each group commit; queries are
//! a radius around a point, nearest first, or a bounding box.
//!
//! A radius search looks at the box of latitudes and longitudes the circle fits in, then
//! keeps what is within the great-circle distance; near the poles and across the ±180°
//! meridian that box is cut at the edge of the map (a fleet is not there).

use std::collections::HashMap;
use std::sync::RwLock;

use rstar::{AABB, PointDistance, RTree, RTreeObject};
use serde::Serialize;

const EARTH_RADIUS_KM: f64 = 6371.0088;
const KM_PER_DEGREE: f64 = EARTH_RADIUS_KM * std::f64::consts::PI / 180.0;

/// What is known of a courier now.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CourierAt {
    pub courier_id: String,
    pub lat: f64,
    pub lon: f64,
    pub time_ms: i64,
    pub task_id: Option<String>,
    pub device: String,
    /// P(late) of the courier's latest decision, and the severity of its open alert: `info`
    /// once scored with none open, `None` before its first decision.
    pub score: Option<f32>,
    pub severity: Option<String>,
}

/// A courier in the tree: its position and its id (the key of `couriers`).
#[derive(Clone, Debug, PartialEq)]
struct Point {
    at: [f64; 2],
    courier: String,
}

impl RTreeObject for Point {
    type Envelope = AABB<[f64; 2]>;
    fn envelope(&self) -> Self::Envelope {
        AABB::from_point(self.at)
    }
}

impl PointDistance for Point {
    fn distance_2(&self, p: &[f64; 2]) -> f64 {
        let (a, b) = (self.at[0] - p[0], self.at[1] - p[1]);
        a * a + b * b
    }
}

/// A courier found near a point, with its distance.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Near {
    #[serde(flatten)]
    pub courier: CourierAt,
    pub distance_km: f64,
}

/// The index; readers share it, the committer writes.
#[derive(Default)]
pub struct Nearby(RwLock<Index>);

#[derive(Default)]
struct Index {
    tree: RTree<Point>,
    couriers: HashMap<String, CourierAt>,
}

impl Nearby {
    /// Moves a courier to a position reported at `time_ms` (an older report is ignored); a
    /// position without a score keeps the courier's last one.
    pub fn moved(&self, mut at: CourierAt) {
        let mut guard = self.0.write().unwrap_or_else(|e| e.into_inner());
        let index = &mut *guard;
        if let Some(old) = index.couriers.get(&at.courier_id) {
            if at.time_ms < old.time_ms {
                return;
            }
            index.tree.remove(&Point {
                at: [old.lat, old.lon],
                courier: old.courier_id.clone(),
            });
            if at.score.is_none() {
                at.score = old.score;
                at.severity.clone_from(&old.severity);
            }
        }
        index.tree.insert(Point {
            at: [at.lat, at.lon],
            courier: at.courier_id.clone(),
        });
        index.couriers.insert(at.courier_id.clone(), at);
    }

    /// Moves the couriers of a device's stored entries, records their latest scores, and the
    /// severity of their open alerts after `alert_steps`.
    pub fn apply(
        &self,
        device: &str,
        entries: &[fleet_proto::Entry],
        alert_steps: &[crate::history::AlertChange],
    ) {
        use fleet_proto::Record;
        for entry in entries {
            match &entry.record {
                Record::Event(e) => self.moved(CourierAt {
                    courier_id: e.courier_id.clone(),
                    lat: e.position.lat_deg(),
                    lon: e.position.lon_deg(),
                    time_ms: e.time_ms,
                    task_id: e.task_id.clone(),
                    device: device.into(),
                    score: None,
                    severity: None,
                }),
                Record::Decision(d) => self.scored(&d.courier_id, d.score),
                _ => {}
            }
        }
        for change in alert_steps {
            let a = &change.alert;
            let open = a.state == crate::history::AlertState::Open;
            self.alerted(&a.courier_id, open.then_some(a.severity.as_str()));
        }
    }

    /// Fills the index from history: every courier's latest position and score, and the
    /// severity of its open alert (what the index held before a restart). Returns how many
    /// couriers it holds.
    pub fn seed(
        &self,
        history: &dyn crate::history::History,
    ) -> Result<usize, crate::history::HistoryError> {
        use crate::history::PageRequest;
        let mut page = PageRequest {
            limit: 10_000,
            after: None,
        };
        loop {
            let latest = history.latest_couriers(&page)?;
            for l in latest.items {
                self.moved(CourierAt {
                    courier_id: l.courier_id,
                    lat: l.lat,
                    lon: l.lon,
                    time_ms: l.time_ms,
                    task_id: l.task_id,
                    device: l.device,
                    severity: l.score.map(|_| "info".to_string()),
                    score: l.score,
                });
            }
            match latest.next {
                Some(next) => page.after = Some(next),
                None => break,
            }
        }
        page.after = None;
        loop {
            let open = history.open_alerts(&page)?;
            for a in open.items {
                self.alerted(&a.courier_id, Some(&a.severity));
            }
            match open.next {
                Some(next) => page.after = Some(next),
                None => break,
            }
        }
        Ok(self.len())
    }

    /// Records the courier's latest score (a courier seen scored has severity `info` at least).
    pub fn scored(&self, courier: &str, score: f32) {
        let mut index = self.0.write().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = index.couriers.get_mut(courier) {
            c.score = Some(score);
            c.severity.get_or_insert_with(|| "info".into());
        }
    }

    /// Records the severity of the courier's open alert (`None`: it has none open now).
    pub fn alerted(&self, courier: &str, severity: Option<&str>) {
        let mut index = self.0.write().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = index.couriers.get_mut(courier) {
            c.severity = Some(severity.unwrap_or("info").into());
        }
    }

    pub fn len(&self) -> usize {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .couriers
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Couriers within `radius_km` of (`lat`, `lon`), nearest first, at most `limit`.
    pub fn near(&self, lat: f64, lon: f64, radius_km: f64, limit: usize) -> Vec<Near> {
        let index = self.0.read().unwrap_or_else(|e| e.into_inner());
        let dlat = radius_km / KM_PER_DEGREE;
        let cos = lat.to_radians().cos().max(1e-6);
        let dlon = (radius_km / (KM_PER_DEGREE * cos)).min(360.0);
        let envelope = AABB::from_corners(
            [(lat - dlat).max(-90.0), (lon - dlon).max(-180.0)],
            [(lat + dlat).min(90.0), (lon + dlon).min(180.0)],
        );
        let mut found: Vec<Near> = index
            .tree
            .locate_in_envelope(&envelope)
            .filter_map(|p| {
                let d = haversine_km(lat, lon, p.at[0], p.at[1]);
                (d <= radius_km).then(|| Near {
                    courier: index.couriers[&p.courier].clone(),
                    distance_km: d,
                })
            })
            .collect();
        found.sort_by(|a, b| a.distance_km.total_cmp(&b.distance_km));
        found.truncate(limit);
        found
    }

    /// Couriers inside a box of latitudes and longitudes, at most `limit`.
    pub fn within(&self, min: (f64, f64), max: (f64, f64), limit: usize) -> Vec<CourierAt> {
        let index = self.0.read().unwrap_or_else(|e| e.into_inner());
        let envelope = AABB::from_corners([min.0, min.1], [max.0, max.1]);
        index
            .tree
            .locate_in_envelope(&envelope)
            .take(limit)
            .map(|p| index.couriers[&p.courier].clone())
            .collect()
    }
}

/// Great-circle distance.
pub fn haversine_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * a.sqrt().min(1.0).asin()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(courier: &str, lat: f64, lon: f64, time_ms: i64) -> CourierAt {
        CourierAt {
            courier_id: courier.into(),
            lat,
            lon,
            time_ms,
            task_id: None,
            device: "d".into(),
            score: None,
            severity: None,
        }
    }

    /// A small deterministic generator (no dependency for a test).
    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*seed >> 11) as f64 / (1u64 << 53) as f64
    }

    #[test]
    fn nearby_and_within_answer_as_brute_force_does() {
        let index = Nearby::default();
        let mut seed = 7;
        let mut truth = HashMap::new();
        // 2,000 couriers around Bengaluru, each moved three times.
        for round in 0..3 {
            for i in 0..2_000 {
                let c = at(
                    &format!("c{i}"),
                    12.8 + lcg(&mut seed) * 0.4,
                    77.4 + lcg(&mut seed) * 0.4,
                    round,
                );
                truth.insert(c.courier_id.clone(), c.clone());
                index.moved(c);
            }
        }
        assert_eq!(index.len(), 2_000);
        for _ in 0..50 {
            let (lat, lon) = (12.8 + lcg(&mut seed) * 0.4, 77.4 + lcg(&mut seed) * 0.4);
            let radius = lcg(&mut seed) * 5.0;
            let mut want: Vec<(f64, &str)> = truth
                .values()
                .map(|c| (haversine_km(lat, lon, c.lat, c.lon), c.courier_id.as_str()))
                .filter(|(d, _)| *d <= radius)
                .collect();
            want.sort_by(|a, b| a.0.total_cmp(&b.0));
            want.truncate(25);
            let got: Vec<(f64, &str)> = index
                .near(lat, lon, radius, 25)
                .iter()
                .map(|n| (n.distance_km, n.courier.courier_id.as_str()))
                .map(|(d, c)| (d, truth[c].courier_id.as_str()))
                .collect();
            assert_eq!(got, want);

            let (min, max) = ((lat - 0.02, lon - 0.03), (lat + 0.02, lon + 0.03));
            let mut want: Vec<&str> = truth
                .values()
                .filter(|c| (min.0..=max.0).contains(&c.lat) && (min.1..=max.1).contains(&c.lon))
                .map(|c| c.courier_id.as_str())
                .collect();
            let mut got: Vec<String> = index
                .within(min, max, usize::MAX)
                .into_iter()
                .map(|c| c.courier_id)
                .collect();
            want.sort_unstable();
            got.sort_unstable();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn an_older_report_does_not_move_a_courier_and_scores_and_alerts_stay() {
        let index = Nearby::default();
        index.moved(at("a", 1.0, 1.0, 10));
        index.scored("a", 0.8);
        index.alerted("a", Some("critical"));
        index.moved(at("a", 2.0, 2.0, 5));
        let found = index.near(1.0, 1.0, 1.0, 10);
        assert_eq!(found.len(), 1);
        index.moved(at("a", 1.5, 1.5, 20));
        let found = index.near(1.5, 1.5, 1.0, 10);
        assert_eq!(found[0].courier.score, Some(0.8));
        // The alert's severity holds while it is open, whatever later decisions score.
        assert_eq!(found[0].courier.severity.as_deref(), Some("critical"));
        index.scored("a", 0.75);
        assert_eq!(
            index.near(1.5, 1.5, 1.0, 1)[0].courier.severity.as_deref(),
            Some("critical")
        );
        index.alerted("a", None);
        assert_eq!(
            index.near(1.5, 1.5, 1.0, 1)[0].courier.severity.as_deref(),
            Some("info")
        );
        assert!(index.near(1.0, 1.0, 1.0, 10).is_empty(), "moved away");
    }
}

#[cfg(test)]
mod seed_tests {
    use fleet_proto::record::{AlertStep, DecisionRecord, EventKind, EventRecord, GeoE7, Severity};
    use fleet_proto::{Entry, Record};

    use super::*;
    use crate::history::{Batch, History, SledHistory};

    fn event(seq: u64, courier: &str, lat: f64) -> Entry {
        Entry {
            seq,
            record: Record::Event(EventRecord {
                event_id: format!("e{seq}"),
                courier_id: courier.into(),
                task_id: Some(format!("T-{courier}")),
                event_type: EventKind::Location,
                time_ms: seq as i64 * 1_000,
                utc_offset_s: 0,
                position: GeoE7::from_degrees(lat, 77.6),
                speed_kmh: None,
                accuracy_m: None,
                context: None,
            }),
        }
    }

    fn opened(seq: u64, courier: &str) -> Entry {
        Entry {
            seq,
            record: Record::Decision(DecisionRecord {
                event_id: format!("e{}", seq - 1),
                prediction_id: format!("p{seq}"),
                courier_id: courier.into(),
                task_id: Some(format!("T-{courier}")),
                time_ms: (seq as i64 - 1) * 1_000,
                score: 0.9,
                severity: Severity::Critical,
                actions: vec![],
                model: "m@1".into(),
                modules: ["f@1".into(), "s@1".into(), "p@1".into()],
                schema: 1,
                features: vec![],
                top_factors: vec![],
                release: None,
                alert_step: Some(AlertStep::Opened),
            }),
        }
    }

    /// After a restart the map is what it was: every courier where history last saw it, the
    /// one with an open alert at that alert's severity.
    #[test]
    fn the_index_is_seeded_from_history() {
        let dir = tempfile::tempdir().unwrap();
        let history = SledHistory::open(&dir.path().join("h")).unwrap();
        let entries = [
            event(1, "a", 12.90),
            event(2, "a", 12.91),
            opened(3, "a"),
            event(4, "b", 12.95),
        ];
        history
            .ingest(&Batch {
                device: "d",
                journal: 1,
                through: 4,
                journaled: 4,
                entries: &entries,
                now_ms: 0,
            })
            .unwrap();
        let index = Nearby::default();
        assert_eq!(index.seed(&history).unwrap(), 2);
        let near = index.near(12.91, 77.6, 10.0, 10);
        let found: Vec<(&str, f64, Option<&str>)> = near
            .iter()
            .map(|n| {
                let c = &n.courier;
                (c.courier_id.as_str(), c.lat, c.severity.as_deref())
            })
            .collect();
        assert_eq!(
            found,
            [("a", 12.91, Some("critical")), ("b", 12.95, None)],
            "{near:?}"
        );
    }
}
