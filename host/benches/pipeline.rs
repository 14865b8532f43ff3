//! Per-event cost of each stage and of the whole pipeline, batched and unbatched, and the same
//! logic compiled natively (the guest crates called through their Rust traits) for the ratio.
//!
//! `cargo bench -p fleet-host --bench pipeline`

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

use fleet_host::bindings::policy_keyed::exports::fleet::edge::decide_keyed::{
    KeyState, KeyedInput,
};
use fleet_host::bindings::types as wit;
use fleet_host::decision::{
    Action, AlertStep, Decision, DecisionMaker, Factor, ModuleVersions, Severity,
};
use fleet_host::event::{Event, EventType};
use fleet_host::features_only::FeatureExtractor;
use fleet_host::inference::Model;
use fleet_host::module::Exports;
use fleet_host::pipeline::{DedupWindow, Pipeline, group_by_key, policy_state_key};
use guest_features::native as gf;
use guest_policy::native as gp;

/// Keys active at once in the event stream (a busy handset batch or a small edge node).
const ACTIVE_TASKS: usize = 64;
const BATCH: usize = 256;

fn bench_pipeline(c: &mut Criterion) {
    // The process set up as `edge-host`'s: mimalloc, transparent huge pages off. The allocator
    // matters to the ratio: the native pipeline allocates everything there, the sandboxed one
    // only the host's share (its guests allocate with their own inside linear memory).
    fleet_process::prepare();
    let registry = common::registry();
    let pool = common::fleet_events(ACTIVE_TASKS, 50_000);
    let mut group = c.benchmark_group("pipeline");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(4));
    for (name, size) in [("batched", BATCH), ("unbatched", 1)] {
        group.throughput(Throughput::Elements(size as u64));
        let mut feed = common::Feed::new(pool.clone());
        let mut wasm = Pipeline::new(registry.clone());
        group.bench_function(BenchmarkId::new("wasm", name), |b| {
            b.iter_custom(|iters| {
                timed(
                    iters,
                    || feed.next_batch(size),
                    |batch| wasm.process(batch).decisions.len(),
                )
            })
        });
        let mut feed = common::Feed::new(pool.clone());
        let mut native = NativePipeline::new(&registry);
        group.bench_function(BenchmarkId::new("native", name), |b| {
            b.iter_custom(|iters| {
                timed(
                    iters,
                    || feed.next_batch(size),
                    |batch| native.process(batch).len(),
                )
            })
        });
    }
    group.finish();
}

