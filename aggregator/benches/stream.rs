//! Live streams under load: 1,000 WebSocket subscribers on the aggregator while events arrive
//! at 2,000 per second: the time from an event handed to the committer (group commit, fsync,
//! publish) to its receipt by a subscriber; and the most events per second ingest takes with
//! those subscribers attached against none, before and after.
//!
//! Each subscriber watches positions in one of 16 districts of the city (`bbox`), as an
//! operator's map does; 2,000 couriers ping once a second (each ping is pushed: positions are
//! thinned to one per courier per second of event time).
//!
//! `cargo bench -p fleet-aggregator --bench stream`

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fleet_aggregator::auth::{Role, TokenFile};
use fleet_aggregator::{ServeConfig, Shared};
use fleet_proto::batch::Entry;
use fleet_proto::record::{EventKind, EventRecord, GeoE7, Record};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

// The `aggregator` binary's allocator.
use fleet_process as _;

const COURIERS: usize = 2_000;
const DEVICES: usize = 20;
const SIDE: usize = 4;

/// Where courier `c` is: a grid over the city, so each district holds 1/16 of them.
fn position(c: usize) -> (f64, f64) {
    let (row, col) = (c % 40, (c / 40) % 50);
    (12.8 + row as f64 * 0.009, 77.4 + col as f64 * 0.0074)
}

fn district_bbox(d: usize) -> String {
    let (r, c) = (d / SIDE, d % SIDE);
    let (lat0, lon0) = (12.8 + r as f64 * 0.09, 77.4 + c as f64 * 0.0925);
    format!("{lat0},{lon0},{},{}", lat0 + 0.09, lon0 + 0.0925)
}

/// A batch of pings of device `d`'s couriers at second `tick`, each event id carrying the
/// microseconds since `t0` at which it was handed over.
fn batch(d: usize, tick: u64, seq: &mut u64, t0: Instant) -> (u64, Vec<Entry>) {
    let sent = t0.elapsed().as_micros();
    let per = COURIERS / DEVICES;
    let entries = (0..per)
        .map(|i| {
            let c = d * per + i;
            *seq += 1;
            let (lat, lon) = position(c);
            Entry {
                seq: *seq,
                record: Record::Event(EventRecord {
                    event_id: format!("e{sent}-{c}-{tick}"),
                    courier_id: format!("C{c:05}"),
                    task_id: None,
                    event_type: EventKind::Location,
                    time_ms: 1_795_300_000_000 + tick as i64 * 1_000,
                    utc_offset_s: 0,
                    position: GeoE7::from_degrees(lat, lon),
                    speed_kmh: Some(20.0),
                    accuracy_m: Some(5.0),
                    context: None,
                }),
            }
        })
        .collect();
    (*seq, entries)
}

/// Receipt latencies (µs), one per event received by any subscriber.
#[derive(Default)]
struct Receipts {
    latencies: std::sync::Mutex<Vec<u32>>,
    events: AtomicU64,
    /// Latencies are kept only during the paced run.
    measuring: AtomicBool,
}

