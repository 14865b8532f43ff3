//! Alert lifecycle: the shipped policy (state per task, `policy-keyed`) opens, escalates and
//! resolves a task's alert with hysteresis; a policy built for `fleet:edge@0.2.0` (no state)
//! still loads and alerts on each risky event; the pipeline keeps policy state per key and a
//! device's journal keeps it across a restart.

use std::sync::Arc;

use fleet_host::bindings::policy_keyed::exports::fleet::edge::decide_keyed::{
    AlertStep, KeyState, KeyedInput,
};
use fleet_host::bindings::types as wit;
use fleet_host::decision::{self, Severity};
use fleet_host::module::{Exports, Instance, LoadedModule, ModuleKind};
use fleet_host::pipeline::{self, Pipeline};
use fleet_host::registry::{ModuleRegistry, ModuleSet};

use crate::util;

/// Calls the policy on one task's scores, one call per score, handing back its state as the
/// host does; returns each call's step and alert severity.
fn steps(policy: &mut Instance, scores: &[f32]) -> Vec<(Option<AlertStep>, Option<wit::Severity>)> {
    let mut state = None;
    let mut out = Vec::new();
    for &p in scores {
        let Exports::KeyedPolicy(k) = &policy.exports else {
            panic!("the shipped policy keeps state per key")
        };
        policy.store.set_epoch_deadline(1000);
        let keys = [KeyState {
            key: "T-1".into(),
            state: state.take(),
        }];
        let inputs = [KeyedInput {
            key: 0,
            score: wit::Score {
                probability: p,
                top_factors: vec![],
            },
            courier_id: "C-1".into(),
            task_id: Some("T-1".into()),
            event_type: wit::EventType::Location,
            event_time_ms: 0,
        }];
        let matrix = wit::FeatureMatrix {
            width: 0,
            values: vec![],
        };
        let mut decided = k
            .fleet_edge_decide_keyed()
            .call_decide(&mut policy.store, &[], &matrix, &keys, &inputs)
            .unwrap();
        state = decided.states.pop();
        let outcome = decided.outcomes.pop().unwrap();
        let severity = outcome.actions.iter().find_map(|a| match a {
            wit::Action::Alert(a) => Some(a.severity),
            _ => None,
        });
        out.push((outcome.alert_step, severity));
    }
    out
}

fn policy(config: &[(&str, &str)]) -> Instance {
    util::load("policy", ModuleKind::Policy, "1", config)
        .unwrap()
        .instantiate(&util::engine(), &util::models())
        .unwrap()
}

#[test]
fn a_tasks_alert_opens_once_escalates_once_and_resolves_below_the_hysteresis() {
    use AlertStep::*;
    use wit::Severity::{Critical, Warning};
    // Thresholds 0.5 / 0.7, hysteresis 0.1: resolves below 0.4.
    let got = steps(
        &mut policy(&[]),
        &[
            0.3, 0.6, 0.55, 0.65, 0.8, 0.75, 0.9, 0.6, 0.45, 0.41, 0.35, 0.3, 0.55,
        ],
    );
    let want = [
        (None, None),
        (Some(Opened), Some(Warning)),
        (None, None),
        (None, None),
        (Some(Escalated), Some(Critical)),
        (None, None),
        (None, None),
        (None, None),
        (None, None),
        (None, None),
        (Some(Resolved), None),
        (None, None),
        (Some(Opened), Some(Warning)),
    ];
    assert_eq!(got, want);

    // Without hysteresis the alert resolves as soon as the risk is under the threshold; a
    // task that goes straight to critical opens at critical.
    let got = steps(&mut policy(&[("hysteresis", "0")]), &[0.9, 0.49, 0.51]);
    assert_eq!(
        got,
        [
            (Some(Opened), Some(Critical)),
            (Some(Resolved), None),
            (Some(Opened), Some(Warning)),
        ]
    );
    assert!(util::load("policy", ModuleKind::Policy, "1", &[("hysteresis", "-1")]).is_err());
}

