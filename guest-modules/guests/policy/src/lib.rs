//! The late-risk policy: one alert per task and severity. A task's alert opens when P(late)
//! first crosses a threshold, escalates once from warning to critical, and resolves when
//! P(late) falls below the warning threshold minus a hysteresis; the courier is told once,
//! when the task turns critical. The host keeps each task's state between batches (the
//! `policy-keyed` world: state in, state out).
//!
//! Configuration (all optional): `warning_threshold` (default 0.5), `critical_threshold`
//! (default 0.7), `hysteresis` (default 0.1), `notify_courier` (`true`/`false`, default true),
//! `reassign_threshold` (unset by default: never suggests a reassignment; else once per
//! alert, the first time P(late) is above it).
//!
//! Probabilities are read and written as plain decimals by the few lines in `decimal`, not by
//! `str::parse::<f32>` and `{:.2}`: core's float parsing and formatting are a quarter of this
//! module's code, and compile time, which is most of a swap, grows with code size.

use std::cell::Cell;

// Our allocator and `cabi_realloc` (see the crate).
use guest_alloc as _;

wit_bindgen::generate!({
    path: "../../../wit",
    world: "policy-keyed",
});

use exports::fleet::edge::decide_keyed::{
    AlertStep, Decided, Guest as Decide, KeyState, KeyedInput, Outcome,
};
use exports::fleet::edge::module::Guest as Module;
use fleet::edge::types::{Action, Alert, Config, FeatureMatrix, Severity};

pub struct Policy;

#[derive(Clone, Copy)]
struct Thresholds {
    warning: f32,
    critical: f32,
    hysteresis: f32,
    notify_courier: bool,
    reassign: Option<f32>,
}

const DEFAULT: Thresholds = Thresholds {
    warning: 0.5,
    critical: 0.7,
    hysteresis: 0.1,
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
                match decimal::parse(value) {
                    Some(p) if (0.0..=1.0).contains(&p) => Ok(p),
                    _ => Err(format!(
                        "{key} must be a probability in [0, 1] written as a decimal, got {value:?}"
                    )),
                }
            };
            match key.as_str() {
                "warning_threshold" => t.warning = probability()?,
                "critical_threshold" => t.critical = probability()?,
                "hysteresis" => t.hysteresis = probability()?,
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
                decimal::hundredths(t.warning),
                decimal::hundredths(t.critical)
            ));
        }
        THRESHOLDS.with(|c| c.set(t));
        Ok(())
    }
}

/// A task's alert as this module remembers it between batches.
#[derive(Clone, Copy, Default, PartialEq, Debug)]
struct TaskAlert {
    /// 0: none open; 1: warning; 2: critical.
    level: u8,
    /// A reassignment was suggested for the open alert.
    reassigned: bool,
}

impl TaskAlert {
    const FORMAT: u8 = 1;

    /// An unknown or damaged state reads as no open alert.
    fn decode(bytes: Option<&[u8]>) -> Self {
        match bytes {
            Some([Self::FORMAT, level @ 0..=2, reassigned @ 0..=1]) => Self {
                level: *level,
                reassigned: *reassigned == 1,
            },
            _ => Self::default(),
        }
    }

    fn encode(self) -> Vec<u8> {
        vec![Self::FORMAT, self.level, u8::from(self.reassigned)]
    }
}

impl Decide for Policy {
    fn decide(
        feature_names: Vec<String>,
        _features: FeatureMatrix,
        states: Vec<KeyState>,
        inputs: Vec<KeyedInput>,
    ) -> Decided {
        let t = THRESHOLDS.with(Cell::get);
        let mut alerts: Vec<TaskAlert> = states
            .iter()
            .map(|s| TaskAlert::decode(s.state.as_deref()))
            .collect();
        let outcomes = inputs
            .iter()
            .map(|input| match alerts.get_mut(input.key as usize) {
                Some(alert) => decide_one(&t, &feature_names, input, alert),
                // The host never sends a key out of range; deciding nothing keeps the count.
                None => Outcome {
                    alert_step: None,
                    actions: Vec::new(),
                },
            })
            .collect();
        Decided {
            states: alerts.into_iter().map(TaskAlert::encode).collect(),
            outcomes,
        }
    }
}

