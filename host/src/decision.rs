//! What the pipeline produces: decisions (with the prediction log), and dead letters.

use std::sync::Arc;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::bindings::types as wit;
use xxhash_rust::xxh3::{xxh3_64, xxh3_128_with_seed};

use crate::event::{Event, EventType};

/// Severity of a decision: the highest alert among its actions, `info` when none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

/// One action a policy asked for.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    Alert { severity: Severity, message: String },
    NotifyCourier { message: String },
    Reassign { reason: String },
    Surge { multiplier: f32 },
}

impl From<wit::Action> for Action {
    fn from(a: wit::Action) -> Self {
        match a {
            wit::Action::Alert(alert) => Self::Alert {
                severity: match alert.severity {
                    wit::Severity::Info => Severity::Info,
                    wit::Severity::Warning => Severity::Warning,
                    wit::Severity::Critical => Severity::Critical,
                },
                message: alert.message,
            },
            wit::Action::NotifyCourier(message) => Self::NotifyCourier { message },
            wit::Action::Reassign(reason) => Self::Reassign { reason },
            wit::Action::Surge(multiplier) => Self::Surge { multiplier },
        }
    }
}

/// The module versions that made a decision (`name@version+digest`), and the signed release
/// they came in (`name@version+id`), if they came in one.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModuleVersions {
    pub features: String,
    pub scorer: String,
    pub policy: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
}

/// A feature's signed contribution to the score (log-odds).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Factor {
    pub feature: String,
    pub contribution: f32,
}

/// Feature values with their names, serialized as an ordered map (NaN becomes null).
#[derive(Clone, Debug, PartialEq)]
pub struct NamedFeatures {
    pub names: Arc<[String]>,
    pub values: Vec<f32>,
}

impl Serialize for NamedFeatures {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.values.len()))?;
        for (name, value) in self.names.iter().zip(&self.values) {
            map.serialize_entry(name, &value.is_finite().then_some(*value))?;
        }
        map.end()
    }
}

/// A scored event, its decision, and everything needed to audit it later.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Decision {
    pub event_id: String,
    pub task_id: Option<String>,
    pub courier_id: String,
    pub event_type: EventType,
    pub event_time: chrono::DateTime<chrono::FixedOffset>,
    pub score: f32,
    pub severity: Severity,
    pub actions: Vec<Action>,
    /// Stable for (event, model, modules): replaying the same event through the same versions
    /// gives the same id.
    pub prediction_id: String,
    pub model_name: Arc<str>,
    pub model_version: Arc<str>,
    pub modules: Arc<ModuleVersions>,
    pub features: NamedFeatures,
    pub top_factors: Vec<Factor>,
    /// What the decision does to its task's alert: decided by a policy that keeps state per
    /// key; none from a policy without (each of its alerts stands alone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert_step: Option<AlertStep>,
}

pub use fleet_proto::record::{AlertStep, FailureCause, Stage};

/// An event a module failed on, alone (the rest of its batch was scored): set aside, never
/// lost; it can be scored again.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeadLetter {
    pub stage: Stage,
    /// `name@version+digest` of the module that failed.
    pub module: String,
    /// The state key (task or courier) of the event.
    pub key: String,
    pub cause: FailureCause,
    pub error: String,
    pub event: Event,
}

impl DeadLetter {
    /// The event as a JSON line that event input reads again, with the failure beside it in
    /// a `dead_letter` field the reader ignores.
    pub fn to_json_line(&self) -> String {
        let mut line = serde_json::to_value(&self.event).expect("events serialize");
        if let serde_json::Value::Object(fields) = &mut line {
            fields.insert(
                "dead_letter".into(),
                serde_json::json!({
                    "stage": self.stage,
                    "module": self.module,
                    "key": self.key,
                    "cause": self.cause,
                    "error": self.error,
                }),
            );
        }
        line.to_string()
    }
}

/// Assembles decisions for one module set and model: what every decision of a batch shares.
#[derive(Clone, Debug)]
pub struct DecisionMaker {
    pub feature_names: Arc<[String]>,
    pub versions: Arc<ModuleVersions>,
    pub model_name: Arc<str>,
    pub model_version: Arc<str>,
    /// Hash of the model digest and module versions; a prediction id is the event id hashed
    /// with it, so a replay through the same versions gives the same id.
    prediction_seed: u64,
}

impl DecisionMaker {
    pub fn new(
        feature_names: Arc<[String]>,
        versions: ModuleVersions,
        model_name: &str,
        model_version: &str,
        model_digest: &str,
    ) -> Self {
        let seed_source = format!(
            "{model_digest}\u{1f}{}\u{1f}{}\u{1f}{}",
            versions.features, versions.scorer, versions.policy
        );
        Self {
            feature_names,
            versions: Arc::new(versions),
            model_name: model_name.into(),
            model_version: model_version.into(),
            prediction_seed: xxh3_64(seed_source.as_bytes()),
        }
    }

    /// The decision for `event`, scored `score` from `features`, with the policy's actions
    /// and the step it makes in the task's alert.
    pub fn make(
        &self,
        event: &Event,
        features: Vec<f32>,
        score: f32,
        top_factors: Vec<Factor>,
        actions: Vec<Action>,
        alert_step: Option<AlertStep>,
    ) -> Decision {
        let severity = actions
            .iter()
            .filter_map(|a| match a {
                Action::Alert { severity, .. } => Some(*severity),
                _ => None,
            })
            .max()
            .unwrap_or(Severity::Info);
        Decision {
            event_id: event.event_id.clone(),
            task_id: event.task_id.clone(),
            courier_id: event.courier_id.clone(),
            event_type: event.event_type,
            event_time: event.event_time,
            score,
            severity,
            actions,
            prediction_id: format!(
                "pred-{:032x}",
                xxh3_128_with_seed(event.event_id.as_bytes(), self.prediction_seed)
            ),
            model_name: self.model_name.clone(),
            model_version: self.model_version.clone(),
            modules: self.versions.clone(),
            features: NamedFeatures {
                names: self.feature_names.clone(),
                values: features,
            },
            top_factors,
            alert_step,
        }
    }
}
