//! Alert objects, decided once for every backend: what a task's decisions and events make of
//! its alert. A policy that keeps state per key says what each decision does (opened,
//! escalated, resolved); for an older policy, whose every risky decision is an alert of its
//! own, history derives it: the first opens, a higher severity escalates, the rest repeat the
//! open alert. Either way the alert resolves when its task ends, and its peak score follows
//! every decision while it is open.

use fleet_proto::record::{AlertStep, DecisionRecord, EventKind, EventRecord, Severity};
use serde::{Deserialize, Serialize};

use super::views::{self, Alert};

/// Whose alert: a task's, or a courier's for decisions without a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum AlertOf<'a> {
    Task(&'a str),
    Courier(&'a str),
}

impl<'a> AlertOf<'a> {
    pub(crate) fn of_decision(d: &'a DecisionRecord) -> Self {
        match &d.task_id {
            Some(task) => Self::Task(task),
            None => Self::Courier(&d.courier_id),
        }
    }
}

/// What moves an alert.
#[derive(Clone, Copy, Debug)]
pub(crate) enum AlertMove<'a> {
    Decision(&'a DecisionRecord),
    /// The task's delivery or failed delivery.
    Ended(&'a EventRecord),
}

impl AlertMove<'_> {
    /// Whether an event ends its task's alert.
    pub(crate) fn ends_task(e: &EventRecord) -> bool {
        matches!(
            e.event_type,
            EventKind::Delivered | EventKind::DeliveryFailed
        )
    }
}

/// Whether an alert is still open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Open,
    Resolved,
}

/// One alert as stored: its whole lifecycle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct AlertRow {
    /// The prediction id of the decision that opened it.
    pub(crate) id: String,
    pub(crate) task_id: Option<String>,
    pub(crate) courier_id: String,
    pub(crate) device: String,
    pub(crate) severity: Severity,
    pub(crate) opened_ms: i64,
    pub(crate) escalated_ms: Option<i64>,
    pub(crate) resolved_ms: Option<i64>,
    pub(crate) resolution: Option<String>,
    pub(crate) peak_score: f32,
    pub(crate) peak_ms: i64,
    /// The message and factors of the decision that last raised it (opened or escalated).
    pub(crate) message: String,
    pub(crate) schema: u64,
    pub(crate) top_factors: Vec<(u32, f32)>,
    pub(crate) model: String,
    pub(crate) modules: [String; 3],
    pub(crate) release: Option<String>,
    /// Raises while it was open that changed nothing (an older policy alerts on every risky
    /// event).
    pub(crate) repeats: u32,
}

impl AlertRow {
    fn open(device: &str, d: &DecisionRecord) -> Self {
        Self {
            id: d.prediction_id.clone(),
            task_id: d.task_id.clone(),
            courier_id: d.courier_id.clone(),
            device: device.into(),
            severity: d.severity,
            opened_ms: d.time_ms,
            escalated_ms: None,
            resolved_ms: None,
            resolution: None,
            peak_score: d.score,
            peak_ms: d.time_ms,
            message: message(d),
            schema: d.schema,
            top_factors: d.top_factors.clone(),
            model: d.model.clone(),
            modules: d.modules.clone(),
            release: d.release.clone(),
            repeats: 0,
        }
    }

    pub(crate) fn state(&self) -> AlertState {
        if self.resolved_ms.is_some() {
            AlertState::Resolved
        } else {
            AlertState::Open
        }
    }

    fn escalate(&mut self, d: &DecisionRecord) {
        self.severity = d.severity;
        self.escalated_ms = Some(d.time_ms);
        self.message = message(d);
        self.schema = d.schema;
        self.top_factors.clone_from(&d.top_factors);
        self.model.clone_from(&d.model);
        self.modules.clone_from(&d.modules);
        self.release.clone_from(&d.release);
    }

    fn resolve(&mut self, at_ms: i64, why: &str) {
        self.resolved_ms = Some(at_ms);
        self.resolution = Some(why.into());
    }

