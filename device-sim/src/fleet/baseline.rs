//! The rule that needs no model, for judging the model against: a task is at risk when the
//! time it still needs exceeds the time left before its promise by more than a margin. The
//! time it needs is the distance left (through the pickup until the courier picked up) at the
//! courier's recent speed, floored at 10 km/h (a courier waiting at a kitchen still has to
//! ride), plus the handover at the door. The margin is chosen so that the rule catches as many
//! late tasks as the model did; its precision and lead time then say what the model adds.

use std::collections::{HashMap, VecDeque};

use fleet_host::event::{Event, EventType};

use super::quality::{FirstAlerts, task_quality};
use crate::report::TaskQuality;
use crate::source::TaskTruth;
use crate::source::track::haversine_km;

const FLOOR_KMH: f64 = 10.0;
/// Assumed while the fixes do not yet span enough time to measure a speed.
const DEFAULT_KMH: f64 = 20.0;
const HANDOVER_MIN: f64 = 2.0;
const FIXES: usize = 6;
const MIN_SPAN_MS: i64 = 30_000;

struct Track {
    pickup: (f64, f64),
    dropoff: (f64, f64),
    promised_ms: i64,
    picked: bool,
    done: bool,
    fixes: VecDeque<(i64, (f64, f64))>,
    /// (event time, minutes needed - minutes left) at each event of the task.
    excess: Vec<(i64, f32)>,
}

impl Track {
    fn speed_kmh(&self) -> f64 {
        let (Some(first), Some(last)) = (self.fixes.front(), self.fixes.back()) else {
            return DEFAULT_KMH;
        };
        let span = last.0 - first.0;
        if span < MIN_SPAN_MS {
            return DEFAULT_KMH;
        }
        let km: f64 = self
            .fixes
            .iter()
            .zip(self.fixes.iter().skip(1))
            .map(|(a, b)| haversine_km(a.1, b.1))
            .sum();
        (km / (span as f64 / 3_600_000.0)).max(FLOOR_KMH)
    }

    fn observe(&mut self, e: &Event) {
        let at = e.event_time.timestamp_millis();
        if e.lat != 0.0 || e.lon != 0.0 {
            if self.fixes.len() == FIXES {
                self.fixes.pop_front();
            }
            self.fixes.push_back((at, (e.lat, e.lon)));
        }
        match e.event_type {
            EventType::PickedUp => self.picked = true,
            EventType::Delivered | EventType::DeliveryFailed => self.done = true,
            _ => {}
        }
        if self.done {
            return;
        }
        let here = self.fixes.back().map_or(self.pickup, |f| f.1);
        let km = if self.picked {
            haversine_km(here, self.dropoff)
        } else {
            haversine_km(here, self.pickup) + haversine_km(self.pickup, self.dropoff)
        };
        let needed = km / self.speed_kmh() * 60.0 + HANDOVER_MIN;
        let left = (self.promised_ms - at) as f64 / 60_000.0;
        self.excess.push((at, (needed - left) as f32));
    }
}

/// Follows every task through the events the couriers produce.
#[derive(Default)]
pub(super) struct BaselineJudge {
    tasks: HashMap<String, Track>,
}

impl BaselineJudge {
    pub(super) fn observe(&mut self, e: &Event) {
        let Some(task) = &e.task_id else { return };
        if e.event_type == EventType::TaskAssigned
            && let (Some(p), Some(d), Some(promised)) = (e.pickup, e.dropoff, e.promised_at)
        {
            self.tasks.entry(task.clone()).or_insert_with(|| Track {
                pickup: (p.lat, p.lon),
                dropoff: (d.lat, d.lon),
                promised_ms: promised.timestamp_millis(),
                picked: false,
                done: false,
                fixes: VecDeque::new(),
                excess: Vec::new(),
            });
        }
        if let Some(track) = self.tasks.get_mut(task) {
            track.observe(e);
        }
    }

