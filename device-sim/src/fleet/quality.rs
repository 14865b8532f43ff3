//! How good the alerts were, per task: at each severity, which tasks were alerted, how many
//! of those ended late (precision), how many late tasks were alerted (recall), and how long
//! before the promise the first alert came (lead time).

use std::collections::HashMap;

use fleet_host::decision::Severity;

use crate::report::TaskQuality;
use crate::source::TaskTruth;

/// When a task was first alerted at warning (or above) and at critical: the event time of the
/// decision, ms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct FirstAlerts {
    pub(super) warning: Option<i64>,
    pub(super) critical: Option<i64>,
}

impl FirstAlerts {
    /// Notes a decision of `severity` at `at_ms` (decisions may come out of order: the
    /// earliest counts).
    pub(super) fn note(&mut self, severity: Severity, at_ms: i64) {
        let earliest = |slot: &mut Option<i64>| *slot = Some(slot.map_or(at_ms, |t| t.min(at_ms)));
        if severity >= Severity::Warning {
            earliest(&mut self.warning);
        }
        if severity >= Severity::Critical {
            earliest(&mut self.critical);
        }
    }
}

/// The alerts' quality at one severity (`critical`: only alerts that reached critical count).
pub(super) fn task_quality(
    truth: &[TaskTruth],
    first: &HashMap<String, FirstAlerts>,
    critical: bool,
) -> TaskQuality {
    let alerted_at = |t: &TaskTruth| {
        let f = first.get(&t.task_id)?;
        if critical { f.critical } else { f.warning }
    };
    let late = truth.iter().filter(|t| t.late).count() as u64;
    let mut alerted = 0u64;
    let mut hits = 0u64;
    let mut leads_min: Vec<f64> = Vec::new();
    for t in truth {
        let Some(at) = alerted_at(t) else { continue };
        alerted += 1;
        if t.late {
            hits += 1;
            leads_min.push((t.promised_ms - at) as f64 / 60_000.0);
        }
    }
    leads_min.sort_by(f64::total_cmp);
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    TaskQuality {
        tasks_alerted: alerted,
        precision: ratio(hits, alerted),
        recall: ratio(hits, late),
        lead_min_median: median(&leads_min),
        late_alerted_after_promise: leads_min.iter().filter(|&&l| l < 0.0).count() as u64,
    }
}

fn median(sorted: &[f64]) -> Option<f64> {
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[n / 2]),
        n => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn task(id: &str, late: bool, promised_min: i64) -> TaskTruth {
        TaskTruth {
            task_id: id.into(),
            late,
            promised_ms: promised_min * MIN,
            ended_ms: (promised_min + if late { 5 } else { -5 }) * MIN,
        }
    }

    /// Four tasks, two late. T1 (late) warned at 10 min, critical at 20, promised at 30;
    /// T2 (late) only warned, at 35 (after its promise at 30); T3 (on time) critical at 5;
    /// T4 (on time) never alerted.
    #[test]
    fn precision_recall_and_lead_time_per_severity_by_hand() {
        let truth = [
            task("T1", true, 30),
            task("T2", true, 30),
            task("T3", false, 30),
            task("T4", false, 30),
        ];
        let mut first: HashMap<String, FirstAlerts> = HashMap::new();
        for (t, severity, at_min) in [
            ("T1", Severity::Critical, 20),
            ("T1", Severity::Warning, 10),
            ("T1", Severity::Critical, 25),
            ("T2", Severity::Warning, 35),
            ("T3", Severity::Critical, 5),
            ("T4", Severity::Info, 1),
        ] {
            first
                .entry(t.into())
                .or_default()
                .note(severity, at_min * MIN);
        }
        let warning = task_quality(&truth, &first, false);
        // Alerted at warning or above: T1, T2, T3; late among them: T1, T2.
        assert_eq!(warning.tasks_alerted, 3);
        assert!((warning.precision - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(warning.recall, 1.0);
        // Leads: T1 30 - 10 = 20 min, T2 30 - 35 = -5 min; median 7.5.
        assert_eq!(warning.lead_min_median, Some(7.5));
        assert_eq!(warning.late_alerted_after_promise, 1);

        let critical = task_quality(&truth, &first, true);
        // At critical: T1 and T3; late: T1.
        assert_eq!(critical.tasks_alerted, 2);
        assert_eq!(critical.precision, 0.5);
        assert_eq!(critical.recall, 0.5);
        assert_eq!(critical.lead_min_median, Some(10.0));
        assert_eq!(critical.late_alerted_after_promise, 0);

        let none = task_quality(&truth, &HashMap::new(), true);
        assert_eq!(
            (none.tasks_alerted, none.precision, none.recall),
            (0, 0.0, 0.0)
        );
        assert_eq!(none.lead_min_median, None);
    }
}
