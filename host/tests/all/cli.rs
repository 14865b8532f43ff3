//! `edge-host score` as a user runs it: a real process, JSON lines in and out.

use std::io::Write;
use std::process::{Command, Stdio};

fn score(input: &str) -> (String, String, bool) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_edge-host"))
        .arg("score")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("edge-host runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
        out.status.success(),
    )
}

#[test]
fn malformed_lines_are_reported_and_the_stream_goes_on() {
    let events = crate::util::healthy_task("T-cli");
    let mut lines: Vec<String> = events
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect();
    lines.insert(1, r#"{"event_id":"x","courier_id":"c","event_type":"location","event_time":"2026-11-22T10:00:00Z","lat":"north","lon":1}"#.into());
    lines.insert(3, "this is not json".into());
    lines.insert(4, String::new());
    lines.push(r#"{"event_id":"y","courier_id":"c","event_type":"location","event_time":"2026-11-22T10:00:00Z","lat":95,"lon":1}"#.into());
    let (stdout, stderr, ok) = score(&(lines.join("\n") + "\n"));
    assert!(ok, "{stderr}");
    let decisions: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(decisions.len(), 5, "{stderr}");
    for (d, e) in decisions.iter().zip(&events) {
        assert_eq!(d["event_id"], e.event_id.as_str());
        for field in [
            "task_id",
            "courier_id",
            "score",
            "severity",
            "prediction_id",
            "model_version",
        ] {
            assert!(!d[field].is_null(), "{field} in {d}");
        }
    }
    assert!(stderr.contains("line 2: field lat:"), "{stderr}");
    assert!(stderr.contains("line 4: field .:"), "{stderr}");
    assert!(
        stderr.contains("line 9: field lat: 95 is not a latitude"),
        "{stderr}"
    );
}

#[test]
fn every_command_has_help() {
    for args in [
        &["--help"][..],
        &["score", "--help"],
        &["features", "--help"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_edge-host"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"));
    }
}

#[test]
fn a_live_stream_is_decided_without_waiting_for_a_full_batch() {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_edge-host"))
        .arg("score")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("edge-host runs");
    let mut stdin = child.stdin.take().unwrap();
    for e in crate::util::healthy_task("T-live") {
        writeln!(stdin, "{}", serde_json::to_string(&e).unwrap()).unwrap();
    }
    stdin.flush().unwrap();
    // stdin stays open: the decisions must come anyway.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().take(5) {
            tx.send(line.unwrap()).unwrap();
        }
    });
    for i in 0..5 {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("decision {i} did not come while the input stayed open"));
        assert!(line.contains("T-live"));
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
}
