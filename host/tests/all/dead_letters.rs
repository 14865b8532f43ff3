//! Dead letters end to end, on an `edge-host device` process: a policy that panics on one
//! task's events parks them (and only them) in the journal; they sync to the aggregator,
//! which counts them by module and cause; a resend is a duplicate; after a module swap the
//! device scores each of them exactly once.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::fleet::{self, InProcess, KillOnDrop};
use crate::util;

fn post(device: SocketAddr, lines: &[String]) -> serde_json::Value {
    let (status, body) =
        fleet::http(device, "POST", "/v1/events", &lines.join("\n")).expect("the device answers");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn lines(task: &str) -> Vec<String> {
    util::healthy_task(task)
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect()
}

/// Polls `GET path` (JSON) until `done` holds.
fn until(
    get: impl Fn(&str) -> serde_json::Value,
    path: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = get(path);
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "GET {path}: still {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_poison_task_is_parked_synced_counted_and_scored_once_after_a_module_swap() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    fleet::pki(&certs, &["dev-p"]);
    let agg = InProcess::start(&certs, &dir.path().join("history"));
    let modules = dir.path().join("modules");
    std::fs::create_dir(&modules).unwrap();
    util::module_dir(
        &modules,
        "hostile",
        "6.6.6",
        &[("mode", "panic"), ("trigger", "poison")],
    );
    let http = fleet::free_port();
    let device: SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();
    let _device = KillOnDrop(
        fleet::edge_host_device(&certs, &dir.path().join("journal"), "dev-p", agg.quic)
            .args(["--quiet", "--http", &format!("127.0.0.1:{http}")])
            .arg("--modules")
            .arg(&modules)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    until(|p| fleet::get_json(device, p), "/v1/sync", |_| true);
    let poison = lines("T-poison-1");
    let batch = [lines("T-ok"), poison.clone()].concat();
    let answer = post(device, &batch);
    assert_eq!(
        (&answer["accepted"], &answer["dead_lettered"]),
        (&10.into(), &5.into()),
        "{answer}"
    );
    assert_eq!(
        answer["decisions"].as_array().unwrap().len(),
        5,
        "T-ok is scored"
    );
    let parked = fleet::get_json(device, "/v1/dead-letters");
    assert_eq!(parked["parked"], 5, "{parked}");
    assert_eq!(parked["items"][0]["event"]["task_id"], "T-poison-1");
    // At-least-once producers resend: a duplicate, not a second dead letter.
    let again = post(device, &poison);
    assert_eq!(
        (&again["accepted"], &again["duplicates"]),
        (&0.into(), &5.into())
    );

    // Later events of the task wait behind its parked ones, without running: a poison task
    // costs one isolation, not one per batch.
    let later: Vec<String> = (1..=2)
        .map(|n| {
            format!(
                r#"{{"event_id":"T-poison-1-later-{n}","courier_id":"c-T-poison-1","task_id":"T-poison-1","event_type":"location","event_time":"2026-11-22T09:5{n}:00+05:30","lat":12.99,"lon":77.59}}"#
            )
        })
        .collect();
    let held = post(device, &[later, lines("T-ok-2")].concat());
    assert_eq!(
        (&held["accepted"], &held["dead_lettered"]),
        (&7.into(), &2.into()),
        "{held}"
    );

    let dead = until(
        |p| agg.api().get_json(p),
        "/api/v1/dead-letters",
        |d| d["open"] == 7,
    );
    let causes: Vec<(&str, u64)> = dead["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["cause"].as_str().unwrap(), f["count"].as_u64().unwrap()))
        .collect();
    assert_eq!(causes, [("panic", 1), ("held_back", 6)], "{dead}");
    assert!(
        dead["failures"][0]["module"]
            .as_str()
            .unwrap()
            .starts_with("hostile@6.6.6+")
    );

    // The operator swaps the policy: the device scores the parked events again, once.
    std::fs::remove_file(modules.join("hostile.toml")).unwrap();
    util::module_dir(&modules, "policy", "1.0.0", &[]);
    until(
        |p| fleet::get_json(device, p),
        "/v1/sync",
        |s| s["parked"] == 0,
    );
    let dead = until(
        |p| agg.api().get_json(p),
        "/api/v1/dead-letters",
        |d| d["rescored"] == 7,
    );
    assert_eq!(dead["open"], 0, "{dead}");
    let task = agg.api().get_json("/api/v1/tasks/T-poison-1");
    let decisions = task["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["kind"] == "decision")
        .count();
    assert_eq!(
        decisions, 7,
        "each parked event scored exactly once: {task}"
    );
    // Once its parked events are scored, the task's new events run as usual.
    let next = r#"{"event_id":"T-poison-1-after","courier_id":"c-T-poison-1","task_id":"T-poison-1","event_type":"location","event_time":"2026-11-22T09:58:00+05:30","lat":12.99,"lon":77.59}"#;
    let after = post(device, &[next.to_string()]);
    assert_eq!(after["dead_lettered"], 0, "{after}");
    assert_eq!(after["decisions"].as_array().unwrap().len(), 1, "{after}");
    let (status, retried) = fleet::http(device, "POST", "/v1/dead-letters/retry", "").unwrap();
    assert_eq!(status, 200);
    assert!(retried.contains(r#""tried":0"#), "{retried}");
}