fn bench_stages(c: &mut Criterion) {
    let registry = common::registry();
    let set = registry.current();
    let pool = common::fleet_events(ACTIVE_TASKS, 20_000);
    // Feature vectors and decision inputs for the later stages, from the real features module.
    let mut extractor = FeatureExtractor::new(
        registry.engine().clone(),
        registry.models().clone(),
        set.features.clone(),
    )
    .unwrap();
    let vectors: Vec<Vec<f32>> = extractor
        .extract(pool[..4096].to_vec())
        .unwrap()
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    let names = extractor.names().to_vec();
    let mut native = NativePipeline::new(&registry);

    let mut group = c.benchmark_group("stage");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(3));
    for (name, size) in [("batched", BATCH), ("unbatched", 1)] {
        group.throughput(Throughput::Elements(size as u64));
        let mut feed = common::Feed::new(pool.clone());
        let mut wasm_features = FeatureExtractor::new(
            registry.engine().clone(),
            registry.models().clone(),
            set.features.clone(),
        )
        .unwrap();
        group.bench_function(BenchmarkId::new("features/wasm", name), |b| {
            b.iter_custom(|iters| {
                timed(
                    iters,
                    || feed.next_batch(size),
                    |batch| wasm_features.extract(batch).unwrap().len(),
                )
            })
        });
        let mut feed = common::Feed::new(pool.clone());
        group.bench_function(BenchmarkId::new("features/native", name), |b| {
            b.iter_custom(|iters| {
                timed(
                    iters,
                    || feed.next_batch(size),
                    |batch| native.features(&batch).len(),
                )
            })
        });

        let mut scorer = set
            .scorer
            .instantiate(registry.engine(), registry.models())
            .unwrap();
        let mut at = 0;
        let mut next_vectors = || {
            at = (at + size) % (vectors.len() - size);
            vectors[at..at + size].to_vec()
        };
        let width = names.len() as u32;
        group.bench_function(BenchmarkId::new("scorer/wasm", name), |b| {
            b.iter_custom(|iters| {
                timed(iters, &mut next_vectors, |v| {
                    let Exports::Scorer(s) = &scorer.exports else {
                        unreachable!()
                    };
                    scorer
                        .store
                        .set_epoch_deadline(registry.engine().deadline_ticks());
                    let batch = wit::FeatureMatrix {
                        width,
                        values: v.concat(),
                    };
                    s.fleet_edge_scoring()
                        .call_score_batch(&mut scorer.store, &batch)
                        .unwrap()
                        .unwrap()
                        .len()
                })
            })
        });
        group.bench_function(BenchmarkId::new("scorer/native", name), |b| {
            b.iter_custom(|iters| timed(iters, &mut next_vectors, |v| native.score(&v).len()))
        });

        let mut policy = set
            .policy
            .instantiate(registry.engine(), registry.models())
            .unwrap();
        // Each input a task of its own, seen for the first time.
        let inputs: Vec<_> = native
            .score(&vectors[..size])
            .into_iter()
            .enumerate()
            .map(|(i, (p, factors))| wit_input(i as u32, p, factors))
            .collect();
        let keys: Vec<_> = (0..inputs.len())
            .map(|i| KeyState {
                key: format!("T{i}"),
                state: None,
            })
            .collect();
        let matrix = wit::FeatureMatrix {
            width,
            values: vectors[..size].concat(),
        };
        group.bench_function(BenchmarkId::new("policy/wasm", name), |b| {
            b.iter(|| {
                let Exports::KeyedPolicy(p) = &policy.exports else {
                    unreachable!()
                };
                policy
                    .store
                    .set_epoch_deadline(registry.engine().deadline_ticks());
                p.fleet_edge_decide_keyed()
                    .call_decide(&mut policy.store, &names, &matrix, &keys, &inputs)
                    .unwrap()
                    .outcomes
                    .len()
            })
        });
        let native_inputs: Vec<_> = native
            .score(&vectors[..size])
            .into_iter()
            .enumerate()
            .map(|(i, (p, factors))| guest_input(i as u32, p, factors))
            .collect();
        let native_keys: Vec<_> = (0..native_inputs.len())
            .map(|i| gp::KeyState {
                key: format!("T{i}"),
                state: None,
            })
            .collect();
        group.bench_function(BenchmarkId::new("policy/native", name), |b| {
            b.iter(|| {
                let features = gp::FeatureMatrix {
                    width,
                    values: matrix.values.clone(),
                };
                <guest_policy::Policy as gp::Decide>::decide(
                    names.clone(),
                    features,
                    native_keys.clone(),
                    native_inputs.clone(),
                )
                .outcomes
                .len()
            })
        });
    }
    group.finish();
}

/// Runs `work` on `iters` fresh inputs, timing only the work.
fn timed<I, O>(iters: u64, mut input: impl FnMut() -> I, mut work: impl FnMut(I) -> O) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let i = input();
        let start = Instant::now();
        std::hint::black_box(work(i));
        total += start.elapsed();
    }
    total
}

fn wit_input(key: u32, p: f32, factors: Vec<(u32, f32)>) -> KeyedInput {
    KeyedInput {
        key,
        score: wit::Score {
            probability: p,
            top_factors: factors
                .into_iter()
                .map(|(feature, contribution)| wit::Factor {
                    feature,
                    contribution,
                })
                .collect(),
        },
        courier_id: "c".into(),
        task_id: Some("T".into()),
        event_type: wit::EventType::Location,
        event_time_ms: 0,
    }
}

