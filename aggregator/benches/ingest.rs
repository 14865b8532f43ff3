//! Aggregator ingest rate into sled with many devices: once straight into the group-commit
//! path (storage alone), once over real QUIC + mutual TLS on loopback (the whole server).
//!
//! `cargo bench -p fleet-aggregator --bench ingest`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_aggregator::{ServeConfig, Shared};
use fleet_net::framed::{FrameReader, write_frame};
use fleet_net::pki::Pki;
use fleet_proto::batch::{BatchBody, Codec, Entry};
use fleet_proto::record::{EventKind, EventRecord, GeoE7, Record};
use fleet_proto::{Frame, PROTOCOL_VERSION};

// The `aggregator` binary's allocator (transparent huge pages as the system sets them).
use fleet_process as _;

fn entries(device: usize, from: u64, n: usize) -> Vec<Entry> {
    (0..n as u64)
        .map(|i| {
            let seq = from + i;
            Entry {
                seq,
                record: Record::Event(EventRecord {
                    event_id: format!("d{device}-{seq}"),
                    courier_id: format!("C-{device:05}"),
                    task_id: Some(format!("T-{device:05}-{}", seq / 360)),
                    event_type: if seq.is_multiple_of(360) {
                        EventKind::PickedUp
                    } else {
                        EventKind::Location
                    },
                    time_ms: 1_795_300_000_000 + seq as i64 * 5_000,
                    utc_offset_s: 0,
                    position: GeoE7::from_degrees(12.97 + seq as f64 * 1e-5, 77.59),
                    speed_kmh: Some(20.0),
                    accuracy_m: Some(5.0),
                    context: None,
                }),
            }
        })
        .collect()
}

fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench`: keep that run short.
    let quick = !std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (devices, batches, batch) = if quick { (10, 2, 256) } else { (200, 20, 256) };
    let total = devices * batches * batch;

    // 1. Storage: every device's batches straight into the committer.
    let dir = tempfile::tempdir().unwrap();
    let shared = Shared::open_sled(&dir.path().join("h")).unwrap();
    let history = shared.history.clone();
    let started = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for d in 0..devices {
            let shared = shared.clone();
            tasks.push(tokio::spawn(async move {
                let device: Arc<str> = format!("dev-{d}").into();
                let mut pending = Vec::new();
                for b in 0..batches {
                    let from = (b * batch) as u64 + 1;
                    let through = from + batch as u64 - 1;
                    pending.push(
                        shared
                            .committer
                            .persist(device.clone(), 1, through, through, entries(d, from, batch))
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
    let took = started.elapsed();
    let commits = shared
        .metrics
        .commits
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(history.stats().unwrap().events, total as u64);
    println!(
        "storage: {devices} devices x {batches} batches x {batch} events = {total} events in {took:.2?}: {:.0} events/s, {commits} group commits ({:.0} events each)",
        total as f64 / took.as_secs_f64(),
        total as f64 / commits as f64
    );
    drop(shared);

    // 2. The whole server: devices over QUIC with mutual TLS, each streaming its batches with
    // the protocol's window and waiting for every ack.
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::at(dir.path().join("certs"));
    pki.init(&[]).unwrap();
    let quic_devices = if quick { 5 } else { 100 };
    for d in 0..quic_devices {
        pki.issue_device(&format!("dev-{d}"), 1).unwrap();
    }
    let shared = Shared::open_sled(&dir.path().join("h")).unwrap();
    let history = shared.history.clone();
    let config = ServeConfig::loopback(dir.path().join("h"), pki.dir());
    let (quic, _, serving) = rt
        .block_on(fleet_aggregator::start(&config, shared.clone()))
        .unwrap();
    rt.spawn(serving);
    let per_device = total / quic_devices;
    let bodies: Vec<Vec<Frame>> = (0..quic_devices)
        .map(|d| {
            entries(d, 1, per_device)
                .chunks(512)
                .map(|c| {
                    let (codec, body) = BatchBody::encode(c[0].seq, c, Codec::Zstd, 3);
                    Frame::Batch {
                        from: c[0].seq,
                        through: c.last().unwrap().seq,
                        journaled: c.last().unwrap().seq,
                        codec,
                        body,
                    }
                })
                .collect()
        })
        .collect();
    let client = |d: usize| {
        fleet_net::tls::client_config(&pki.ca_cert(), &pki.device(&format!("dev-{d}"))).unwrap()
    };
    let clients: Vec<_> = (0..quic_devices).map(client).collect();
    let started = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for (frames, client) in bodies.into_iter().zip(clients) {
            tasks.push(tokio::spawn(run_device(quic, client, frames)));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let took = started.elapsed();
    let stored = history.stats().unwrap().events;
    assert_eq!(stored, (per_device * quic_devices) as u64);
    println!(
        "QUIC + mTLS: {quic_devices} devices, {stored} events in {took:.2?}: {:.0} events/s end to end (durable and acknowledged)",
        stored as f64 / took.as_secs_f64()
    );
}

async fn run_device(server: SocketAddr, client: quinn::ClientConfig, frames: Vec<Frame>) {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(client);
    let conn = endpoint
        .connect(server, "localhost")
        .unwrap()
        .await
        .unwrap();
    let (mut send, recv) = conn.open_bi().await.unwrap();
    let mut reader = FrameReader::new(recv);
    write_frame(
        &mut send,
        &Frame::Hello {
            version: PROTOCOL_VERSION,
            journal: 1,
            acked_through: 0,
            device: None,
            agent: "bench".into(),
        },
    )
    .await
    .unwrap();
    let Some(Frame::Welcome { window, .. }) = reader.next().await.unwrap() else {
        panic!("no welcome")
    };
    let last = match frames.last() {
        Some(Frame::Batch { through, .. }) => *through,
        _ => return,
    };
    let mut in_flight = 0;
    let mut frames = frames.into_iter();
    loop {
        while in_flight < window {
            match frames.next() {
                Some(f) => {
                    write_frame(&mut send, &f).await.unwrap();
                    in_flight += 1;
                }
                None => break,
            }
        }
        match tokio::time::timeout(Duration::from_secs(30), reader.next())
            .await
            .unwrap()
            .unwrap()
        {
            Some(Frame::Ack { through }) => {
                in_flight -= 1;
                if through == last {
                    break;
                }
            }
            other => panic!("{other:?}"),
        }
    }
    conn.close(0u32.into(), b"done");
}
