//! What the pipeline produces: decisions (with the prediction log), and dead letters.

use std::sync::Arc;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::bindings::types as wit;
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

/// The module versions that made a decision (`name@version+digest`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModuleVersions {
    pub features: String,
    pub scorer: String,
    pub policy: String,
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
    pub event_time: String,
    pub score: f32,
    pub severity: Severity,
    pub actions: Vec<Action>,
    /// Stable for (event, model, modules): replaying the same event through the same versions
    /// gives the same id.
    pub prediction_id: String,
    pub model_name: String,
    pub model_version: String,
    pub modules: ModuleVersions,
    pub features: NamedFeatures,
    pub top_factors: Vec<Factor>,
}

/// Where in the pipeline a batch failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Features,
    Scorer,
    Policy,
}

/// An event set aside because the batch it was in failed; nothing is lost, it can be replayed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeadLetter {
    pub stage: Stage,
    /// `name@version+digest` of the module that failed.
    pub module: String,
    /// The state key (task or courier) of the event.
    pub key: String,
    pub error: String,
    pub event: Event,
}