fn guest_input(key: u32, p: f32, factors: Vec<(u32, f32)>) -> gp::KeyedInput {
    gp::KeyedInput {
        key,
        score: gp::Score {
            probability: p,
            top_factors: factors
                .into_iter()
                .map(|(feature, contribution)| gp::Factor {
                    feature,
                    contribution,
                })
                .collect(),
        },
        courier_id: "c".into(),
        task_id: Some("T".into()),
        event_type: gp::EventType::Location,
        event_time_ms: 0,
    }
}

/// The pipeline's logic with the guest crates compiled natively and called directly: the
/// same host-side work (dedup, grouping, state map, decisions) without the sandbox.
struct NativePipeline {
    model: Arc<Model>,
    names: Arc<[String]>,
    states: HashMap<String, Vec<u8>>,
    dedup: DedupWindow,
    decisions: DecisionMaker,
}

impl NativePipeline {
    fn new(registry: &fleet_host::registry::ModuleRegistry) -> Self {
        <guest_policy::Policy as gp::Module>::init(Vec::new()).unwrap();
        let model = registry.models().get("late_risk").unwrap().clone();
        let set = registry.current();
        let names: Arc<[String]> = model.features.clone().into();
        let versions = ModuleVersions {
            features: set.features.label(),
            scorer: set.scorer.label(),
            policy: set.policy.label(),
            release: None,
        };
        Self {
            decisions: DecisionMaker::new(
                names.clone(),
                versions,
                &model.name,
                &model.version,
                &model.digest,
            ),
            names,
            model,
            states: HashMap::new(),
            dedup: DedupWindow::new(fleet_host::pipeline::DEFAULT_DEDUP_WINDOW),
        }
    }

    fn features(&mut self, events: &[Event]) -> Vec<(usize, Vec<f32>)> {
        let groups = group_by_key(events);
        let batches = groups
            .iter()
            .map(|(key, idx)| gf::KeyBatch {
                key: key.clone(),
                state: self.states.get(key).cloned(),
                events: idx.iter().map(|&i| to_guest(&events[i])).collect(),
            })
            .collect();
        let outputs = <guest_features::Features as gf::Extract>::extract(batches);
        let mut scored = Vec::new();
        for ((key, idx), out) in groups.into_iter().zip(outputs) {
            for (&i, v) in idx.iter().zip(out.features) {
                if let Some(v) = v {
                    scored.push((i, v));
                }
            }
            self.states.insert(key, out.state);
        }
        scored.sort_by_key(|(i, _)| *i);
        scored
    }

    fn score(&self, vectors: &[Vec<f32>]) -> Vec<(f32, Vec<(u32, f32)>)> {
        self.score_rows(&vectors.concat(), vectors.len())
    }

    /// Scores `rows` feature vectors stored row after row in `flat`.
    fn score_rows(&self, flat: &[f32], rows: usize) -> Vec<(f32, Vec<(u32, f32)>)> {
        let width = self.names.len();
        let (p, c) = self.model.explained(flat, rows).unwrap();
        (0..rows)
            .map(|r| (p[r * 2 + 1], top_factors(&c[r * width..(r + 1) * width], 3)))
            .collect()
    }