fn subscribe(
    rt: &tokio::runtime::Runtime,
    url: String,
    t0: Instant,
    receipts: Arc<Receipts>,
    stop: Arc<AtomicBool>,
    ready: Arc<AtomicU64>,
) {
    rt.spawn(async move {
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        ready.fetch_add(1, Ordering::Relaxed);
        let mut mine = Vec::new();
        while let Some(Ok(m)) = ws.next().await {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let Message::Text(text) = m else { continue };
            if !receipts.measuring.load(Ordering::Relaxed) {
                if !mine.is_empty() {
                    receipts.latencies.lock().unwrap().append(&mut mine);
                }
                continue;
            }
            let now = t0.elapsed().as_micros();
            let mut n = 0;
            for part in text.as_str().split(r#""event_id":"e"#).skip(1) {
                let sent: u128 = part[..part.find('-').unwrap()].parse().unwrap();
                mine.push(now.saturating_sub(sent).min(u32::MAX as u128) as u32);
                n += 1;
            }
            receipts.events.fetch_add(n, Ordering::Relaxed);
        }
        receipts.latencies.lock().unwrap().extend(mine);
    });
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

/// Ingest as fast as the committer takes it: `batches` per device, all devices at once.
fn flat_out(
    rt: &tokio::runtime::Runtime,
    shared: &Arc<Shared>,
    batches: u64,
    first_tick: u64,
) -> f64 {
    let t0 = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for d in 0..DEVICES {
            let shared = shared.clone();
            tasks.push(tokio::spawn(async move {
                let device: Arc<str> = format!("flat-{first_tick}-{d}").into();
                let mut seq = 0;
                let mut pending = Vec::new();
                for tick in first_tick..first_tick + batches {
                    let (through, entries) = batch(d, tick, &mut seq, t0);
                    pending.push(
                        shared
                            .committer
                            .persist(device.clone(), 1, through, through, entries)
                            .await,
                    );
                }
                for p in pending {
                    p.await.unwrap().unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    (DEVICES as u64 * batches * (COURIERS / DEVICES) as u64) as f64 / t0.elapsed().as_secs_f64()
}

fn main() {
    // As the `aggregator` binary starts: transparent huge pages off.
    fleet_process::prepare();
    // `cargo test --all-targets` runs bench binaries without `--bench`: keep that run short.
    let quick = !std::env::args().any(|a| a == "--bench");
    let (subscribers, seconds, flat_batches) = if quick { (20, 2, 5) } else { (1_000, 15, 100) };
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The subscribers stand in for browsers on other machines: their parsing runs at the
    // background priority so that it takes from this machine only what is left.
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .on_thread_start(fleet_process::lower_this_threads_priority)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    fleet_net::pki::Pki::at(&certs).init(&[]).unwrap();
    let (_, token) = TokenFile::in_dir(&certs)
        .issue(Role::Viewer, "bench")
        .unwrap();
    let shared = Shared::open_sled(&dir.path().join("h")).unwrap();
    let config = ServeConfig {
        api_rate: 100_000,
        ..ServeConfig::loopback(dir.path().join("h"), &certs)
    };
    let (_, http, serving) = server_rt
        .block_on(fleet_aggregator::start(&config, shared.clone()))
        .unwrap();
    server_rt.spawn(serving);

    // Ingest flat out, nobody watching.
    let alone = flat_out(&server_rt, &shared, flat_batches, 0);

    let t0 = Instant::now();
    let receipts = Arc::new(Receipts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicU64::new(0));
    for s in 0..subscribers {
        let url = format!(
            "ws://{http}/api/v1/stream?topics=positions&bbox={}&access_token={token}",
            district_bbox(s % (SIDE * SIDE))
        );
        subscribe(
            &client_rt,
            url,
            t0,
            receipts.clone(),
            stop.clone(),
            ready.clone(),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready.load(Ordering::Relaxed) < subscribers as u64 {
        assert!(Instant::now() < deadline, "subscribers did not connect");
        std::thread::sleep(Duration::from_millis(20));
    }

    receipts.measuring.store(true, Ordering::Relaxed);
    // 2,000 events a second for `seconds`: each device's 100 couriers once a second, the
    // devices spread over the second.
    server_rt.block_on(async {
        let mut tasks = Vec::new();
        for d in 0..DEVICES {
            let shared = shared.clone();
            tasks.push(tokio::spawn(async move {
                let device: Arc<str> = format!("dev-{d}").into();
                let offset = Duration::from_millis((d * 1000 / DEVICES) as u64);
                let mut seq = 0;
                let mut every = tokio::time::interval_at(
                    tokio::time::Instant::now() + offset,
                    Duration::from_secs(1),
                );
                // After the flat-out run's seconds: positions are thinned by event time.
                for tick in 10_000..10_000 + seconds {
                    every.tick().await;
                    let (through, entries) = batch(d, tick, &mut seq, t0);
                    shared
                        .committer
                        .persist(device.clone(), 1, through, through, entries)
                        .await
                        .await
                        .unwrap()
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    receipts.measuring.store(false, Ordering::Relaxed);
    let delivered = receipts.events.load(Ordering::Relaxed);

    // Ingest flat out again, the subscribers attached and taking their districts' pings.
    let watched = flat_out(&server_rt, &shared, flat_batches, 2_000_000);
    stop.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(500));
    client_rt.shutdown_timeout(Duration::from_secs(2));
    // Nobody watching again, into the history as full as the watched run left it: the
    // watched run is compared with the mean of the runs before and after it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while shared.metrics.stream_subscribers.load(Ordering::Relaxed) > 0 {
        assert!(Instant::now() < deadline, "subscribers did not go away");
        std::thread::sleep(Duration::from_millis(20));
    }
    let alone_after = flat_out(&server_rt, &shared, flat_batches, 4_000_000);

    let mut latencies = std::mem::take(&mut *receipts.latencies.lock().unwrap());
    latencies.sort_unstable();
    let expected = seconds * COURIERS as u64 * subscribers as u64 / (SIDE * SIDE) as u64;
    println!(
        "{subscribers} subscribers (positions of one of {} districts each), {} events/s for {seconds} s: {delivered} deliveries during the paced run (about {expected} expected)",
        SIDE * SIDE,
        COURIERS
    );
    println!(
        "event handed to the committer -> received by a subscriber: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} receipts in all)",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
        latencies.len()
    );
    println!(
        "ingest flat out: {alone:.0} events/s with no subscriber, {watched:.0} events/s with {subscribers} attached, {alone_after:.0} events/s with none again ({:.2}x the mean of those without)",
        watched / ((alone + alone_after) / 2.0)
    );
}
