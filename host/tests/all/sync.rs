//! Device -> aggregator over real QUIC with mutual TLS on loopback, real sled on disk, real
//! processes killed with SIGKILL.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fleet_host::event::Event;
use fleet_journal::{JournalConfig, ThinPolicy};
use fleet_net::framed::{FrameReader, write_frame};
use fleet_net::pki::Pki;
use fleet_proto::frame::ErrorCode;
use fleet_proto::{Frame, PROTOCOL_VERSION};

use crate::fleet::{
    self, InProcess, KillOnDrop, LocalDevice, edge_host_device, produce, spawn_device,
};

/// Child role: an aggregator process (spawned by [`fleet::spawn_aggregator`]).
#[test]
fn aggregator_child() {
    if let Some(config) = fleet::child_config() {
        fleet_aggregator::run(&config).unwrap();
    }
}

#[test]
fn events_reach_history_exactly_once_with_exact_counts() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    fleet::pki(&certs, &["dev-1"]);
    let agg = InProcess::start(&certs, &dir.path().join("history"));
    let (mut lines, statuses) = fleet::traffic(3, 2, 30, 1_795_300_000_000, "x");
    let unique = lines.len();
    // At-least-once producer: every 10th line again, and a malformed line.
    let repeats: Vec<String> = lines.iter().step_by(10).cloned().collect();
    lines.extend(repeats);
    lines.insert(5, r#"{"event_id":"bad","courier_id":"c","event_type":"location","event_time":"yesterday","lat":1,"lon":1}"#.into());
    let input = dir.path().join("events.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();

    let out = edge_host_device(&certs, &dir.path().join("journal"), "dev-1", agg.quic)
        .args(["--no-http", "--exit-when-synced", "--input"])
        .arg(&input)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("line 6: field event_time"), "{stderr}");
    let decisions = String::from_utf8_lossy(&out.stdout).lines().count() as u64;

    let stats = agg.api().get_json("/api/v1/stats");
    assert_eq!(stats["events"], unique as u64, "{stats}");
    assert_eq!(stats["decisions"], decisions, "{stats}");
    assert_eq!(stats["devices"], 1);
    let devices = agg.api().get_json("/api/v1/devices");
    let devices = &devices["devices"];
    assert_eq!(devices[0]["device"], "dev-1");
    assert_eq!(devices[0]["events"], unique as u64);
    assert_eq!(
        (&devices[0]["unsynced"], &devices[0]["lag_ms"]),
        (&0.into(), &0.into())
    );
    let mut stored = 0;
    for c in 0..3 {
        let ids = fleet::stored_event_ids(&agg.api(), &format!("xc{c}"));
        assert_eq!(
            ids.len(),
            ids.iter().collect::<HashSet<_>>().len(),
            "duplicates in history"
        );
        stored += ids.len();
    }
    assert_eq!(stored, unique);
    // The analyst's questions.
    let task = agg.api().get_json("/api/v1/tasks/xc1-t1");
    let items = task["items"].as_array().unwrap();
    assert!(
        items.iter().any(|i| i["kind"] == "event") && items.iter().any(|i| i["kind"] == "decision")
    );
    assert!(
        items
            .iter()
            .any(|i| i["data"]["features"]["distance_to_dropoff_km"].is_number()),
        "decisions carry named features"
    );
    assert_eq!(task["latest"]["event_type"], "delivered");
    let statuses_stored = fleet::stored_statuses(&agg.api(), "x", 3);
    assert_eq!(statuses_stored, statuses);
    let (status, body) = agg
        .api()
        .request("GET", "/api/v1/alerts?severity=loud", "")
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("severity"), "{body}");
    let (status, _) = agg.api().request("GET", "/api/v1/tasks/nope", "").unwrap();
    assert_eq!(status, 404);
    // Every endpoint names what it refuses: unknown, repeated and out-of-range parameters.
    for (path, names) in [
        (
            "/api/v1/devices?colour=red",
            "unknown query parameter \\\"colour",
        ),
        ("/api/v1/stats?x=1", "unknown query parameter \\\"x"),
        (
            "/api/v1/couriers/xc0?verbose=1",
            "unknown query parameter \\\"verbose",
        ),
        ("/metrics?debug=1", "unknown query parameter \\\"debug"),
        ("/api/v1/couriers/xc0/route?from=0&from=5", "more than once"),
        ("/api/v1/alerts?limit=100000", "at most 10000"),
        ("/api/v1/alerts?cursor=zz", "cursor"),
        ("/api/v1/dead-letters?state=lost", "state"),
    ] {
        let (status, body) = agg.api().request("GET", path, "").unwrap();
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains(names), "{path}: {body}");
    }
    // Lists come in pages, the next one named by its cursor.
    let first = agg.api().get_json("/api/v1/couriers/xc0/route?limit=7");
    let next = first["next_cursor"].as_str().expect("more than 7 points");
    let second = agg
        .api()
        .get_json(&format!("/api/v1/couriers/xc0/route?limit=7&cursor={next}"));
    assert_ne!(first["points"][0], second["points"][0]);
    let whole = fleet::route_points(&agg.api(), "xc0");
    assert_eq!(whole[7], second["points"][0]);
    let metrics = agg.api().request("GET", "/metrics", "").unwrap().1;
    assert!(
        metrics.contains(&format!("fleet_ingest_events_total {unique}")),
        "{metrics}"
    );
}

