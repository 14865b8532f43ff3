//! Event -> durable at the aggregator, at a steady 2,000 events/s: one device (pipeline,
//! journal with group commit, QUIC sync) and one aggregator (sled history), both in this
//! process, over real QUIC + mutual TLS on loopback.
//!
//! `cargo bench -p fleet-host --bench sync`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fleet_aggregator::{ServeConfig, Shared};
use fleet_host::device::sync::{self, SyncConfig, SyncStatus};
use fleet_host::device::writer::{self, DeviceRuntime};
use fleet_host::event::Event;
use fleet_journal::{Journal, JournalConfig};
use fleet_net::pki::Pki;
use fleet_proto::sender::{Outbox, SenderConfig};
use tokio::sync::Notify;

mod common;

const RATE: u64 = 2_000;
const TICK: Duration = Duration::from_millis(10);

fn events(tick: u64, per_tick: u64) -> Vec<Event> {
    (0..per_tick)
        .map(|i| {
            let n = tick * per_tick + i;
            let courier = n % 200;
            let secs = 1_795_300_000 + n / 200 * 5;
            let (kind, extra) = if n / 200 == 0 {
                ("task_assigned", r#","pickup":{"lat":12.98,"lon":77.6},"dropoff":{"lat":13.0,"lon":77.62},"promised_at":"2026-11-22T10:40:00Z""#)
            } else {
                ("location", "")
            };
            let t = chrono::DateTime::from_timestamp(secs as i64, 0).unwrap().to_rfc3339();
            Event::from_json(&format!(
                r#"{{"event_id":"e{n}","courier_id":"C{courier}","task_id":"T{courier}","event_type":"{kind}","event_time":"{t}","lat":{},"lon":77.6,"speed_kmh":20{extra}}}"#,
                12.97 + (n / 200) as f64 * 1e-5
            ))
            .unwrap()
        })
        .collect()
}

fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench`: keep that run short.
    let quick = !std::env::args().any(|a| a == "--bench");
    let seconds = if quick { 1 } else { 15 };
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::at(dir.path().join("certs"));
    pki.init(&[]).unwrap();
    pki.issue_device("dev-1", 1).unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let shared = Shared::open_sled(&dir.path().join("history")).unwrap();
    let history = shared.history.clone();
    let config = ServeConfig::loopback(dir.path().join("history"), pki.dir());
    let (quic, _, serving) = rt
        .block_on(fleet_aggregator::start(&config, shared.clone()))
        .unwrap();
    rt.spawn(serving);

    let (journal, _) = Journal::open(JournalConfig::new(dir.path().join("journal"))).unwrap();
    let journal = Arc::new(journal);
    let wake = Arc::new(Notify::new());
    let handle = writer::spawn(
        DeviceRuntime::new(common::registry()),
        journal.clone(),
        wake.clone(),
    );
    let status = Arc::new(SyncStatus::default());
    rt.spawn(sync::run(
        journal.clone(),
        wake,
        SyncConfig {
            aggregator: quic,
            server_name: "localhost".into(),
            client: fleet_net::tls::client_config(&pki.ca_cert(), &pki.device("dev-1")).unwrap(),
            device: "dev-1".into(),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
            sender: SenderConfig::default(),
            endpoint: None,
            handshakes: None,
            releases: None,
        },
        status.clone(),
        Arc::new(Notify::new()),
    ));
    // Steady state: the connection is up before the first event (its setup is not latency
    // of any event in a running fleet).
    let connecting = Instant::now();
    while !status.connected.load(Ordering::Relaxed) {
        assert!(
            connecting.elapsed() < Duration::from_secs(10),
            "no connection to the aggregator"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    println!(
        "connected (QUIC + mTLS handshake) in {:.2?}",
        connecting.elapsed()
    );
    // Watch acknowledgements as they move.
    let acks: Arc<std::sync::Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let watcher = {
        let (acks, status) = (acks.clone(), status.clone());
        std::thread::spawn(move || {
            let mut last = 0;
            let deadline = Instant::now() + Duration::from_secs(seconds + 10);
            while Instant::now() < deadline {
                let a = status.acked.load(Ordering::Relaxed);
                if a != last {
                    acks.lock().unwrap().push((a, Instant::now()));
                    last = a;
                }
                std::thread::sleep(Duration::from_micros(100));
            }
        })
    };

    let per_tick = RATE * TICK.as_millis() as u64 / 1000;
    let ticks = seconds * 1000 / TICK.as_millis() as u64;
    let mut submissions = Vec::new();
    let start = Instant::now();
    for tick in 0..ticks {
        let due = start + TICK * tick as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let batch = events(tick, per_tick);
        let submitted = Instant::now();
        handle.submit_blocking(batch).unwrap();
        let durable_on_device = submitted.elapsed();
        submissions.push((submitted, durable_on_device, journal.last_seq()));
    }
    let produced = start.elapsed();
    watcher.join().unwrap();
    let acks = acks.lock().unwrap().clone();
    let mut device = Vec::new();
    let mut end_to_end = Vec::new();
    for (submitted, on_device, seq) in &submissions {
        device.push(*on_device);
        if let Some((_, at)) = acks.iter().find(|(a, _)| a >= seq) {
            end_to_end.push(at.duration_since(*submitted));
        }
    }
    assert_eq!(
        end_to_end.len(),
        submissions.len(),
        "some batches never reached the aggregator"
    );
    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        v[((v.len() - 1) as f64 * p) as usize]
    };
    let events = ticks * per_tick;
    println!(
        "{events} events at {:.0} events/s offered ({} per {TICK:?}) over {produced:.1?}; {} stored",
        events as f64 / produced.as_secs_f64(),
        per_tick,
        history.stats().unwrap().events
    );
    println!(
        "sync: {} connects, {} connection failures",
        status.connects.load(Ordering::Relaxed),
        status.failures.load(Ordering::Relaxed)
    );
    let commits = shared.metrics.commits.load(Ordering::Relaxed);
    println!(
        "aggregator: {commits} group commits, {:.2} ms each on average",
        shared.metrics.commit_micros.load(Ordering::Relaxed) as f64 / 1e3 / commits.max(1) as f64
    );
    println!(
        "event -> durable on the device (scored + journaled + fsync): p50 {:.2?} p99 {:.2?}",
        pct(&mut device, 0.5),
        pct(&mut device, 0.99)
    );
    println!(
        "event -> durable at the aggregator (acknowledged):           p50 {:.2?} p99 {:.2?} max {:.2?}",
        pct(&mut end_to_end, 0.5),
        pct(&mut end_to_end, 0.99),
        pct(&mut end_to_end, 1.0)
    );
}
