//! The drift alert: every model's drift evaluated over its recent decisions, periodically;
//! a model whose alert is raised or cleared (or whose drifting features change) is pushed on
//! the live streams' `drift` topic and logged, and the last evaluation is exported as gauges.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Baselines, DriftReport, WINDOW_MS};
use crate::history::{History, HistoryError};
use crate::live::{Derived, LiveFeed};

/// Event time a report covers by default: the last day of decisions a model has.
pub const DEFAULT_SPAN_MS: i64 = 24 * WINDOW_MS;

/// How often the drift alert is evaluated.
pub const EVERY: Duration = Duration::from_secs(30);

/// The drift of every model with a baseline (or of `model`) that has decisions: over
/// `[from, to)` when asked (either end alone: the other is a day away), else over the last
/// [`DEFAULT_SPAN_MS`] of event time its decisions reach.
pub fn reports(
    history: &dyn History,
    baselines: &Baselines,
    model: Option<&str>,
    from: Option<i64>,
    to: Option<i64>,
) -> Result<Vec<DriftReport>, HistoryError> {
    let mut out = Vec::new();
    for known in baselines.all() {
        let name = &known.baseline.model;
        if model.is_some_and(|m| m != name) {
            continue;
        }
        let Some((_, newest)) = history.drift_span(name, known.fingerprint)? else {
            if model.is_some() {
                out.push(DriftReport::of(&known, &[]));
            }
            continue;
        };
        let (from, to) = match (from, to) {
            (Some(f), Some(t)) => (f, t),
            (Some(f), None) => (f, f.saturating_add(DEFAULT_SPAN_MS)),
            (None, Some(t)) => (t.saturating_sub(DEFAULT_SPAN_MS), t),
            (None, None) => {
                let end = newest + WINDOW_MS;
                (end - DEFAULT_SPAN_MS, end)
            }
        };
        let windows = history.drift(name, known.fingerprint, from, to)?;
        out.push(DriftReport::of(&known, &windows));
    }
    Ok(out)
}

/// The last evaluation of the drift alert.
pub struct DriftWatch {
    pub baselines: Arc<Baselines>,
    last: Mutex<Vec<DriftReport>>,
}

impl DriftWatch {
    pub fn new(baselines: Arc<Baselines>) -> Self {
        Self {
            baselines,
            last: Mutex::new(Vec::new()),
        }
    }

    fn last(&self) -> std::sync::MutexGuard<'_, Vec<DriftReport>> {
        self.last.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Evaluates every model's drift now; pushes and logs what changed since the last time.
    pub fn evaluate(&self, history: &dyn History, live: &LiveFeed) -> Result<(), HistoryError> {
        let now = reports(history, &self.baselines, None, None, None)?;
        let mut derived = Derived::default();
        {
            let mut last = self.last();
            for report in &now {
                let before = last.iter().find(|r| r.model == report.model);
                let was = before.map(|r| (r.alert, r.drifting.clone()));
                if was == Some((report.alert, report.drifting.clone()))
                    || (was.is_none() && !report.alert)
                {
                    continue;
                }
                if report.alert {
                    tracing::warn!(model = %report.model, drifting = ?report.drifting, decisions = report.decisions, "drift alert: the model sees data unlike its training data");
                } else {
                    tracing::info!(model = %report.model, "drift alert cleared");
                }
                derived.drift(report);
            }
            *last = now;
        }
        live.publish(derived);
        Ok(())
    }

    /// `fleet_drift_psi{model,feature}` and `fleet_drift_alert{model}` of the last evaluation.
    pub fn render_metrics(&self) -> String {
        let last = self.last();
        let mut out = String::new();
        out += "# HELP fleet_drift_psi PSI of a model's feature (or score) over its last day of decisions, against its training baseline.\n# TYPE fleet_drift_psi gauge\n";
        for r in last.iter() {
            for f in std::iter::once(&r.score).chain(&r.features) {
                if let Some(psi) = f.psi {
                    let _ = writeln!(
                        out,
                        "fleet_drift_psi{{model=\"{}\",feature=\"{}\"}} {psi}",
                        r.model, f.name
                    );
                }
            }
        }
        out += "# HELP fleet_drift_alert 1 while a model's drift alert is raised (some PSI over 0.25).\n# TYPE fleet_drift_alert gauge\n";
        for r in last.iter() {
            let _ = writeln!(
                out,
                "fleet_drift_alert{{model=\"{}\"}} {}",
                r.model,
                u8::from(r.alert)
            );
        }
        out
    }
}

