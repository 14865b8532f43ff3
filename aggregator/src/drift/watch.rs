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
