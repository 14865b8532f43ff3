//! What a run came to: counts that must balance, latencies, alert quality against ground
//! truth, and what each process cost. Printed as text or JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub scenario: String,
    pub couriers: usize,
    pub devices: usize,
    pub simulated_hours: f64,
    pub wall_s: f64,
    /// Simulated seconds per wall second actually achieved (asked: `speed_asked`).
    pub speed: f64,
    pub speed_asked: f64,
    pub events: Events,
    pub latency_ms: Latencies,
    pub alerts: Alerts,
    pub sync: Sync,
    pub burst: Option<BurstReport>,
    pub deploy: Option<DeployReport>,
    /// Each model's drift against its training baseline, as the aggregator measured it.
    pub drift: Vec<DriftSummary>,
    pub processes: Vec<ProcessUsage>,
    pub aggregator_http: String,
    /// A task and a courier of this run, for the query hints.
    pub sample_task: Option<String>,
    pub sample_courier: Option<String>,
}

/// A model's drift over the run (from `/api/v1/drift`).
#[derive(Debug, Default, Serialize)]
pub struct DriftSummary {
    pub model: String,
    pub decisions: u64,
    /// The worst band (stable, moderate, significant).
    pub band: String,
    pub alert: bool,
    pub score_psi: f64,
    /// The features of highest PSI, highest first, with their PSI (calendar features apart).
    pub worst: Vec<(String, f64)>,
    /// Calendar features (hour, weekday) with their PSI: a run shorter than their period
    /// differs from training by construction; they raise no alert.
    pub seasonal: Vec<(String, f64)>,
}