/// One input's outcome, moving its task's alert.
fn decide_one(
    t: &Thresholds,
    names: &[String],
    input: &KeyedInput,
    alert: &mut TaskAlert,
) -> Outcome {
    let p = input.score.probability;
    let level = if p > t.critical {
        2
    } else if p > t.warning {
        1
    } else {
        0
    };
    let mut actions = Vec::new();
    let step = if level > alert.level {
        let step = if alert.level == 0 {
            AlertStep::Opened
        } else {
            AlertStep::Escalated
        };
        alert.level = level;
        actions.push(Action::Alert(Alert {
            severity: if level == 2 {
                Severity::Critical
            } else {
                Severity::Warning
            },
            message: message(level, names, input),
        }));
        if t.notify_courier && level == 2 {
            let task = input.task_id.as_deref().unwrap_or("-");
            actions.push(Action::NotifyCourier(
                [
                    "Task ",
                    task,
                    " is at risk of being late; head to the dropoff now",
                ]
                .concat(),
            ));
        }
        Some(step)
    } else if alert.level > 0 && p < t.warning - t.hysteresis {
        *alert = TaskAlert::default();
        Some(AlertStep::Resolved)
    } else {
        None
    };
    if alert.level > 0 && !alert.reassigned && t.reassign.is_some_and(|r| p > r) {
        alert.reassigned = true;
        let mut reason = String::from("P(late)=");
        decimal::push_hundredths(&mut reason, p);
        reason.push_str(" above reassign threshold");
        actions.push(Action::Reassign(reason));
    }
    Outcome {
        alert_step: step,
        actions,
    }
}

/// The alert's text: severity, task, courier, P(late) and the top factors.
fn message(level: u8, names: &[String], input: &KeyedInput) -> String {
    let task = input.task_id.as_deref().unwrap_or("-");
    let label = if level == 2 {
        "CRITICAL: task "
    } else {
        "WARNING: task "
    };
    // Messages are assembled by appending: `format!` in a guest costs more than the rest of
    // the decision.
    let mut message = String::with_capacity(160);
    for part in [label, task, " (courier ", &input.courier_id, ") P(late)="] {
        message.push_str(part);
    }
    decimal::push_hundredths(&mut message, input.score.probability);
    message.push_str("; top factors: ");
    for (i, f) in input.score.top_factors.iter().enumerate() {
        if i > 0 {
            message.push_str(", ");
        }
        message.push_str(names.get(f.feature as usize).map_or("?", String::as_str));
        message.push_str(if f.contribution < 0.0 { " -" } else { " +" });
        decimal::push_hundredths(&mut message, f.contribution.abs());
    }
    message
}

/// Decimals without core's float parser and formatter (see the module comment).
mod decimal {
    /// Parses `[digits][.digits]` (at most 9 fraction digits), e.g. `0.7`, `.85`, `1`.
    pub fn parse(text: &str) -> Option<f32> {
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if (whole.is_empty() && fraction.is_empty())
            || !digits(whole)
            || !digits(fraction)
            || whole.len() > 9
            || fraction.len() > 9
        {
            return None;
        }
        let whole: u32 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        let scale = 10u64.pow(fraction.len() as u32);
        let fraction: u64 = if fraction.is_empty() {
            0
        } else {
            fraction.parse().ok()?
        };
        Some((f64::from(whole) + fraction as f64 / scale as f64) as f32)
    }

    /// Appends a non-negative value rounded to two decimals, as `{:.2}` shows it.
    pub fn push_hundredths(out: &mut String, value: f32) {
        let hundredths = (value.max(0.0) * 100.0).round() as u64;
        let mut whole = hundredths / 100;
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (whole % 10) as u8;
            whole /= 10;
            if whole == 0 {
                break;
            }
        }
        for &d in &digits[at..] {
            out.push(char::from(d));
        }
        let cents = (hundredths % 100) as u8;
        out.push('.');
        out.push(char::from(b'0' + cents / 10));
        out.push(char::from(b'0' + cents % 10));
    }

    /// [`push_hundredths`] into a new string.
    pub fn hundredths(value: f32) -> String {
        let mut out = String::new();
        push_hundredths(&mut out, value);
        out
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn parses_plain_decimals_and_refuses_the_rest() {
            assert_eq!(parse("0.7"), Some(0.7));
            assert_eq!(parse(".85"), Some(0.85));
            assert_eq!(parse("1"), Some(1.0));
            assert_eq!(parse("0.999"), Some(0.999));
            for bad in [
                "",
                ".",
                "-0.5",
                "0,5",
                "1e-1",
                "0.5x",
                "nan",
                "0.1234567890",
            ] {
                assert_eq!(parse(bad), None, "{bad:?}");
            }
        }

        #[test]
        fn shows_two_decimals_like_the_formatter() {
            for x in [0.0f32, 0.004, 0.005, 0.5, 0.731, 0.999, 1.0, 12.345] {
                assert_eq!(
                    hundredths(x),
                    format!("{:.2}", (x * 100.0).round() / 100.0),
                    "{x}"
                );
            }
        }
    }
}

// Natively (benchmarks) the same code is called through the Guest traits instead.
#[cfg(target_arch = "wasm32")]
export!(Policy);

/// For native callers (benchmarks): the generated types and the implementation.
pub mod native {
    pub use crate::exports::fleet::edge::decide_keyed::{
        AlertStep, Decided, Guest as Decide, KeyState, KeyedInput, Outcome,
    };
    pub use crate::exports::fleet::edge::module::Guest as Module;
    pub use crate::fleet::edge::types::{
        Action, EventType, Factor, FeatureMatrix, Score, Severity,
    };
}
