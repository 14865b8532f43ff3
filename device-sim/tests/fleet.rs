//! The device-sim binary end to end: real modules and model, real journals on disk, real
//! QUIC + mTLS to a real aggregator; the report's accounting must balance exactly, with and
//! without faults (a partition behind the UDP proxy, and the aggregator killed with SIGKILL).

use std::process::Command;

use serde_json::Value;

fn run(work: &std::path::Path, extra: &[&str]) -> Value {
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data");
    let out = Command::new(env!("CARGO_BIN_EXE_device-sim"))
        .args(["--report", "json", "--data-dir", data, "--work"])
        .arg(work)
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "device-sim failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap()
}

fn assert_balanced(report: &Value) {
    let e = &report["events"];
    let n = |k: &str| e[k].as_u64().unwrap();
    assert!(n("generated") > 1000, "{e}");
    assert_eq!(n("rejected"), 0, "{e}");
    assert_eq!(n("generated"), n("acknowledged"), "{e}");
    assert_eq!(n("repeats_sent"), n("repeats_absorbed"), "{e}");
    assert_eq!(n("thinned"), 0, "{e}");
    assert_eq!(n("journaled"), n("stored"), "{e}");
    assert_eq!(n("synced"), n("journaled"), "{e}");
    assert_eq!((n("lost"), n("duplicated")), (0, 0), "{e}");
    assert_eq!(e["audited"], Value::Bool(true));
    let a = &report["alerts"];
    assert!(a["tasks"].as_u64().unwrap() > 10, "{a}");
}

#[test]
fn a_short_fleet_run_stores_exactly_what_was_generated() {
    let dir = tempfile::tempdir().unwrap();
    let report = run(
        &dir.path().join("w"),
        &[
            "--couriers",
            "30",
            "--hours",
            "1",
            "--speed",
            "600",
            "--repeat-rate",
            "0.05",
            "--late-rate",
            "0.05",
        ],
    );
    assert_balanced(&report);
    assert_eq!(report["devices"], 30);
}

#[test]
fn a_partition_and_a_killed_aggregator_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let report = run(
        &dir.path().join("w"),
        &[
            "--couriers",
            "30",
            "--hours",
            "1.5",
            "--speed",
            "600",
            "--faulty",
            "10",
            "--drop-rate",
            "0.02",
            "--delay-ms",
            "5",
            "--skew-s",
            "-90",
            "--partition",
            "1:3",
            "--kill-aggregator",
            "4:1.5",
        ],
    );
    assert_balanced(&report);
    let faults: Vec<String> = report["sync"]["faults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    for expected in [
        "partitioned 10 devices",
        "partition healed",
        "SIGKILL",
        "aggregator restarted",
    ] {
        assert!(
            faults.iter().any(|f| f.contains(expected)),
            "{expected}: {faults:?}"
        );
    }
    // The kill broke every connection: devices came back.
    assert!(
        report["sync"]["connects"].as_u64().unwrap() > 30,
        "{}",
        report["sync"]
    );
}

#[test]
fn the_food_cab_and_amazon_replays_run_through_the_runtime() {
    for source in ["food", "cabs", "amazon"] {
        let dir = tempfile::tempdir().unwrap();
        let report = run(
            &dir.path().join("w"),
            &[
                "--source",
                source,
                "--couriers",
                "15",
                "--hours",
                "3",
                "--speed",
                "3000",
                "--repeat-rate",
                "0",
                "--late-rate",
                "0",
            ],
        );
        let e = &report["events"];
        let n = |k: &str| e[k].as_u64().unwrap();
        assert!(n("generated") > 200, "{source}: {e}");
        // Real quirks may be refused as invalid; everything accepted must be stored.
        assert_eq!(
            n("generated"),
            n("acknowledged") + n("rejected"),
            "{source}: {e}"
        );
        assert_eq!(n("journaled"), n("stored"), "{source}: {e}");
        assert_eq!((n("lost"), n("duplicated")), (0, 0), "{source}: {e}");
    }
}

#[test]
fn a_burst_into_edge_nodes_is_absorbed_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let report = run(
        &dir.path().join("w"),
        &[
            "--couriers",
            "200",
            "--couriers-per-device",
            "50",
            "--ping-s",
            "5",
            "--shift-start-s",
            "0",
            "--speed",
            "20",
            "--hours",
            "0.15",
            "--burst",
            "1:1:20",
        ],
    );
    assert_balanced(&report);
    assert_eq!(report["devices"], 4);
    let b = &report["burst"];
    assert!(b["events"].as_u64().unwrap() > 1000, "{b}");
    assert!(b["offered_per_s"].as_f64().unwrap() > 1000.0, "{b}");
    let absorbed = b["devices_absorbed_s"].as_f64().expect("absorbed");
    let stored = b["stored_s"].as_f64().expect("stored");
    assert!(absorbed <= stored, "{b}");
}
