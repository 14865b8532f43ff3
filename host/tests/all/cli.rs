//! `edge-host score` as a user runs it: a real process, JSON lines in and out.

use std::io::Write;
use std::process::{Command, Stdio};

fn score_bytes(input: &[u8]) -> (String, String, bool) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_edge-host"))
        .arg("score")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("edge-host runs");
    child.stdin.take().unwrap().write_all(input).unwrap();
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
    lines.push(r#"{"event_id":"z","courier_id":"c","event_type":"location","event_time":"9999-11-22T10:00:00Z","lat":5,"lon":1}"#.into());
    let mut input = (lines.join("\n") + "\n").into_bytes();
    // A line that is not UTF-8 is reported like any malformed line; the rest is read.
    input.extend_from_slice(b"{\"event_id\":\"\xff\xfe\"}\n");
    let (stdout, stderr, ok) = score_bytes(&input);
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
    assert!(
        stderr.contains("line 10: field event_time: 9999-11-22T10:00:00.000+00:00 is outside"),
        "{stderr}"
    );
    assert!(stderr.contains("line 11: not valid UTF-8"), "{stderr}");
}

#[test]
fn every_command_has_help() {
    for args in [
        &["--help"][..],
        &["score", "--help"],
        &["features", "--help"],
        &["device", "--help"],
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

#[test]
fn a_dead_letter_file_can_be_scored_again_as_input() {
    let dir = tempfile::tempdir().unwrap();
    let modules = dir.path().join("modules");
    std::fs::create_dir(&modules).unwrap();
    crate::util::module_dir(
        &modules,
        "hostile",
        "6.6.6",
        &[("mode", "panic"), ("trigger", "poison")],
    );
    let input = dir.path().join("events.jsonl");
    let events: Vec<String> = [
        crate::util::healthy_task("T-fine"),
        crate::util::healthy_task("T-poison"),
    ]
    .concat()
    .iter()
    .map(|e| serde_json::to_string(e).unwrap())
    .collect();
    std::fs::write(&input, events.join("\n") + "\n").unwrap();
    let dead = dir.path().join("dead.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_edge-host"))
        .arg("score")
        .arg("--modules")
        .arg(&modules)
        .arg("--input")
        .arg(&input)
        .arg("--dead-letters")
        .arg(&dead)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 5);
    let written = std::fs::read_to_string(&dead).unwrap();
    assert_eq!(written.lines().count(), 5, "{written}");
    assert!(written.lines().all(|l| l.contains(r#""dead_letter":{"#)));
    // The same file, fed back to the built-in modules, is scored like any input.
    let again = Command::new(env!("CARGO_BIN_EXE_edge-host"))
        .arg("score")
        .arg("--input")
        .arg(&dead)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert!(!stderr.contains("line "), "no line refused: {stderr}");
    let decided: Vec<serde_json::Value> = String::from_utf8_lossy(&again.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(decided.len(), 5);
    assert!(decided.iter().all(|d| d["task_id"] == "T-poison"));
}

#[test]
fn a_second_device_on_the_same_journal_says_the_directory_is_in_use_and_by_whom() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    crate::fleet::pki(&certs, &["dev-1"]);
    let journal = dir.path().join("journal");
    let device = |http: u16| {
        crate::fleet::edge_host_device(&certs, &journal, "dev-1", "127.0.0.1:9".parse().unwrap())
            .args(["--http", &format!("127.0.0.1:{http}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = crate::fleet::KillOnDrop(device(crate::fleet::free_port()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !journal.join(".owner").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the first device never opened its journal"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let second = device(crate::fleet::free_port())
        .wait_with_output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success());
    assert!(
        stderr.contains(&format!(
            "is in use by another process (pid {})",
            first.id()
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("os error 11"), "{stderr}");
}
