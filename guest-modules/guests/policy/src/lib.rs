//! The late-risk policy: alert by severity when P(late) crosses configured thresholds, and
//! tell the courier when it is critical.
//!
//! Configuration (all optional): `warning_threshold` (default 0.5), `critical_threshold`
//! (default 0.7), `notify_courier` (`true`/`false`, default true), `reassign_threshold`
//! (unset by default: never suggests a reassignment).

use std::cell::Cell;

wit_bindgen::generate!({
    path: "../../../wit",
    world: "policy",
});

use exports::fleet::edge::decide::{DecisionInput, Guest as Decide};
use exports::fleet::edge::module::Guest as Module;
use fleet::edge::types::{Action, Alert, Config, Severity};

pub struct Policy;

#[derive(Clone, Copy)]
struct Thresholds {
    warning: f32,
    critical: f32,
    notify_courier: bool,
    reassign: Option<f32>,
}

const DEFAULT: Thresholds = Thresholds {
    warning: 0.5,
    critical: 0.7,
    notify_courier: true,
    reassign: None,
};

thread_local! {
    static THRESHOLDS: Cell<Thresholds> = const { Cell::new(DEFAULT) };
}

impl Module for Policy {
    fn init(config: Config) -> Result<(), String> {
        let mut t = DEFAULT;
        for (key, value) in &config {
            let probability = || -> Result<f32, String> {
                match value.parse::<f32>() {
                    Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
                    _ => Err(format!(
                        "{key} must be a probability in [0, 1], got {value:?}"
                    )),
                }
            };
            match key.as_str() {
                "warning_threshold" => t.warning = probability()?,
                "critical_threshold" => t.critical = probability()?,
                "reassign_threshold" => t.reassign = Some(probability()?),
                "notify_courier" => {
                    t.notify_courier = value.parse().map_err(|_| {
                        format!("notify_courier must be true or false, got {value:?}")
                    })?
                }
                "version" => {}
                other => return Err(format!("unknown configuration key {other:?}")),
            }
        }
        if t.warning > t.critical {
            return Err(format!(
                "warning_threshold {} is above critical_threshold {}",
                t.warning, t.critical
            ));
        }
        THRESHOLDS.with(|c| c.set(t));
        Ok(())
    }
}

impl Decide for Policy {
    fn decide(feature_names: Vec<String>, inputs: Vec<DecisionInput>) -> Vec<Vec<Action>> {
        let t = THRESHOLDS.with(Cell::get);
        inputs
            .iter()
            .map(|input| decide_one(&t, &feature_names, input))
            .collect()
    }
}

fn decide_one(t: &Thresholds, names: &[String], input: &DecisionInput) -> Vec<Action> {
    let p = input.score.probability;
    let severity = if p > t.critical {
        Severity::Critical
    } else if p > t.warning {
        Severity::Warning
    } else {
        return Vec::new();
    };
    let task = input.context.task_id.as_deref().unwrap_or("-");
    let factors: Vec<String> = input
        .score
        .top_factors
        .iter()
        .map(|f| {
            let name = names.get(f.feature as usize).map_or("?", String::as_str);
            format!("{name} {:+.2}", f.contribution)
        })
        .collect();
    let label = if matches!(severity, Severity::Critical) {
        "CRITICAL"
    } else {
        "WARNING"
    };
    let mut actions = vec![Action::Alert(Alert {
        severity,
        message: format!(
            "{label}: task {task} (courier {}) P(late)={p:.2}; top factors: {}",
            input.context.courier_id,
            factors.join(", ")
        ),
    })];
    if t.notify_courier && matches!(severity, Severity::Critical) {
        actions.push(Action::NotifyCourier(format!(
            "Task {task} is at risk of being late; head to the dropoff now"
        )));
    }
    if t.reassign.is_some_and(|r| p > r) {
        actions.push(Action::Reassign(format!(
            "P(late)={p:.2} above reassign threshold"
        )));
    }
    actions
}

// Natively (benchmarks) the same code is called through the Guest traits instead.
#[cfg(target_arch = "wasm32")]
export!(Policy);

/// For native callers (benchmarks): the generated types and the implementation.
pub mod native {
    pub use crate::exports::fleet::edge::decide::{Context, DecisionInput, Guest as Decide};
    pub use crate::exports::fleet::edge::module::Guest as Module;
    pub use crate::fleet::edge::types::{Action, EventType, Factor, Score, Severity};
}