    fn process(&mut self, events: Vec<Event>) -> Vec<Decision> {
        let events: Vec<Event> = events
            .into_iter()
            .filter(|e| !self.dedup.contains(&e.event_id))
            .collect();
        let scored = self.features(&events);
        for e in &events {
            self.dedup.insert(&e.event_id);
        }
        let vectors: Vec<Vec<f32>> = scored.iter().map(|(_, v)| v.clone()).collect();
        let features = vectors.concat();
        let scores = self.score_rows(&features, vectors.len());
        // The policy's state per key, kept beside the features module's as the host keeps it.
        let mut key_index: HashMap<&str, u32> = HashMap::new();
        let mut keys: Vec<gp::KeyState> = Vec::new();
        let inputs: Vec<gp::KeyedInput> = scored
            .iter()
            .zip(&scores)
            .map(|((i, _), (p, f))| {
                let e = &events[*i];
                let key = *key_index.entry(e.state_key()).or_insert_with(|| {
                    keys.push(gp::KeyState {
                        key: e.state_key().to_string(),
                        state: self.states.get(&policy_state_key(e.state_key())).cloned(),
                    });
                    keys.len() as u32 - 1
                });
                let mut input = guest_input(key, *p, f.clone());
                input.courier_id = e.courier_id.clone();
                input.task_id = e.task_id.clone();
                input.event_time_ms = e.event_time_ms();
                input
            })
            .collect();
        let features = gp::FeatureMatrix {
            width: self.names.len() as u32,
            values: features,
        };
        let decided = <guest_policy::Policy as gp::Decide>::decide(
            self.names.to_vec(),
            features,
            keys.clone(),
            inputs,
        );
        for (k, state) in keys.into_iter().zip(decided.states) {
            self.states.insert(policy_state_key(&k.key), state);
        }
        let actions = decided
            .outcomes
            .into_iter()
            .map(|o| (o.alert_step, o.actions));
        scored
            .into_iter()
            .zip(scores)
            .zip(actions)
            .map(|(((i, values), (p, factors)), (step, actions))| {
                let e = &events[i];
                let actions: Vec<Action> = actions
                    .into_iter()
                    .map(|a| match a {
                        gp::Action::Alert(a) => Action::Alert {
                            severity: match a.severity {
                                gp::Severity::Info => Severity::Info,
                                gp::Severity::Warning => Severity::Warning,
                                gp::Severity::Critical => Severity::Critical,
                            },
                            message: a.message,
                        },
                        gp::Action::NotifyCourier(m) => Action::NotifyCourier { message: m },
                        gp::Action::Reassign(r) => Action::Reassign { reason: r },
                        gp::Action::Surge(m) => Action::Surge { multiplier: m },
                    })
                    .collect();
                let factors = factors
                    .into_iter()
                    .map(|(i, contribution)| Factor {
                        feature: self.names[i as usize].clone(),
                        contribution,
                    })
                    .collect();
                let step = step.map(|s| match s {
                    gp::AlertStep::Opened => AlertStep::Opened,
                    gp::AlertStep::Escalated => AlertStep::Escalated,
                    gp::AlertStep::Resolved => AlertStep::Resolved,
                });
                self.decisions.make(e, values, p, factors, actions, step)
            })
            .collect()
    }
}

/// The scorer module's selection of the largest contributions, natively.
fn top_factors(contributions: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    for (i, &c) in contributions.iter().enumerate() {
        if c == 0.0 || c.is_nan() {
            continue;
        }
        let at = top.partition_point(|f| f.1.abs() >= c.abs());
        if at < k {
            top.insert(at, (i as u32, c));
            top.truncate(k);
        }
    }
    top
}

fn to_guest(e: &Event) -> gf::Event {
    let w = e.to_wit();
    gf::Event {
        event_id: w.event_id,
        courier_id: w.courier_id,
        task_id: w.task_id,
        event_type: match e.event_type {
            EventType::TaskAssigned => gf::EventType::TaskAssigned,
            EventType::Location => gf::EventType::Location,
            EventType::ArrivedPickup => gf::EventType::ArrivedPickup,
            EventType::PickedUp => gf::EventType::PickedUp,
            EventType::ArrivedDropoff => gf::EventType::ArrivedDropoff,
            EventType::Delivered => gf::EventType::Delivered,
            EventType::DeliveryFailed => gf::EventType::DeliveryFailed,
        },
        event_time_ms: w.event_time_ms,
        utc_offset_min: w.utc_offset_min,
        position: gf::Geo {
            lat: w.position.lat,
            lon: w.position.lon,
        },
        speed_kmh: w.speed_kmh,
        accuracy_m: w.accuracy_m,
        task: w.task.map(|t| gf::TaskContext {
            pickup: gf::Geo {
                lat: t.pickup.lat,
                lon: t.pickup.lon,
            },
            dropoff: gf::Geo {
                lat: t.dropoff.lat,
                lon: t.dropoff.lon,
            },
            promised_at_ms: t.promised_at_ms,
            stops_remaining: t.stops_remaining,
            order_type: t.order_type,
            vehicle_type: t.vehicle_type,
            courier_rating: t.courier_rating,
            courier_age: t.courier_age,
        }),
    }
}

criterion_group!(benches, bench_pipeline, bench_stages);
criterion_main!(benches);