/// Evaluates the drift alert every [`EVERY`] on the blocking pool, until the runtime stops.
pub fn spawn_watch(watch: Arc<DriftWatch>, history: Arc<dyn History>, live: Arc<LiveFeed>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (watch, history, live) = (watch.clone(), history.clone(), live.clone());
            let done =
                tokio::task::spawn_blocking(move || watch.evaluate(history.as_ref(), &live)).await;
            if let Ok(Err(e)) = done {
                tracing::warn!(error = %e, "evaluating drift");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use fleet_proto::record::{DecisionRecord, Schema, Severity};
    use fleet_proto::{Entry, Record};

    use super::*;
    use crate::history::{Batch, SledHistory};
    use crate::live::LiveConfig;

    /// `n` decisions of the built-in model whose features are all `value`.
    fn decisions(model: &str, names: &[String], from: u64, n: u64, value: f32) -> Vec<Entry> {
        let mut out = vec![Entry {
            seq: from,
            record: Record::Schema(Schema {
                id: 1,
                model: model.into(),
                feature_names: names.to_vec(),
            }),
        }];
        for i in 0..n {
            out.push(Entry {
                seq: from + 1 + i,
                record: Record::Decision(DecisionRecord {
                    event_id: format!("e{from}-{i}"),
                    prediction_id: format!("p{from}-{i}"),
                    courier_id: "C-1".into(),
                    task_id: None,
                    time_ms: 1_795_300_000_000 + i as i64 * 1_000,
                    score: 0.5,
                    severity: Severity::Info,
                    actions: vec![],
                    model: model.into(),
                    modules: ["f@1".into(), "s@1".into(), "p@1".into()],
                    schema: 1,
                    features: vec![value; names.len()],
                    top_factors: vec![],
                    release: None,
                    alert_step: None,
                }),
            });
        }
        out
    }

    #[test]
    fn the_drift_alert_is_pushed_once_when_raised() {
        let dir = tempfile::tempdir().unwrap();
        let baselines = Arc::new(Baselines::with_builtin());
        let history = SledHistory::open_with(&dir.path().join("h"), baselines.clone()).unwrap();
        let known = baselines.all().remove(0);
        let model = known.baseline.model.clone();
        let names = known.baseline.feature_names();
        let live = LiveFeed::new(LiveConfig::default());
        let watch = DriftWatch::new(baselines);

        // Nothing yet: nothing pushed, nothing exported.
        watch.evaluate(&history, &live).unwrap();
        assert_eq!(live.head(), 0);

        let entries = decisions(&model, &names, 1, 600, 1e6);
        let through = entries.last().unwrap().seq;
        history
            .ingest(&Batch {
                device: "d",
                journal: 1,
                through,
                journaled: through,
                entries: &entries,
                now_ms: 0,
            })
            .unwrap();
        watch.evaluate(&history, &live).unwrap();
        let pushed = live.since(0).events;
        assert_eq!(pushed.len(), 1);
        assert_eq!(pushed[0].topic, crate::live::Topic::Drift);
        let event: serde_json::Value = serde_json::from_str(&pushed[0].json).unwrap();
        assert_eq!(event["data"]["model"], model.as_str());
        assert_eq!(event["data"]["alert"], true);
        let metrics = watch.render_metrics();
        assert!(
            metrics.contains(&format!("fleet_drift_alert{{model=\"{model}\"}} 1")),
            "{metrics}"
        );
        assert!(metrics.contains("fleet_drift_psi{"), "{metrics}");

        // Evaluated again with nothing new: not pushed again.
        watch.evaluate(&history, &live).unwrap();
        assert_eq!(live.head(), 1);
    }
}
