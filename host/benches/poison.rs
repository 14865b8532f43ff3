//! What a poison event costs: batches of 256 events from 64 tasks through a policy that
//! fails on one task's events, against the same batches without it. A failing batch is run
//! again in halves by key down to the poison event: a few extra calls (and fresh instances
//! after a trap) per poisoned batch, or a few deadlines when the poison makes the module
//! spin. On a device, the task's later events then wait behind the parked one without
//! running, so a recurring poison task costs its first isolation only.
//!
//! `cargo bench -p fleet-host --bench poison`

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

use fleet_host::device::runtime::DeviceRuntime;
use fleet_host::event::{Event, EventType, Geo};
use fleet_host::module::{LoadedModule, ModuleKind};
use fleet_host::pipeline::Pipeline;
use fleet_host::registry::embedded_manifest;
use fleet_journal::{Journal, JournalConfig};

const ACTIVE_TASKS: usize = 64;
const BATCH: usize = 256;

/// A pipeline whose policy is the hostile test guest, set off by task ids with "poison".
fn hostile(mode: &str) -> Pipeline {
    Pipeline::new(hostile_registry(mode))
}

fn hostile_registry(mode: &str) -> Arc<fleet_host::registry::ModuleRegistry> {
    let registry = common::registry();
    let mut manifest = embedded_manifest("hostile", ModuleKind::Policy);
    manifest.config = [("mode", mode), ("trigger", "poison")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), toml::Value::String(v.to_string())))
        .collect();
    let policy = LoadedModule::from_bytes(
        registry.engine(),
        registry.models(),
        manifest,
        fleet_guest_modules::HOSTILE_WASM,
    )
    .expect("the hostile guest loads");
    registry.replace(policy).expect("a policy fits");
    registry
}

/// A location ping of the poison task `n` (after its assignment).
fn poison_ping(n: u64, k: u64) -> Event {
    let mut e = poison(n);
    e.event_id = format!("poison-{n}-{k}");
    e.event_type = EventType::Location;
    e.event_time += chrono::Duration::seconds(k as i64 * 5);
    e
}

/// The `n`th poison: an assignment (scored at once, so the policy sees it).
fn poison(n: u64) -> Event {
    let t = chrono::DateTime::parse_from_rfc3339("2026-11-22T10:00:00+05:30").unwrap();
    let mut e = Event::new(
        format!("poison-{n}"),
        format!("cp{n}"),
        Some(format!("T-poison-{n}")),
        EventType::TaskAssigned,
        t,
        12.95,
        77.6,
    );
    e.pickup = Some(Geo {
        lat: 12.95,
        lon: 77.6,
    });
    e.dropoff = Some(Geo {
        lat: 12.98,
        lon: 77.61,
    });
    e.promised_at = Some(t + chrono::Duration::minutes(30));
    e
}

fn bench_poison(c: &mut Criterion) {
    fleet_process::prepare();
    let pool = common::fleet_events(ACTIVE_TASKS, 50_000);
    let mut group = c.benchmark_group("poison");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, mode, poisoned) in [
        ("clean", "panic", false),
        ("one-panic-per-batch", "panic", true),
    ] {
        let mut pipeline = hostile(mode);
        let mut feed = common::Feed::new(pool.clone());
        let mut n = 0;
        group.bench_function(BenchmarkId::new("batch", name), |b| {
            b.iter_custom(|iters| {
                let mut took = Duration::ZERO;
                for _ in 0..iters {
                    let mut batch = feed.next_batch(BATCH);
                    if poisoned {
                        n += 1;
                        batch[BATCH / 2] = poison(n);
                    }
                    let started = Instant::now();
                    let out = pipeline.process(batch);
                    took += started.elapsed();
                    assert_eq!(out.dead_letters.len(), usize::from(poisoned));
                }
                took
            })
        });
    }
    group.finish();

    // On a device: one poison task that keeps sending, against none.
    let mut group = c.benchmark_group("poison-device");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, poisoned) in [("clean", false), ("recurring-poison-task", true)] {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(JournalConfig::new(dir.path())).unwrap();
        let journal = Arc::new(journal);
        let mut runtime = DeviceRuntime::new(hostile_registry("panic"));
        let mut feed = common::Feed::new(pool.clone());
        let mut k = 0;
        group.bench_function(BenchmarkId::new("batch", name), |b| {
            b.iter_custom(|iters| {
                let mut took = Duration::ZERO;
                for _ in 0..iters {
                    let mut batch = feed.next_batch(BATCH);
                    if poisoned {
                        k += 1;
                        batch[BATCH / 2] = if k == 1 { poison(0) } else { poison_ping(0, k) };
                    }
                    let started = Instant::now();
                    let out = runtime.process(&journal, batch).unwrap();
                    took += started.elapsed();
                    assert_eq!(out.dead_letters.len(), usize::from(poisoned));
                }
                journal.flush().unwrap();
                took
            })
        });
    }
    group.finish();

    // A poison that makes the module spin costs a deadline (100 ms) per failing call.
    let mut pipeline = hostile("loop");
    let mut feed = common::Feed::new(pool);
    let mut batch = feed.next_batch(BATCH);
    batch[BATCH / 2] = poison(0);
    let started = Instant::now();
    let out = pipeline.process(batch);
    eprintln!(
        "poison/one-loop-per-batch: {:.0} ms for the batch, {} failing calls, {} dead letter(s), {} decisions",
        started.elapsed().as_secs_f64() * 1e3,
        out.failed_calls,
        out.dead_letters.len(),
        out.decisions.len()
    );
}

criterion_group!(benches, bench_poison);
criterion_main!(benches);
