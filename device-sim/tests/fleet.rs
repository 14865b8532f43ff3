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
    // A task alerts when its risk first crosses a threshold, not on every ping after.
    if a["tasks_alerted"].as_u64().unwrap() > 0 {
        assert!(a["per_alerted_task"].as_f64().unwrap() <= 3.0, "{a}");
    }
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
    // The synthetic city is not the food table the model learned: its handsets ping every
    // 10 s instead of every minute, its routes are longer. The aggregator says so.
    let drift = &report["drift"][0];
    assert_eq!(drift["alert"], true, "{drift}");
    let worst: Vec<&str> = drift["worst"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w[0].as_str().unwrap())
        .collect();
    assert!(worst.contains(&"gps_gap_s"), "{drift}");
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
        if source == "food" {
            // The replay of the table the model was trained on shows no drift (calendar
            // features apart: three hours of one day are not the whole table's days).
            let drift = &report["drift"][0];
            assert_eq!(drift["alert"], false, "{drift}");
            assert_ne!(drift["band"], "significant", "{drift}");
            assert!(drift["decisions"].as_u64().unwrap() > 500, "{drift}");
        }
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

fn faults(report: &Value) -> Vec<String> {
    report["sync"]["faults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_full_disk_on_the_devices_and_journals_that_start_over_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let report = run(
        &dir.path().join("w"),
        &[
            "--couriers",
            "100",
            "--hours",
            "1",
            "--speed",
            "300",
            "--disk-full",
            "devices:2:6",
            "--small-disk-mib",
            "192",
            "--reset-journals",
            "9:10",
        ],
    );
    assert_balanced(&report);
    let faults = faults(&report);
    let refused = faults
        .iter()
        .find_map(|f| {
            f.split("device writers refused ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .expect("the disk fault reports what it refused");
    assert!(refused > 0, "the disk never filled: {faults:?}");
    assert!(
        faults.iter().any(|f| f.contains("10 devices started over")),
        "{faults:?}"
    );
}

#[test]
fn a_full_disk_at_the_aggregator_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let report = run(
        &dir.path().join("w"),
        &[
            "--couriers",
            "300",
            "--hours",
            "1",
            "--speed",
            "400",
            "--disk-full",
            "aggregator:3:12",
            "--small-disk-mib",
            "192",
        ],
    );
    assert_balanced(&report);
    // Refused batches close connections; the devices come back when space does.
    assert!(
        report["sync"]["failures"].as_u64().unwrap() > 0,
        "the aggregator never refused: {}",
        report["sync"]
    );
}

#[test]
fn run_from_anywhere_the_city_needs_no_data_and_a_replay_names_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let city = Command::new(env!("CARGO_BIN_EXE_device-sim"))
        .current_dir(dir.path())
        .args(["--couriers", "5", "--hours", "0.2", "--speed", "1000"])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&city.stdout),
        String::from_utf8_lossy(&city.stderr),
    );
    assert!(city.status.success(), "{stderr}");
    // stderr is a pipe here: progress comes as plain lines.
    assert!(
        stderr.contains("events acknowledged by the devices"),
        "{stderr}"
    );
    // Nothing is served after the run: the hints say how to serve it with the built binary,
    // and name a task this run has.
    assert!(stdout.contains("Serve it"), "{stdout}");
    assert!(!stdout.contains("cargo run"), "{stdout}");
    assert!(stdout.contains("/aggregator --data"), "{stdout}");
    assert!(stdout.contains("/api/v1/tasks/T-C0000"), "{stdout}");
    let replay = Command::new(env!("CARGO_BIN_EXE_device-sim"))
        .current_dir(dir.path())
        .args(["--source", "food", "--fresh"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&replay.stderr);
    assert!(!replay.status.success());
    assert!(stderr.contains("--data-dir"), "{stderr}");
    assert!(stderr.contains("--source city"), "{stderr}");
}

