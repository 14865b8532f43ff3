//! The design scenario, end to end through the real modules and the real model.

use fleet_host::decision::{Action, AlertStep, Severity};
use fleet_host::module::ModuleKind;
use fleet_host::pipeline::Pipeline;
use fleet_host::registry::{ModuleRegistry, ModuleSource};

use crate::util::{self, Task, north};

/// Courier 123 reaches the pickup of T-999 at 10:05, 25 minutes into a 30-minute promise,
/// with the customer 5 km away.
fn t999() -> Vec<fleet_host::event::Event> {
    let pickup = (12.9716, 77.5946);
    let dropoff = north(pickup, 5.0);
    let mut t = Task::new("T-999", "123");
    vec![
        t.assigned(0.0, north(pickup, -2.0), pickup, dropoff, 30.0),
        t.event("location", 15.0, north(pickup, -1.2)),
        t.event("location", 20.0, north(pickup, -0.6)),
        t.event("arrived_pickup", 25.0, pickup),
    ]
}

#[test]
fn late_task_raises_a_critical_alert_with_its_prediction_log() {
    let mut pipeline = util::pipeline();
    let outcome = pipeline.process(t999());
    assert!(
        outcome.dead_letters.is_empty(),
        "{:?}",
        outcome.dead_letters
    );
    assert_eq!(
        outcome.decisions.len(),
        4,
        "every event of the task is scored"
    );
    let last = outcome.decisions.last().unwrap();
    assert_eq!(last.event_id, "T-999-e4");
    assert_eq!(
        (last.task_id.as_deref(), last.courier_id.as_str()),
        (Some("T-999"), "123")
    );
    assert!(last.score > 0.7, "P(late) = {}", last.score);
    // The task's alert turned critical once (opened or escalated there), with its message;
    // decisions after that keep it open without raising it again.
    let raised: Vec<_> = outcome
        .decisions
        .iter()
        .filter(|d| d.severity >= Severity::Warning)
        .collect();
    assert!(!raised.is_empty() && raised.len() <= 2, "{raised:#?}");
    let d = *raised.last().unwrap();
    assert_eq!(d.severity, Severity::Critical);
    assert!(
        matches!(d.alert_step, Some(AlertStep::Opened | AlertStep::Escalated)),
        "{:?}",
        d.alert_step
    );
    assert!(
        matches!(&d.actions[0], Action::Alert { severity: Severity::Critical, message } if message.contains("T-999"))
    );
    // The policy writes decimals itself (no float formatter in the module): the same text as
    // `{:.2}` gives.
    let Action::Alert { message, .. } = &d.actions[0] else {
        unreachable!()
    };
    assert!(
        message.contains(&format!("P(late)={:.2};", d.score)),
        "{message}"
    );
    for f in &d.top_factors {
        let shown = format!("{} {:+.2}", f.feature, f.contribution);
        assert!(message.contains(&shown), "{shown:?} in {message}");
    }
    assert!(
        d.actions
            .iter()
            .any(|a| matches!(a, Action::NotifyCourier { .. }))
    );
    // The prediction log: id, model, module versions, inputs, score, factors.
    assert!(d.prediction_id.starts_with("pred-") && d.prediction_id.len() == 37);
    assert_eq!((&*d.model_name, &*d.model_version), ("late_risk", "1.0.0"));
    assert!(d.modules.features.starts_with("late-risk-features@"));
    assert!(d.modules.policy.starts_with("late-risk-policy@"));
    let feature = |name: &str| {
        last.features.values[last.features.names.iter().position(|n| n == name).unwrap()]
    };
    assert!((feature("distance_to_dropoff_km") - 5.0).abs() < 0.01);
    assert_eq!(feature("hour_of_day"), 10.0);
    assert_eq!(feature("minutes_since_assigned"), 25.0);
    // 2 km covered in the 25 minutes the fixes span.
    assert!(
        (feature("courier_speed_kmh") - 4.8).abs() < 0.1,
        "speed from the pings"
    );
    assert!(!d.top_factors.is_empty() && d.top_factors.len() <= 3);
    let json = serde_json::to_value(d).unwrap();
    assert_eq!(json["severity"], "critical");
    let json = serde_json::to_value(last).unwrap();
    assert!(
        json["features"]["minutes_since_pickup"].is_null(),
        "NaN is written as null"
    );
}

#[test]
fn on_time_task_stays_info() {
    let mut pipeline = util::pipeline();
    let outcome = pipeline.process(util::healthy_task("T-1"));
    assert_eq!(outcome.decisions.len(), 5);
    for d in &outcome.decisions {
        assert!(d.score < 0.5, "{}: {}", d.event_id, d.score);
        assert_eq!(d.severity, Severity::Info);
        assert!(d.actions.is_empty());
    }
}

#[test]
fn prediction_ids_are_stable_across_replays() {
    let first = util::pipeline().process(t999());
    let again = util::pipeline().process(t999());
    let ids = |o: &fleet_host::pipeline::BatchOutcome| {
        o.decisions
            .iter()
            .map(|d| d.prediction_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&first), ids(&again));
}

#[test]
fn thresholds_come_from_the_policy_configuration() {
    let dir = tempfile::tempdir().unwrap();
    util::module_dir(
        dir.path(),
        "policy",
        "2.0.0",
        &[
            ("warning_threshold", "0.5"),
            ("critical_threshold", "0.999"),
        ],
    );
    let registry = ModuleRegistry::new(
        util::engine(),
        util::models(),
        ModuleSource::Dir(dir.path().into()),
    )
    .unwrap();
    let mut pipeline = Pipeline::new(registry.into());
    let decisions = pipeline.process(t999()).decisions;
    let last = decisions.last().unwrap();
    assert!(last.score > 0.7 && last.score < 0.999, "{}", last.score);
    let severities: Vec<Severity> = decisions
        .iter()
        .map(|d| d.severity)
        .filter(|s| *s > Severity::Info)
        .collect();
    assert_eq!(severities, [Severity::Warning], "one alert, never critical");
    assert!(last.modules.policy.starts_with("policy@2.0.0+"));

    util::write_manifest(
        dir.path(),
        "policy",
        "policy",
        "2.0.1",
        &[("critical_threshold", "1.5")],
    );
    let err = ModuleRegistry::new(
        util::engine(),
        util::models(),
        ModuleSource::Dir(dir.path().into()),
    )
    .err()
    .unwrap();
    assert!(
        err.to_string()
            .contains("critical_threshold must be a probability"),
        "{err}"
    );
}

#[test]
fn thresholds_are_plain_decimals() {
    for ok in ["0.85", ".85", "1", "0.5"] {
        util::load(
            "policy",
            ModuleKind::Policy,
            "1",
            &[("critical_threshold", ok)],
        )
        .unwrap_or_else(|e| panic!("{ok:?}: {e}"));
    }
    for bad in ["1e-1", "-0.5", "0,5", "", "high", "1.01"] {
        let err = util::load(
            "policy",
            ModuleKind::Policy,
            "1",
            &[("critical_threshold", bad)],
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("critical_threshold must be a probability in [0, 1]"),
            "{bad:?}: {err}"
        );
    }
}