    /// The rule at the smallest margin (minutes) that catches at least `recall` of the late
    /// tasks it followed, and how it did per task; `None` without late tasks.
    pub(super) fn judged_at_recall(
        &self,
        truth: &[TaskTruth],
        recall: f64,
    ) -> Option<(f64, TaskQuality)> {
        let worst = |t: &TaskTruth| {
            self.tasks
                .get(&t.task_id)
                .and_then(|track| track.excess.iter().map(|&(_, x)| x).max_by(f32::total_cmp))
        };
        let mut late: Vec<f32> = truth.iter().filter(|t| t.late).filter_map(worst).collect();
        if late.is_empty() {
            return None;
        }
        late.sort_by(|a, b| b.total_cmp(a));
        let k = ((recall * late.len() as f64).ceil() as usize).clamp(1, late.len());
        // Alerted when the excess goes past the margin: just under the k-th worst.
        let margin = f64::from(late[k - 1]) - 1e-3;
        let first: HashMap<String, FirstAlerts> = self
            .tasks
            .iter()
            .filter_map(|(task, track)| {
                let at = track
                    .excess
                    .iter()
                    .find(|&&(_, x)| f64::from(x) > margin)?
                    .0;
                let mut f = FirstAlerts::default();
                f.note(fleet_host::decision::Severity::Critical, at);
                Some((task.clone(), f))
            })
            .collect();
        Some((margin, task_quality(truth, &first, true)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(task: &str, kind: &str, minute: i64, lat: f64, extra: &str) -> Event {
        let time = chrono::DateTime::from_timestamp(1_795_300_000 + minute * 60, 0).unwrap();
        Event::from_json(&format!(
            r#"{{"event_id":"{task}-{minute}-{kind}","courier_id":"C","task_id":"{task}","event_type":"{kind}","event_time":"{}","lat":{lat},"lon":77.6{extra}}}"#,
            time.to_rfc3339()
        ))
        .unwrap()
    }

    fn assigned(task: &str, promise_min: i64) -> Event {
        let promised = chrono::DateTime::from_timestamp(1_795_300_000 + promise_min * 60, 0)
            .unwrap()
            .to_rfc3339();
        event(
            task,
            "task_assigned",
            0,
            12.90,
            &format!(
                r#","pickup":{{"lat":12.90,"lon":77.6}},"dropoff":{{"lat":13.00,"lon":77.6}},"promised_at":"{promised}""#
            ),
        )
    }

    /// Two tasks 11 km from their customer, picked up at once: one promised in 60 minutes
    /// (never at risk at 20 km/h), one in 20 (needs ~35 at 20 km/h: 15 over from the
    /// start). The rule at full recall alerts only the second, from its first event.
    #[test]
    fn the_rule_flags_the_task_that_cannot_make_it_in_time() {
        let mut judge = BaselineJudge::default();
        for (task, promise) in [("easy", 60), ("hard", 20)] {
            judge.observe(&assigned(task, promise));
            judge.observe(&event(task, "picked_up", 0, 12.90, ""));
            for minute in 1..=10 {
                // 20 km/h northwards: a third of a kilometre a minute.
                let lat = 12.90 + f64::from(minute as i32) * (1.0 / 3.0) / 111.2;
                judge.observe(&event(task, "location", minute, lat, ""));
            }
        }
        let truth = [
            TaskTruth {
                task_id: "easy".into(),
                late: false,
                promised_ms: 0,
                ended_ms: 0,
            },
            TaskTruth {
                task_id: "hard".into(),
                late: true,
                promised_ms: (1_795_300_000 + 20 * 60) * 1000,
                ended_ms: 0,
            },
        ];
        let (margin, q) = judge.judged_at_recall(&truth, 1.0).unwrap();
        assert!(margin > 10.0, "margin {margin}");
        assert_eq!((q.tasks_alerted, q.precision, q.recall), (1, 1.0, 1.0));
        // Alerted in its first minute (its excess stays about 15 minutes at the speed it
        // keeps; the margin sits just under the largest).
        let lead = q.lead_min_median.unwrap();
        assert!((19.0..=20.0).contains(&lead), "lead {lead}");
        assert!(
            judge.judged_at_recall(&truth[..1], 1.0).is_none(),
            "no late task"
        );
    }
}