/// Opens a raw bulk stream as the device in `files`.
async fn raw_session(
    pki: &Pki,
    device: &str,
    server: SocketAddr,
) -> Result<(quinn::Connection, quinn::SendStream, FrameReader), String> {
    let client = fleet_net::tls::client_config(&pki.ca_cert(), &pki.device(device))
        .map_err(|e| e.to_string())?;
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(client);
    let conn = endpoint
        .connect(server, "localhost")
        .unwrap()
        .await
        .map_err(|e| e.to_string())?;
    let (send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    Ok((conn, send, FrameReader::new(recv)))
}

fn hello(device: Option<&str>) -> Frame {
    Frame::Hello {
        version: PROTOCOL_VERSION,
        journal: 1,
        acked_through: 0,
        device: device.map(Into::into),
        agent: "test".into(),
    }
}

/// Says hello; `Ok` when welcomed.
async fn handshake(pki: &Pki, device: &str, server: SocketAddr) -> Result<(), String> {
    let (_conn, mut send, mut reader) = raw_session(pki, device, server).await?;
    write_frame(&mut send, &hello(Some(device)))
        .await
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(5), reader.next()).await {
        Ok(Ok(Some(Frame::Welcome { .. }))) => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

#[test]
fn foreign_expired_and_revoked_certificates_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let pki = fleet::pki(&certs, &["dev-ok", "dev-revoked"]);
    let now = fleet_net::time::OffsetDateTime::now_utc();
    pki.issue_device_between(
        "dev-expired",
        now - fleet_net::time::Duration::days(30),
        now - fleet_net::time::Duration::days(1),
    )
    .unwrap();
    pki.revoke("dev-revoked").unwrap();
    let foreign = fleet::pki(&dir.path().join("foreign"), &["dev-ok"]);
    let agg = InProcess::start(&certs, &dir.path().join("history"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        handshake(&pki, "dev-ok", agg.quic)
            .await
            .expect("a fleet device is welcome");
        for (which, pki, device) in [
            ("another CA", &foreign, "dev-ok"),
            ("expired", &pki, "dev-expired"),
            ("revoked", &pki, "dev-revoked"),
        ] {
            let refused = handshake(pki, device, agg.quic).await;
            assert!(refused.is_err(), "{which}: a certificate was accepted");
        }
    });
    let devices: Vec<String> = fleet_aggregator::api::all_devices(&*agg.shared.history, 0)
        .unwrap()
        .into_iter()
        .map(|d| d.device)
        .collect();
    assert_eq!(devices, vec!["dev-ok"]);
    // The client may read the refusal before the server's side of the handshake has
    // finished failing, so the counter can trail the last assertion by a moment.
    let failures = || {
        agg.shared
            .metrics
            .handshake_failures
            .load(Ordering::Relaxed)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while failures() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        failures() >= 3,
        "handshake failures counted: {}",
        failures()
    );
}

#[test]
fn a_hello_claiming_another_device_cannot_write_as_it() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let pki = fleet::pki(&certs, &["dev-1", "dev-2"]);
    let agg = InProcess::start(&certs, &dir.path().join("history"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (conn, mut send, mut reader) = raw_session(&pki, "dev-1", agg.quic).await.unwrap();
        write_frame(&mut send, &hello(Some("dev-2"))).await.unwrap();
        match reader.next().await {
            Ok(Some(Frame::Error { code, message })) => {
                assert_eq!(code, ErrorCode::Unauthorized);
                assert!(message.contains("dev-2"), "{message}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed())
            .await
            .unwrap();
        assert!(closed.to_string().contains("certificate says"), "{closed}");
    });
    assert_eq!(agg.shared.history.cursor("dev-2").unwrap(), 0);
    assert_eq!(agg.shared.history.stats().unwrap().events, 0);
}

#[test]
fn corrupt_and_oversized_frames_close_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let pki = fleet::pki(&certs, &["dev-bad", "dev-good"]);
    let agg = InProcess::start(&certs, &dir.path().join("history"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // A healthy device keeps a session open through the whole test.
        let (_good_conn, mut good, mut good_reader) = raw_session(&pki, "dev-good", agg.quic).await.unwrap();
        write_frame(&mut good, &hello(None)).await.unwrap();
        assert!(matches!(good_reader.next().await, Ok(Some(Frame::Welcome { .. }))));

        let cases: [(&str, Vec<u8>, &str); 3] = [
            ("oversized", u32::MAX.to_le_bytes().to_vec(), "exceeds"),
            ("garbage", [8u32.to_le_bytes().to_vec(), vec![0xff; 8]].concat(), "malformed"),
            (
                "corrupt batch",
                {
                    let mut bytes = hello(None).encode();
                    bytes.extend(Frame::Batch { from: 1, through: 3, journaled: 3, codec: fleet_proto::Codec::Zstd, body: vec![1, 2, 3, 4] }.encode());
                    bytes
                },
                "malformed batch",
            ),
        ];
        for (name, bytes, reason) in cases {
            let (conn, mut send, _reader) = raw_session(&pki, "dev-bad", agg.quic).await.unwrap();
            send.write_all(&bytes).await.unwrap();
            let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await.unwrap();
            assert!(closed.to_string().contains(reason), "{name}: {closed}");
        }

        // The healthy session still works: a batch is stored and acknowledged.
        let entry = fleet_proto::Entry {
            seq: 1,
            record: fleet_proto::Record::Event(fleet_host::device::records::event_record(
                &Event::from_json(r#"{"event_id":"g1","courier_id":"cg","event_type":"location","event_time":"2026-11-22T10:00:00Z","lat":12.9,"lon":77.6}"#).unwrap(),
            )),
        };
        let (codec, body) = fleet_proto::BatchBody::encode(1, &[entry], fleet_proto::Codec::Zstd, 3);
        write_frame(&mut good, &Frame::Batch { from: 1, through: 1, journaled: 1, codec, body }).await.unwrap();
        assert_eq!(good_reader.next().await.unwrap(), Some(Frame::Ack { through: 1 }));
    });
    assert_eq!(agg.shared.history.stats().unwrap().events, 1);
    assert!(agg.shared.metrics.protocol_errors.load(Ordering::Relaxed) >= 3);
}

#[test]
fn a_day_offline_catches_up_with_pings_thinned_by_policy_and_statuses_kept() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let pki = fleet::pki(&certs, &["dev-1"]);
    // 24 h of 3 couriers pinging every 5 s: 51,840 events, with the aggregator unreachable.
    let (lines, statuses) = fleet::traffic(3, 24, 5, 1_795_300_000_000, "o");
    let port = fleet::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut config = JournalConfig::new(dir.path().join("journal"));
    config.thin = ThinPolicy {
        budget_bytes: 4 << 20,
        keep_one_per_ms: 60_000,
    };
    let device = LocalDevice::start(&pki, "dev-1", config, addr);
    let mut accepted = 0;
    let mut thinned = 0;
    for chunk in lines.chunks(512) {
        let events: Vec<Event> = chunk.iter().map(|l| Event::from_json(l).unwrap()).collect();
        let a = device.writer.submit_blocking(events).unwrap();
        accepted += a.events;
        thinned += a.thinned;
    }
    assert_eq!(accepted, lines.len());
    assert!(thinned > 0, "the budget was never reached");
    let journaled_events = lines.len() as u64 - thinned;
    // The aggregator comes up; the device catches up.
    let agg = InProcess::start_at(&certs, &dir.path().join("history"), addr);
    let started = Instant::now();
    device.wait_synced(Duration::from_secs(120));
    let catch_up = started.elapsed();
    let stats = agg.shared.history.stats().unwrap();
    assert_eq!(
        stats.events, journaled_events,
        "every journaled event is stored"
    );
    assert_eq!(
        device.journal.stats().thinned,
        thinned,
        "thinning is counted"
    );
    let stored_statuses = fleet::stored_statuses(&agg.api(), "o", 3);
    assert_eq!(stored_statuses, statuses, "status events are never thinned");
    eprintln!(
        "24 h backlog: {} events generated, {thinned} pings thinned, caught up in {catch_up:?}",
        lines.len()
    );
}

#[test]
fn kill_9_of_device_and_aggregator_under_load_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    fleet::pki(&certs, &["dev-k"]);
    let (quic, api, dev_http) = (fleet::free_port(), fleet::free_port(), fleet::free_port());
    let quic_addr: SocketAddr = format!("127.0.0.1:{quic}").parse().unwrap();
    let dev_addr: SocketAddr = format!("127.0.0.1:{dev_http}").parse().unwrap();
    let api_addr: SocketAddr = format!("127.0.0.1:{api}").parse().unwrap();
    let (history, journal) = (dir.path().join("history"), dir.path().join("journal"));
    let mut aggregator = KillOnDrop(fleet::spawn_aggregator(&certs, &history, quic, api));
    let mut device = KillOnDrop(spawn_device(&certs, &journal, "dev-k", quic_addr, dev_http));
    let (lines, _) = fleet::traffic(4, 6, 5, 1_795_300_000_000, "k");
    let acked = Arc::new(std::sync::Mutex::new(HashSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (lines, acked, stop) = (lines.clone(), acked.clone(), stop.clone());
        std::thread::spawn(move || produce(dev_addr, lines, acked, stop))
    };
    // Kill one or the other at pseudo-random instants for a bounded time.
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let deadline = Instant::now() + Duration::from_secs(25);
    let mut kills: HashMap<&str, u32> = HashMap::new();
    while Instant::now() < deadline && !producer.is_finished() {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(300 + rng % 900));
        if rng.is_multiple_of(2) {
            device.kill().unwrap(); // SIGKILL
            device.wait().unwrap();
            device = KillOnDrop(spawn_device(&certs, &journal, "dev-k", quic_addr, dev_http));
            *kills.entry("device").or_default() += 1;
        } else {
            aggregator.kill().unwrap();
            aggregator.wait().unwrap();
            aggregator = KillOnDrop(fleet::spawn_aggregator(&certs, &history, quic, api));
            *kills.entry("aggregator").or_default() += 1;
        }
    }
    // Let the producer finish with both up, then wait for the device to drain its journal.
    let finish = Instant::now() + Duration::from_secs(60);
    while !producer.is_finished() {
        assert!(Instant::now() < finish, "the producer could not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    producer.join().unwrap();
    fleet::wait_device_synced(dev_addr, Duration::from_secs(60));
    let acked = acked.lock().unwrap().clone();
    assert_eq!(
        acked.len(),
        lines.len(),
        "the producer got every batch acknowledged in the end"
    );
    let stored = fleet::audit(&fleet::Api::viewer(api_addr, &certs), "k", 4, &acked);
    eprintln!("kills: {kills:?}, {stored} events acknowledged and stored once");
    assert!(
        kills.get("device").copied().unwrap_or(0) >= 2
            && kills.get("aggregator").copied().unwrap_or(0) >= 2,
        "{kills:?}"
    );
}
