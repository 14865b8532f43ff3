//! Module compile latency, and swap latency: from new component bytes to the first decision
//! made by the new version (compile, checks, instantiate, configure, publish, first batch).
//!
//! `cargo bench -p fleet-host --bench swap`

mod common;

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};

use fleet_host::module::{LoadedModule, ModuleKind};
use fleet_host::pipeline::Pipeline;
use fleet_host::registry::embedded_manifest;

fn bench(c: &mut Criterion) {
    let registry = common::registry();
    let engine = registry.engine().clone();
    let models = registry.models().clone();
    let mut group = c.benchmark_group("module");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    for (name, kind, bytes) in [
        (
            "features",
            ModuleKind::Features,
            fleet_guest_modules::FEATURES_WASM,
        ),
        (
            "scorer",
            ModuleKind::Scorer,
            fleet_guest_modules::SCORER_WASM,
        ),
        (
            "policy",
            ModuleKind::Policy,
            fleet_guest_modules::POLICY_WASM,
        ),
    ] {
        group.bench_function(format!("compile-only/{name}"), |b| {
            b.iter(|| wasmtime::component::Component::new(engine.engine(), bytes).unwrap())
        });
        let mut n = 0;
        group.bench_function(format!("load/{name}"), |b| {
            b.iter(|| {
                n += 1;
                LoadedModule::from_bytes(
                    &engine,
                    &models,
                    embedded_manifest(name, kind),
                    &with_custom_section(bytes, n),
                )
                .unwrap()
            })
        });
    }
    // Swapping in a module already compiled (a config change, a rollback): publish to first
    // decision.
    let mut pipeline = Pipeline::new(registry.clone());
    let mut feed = common::Feed::new(common::fleet_events(64, 10_000));
    let compiled = [
        LoadedModule::from_bytes(
            &engine,
            &models,
            embedded_manifest("policy-a", ModuleKind::Policy),
            fleet_guest_modules::POLICY_WASM,
        )
        .unwrap(),
        LoadedModule::from_bytes(
            &engine,
            &models,
            embedded_manifest("policy-b", ModuleKind::Policy),
            fleet_guest_modules::POLICY_WASM,
        )
        .unwrap(),
    ];
    let mut flip = 0;
    group.bench_function("swap/compiled-policy-to-first-decision", |b| {
        b.iter(|| {
            flip += 1;
            registry.replace(compiled[flip % 2].clone()).unwrap();
            let d = pipeline.process(feed.next_batch(1)).decisions;
            assert!(
                d[0].modules
                    .policy
                    .starts_with(&compiled[flip % 2].manifest.name)
            );
        })
    });

    let mut feed = common::Feed::new(common::fleet_events(64, 10_000));
    pipeline.process(feed.next_batch(64));
    let mut version = 0u64;
    group.bench_function("swap/policy-to-first-decision", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                version += 1;
                let batch = feed.next_batch(1);
                let start = Instant::now();
                let mut manifest = embedded_manifest("late-risk-policy", ModuleKind::Policy);
                manifest.version = format!("9.{version}");
                // Fresh bytes every time (a custom section with the version), so nothing is cached.
                let bytes = with_custom_section(fleet_guest_modules::POLICY_WASM, version);
                let module = LoadedModule::from_bytes(&engine, &models, manifest, &bytes).unwrap();
                registry.replace(module).unwrap();
                let decisions = pipeline.process(batch).decisions;
                total += start.elapsed();
                assert!(
                    decisions
                        .iter()
                        .all(|d| d.modules.policy.contains(&format!("@9.{version}+")))
                );
            }
            total
        })
    });
    group.finish();
}

/// Appends a custom section (id 0) named `bench` holding `n`: same code, different bytes.
fn with_custom_section(component: &[u8], n: u64) -> Vec<u8> {
    let mut out = component.to_vec();
    let payload = [&[5u8][..], b"bench", &n.to_le_bytes()].concat();
    out.push(0);
    out.push(payload.len() as u8);
    out.extend(payload);
    out
}

criterion_group!(benches, bench);
criterion_main!(benches);