    /// The alert as the API shows it; `names` are the feature names of its schema.
    pub(crate) fn view(&self, names: Option<&[String]>) -> Alert {
        Alert {
            id: self.id.clone(),
            state: self.state(),
            severity: self.severity.as_str().into(),
            task_id: self.task_id.clone(),
            courier_id: self.courier_id.clone(),
            device: self.device.clone(),
            opened: views::rfc3339(self.opened_ms),
            escalated: self.escalated_ms.map(views::rfc3339),
            resolved: self.resolved_ms.map(views::rfc3339),
            resolution: self.resolution.clone(),
            peak_score: self.peak_score,
            peak_at: views::rfc3339(self.peak_ms),
            message: self.message.clone(),
            top_factors: self
                .top_factors
                .iter()
                .map(|&(i, contribution)| views::FactorView {
                    feature: views::feature_name(names, i as usize),
                    contribution,
                })
                .collect(),
            model: self.model.clone(),
            modules: views::ModulesView::of(&self.modules),
            release: self.release.clone(),
            repeats: self.repeats,
        }
    }
}

fn message(d: &DecisionRecord) -> String {
    d.actions
        .iter()
        .find_map(|a| match a {
            fleet_proto::record::ActionRecord::Alert { message, .. } => Some(message.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// One key's alerts through a batch: the one open (as stored, then as folded), and every
/// alert the batch changed, the open one last if it changed.
#[derive(Debug, Default)]
pub(crate) struct KeyAlerts {
    pub(crate) open: Option<AlertRow>,
    /// Alerts that resolved during the batch.
    pub(crate) closed: Vec<AlertRow>,
    /// Whether `open` changed (or a new one opened).
    pub(crate) changed: bool,
    /// Each step an alert took during the batch, with the alert as it was right after.
    pub(crate) steps: Vec<(AlertStep, AlertRow)>,
}

impl KeyAlerts {
    pub(crate) fn new(open: Option<AlertRow>) -> Self {
        Self {
            open,
            ..Self::default()
        }
    }

    /// Folds one move in journal order.
    pub(crate) fn fold(&mut self, device: &str, m: AlertMove<'_>) {
        match m {
            AlertMove::Decision(d) => self.fold_decision(device, d),
            AlertMove::Ended(e) => {
                let why = match e.event_type {
                    EventKind::DeliveryFailed => "task ended: delivery failed",
                    _ => "task ended: delivered",
                };
                self.close(e.time_ms, why);
            }
        }
    }

    /// Alerts opened and escalations so far.
    #[cfg(test)]
    fn raised(&self) -> usize {
        self.steps
            .iter()
            .filter(|(s, _)| *s != AlertStep::Resolved)
            .count()
    }

    fn fold_decision(&mut self, device: &str, d: &DecisionRecord) {
        let raises = d.severity >= Severity::Warning;
        let step = match d.alert_step {
            Some(step) => Some(step),
            None if raises => Some(AlertStep::Opened),
            None => None,
        };
        match (step, self.open.as_mut()) {
            (Some(AlertStep::Opened | AlertStep::Escalated), None) if raises => {
                let open = AlertRow::open(device, d);
                self.steps.push((AlertStep::Opened, open.clone()));
                self.open = Some(open);
                self.changed = true;
            }
            (Some(AlertStep::Opened | AlertStep::Escalated), Some(open)) if raises => {
                if d.severity > open.severity {
                    open.escalate(d);
                    self.steps.push((AlertStep::Escalated, open.clone()));
                } else {
                    open.repeats += 1;
                }
                self.changed = true;
            }
            (Some(AlertStep::Resolved), Some(_)) => {
                self.peak(d);
                self.close(d.time_ms, "risk fell below the policy's threshold");
                return;
            }
            _ => {}
        }
        self.peak(d);
    }

    fn peak(&mut self, d: &DecisionRecord) {
        if let Some(open) = self.open.as_mut()
            && d.score > open.peak_score
        {
            open.peak_score = d.score;
            open.peak_ms = d.time_ms;
            self.changed = true;
        }
    }

    fn close(&mut self, at_ms: i64, why: &str) {
        if let Some(mut open) = self.open.take() {
            open.resolve(at_ms, why);
            self.steps.push((AlertStep::Resolved, open.clone()));
            self.closed.push(open);
            self.changed = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_proto::record::ActionRecord;

    fn decision(n: u32, score: f32, severity: Severity, step: Option<AlertStep>) -> DecisionRecord {
        let raises = severity >= Severity::Warning && step != Some(AlertStep::Resolved);
        DecisionRecord {
            event_id: format!("e{n}"),
            prediction_id: format!("p{n}"),
            courier_id: "C1".into(),
            task_id: Some("T1".into()),
            time_ms: i64::from(n) * 1000,
            score,
            severity: if raises { severity } else { Severity::Info },
            actions: if raises {
                vec![ActionRecord::Alert {
                    severity,
                    message: format!("alert {n}"),
                }]
            } else {
                vec![]
            },
            model: "m@1".into(),
            modules: ["f".into(), "s".into(), "p".into()],
            schema: 1,
            features: vec![],
            top_factors: vec![(0, 0.5)],
            release: None,
            alert_step: step,
        }
    }

    fn ended(n: u32) -> EventRecord {
        EventRecord {
            event_id: format!("e{n}"),
            courier_id: "C1".into(),
            task_id: Some("T1".into()),
            event_type: EventKind::Delivered,
            time_ms: i64::from(n) * 1000,
            utc_offset_s: 0,
            position: fleet_proto::record::GeoE7 { lat: 0, lon: 0 },
            speed_kmh: None,
            accuracy_m: None,
            context: None,
        }
    }

    #[test]
    fn a_keyed_policy_opens_escalates_and_resolves_one_alert() {
        use AlertStep::*;
        let mut a = KeyAlerts::new(None);
        let moves = [
            decision(1, 0.3, Severity::Info, None),
            decision(2, 0.6, Severity::Warning, Some(Opened)),
            decision(3, 0.65, Severity::Info, None),
            decision(4, 0.8, Severity::Critical, Some(Escalated)),
            decision(5, 0.9, Severity::Info, None),
            decision(6, 0.3, Severity::Info, Some(Resolved)),
            decision(7, 0.2, Severity::Info, None),
        ];
        for d in &moves {
            a.fold("dev", AlertMove::Decision(d));
        }
        assert!(a.open.is_none());
        assert_eq!(a.raised(), 2);
        let steps: Vec<_> = a.steps.iter().map(|(s, row)| (*s, row.severity)).collect();
        assert_eq!(
            steps,
            [
                (Opened, Severity::Warning),
                (Escalated, Severity::Critical),
                (Resolved, Severity::Critical)
            ]
        );
        let [closed] = a.closed.as_slice() else {
            panic!("{:?}", a.closed)
        };
        assert_eq!(
            (closed.id.as_str(), closed.severity, closed.opened_ms),
            ("p2", Severity::Critical, 2000)
        );
        assert_eq!(
            (closed.escalated_ms, closed.resolved_ms),
            (Some(4000), Some(6000))
        );
        assert_eq!((closed.peak_score, closed.peak_ms), (0.9, 5000));
        assert_eq!(closed.message, "alert 4");
        assert_eq!(closed.state(), AlertState::Resolved);
    }

    #[test]
    fn an_older_policys_alerts_fold_into_one_that_resolves_when_the_task_ends() {
        let mut a = KeyAlerts::new(None);
        let d = [
            decision(1, 0.6, Severity::Warning, None),
            decision(2, 0.62, Severity::Warning, None),
            decision(3, 0.8, Severity::Critical, None),
            decision(4, 0.85, Severity::Critical, None),
            decision(5, 0.6, Severity::Warning, None),
        ];
        for d in &d {
            a.fold("dev", AlertMove::Decision(d));
        }
        let open = a.open.clone().unwrap();
        assert_eq!(
            (open.severity, open.repeats, open.peak_score, a.raised()),
            (Severity::Critical, 3, 0.85, 2)
        );
        let end = ended(6);
        a.fold("dev", AlertMove::Ended(&end));
        assert!(a.open.is_none());
        assert_eq!(
            a.closed[0].resolution.as_deref(),
            Some("task ended: delivered")
        );
        assert_eq!(a.closed[0].resolved_ms, Some(6000));
    }

    #[test]
    fn a_task_alerts_again_after_its_alert_resolved() {
        use AlertStep::*;
        let mut a = KeyAlerts::new(None);
        for d in [
            decision(1, 0.6, Severity::Warning, Some(Opened)),
            decision(2, 0.3, Severity::Info, Some(Resolved)),
            decision(3, 0.75, Severity::Critical, Some(Opened)),
        ] {
            a.fold("dev", AlertMove::Decision(&d));
        }
        assert_eq!(a.closed.len(), 1);
        assert_eq!(a.open.as_ref().map(|o| o.id.as_str()), Some("p3"));
        assert!(a.changed);
        assert_eq!(a.raised(), 2);
    }
}
