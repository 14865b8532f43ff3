//! Faults a fleet meets, on real processes and real disks: a full disk at the aggregator and
//! at the device (a small tmpfs the test mounts, filled and freed), a device that starts over
//! with a new journal while a copy of the old one lingers, and a certificate revoked while
//! its device is connected. Every count is exact.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_host::event::Event;
use fleet_journal::JournalConfig;
use fleet_wal::testing::SmallDisk;

use crate::fleet::{self, InProcess, KillOnDrop, LocalDevice, produce, spawn_device};

fn addr(port: u16) -> SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

/// Polls `GET path` until its status is `want`.
fn wait_status(at: SocketAddr, path: &str, want: u16, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        if let Some((status, body)) = fleet::http(at, "GET", path, "")
            && status == want
        {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "GET {path} never answered {want}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A counter from the aggregator's `/metrics`.
fn metric(api: &fleet::Api, name: &str) -> u64 {
    let (_, text) = api.request("GET", "/metrics", "").expect("metrics answer");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// A producer thread posting `lines` to a device until all are acknowledged.
struct Producer {
    acked: Arc<Mutex<HashSet<String>>>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Producer {
    fn start(device: SocketAddr, lines: Vec<String>) -> Self {
        let acked = Arc::new(Mutex::new(HashSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (acked, stop) = (acked.clone(), stop.clone());
            std::thread::spawn(move || produce(device, lines, acked, stop))
        };
        Self {
            acked,
            stop,
            thread,
        }
    }

    /// Waits for every batch to be acknowledged; returns the acknowledged event ids.
    fn finish(self, within: Duration) -> HashSet<String> {
        let deadline = Instant::now() + within;
        while !self.thread.is_finished() {
            assert!(Instant::now() < deadline, "the producer could not finish");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        self.acked.lock().unwrap().clone()
    }
}

#[test]
fn a_full_disk_at_the_aggregator_loses_no_acknowledged_event_and_passes_by_itself() {
    let disk = SmallDisk::mount(64).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    fleet::pki(&certs, &["dev-f"]);
    let history = disk.path().join("history");
    let (quic, api, dev_http) = (fleet::free_port(), fleet::free_port(), fleet::free_port());
    // The aggregator starts with little room: its ingest log fills it under the traffic.
    disk.fill(3 << 20).unwrap();
    let mut aggregator = KillOnDrop(fleet::spawn_aggregator(&certs, &history, quic, api));
    let _device = KillOnDrop(spawn_device(
        &certs,
        &dir.path().join("journal"),
        "dev-f",
        addr(quic),
        dev_http,
    ));
    let (lines, _) = fleet::traffic(4, 6, 5, 1_795_300_000_000, "f");
    let producer = Producer::start(addr(dev_http), lines.clone());
    let full = wait_status(addr(api), "/healthz", 503, Duration::from_secs(90));
    assert!(full.contains("ingest log cannot be written"), "{full}");
    // Full, it still answers questions, and welcomes the device back (with only what is
    // on disk: what sits in memory would be gone after the crash below).
    let viewer = fleet::Api::viewer(addr(api), &certs);
    viewer.get_json("/api/v1/stats");
    let connections = metric(&viewer, "fleet_connections_total");
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&viewer, "fleet_connections_total") < connections + 2 {
        assert!(Instant::now() < deadline, "the device did not come back");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A crash while the disk is full, then space comes back.
    aggregator.kill().unwrap();
    aggregator.wait().unwrap();
    disk.free().unwrap();
    aggregator = KillOnDrop(fleet::spawn_aggregator(&certs, &history, quic, api));
    wait_status(addr(api), "/healthz", 200, Duration::from_secs(60));
    let acked = producer.finish(Duration::from_secs(120));
    assert_eq!(acked.len(), lines.len());
    fleet::wait_device_synced(addr(dev_http), Duration::from_secs(120));
    assert_eq!(fleet::audit(&viewer, "f", 4, &acked), lines.len());
    // What was acknowledged survives a plain stop and a SIGKILL, each followed by a restart.
    for signal in ["TERM", "KILL"] {
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), aggregator.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        aggregator.wait().unwrap();
        aggregator = KillOnDrop(fleet::spawn_aggregator(&certs, &history, quic, api));
        assert_eq!(
            fleet::audit(&viewer, "f", 4, &acked),
            lines.len(),
            "after SIG{signal}"
        );
    }
}

#[test]
fn a_full_disk_at_the_device_refuses_with_503_never_hangs_and_recovers() {
    let disk = SmallDisk::mount(48).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    fleet::pki(&certs, &["dev-d"]);
    let agg = InProcess::start(&certs, &dir.path().join("history"));
    let dev_http = fleet::free_port();
    disk.fill(2 << 20).unwrap();
    let _device = KillOnDrop(spawn_device(
        &certs,
        &disk.path().join("journal"),
        "dev-d",
        agg.quic,
        dev_http,
    ));
    wait_status(addr(dev_http), "/healthz", 200, Duration::from_secs(30));
    let (lines, _) = fleet::traffic(4, 6, 5, 1_795_300_000_000, "d");
    // Post until the journal refuses; every answer comes, none hangs.
    let mut refused = None;
    for chunk in lines.chunks(200) {
        let started = Instant::now();
        let answer = fleet::http(addr(dev_http), "POST", "/v1/events", &chunk.join("\n"));
        assert!(started.elapsed() < Duration::from_secs(10), "a POST hung");
        match answer {
            Some((200, _)) => {}
            Some((503, body)) => {
                refused = Some(body);
                break;
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    let refused = refused.expect("the device never ran out of disk");
    assert!(refused.contains("send it again later"), "{refused}");
    let health = wait_status(addr(dev_http), "/healthz", 503, Duration::from_secs(5));
    assert!(health.contains("cannot be written"), "{health}");
    // Space comes back: the same producer, resending what was refused, gets everything in.
    disk.free().unwrap();
    let acked = Producer::start(addr(dev_http), lines.clone()).finish(Duration::from_secs(120));
    assert_eq!(acked.len(), lines.len());
    wait_status(addr(dev_http), "/healthz", 200, Duration::from_secs(10));
    fleet::wait_device_synced(addr(dev_http), Duration::from_secs(120));
    assert_eq!(fleet::audit(&agg.api(), "d", 4, &acked), lines.len());
}

#[test]
fn a_device_that_starts_over_gets_a_new_range_and_a_copy_of_its_old_journal_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    fleet::pki(&certs, &["dev-r"]);
    let agg = InProcess::start(&certs, &dir.path().join("history"));
    let (journal, copy) = (dir.path().join("journal"), dir.path().join("old-journal"));
    let dev_http = fleet::free_port();
    let (lines, _) = fleet::traffic(2, 2, 5, 1_795_300_000_000, "r");
    let (first, second) = lines.split_at(lines.len() / 2);
    let mut device = KillOnDrop(spawn_device(&certs, &journal, "dev-r", agg.quic, dev_http));
    let mut acked = Producer::start(addr(dev_http), first.to_vec()).finish(Duration::from_secs(60));
    fleet::wait_device_synced(addr(dev_http), Duration::from_secs(60));
    device.kill().unwrap();
    device.wait().unwrap();
    // The handset is reinstalled: a new journal under the same identity, numbered from 1.
    std::fs::rename(&journal, &copy).unwrap();
    device = KillOnDrop(spawn_device(&certs, &journal, "dev-r", agg.quic, dev_http));
    acked.extend(Producer::start(addr(dev_http), second.to_vec()).finish(Duration::from_secs(60)));
    fleet::wait_device_synced(addr(dev_http), Duration::from_secs(60));
    assert_eq!(
        fleet::audit(&agg.api(), "r", 2, &acked),
        lines.len(),
        "none absorbed"
    );
    let devices = agg.api().get_json("/api/v1/devices");
    assert_eq!(devices["devices"][0]["journal_resets"], 1, "{devices}");
    device.kill().unwrap();
    device.wait().unwrap();
    // A copy of the old journal comes back (a restored backup): refused, loudly.
    let _clone = KillOnDrop(spawn_device(&certs, &copy, "dev-r", agg.quic, dev_http));
    let late = r#"{"event_id":"r-late","courier_id":"rc0","event_type":"location","event_time":"2026-11-22T10:00:00Z","lat":12.9,"lon":77.6}"#;
    wait_status(addr(dev_http), "/healthz", 200, Duration::from_secs(30));
    assert_eq!(
        fleet::http(addr(dev_http), "POST", "/v1/events", late).map(|a| a.0),
        Some(200)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while agg.shared.metrics.stale_journals.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "the old journal was not refused");
        std::thread::sleep(Duration::from_millis(100));
    }
    let sync = fleet::get_json(addr(dev_http), "/v1/sync");
    assert!(
        sync["acked"].as_u64() < sync["journaled"].as_u64(),
        "{sync}"
    );
    let route = fleet::stored_event_ids(&agg.api(), "rc0");
    assert!(!route.contains(&"r-late".to_string()));
}

#[test]
fn a_revoked_device_is_cut_off_while_connected_and_the_others_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let pki = fleet::pki(&certs, &["dev-a", "dev-b"]);
    let agg = InProcess::start(&certs, &dir.path().join("history"));
    let config = |name: &str| JournalConfig::new(dir.path().join(name));
    let a = LocalDevice::start(&pki, "dev-a", config("a"), agg.quic);
    let b = LocalDevice::start(&pki, "dev-b", config("b"), agg.quic);
    let event = |id: &str, courier: &str| {
        Event::from_json(&format!(r#"{{"event_id":"{id}","courier_id":"{courier}","event_type":"location","event_time":"2026-11-22T10:00:00Z","lat":12.9,"lon":77.6}}"#)).unwrap()
    };
    a.writer.submit_blocking(vec![event("a1", "ca")]).unwrap();
    b.writer.submit_blocking(vec![event("b1", "cb")]).unwrap();
    a.wait_synced(Duration::from_secs(30));
    b.wait_synced(Duration::from_secs(30));
    pki.revoke("dev-a").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while agg.shared.metrics.revoked_closed.load(Ordering::Relaxed) == 0 {
        assert!(
            Instant::now() < deadline,
            "the revoked device stayed connected"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    a.writer.submit_blocking(vec![event("a2", "ca")]).unwrap();
    b.writer.submit_blocking(vec![event("b2", "cb")]).unwrap();
    b.wait_synced(Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !a.status.connected.load(Ordering::Relaxed),
        "the revoked device got back in"
    );
    assert_eq!(fleet::stored_event_ids(&agg.api(), "ca"), ["a1"]);
    assert_eq!(fleet::stored_event_ids(&agg.api(), "cb"), ["b1", "b2"]);
    assert!(agg.shared.metrics.crl_reloads.load(Ordering::Relaxed) >= 1);
}