/// The courier is told once, when the task turns critical.
#[test]
fn the_courier_is_told_once_per_alert() {
    let mut p = policy(&[]);
    let Exports::KeyedPolicy(k) = &p.exports else {
        unreachable!()
    };
    p.store.set_epoch_deadline(1000);
    let inputs: Vec<KeyedInput> = [0.8f32, 0.9, 0.95]
        .iter()
        .map(|&probability| KeyedInput {
            key: 0,
            score: wit::Score {
                probability,
                top_factors: vec![],
            },
            courier_id: "C-1".into(),
            task_id: Some("T-1".into()),
            event_type: wit::EventType::Location,
            event_time_ms: 0,
        })
        .collect();
    let keys = [KeyState {
        key: "T-1".into(),
        state: None,
    }];
    let decided = k
        .fleet_edge_decide_keyed()
        .call_decide(
            &mut p.store,
            &[],
            &wit::FeatureMatrix {
                width: 0,
                values: vec![],
            },
            &keys,
            &inputs,
        )
        .unwrap();
    let notes: usize = decided
        .outcomes
        .iter()
        .map(|o| {
            o.actions
                .iter()
                .filter(|a| matches!(a, wit::Action::NotifyCourier(_)))
                .count()
        })
        .sum();
    assert_eq!(notes, 1);
    assert_eq!(decided.states.len(), 1);
}

/// A policy component built against `fleet:edge@0.2.0` (committed as built then): it exports
/// `decide` without state, and the host still loads it and decides every event with it.
#[test]
fn a_policy_built_for_the_previous_wit_version_still_loads_and_alerts_per_event() {
    let old = include_bytes!("../data/policy-fleet-edge-0.2.0.wasm");
    let loaded = LoadedModule::from_bytes(
        &util::engine(),
        &util::models(),
        util::manifest("policy", ModuleKind::Policy, "0.9.0", &[]),
        old,
    )
    .unwrap();
    assert!(!loaded.is_keyed());
    let registry = util::registry();
    let built_in = registry.current();
    let set = Arc::new(ModuleSet {
        generation: built_in.generation + 1,
        features: built_in.features.clone(),
        scorer: built_in.scorer.clone(),
        policy: loaded,
        models: built_in.models.clone(),
        release: None,
    });
    let mut pipeline = Pipeline::new(registry.clone());
    let decisions = pipeline
        .process_on(set, util::late_task("T-old", 40))
        .decisions;
    let alerts = decisions
        .iter()
        .filter(|d| d.severity >= Severity::Warning)
        .count();
    assert!(
        alerts >= 2,
        "a late task alerts on several events: {alerts}"
    );
    assert!(decisions.iter().all(|d| d.alert_step.is_none()));
}

/// Through the pipeline, a late task raises one alert (plus at most an escalation) however
/// many of its events score high, and its policy state sits beside its feature state.
#[test]
fn the_pipeline_keeps_policy_state_per_task() {
    let registry: Arc<ModuleRegistry> = util::registry();
    let mut pipeline = Pipeline::new(registry);
    let events = util::late_task("T-late", 40);
    let mut outcomes = Vec::new();
    // In small batches, as a device receives them.
    for chunk in events.chunks(3) {
        outcomes.push(pipeline.process(chunk.to_vec()));
    }
    let decisions: Vec<&decision::Decision> = outcomes.iter().flat_map(|o| &o.decisions).collect();
    let risky = decisions.iter().filter(|d| d.score > 0.5).count();
    let raised: Vec<_> = decisions
        .iter()
        .filter(|d| d.severity >= Severity::Warning)
        .map(|d| (d.alert_step, d.severity))
        .collect();
    assert!(risky >= 5, "the task is late: {risky} risky decisions");
    assert!(
        !raised.is_empty() && raised.len() <= 2,
        "one alert, maybe escalated: {raised:?}"
    );
    assert_eq!(raised[0].0, Some(decision::AlertStep::Opened));
    let policy_states: Vec<&String> = outcomes
        .iter()
        .flat_map(|o| &o.states)
        .map(|(k, _)| k)
        .filter(|k| pipeline::is_policy_state(k))
        .collect();
    assert!(
        policy_states
            .iter()
            .all(|k| **k == pipeline::policy_state_key("T-late"))
    );
    assert!(!policy_states.is_empty());
}