impl DriftSummary {
    /// The summaries of an `/api/v1/drift` answer.
    pub fn of_api(answer: &serde_json::Value) -> Vec<Self> {
        let models = answer["models"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        models
            .iter()
            .map(|m| {
                let features = m["features"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let psi = |seasonal: bool| -> Vec<(String, f64)> {
                    let mut list: Vec<(String, f64)> = features
                        .iter()
                        .filter(|f| f["seasonal"].as_bool() == Some(seasonal))
                        .filter_map(|f| Some((f["name"].as_str()?.to_string(), f["psi"].as_f64()?)))
                        .collect();
                    list.sort_by(|a, b| b.1.total_cmp(&a.1));
                    list
                };
                let mut worst = psi(false);
                worst.truncate(3);
                Self {
                    model: m["model"].as_str().unwrap_or_default().into(),
                    decisions: m["decisions"].as_u64().unwrap_or(0),
                    band: m["band"].as_str().unwrap_or("none").into(),
                    alert: m["alert"].as_bool().unwrap_or(false),
                    score_psi: m["score"]["psi"].as_f64().unwrap_or(0.0),
                    worst,
                    seasonal: psi(true),
                }
            })
            .collect()
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Events {
    /// Distinct events the couriers produced.
    pub generated: u64,
    /// Deliveries into the devices, repeats included.
    pub sent: u64,
    /// Extra copies sent (at-least-once delivery from the handset app).
    pub repeats_sent: u64,
    /// Refused by the device as invalid (real-data quirks), with the first reasons.
    pub rejected: u64,
    pub rejected_examples: Vec<String>,
    /// Acknowledged by a device as new (durable in its journal, or thinned by policy).
    pub acknowledged: u64,
    /// Repeats the devices recognised and absorbed.
    pub repeats_absorbed: u64,
    pub thinned: u64,
    /// Events a device's modules failed on: journaled and parked for a retry, never lost.
    pub dead_lettered: u64,
    pub journaled: u64,
    /// Acknowledged by the aggregator (durable in history).
    pub synced: u64,
    /// Events in the aggregator's history.
    pub stored: u64,
    /// Journaled events missing from history (must be 0).
    pub lost: u64,
    /// Events found more than once in history, or not generated at all (must be 0).
    pub duplicated: u64,
    /// Whether `lost` and `duplicated` come from reading every courier's route back.
    pub audited: bool,
}

/// How a load burst (`--burst`) was absorbed.
#[derive(Debug, Default, Serialize)]
pub struct BurstReport {
    /// Events released during the burst window and its wall length.
    pub events: u64,
    pub window_s: f64,
    /// `events / window_s`: what the couriers offered.
    pub offered_per_s: f64,
    /// From the start of the burst until the devices had acknowledged (journaled, durable)
    /// everything released up to its end; `None` if never within the run.
    pub devices_absorbed_s: Option<f64>,
    /// Same, until the aggregator had stored it all.
    pub stored_s: Option<f64>,
}

/// How a release deployed mid-run (`--deploy`) reached the fleet.
#[derive(Debug, Default, Serialize)]
pub struct DeployReport {
    pub release: String,
    pub devices: usize,
    /// Wall seconds from the start of the run.
    pub published_at_s: f64,
    pub deployed_at_s: f64,
    /// From the deploy until every device ran the release; `None` if not within the run.
    pub all_active_after_s: Option<f64>,
    /// Release bytes the aggregator served, per device.
    pub bytes_served_per_device: u64,
    /// Events the devices acknowledged per second while the release spread, and over as long
    /// just before the deploy.
    pub events_per_s_before: Option<f64>,
    pub events_per_s_during: Option<f64>,
    /// Event due -> decision durable on the device, over the same two windows.
    pub decision_ms_before: Option<Percentiles>,
    pub decision_ms_during: Option<Percentiles>,
    /// Seconds from the deploy, and how many devices ran which release.
    pub timeline: Vec<(f64, BTreeMap<String, usize>)>,
}

impl DeployReport {
    fn text(&self, s: &mut String) {
        let after = self
            .all_active_after_s
            .map_or("not within the run".to_string(), |t| {
                format!("{t:.2} s after the deploy")
            });
        let _ = writeln!(
            s,
            "deploy: {} published at {:.1} s, deployed to all {} devices at {:.1} s; all ran it {after}; {} release bytes served per device",
            self.release,
            self.published_at_s,
            self.devices,
            self.deployed_at_s,
            self.bytes_served_per_device
        );
        let rate = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.0} events/s"));
        let p99 = |p: &Option<Percentiles>| {
            p.as_ref()
                .map_or("-".to_string(), |p| format!("p99 {:.1} ms", p.p99))
        };
        let _ = writeln!(
            s,
            "  before the deploy: {}, decision {}; while it spread: {}, decision {}",
            rate(self.events_per_s_before),
            p99(&self.decision_ms_before),
            rate(self.events_per_s_during),
            p99(&self.decision_ms_during)
        );
        // Each change of the counts, from just before the deploy.
        let mut last = None;
        for (t, counts) in &self.timeline {
            if last != Some(counts) {
                let text: Vec<String> = counts.iter().map(|(r, n)| format!("{r}: {n}")).collect();
                let _ = writeln!(s, "  {t:+6.2} s  {}", text.join(", "));
                last = Some(counts);
            }
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Latencies {
    /// Event due -> scored and durable on the device (the producer's answer).
    pub event_to_decision: Percentiles,
    /// Event due -> acknowledged by the aggregator (durable in history).
    pub event_to_stored: Percentiles,
}

#[derive(Debug, Default, Serialize)]
pub struct Percentiles {
    pub samples: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// From latencies in microseconds.
    pub fn of(mut micros: Vec<u32>) -> Self {
        if micros.is_empty() {
            return Self::default();
        }
        micros.sort_unstable();
        let at = |q: f64| micros[((micros.len() - 1) as f64 * q).round() as usize] as f64 / 1e3;
        Self {
            samples: micros.len(),
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Alerts {
    /// Decisions at warning or critical: alerts opened and escalated (a policy without state
    /// raises one on every risky event).
    pub raised: u64,
    /// Alerts their policy resolved when the risk fell back.
    pub resolved: u64,
    /// Alerts raised per task that raised any, on average, and the most on one task.
    pub per_alerted_task: f64,
    pub most_on_a_task: u32,
    pub tasks: u64,
    pub tasks_late: u64,
    /// Tasks alerted at all, and how many of them ended late and of the late were alerted:
    /// `warning`'s figures, kept here for readers of the report from before.
    pub tasks_alerted: u64,
    /// Of the tasks alerted, the share that ended late.
    pub precision: f64,
    /// Of the late tasks, the share alerted.
    pub recall: f64,
    /// The same per task at each severity, with the lead time of the first alert.
    pub warning: TaskQuality,
    pub critical: TaskQuality,
    /// The rule without a model (time needed at the recent speed past the time left by more
    /// than `margin_min`), its margin chosen to catch as many late tasks as the model did at
    /// critical.
    pub baseline: Option<BaselineQuality>,
}

#[derive(Debug, Default, Serialize)]
pub struct BaselineQuality {
    pub margin_min: f64,
    #[serde(flatten)]
    pub quality: TaskQuality,
}

/// Alerts judged per task at one severity: a task counts as alerted once any of its decisions
/// reached the severity.
#[derive(Debug, Default, Serialize)]
pub struct TaskQuality {
    pub tasks_alerted: u64,
    /// Of the tasks alerted, the share that ended late.
    pub precision: f64,
    /// Of the late tasks, the share alerted.
    pub recall: f64,
    /// Minutes from a late task's first alert to its promise, the median over late tasks
    /// alerted (negative: the alert came after the promise).
    pub lead_min_median: Option<f64>,
    /// Late tasks whose first alert came after their promise.
    pub late_alerted_after_promise: u64,
}

impl TaskQuality {
    /// `N alerted, precision P, recall R, median lead L before the promise`.
    fn text(&self) -> String {
        let lead = self
            .lead_min_median
            .map_or("-".to_string(), |m| format!("{m:.1} min"));
        format!(
            "{} alerted, precision {:.2}, recall {:.2}, median lead {lead} before the promise",
            self.tasks_alerted, self.precision, self.recall
        )
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Sync {
    pub connects: u64,
    pub failures: u64,
    pub faults: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct ProcessUsage {
    pub name: String,
    pub pid: u32,
    pub cpu_s: f64,
    /// CPU time over wall time, in cores (2 cores = 2.0).
    pub cpu_cores: f64,
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
}

impl ProcessUsage {
    /// From `/proc/PID` (Linux); `None` elsewhere or when the process is gone.
    pub fn read(name: &str, pid: u32, wall_s: f64) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the parenthesised command name; utime and stime are 14th and 15th.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
        // USER_HZ: 100 on every Linux target we run on.
        let cpu_s = ticks / 100.0;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        Some(Self {
            name: name.into(),
            pid,
            cpu_s,
            cpu_cores: if wall_s > 0.0 { cpu_s / wall_s } else { 0.0 },
            rss_mib: kib("VmRSS:") / 1024.0,
            peak_rss_mib: kib("VmHWM:") / 1024.0,
        })
    }
}

impl Report {
    pub fn text(&self) -> String {
        let e = &self.events;
        let mut s = String::new();
        let _ = writeln!(s, "{}", self.scenario);
        let _ = writeln!(
            s,
            "  {} couriers on {} devices; {:.1} simulated hours in {:.1} s ({:.0}x real time, asked {:.0}x)",
            self.couriers,
            self.devices,
            self.simulated_hours,
            self.wall_s,
            self.speed,
            self.speed_asked
        );
        let _ = writeln!(s, "events");
        let _ = writeln!(
            s,
            "  generated {}  sent {} ({} repeats)  rejected as invalid {}",
            e.generated, e.sent, e.repeats_sent, e.rejected
        );
        for r in &e.rejected_examples {
            let _ = writeln!(s, "    e.g. {r}");
        }
        let _ = writeln!(
            s,
            "  acknowledged {}  repeats absorbed {}  thinned {}  dead-lettered {}  journaled {}",
            e.acknowledged, e.repeats_absorbed, e.thinned, e.dead_lettered, e.journaled
        );
        let _ = writeln!(
            s,
            "  synced {}  stored {}  lost {}  duplicated {}{}",
            e.synced,
            e.stored,
            e.lost,
            e.duplicated,
            if e.audited {
                "  (every route read back)"
            } else {
                "  (from counts)"
            }
        );
        let l = &self.latency_ms;
        for (name, p) in [
            (
                "event -> decision (durable on device)",
                &l.event_to_decision,
            ),
            (
                "event -> stored (acknowledged by aggregator)",
                &l.event_to_stored,
            ),
        ] {
            let _ = writeln!(
                s,
                "latency {name}: p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
                p.p50, p.p90, p.p99, p.max
            );
        }
        let a = &self.alerts;
        let _ = writeln!(
            s,
            "alerts: {} raised on {} of {} tasks ({:.2} per alerted task, at most {}), {} resolved; {} tasks late; precision {:.2}, recall {:.2}",
            a.raised,
            a.tasks_alerted,
            a.tasks,
            a.per_alerted_task,
            a.most_on_a_task,
            a.resolved,
            a.tasks_late,
            a.precision,
            a.recall
        );
        for (name, q) in [("warning", &a.warning), ("critical", &a.critical)] {
            let _ = writeln!(
                s,
                "  per task at {name}: {} ({} late tasks first alerted after it)",
                q.text(),
                q.late_alerted_after_promise
            );
        }
        if let Some(b) = &a.baseline {
            let _ = writeln!(
                s,
                "  without a model (needed > left {:+.1} min, at the model's critical recall): {}",
                b.margin_min,
                b.quality.text()
            );
        }
        for d in &self.drift {
            let list = |l: &[(String, f64)]| {
                l.iter()
                    .map(|(n, p)| format!("{n} {p:.3}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(
                s,
                "drift of {} over {} decisions: {}{}; score PSI {:.3}; highest PSI: {} (calendar, no alert: {})",
                d.model,
                d.decisions,
                d.band,
                if d.alert { ", DRIFT ALERT" } else { "" },
                d.score_psi,
                list(&d.worst),
                list(&d.seasonal)
            );
        }
        let _ = writeln!(
            s,
            "sync: {} connections, {} ended in error",
            self.sync.connects, self.sync.failures
        );
        if let Some(b) = &self.burst {
            let secs = |t: Option<f64>| t.map_or("never".to_string(), |t| format!("{t:.1} s"));
            let _ = writeln!(
                s,
                "burst: {} events offered in {:.1} s ({:.0} events/s); devices absorbed them in {}, the aggregator stored them in {}",
                b.events,
                b.window_s,
                b.offered_per_s,
                secs(b.devices_absorbed_s),
                secs(b.stored_s)
            );
        }
        if let Some(d) = &self.deploy {
            d.text(&mut s);
        }
        for f in &self.sync.faults {
            let _ = writeln!(s, "  fault: {f}");
        }
        for p in &self.processes {
            let _ = writeln!(
                s,
                "process {} (pid {}): cpu {:.1} s ({:.2} cores), rss {:.0} MiB, peak {:.0} MiB",
                p.name, p.pid, p.cpu_s, p.cpu_cores, p.rss_mib, p.peak_rss_mib
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_ranks() {
        let p = Percentiles::of((1..=100).map(|i| i * 1000).collect());
        assert_eq!((p.p50, p.p99, p.max), (51.0, 99.0, 100.0));
    }
}
