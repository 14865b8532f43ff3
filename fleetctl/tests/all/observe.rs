//! `fleetctl alerts` and `fleetctl drift` against a real aggregator (in this process, on
//! loopback) whose history holds two tasks' alerts and a model's decisions far from its
//! training baseline: the CLI shows what the API answers, under the API's field names.

use std::process::Command;
use std::sync::Arc;

use fleet_aggregator::auth::{Role, TokenFile};
use fleet_aggregator::drift::Baselines;
use fleet_aggregator::{ServeConfig, Shared};
use fleet_net::pki::Pki;
use fleet_proto::record::{
    AlertStep, DecisionRecord, EventKind, EventRecord, GeoE7, Schema, Severity,
};
use fleet_proto::{Entry, Record};
use serde_json::Value;

const T0: i64 = 1_795_300_000_000;

fn decision(
    n: u64,
    task: &str,
    model: &str,
    width: usize,
    step: Option<(AlertStep, Severity)>,
) -> Record {
    let (alert_step, severity) = match step {
        Some((s, sev)) => (Some(s), sev),
        None => (None, Severity::Info),
    };
    Record::Decision(DecisionRecord {
        event_id: format!("e{n}"),
        prediction_id: format!("p{n}"),
        courier_id: "C-1".into(),
        task_id: Some(task.into()),
        time_ms: T0 + n as i64 * 1_000,
        score: if severity == Severity::Info { 0.1 } else { 0.9 },
        severity,
        actions: vec![],
        model: model.into(),
        modules: ["f@1".into(), "s@1".into(), "p@1".into()],
        schema: 1,
        // Far outside anything the model was trained on.
        features: vec![1000.0; width],
        top_factors: vec![(0, 0.5)],
        release: None,
        alert_step,
    })
}

fn event(n: u64, task: &str, kind: EventKind) -> Record {
    Record::Event(EventRecord {
        event_id: format!("e{n}"),
        courier_id: "C-1".into(),
        task_id: Some(task.into()),
        event_type: kind,
        time_ms: T0 + n as i64 * 1_000,
        utc_offset_s: 0,
        position: GeoE7::from_degrees(12.97, 77.59),
        speed_kmh: None,
        accuracy_m: None,
        context: None,
    })
}

/// Task T-1: opened at warning, escalated to critical, still open; T-2 opened then resolved;
/// 600 decisions in all.
fn history(model: &str, names: &[String]) -> Vec<Entry> {
    let mut records = vec![Record::Schema(Schema {
        id: 1,
        model: model.into(),
        feature_names: names.to_vec(),
    })];
    let w = names.len();
    for n in 0..600u64 {
        let task = if n < 300 { "T-1" } else { "T-2" };
        let step = match n {
            10 => Some((AlertStep::Opened, Severity::Warning)),
            20 => Some((AlertStep::Escalated, Severity::Critical)),
            310 => Some((AlertStep::Opened, Severity::Warning)),
            320 => Some((AlertStep::Resolved, Severity::Info)),
            _ => None,
        };
        records.push(event(n, task, EventKind::Location));
        records.push(decision(n, task, model, w, step));
    }
    records
        .into_iter()
        .enumerate()
        .map(|(i, record)| Entry {
            seq: i as u64 + 1,
            record,
        })
        .collect()
}

fn fleetctl(args: &[&str], api: &str, token: &std::path::Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_fleetctl"))
        .args(args)
        .args(["--api", api, "--token-file"])
        .arg(token)
        .env_remove("RUST_LOG")
        .output()
        .expect("fleetctl runs");
    assert!(
        out.status.success(),
        "fleetctl {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn alerts_and_drift_read_as_the_api_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::at(tmp.path().join("certs"));
    pki.init(&[]).unwrap();
    let (_, secret) = TokenFile::in_dir(pki.dir())
        .issue(Role::Viewer, "test")
        .unwrap();
    let token = tmp.path().join("viewer.token");
    std::fs::write(&token, secret).unwrap();

    let known = Baselines::with_builtin().all().remove(0);
    let model = known.baseline.model.clone();
    let names = known.baseline.feature_names();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let data = tmp.path().join("data");
    let shared = Shared::open_sled(&data).unwrap();
    let entries = history(&model, &names);
    let through = entries.len() as u64;
    rt.block_on(
        shared
            .committer
            .persist(Arc::from("dev-1"), 1, through, through, entries),
    )
    .blocking_recv()
    .unwrap()
    .unwrap();
    let config = ServeConfig::loopback(&data, pki.dir());
    let (_, http, serving) = rt
        .block_on(fleet_aggregator::start(&config, shared))
        .unwrap();
    rt.spawn(serving);
    let api = format!("http://{http}");

    // Open alerts by default; the API's objects under --json.
    let open: Value = serde_json::from_str(&fleetctl(&["alerts", "--json"], &api, &token)).unwrap();
    let open = open.as_array().unwrap();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0]["task_id"], "T-1");
    assert_eq!(open[0]["severity"], "critical");
    assert_eq!(open[0]["state"], "open");
    let all: Value = serde_json::from_str(&fleetctl(
        &["alerts", "--state", "all", "--json", "--limit", "1"],
        &api,
        &token,
    ))
    .unwrap();
    assert_eq!(all.as_array().unwrap().len(), 1, "--limit holds");
    let table = fleetctl(&["alerts", "--state", "resolved"], &api, &token);
    assert!(
        table.contains("task_id") && table.contains("peak_score"),
        "{table}"
    );
    assert!(table.contains("T-2") && !table.contains("T-1"), "{table}");

    // Drift: every feature far from training, so the alert is raised.
    let drift: Value = serde_json::from_str(&fleetctl(&["drift", "--json"], &api, &token)).unwrap();
    let m = &drift["models"][0];
    assert_eq!(m["model"], model.as_str());
    assert_eq!(m["decisions"], 600);
    assert_eq!(m["alert"], true, "{m}");
    let table = fleetctl(&["drift"], &api, &token);
    assert!(table.contains("DRIFT ALERT"), "{table}");
    assert!(table.contains("(calendar)"), "{table}");
    // Devices, every page of them: the one that synced.
    let devices: Value =
        serde_json::from_str(&fleetctl(&["devices", "--json"], &api, &token)).unwrap();
    assert_eq!(devices[0]["device"], "dev-1", "{devices}");

    // The registry: the built-in model, in production with no deployment yet.
    let models: Value =
        serde_json::from_str(&fleetctl(&["models", "--json"], &api, &token)).unwrap();
    let m = &models["models"][0];
    assert_eq!(
        (&m["model"], &m["stage"]),
        (&model.as_str().into(), &"production".into())
    );
    let table = fleetctl(&["models"], &api, &token);
    assert!(
        table.contains("production") && table.contains("built in"),
        "{table}"
    );
    // A model without a baseline is named as such.
    let out = Command::new(env!("CARGO_BIN_EXE_fleetctl"))
        .args(["drift", "--model", "nope@1", "--api", &api, "--token-file"])
        .arg(&token)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no training baseline") && err.contains(&model),
        "{err}"
    );
}