/// End to end on real processes: a late task's alert opens on a device, the device is killed
/// (SIGKILL) and restarted on its journal, the task's later events do not open it again, and
/// the aggregator's alert object resolves when the task is delivered.
#[test]
fn a_tasks_alert_survives_a_device_killed_mid_task() {
    use crate::fleet::{self, InProcess, KillOnDrop};
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    fleet::pki(&certs, &["dev-a"]);
    let agg = InProcess::start(&certs, &dir.path().join("history"));
    let http = fleet::free_port();
    let device: SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();
    let journal = dir.path().join("journal");
    let start = || {
        let d = KillOnDrop(fleet::spawn_device(
            &certs, &journal, "dev-a", agg.quic, http,
        ));
        let deadline = Instant::now() + Duration::from_secs(30);
        while fleet::http(device, "GET", "/healthz", "").is_none() {
            assert!(Instant::now() < deadline, "the device never answered");
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    };
    let post = |events: &[fleet_host::event::Event]| -> serde_json::Value {
        let body: Vec<String> = events
            .iter()
            .map(|e| serde_json::to_string(e).unwrap())
            .collect();
        let (status, answer) =
            fleet::http(device, "POST", "/v1/events", &body.join("\n")).expect("answers");
        assert_eq!(status, 200, "{answer}");
        serde_json::from_str(&answer).unwrap()
    };
    let raised = |answer: &serde_json::Value| -> Vec<String> {
        answer["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|d| d["alert_step"].as_str().map(str::to_string))
            .collect()
    };

    let events = util::late_task("T-kill", 40);
    let (first, rest) = events.split_at(events.len() / 2);
    let mut d = start();
    let (status, body) = fleet::http(device, "GET", "/v1/courier-actions?courer=c", "").unwrap();
    assert_eq!(status, 400, "a misspelt filter is refused: {body}");
    assert!(body.contains("courer"), "{body}");
    // The handset app's stream of what the policy means for its courier.
    let mut app = std::net::TcpStream::connect(device).unwrap();
    app.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    std::io::Write::write_all(
        &mut app,
        b"GET /v1/courier-actions?courier=c-T-kill HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    let mut app = std::io::BufRead::lines(std::io::BufReader::new(app));
    assert!(app.next().unwrap().unwrap().contains("200"));
    let before = raised(&post(first));
    assert_eq!(
        before.first().map(String::as_str),
        Some("opened"),
        "{before:?}"
    );
    // Told once the decision that turned the task critical was durable.
    let told = app
        .by_ref()
        .map(|l| l.unwrap())
        .find_map(|l| l.strip_prefix("data: ").map(str::to_string))
        .unwrap();
    let told: serde_json::Value = serde_json::from_str(&told).unwrap();
    assert_eq!(
        (&told["kind"], &told["courier_id"], &told["task_id"]),
        (
            &"notify_courier".into(),
            &"c-T-kill".into(),
            &"T-kill".into()
        ),
        "{told}"
    );
    d.0.kill().unwrap();
    d.0.wait().unwrap();
    drop(d);

    let _d = start();
    let after = raised(&post(rest));
    assert!(
        !after.iter().any(|s| s == "opened"),
        "the restarted device remembered the open alert: {after:?}"
    );
    let mut t = util::Task::new("T-kill", "c-T-kill");
    let mut delivered = t.event("delivered", 45.0, (13.0, 77.6));
    delivered.event_id = "T-kill-delivered".into();
    post(&[delivered]);
    fleet::wait_device_synced(device, Duration::from_secs(30));

    let api = agg.api();
    let alerts = api.get_json("/api/v1/alerts?task=T-kill");
    let list = alerts["alerts"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{alerts:#}");
    let alert = &list[0];
    assert_eq!(alert["state"], "resolved", "{alert:#}");
    assert_eq!(alert["resolution"], "task ended: delivered", "{alert:#}");
    assert_eq!(alert["courier_id"], "c-T-kill");
    assert!(alert["peak_score"].as_f64().unwrap() > 0.5, "{alert:#}");
    assert!(!alert["top_factors"].as_array().unwrap().is_empty());
    let id = alert["id"].as_str().unwrap();
    let by_id = api.get_json(&format!("/api/v1/alerts/{id}"));
    for field in [
        "id",
        "state",
        "opened",
        "escalated",
        "resolved",
        "message",
        "release",
    ] {
        assert_eq!(by_id[field], alert[field], "{field}");
    }
    let open = api.get_json("/api/v1/alerts?state=open");
    assert!(open["alerts"].as_array().unwrap().is_empty(), "{open:#}");
}