/// Writes a release of the built-in modules with `policy` as the policy's configuration,
/// signed by `signer`, precompiled for this build's engine.
fn release(
    dir: &std::path::Path,
    signer: &fleet_release::ReleaseSigner,
    version: &str,
    policy: &str,
) -> std::path::PathBuf {
    let modules = dir.join(format!("modules-{version}"));
    fleet_host::release::export_embedded(&modules).unwrap();
    let manifest = modules.join("policy.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replace("[config]", &format!("[config]\n{policy}")),
    )
    .unwrap();
    let engine = fleet_host::engine::SandboxEngine::new(Default::default()).unwrap();
    let out = dir.join(format!("late-risk-{version}.release"));
    fleet_host::release::build_contents(
        "late-risk",
        version.parse().unwrap(),
        &modules,
        &[],
        Some(&engine),
    )
    .unwrap()
    .write(&out, signer)
    .unwrap();
    out
}

/// The deploy scenario: the fleet starts on a signed release, another one (a new threshold)
/// is published and deployed mid-run; every device runs it before the end, no artifact
/// travels (configuration lives in the signed manifest), and the accounting still balances.
/// A fleet on a module directory runs too.
#[test]
fn a_release_deployed_mid_run_reaches_every_device_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let signer = fleet_release::ReleaseSigner::generate().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::write(keys.join("ops.pub"), signer.public_line("ops")).unwrap();
    let v1 = release(dir.path(), &signer, "1.0.0", "");
    let v2 = release(
        dir.path(),
        &signer,
        "1.1.0",
        "warning_threshold = \"0.6\"\ncritical_threshold = \"0.8\"",
    );
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let report = run(
        &dir.path().join("w"),
        &[
            "--couriers",
            "20",
            "--hours",
            "1",
            "--speed",
            "400",
            "--release",
            &path(&v1),
            "--release-keys",
            &path(&keys),
            "--deploy",
            &path(&v2),
            "--deploy-at",
            "2",
        ],
    );
    assert_balanced(&report);
    let deploy = &report["deploy"];
    assert!(deploy["all_active_after_s"].as_f64().is_some(), "{deploy}");
    assert_eq!(deploy["bytes_served_per_device"], 0, "{deploy}");
    let timeline = deploy["timeline"].as_array().unwrap();
    let first = &timeline[0][1];
    let last = &timeline[timeline.len() - 1][1];
    let label = deploy["release"].as_str().unwrap();
    assert!(label.starts_with("late-risk@1.1.0+"), "{label}");
    assert_eq!(first.as_object().unwrap().len(), 1, "{first}");
    assert!(
        first
            .as_object()
            .unwrap()
            .keys()
            .all(|k| k.starts_with("late-risk@1.0.0+")),
        "{first}"
    );
    assert_eq!(last[label], 20, "{last}");

    // A release deploy needs the key it is signed with.
    let out = Command::new(env!("CARGO_BIN_EXE_device-sim"))
        .args(["--couriers", "2", "--work"])
        .arg(dir.path().join("w2"))
        .arg("--deploy")
        .arg(&v2)
        .arg("--release-keys")
        .arg(dir.path().join("nowhere"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no *.pub in"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A release to deploy that the fleet's keys do not verify is refused at the start, not
    // when the deploy comes.
    let stranger = fleet_release::ReleaseSigner::generate().unwrap();
    let unknown = release(&dir.path().join("stranger"), &stranger, "1.2.0", "");
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_device-sim"))
        .args(["--couriers", "2", "--deploy-at", "60", "--work"])
        .arg(dir.path().join("w4"))
        .arg("--deploy")
        .arg(&unknown)
        .arg("--release-keys")
        .arg(&keys)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("is refused") && stderr.contains("does not trust"),
        "{stderr}"
    );
    assert!(
        started.elapsed().as_secs() < 60,
        "refused before the deploy time"
    );

    // The whole fleet on a module directory.
    let report = run(
        &dir.path().join("w3"),
        &[
            "--couriers",
            "20",
            "--hours",
            "1",
            "--speed",
            "600",
            "--modules",
            &path(&dir.path().join("modules-1.1.0")),
        ],
    );
    assert_balanced(&report);
}
