//! Module compile latency, and swap latency: from new component bytes to the first decision
//! made by the new version (compile, checks, instantiate, configure, publish, first batch);
//! the same from a release's precompiled artifact, and what verifying a release costs.
//!
//! `cargo bench -p fleet-host --bench swap`

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};

use fleet_host::module::{LoadedModule, ModuleKind};
use fleet_host::pipeline::Pipeline;
use fleet_host::registry::{ModuleRegistry, ModuleSource, embedded_manifest};

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
        // A process that has compiled nothing yet: every function is compiled.
        group.bench_function(format!("compile-cold/{name}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let cold = common::engine();
                    let start = Instant::now();
                    wasmtime::component::Component::new(cold.engine(), bytes).unwrap();
                    total += start.elapsed();
                }
                total
            })
        });
        // The same code in new bytes (a rebuilt or re-signed release): every function is found
        // in the function cache, only translation and linking are left.
        let mut n = 0;
        group.bench_function(format!("load-same-code/{name}"), |b| {
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
    group.bench_function("swap/same-code-policy-to-first-decision", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                version += 1;
                let batch = feed.next_batch(1);
                let bytes = with_custom_section(fleet_guest_modules::POLICY_WASM, version);
                total += swap_policy(&registry, &mut pipeline, &bytes, version, batch);
            }
            total
        })
    });

    // A policy whose own code this process has never compiled: a node running features,
    // scorer and another policy program (the `hostile` guest, harmless without a mode) is
    // handed the shipped policy. Only what they share (allocator, formatting, panic path,
    // bindings glue) is found in the function cache.
    group.bench_function("swap/new-code-policy-to-first-decision", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for i in 0..iters {
                let dir = tempfile::tempdir().unwrap();
                for (guest, kind) in [
                    ("features", "features"),
                    ("scorer", "scorer"),
                    ("hostile", "policy"),
                ] {
                    let path = fleet_guest_modules::path(guest).unwrap();
                    std::fs::copy(path, dir.path().join(format!("{guest}.wasm"))).unwrap();
                    std::fs::write(
                        dir.path().join(format!("{guest}.toml")),
                        format!(
                            "name = \"{guest}\"\nkind = \"{kind}\"\nversion = \"1\"\ncomponent = \"{guest}.wasm\"\n"
                        ),
                    )
                    .unwrap();
                }
                let fresh = Arc::new(
                    ModuleRegistry::new(
                        common::engine(),
                        models.clone(),
                        ModuleSource::Dir(dir.path().into()),
                    )
                    .unwrap(),
                );
                let mut pipeline = Pipeline::new(fresh.clone());
                let mut feed = common::Feed::new(common::fleet_events(64, 1_000));
                pipeline.process(feed.next_batch(64));
                total += swap_policy(
                    &fresh,
                    &mut pipeline,
                    fleet_guest_modules::POLICY_WASM,
                    i + 1,
                    feed.next_batch(1),
                );
            }
            total
        })
    });
    group.finish();
    releases(c);
}

/// A handset receiving a new policy in a release: a process whose engine has compiled nothing
/// (cold function cache), running the shipped features and scorer; the policy loaded from its
/// verified precompiled artifact, against compiling its component there. And the cost of
/// verifying a whole release file (signature, then sha256 of every artifact).
fn releases(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let modules = dir.path().join("modules");
    fleet_host::release::export_embedded(&modules).unwrap();
    let signer = fleet_release::ReleaseSigner::generate().unwrap();
    let mut trusted = fleet_release::TrustedKeys::default();
    trusted.add_public_line(&signer.public_line("")).unwrap();
    let path = dir.path().join("bench.release");
    fleet_host::release::build_contents(
        "bench",
        "1.0.0".parse().unwrap(),
        &modules,
        &[],
        Some(&common::engine()),
    )
    .unwrap()
    .write(&path, &signer)
    .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let source = Arc::new(fleet_host::release::ReleaseSource::new(
        Some(path.clone()),
        trusted.clone(),
        u64::MAX,
        None,
    ));

    // The new policy: the shipped one as new bytes (its own digest), and precompiled.
    let policy = with_custom_section(fleet_guest_modules::POLICY_WASM, 1);
    let digest = format!("sha256:{}", fleet_release::Sha256Digest::of(&policy).hex());
    let precompiled = common::engine().precompile(&policy).unwrap();
    let manifest = || {
        let mut m = embedded_manifest("late-risk-policy", ModuleKind::Policy);
        m.version = "9.1".into();
        m
    };

    let mut group = c.benchmark_group("release");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.bench_function(format!("verify/{}-bytes", bytes.len()), |b| {
        b.iter(|| fleet_release::read_bundle(&bytes[..], &trusted, u64::MAX).unwrap())
    });
    // What a device does before a swap from a precompiled policy that travelled compressed:
    // the file's sha256, then decompressing it and the content's sha256.
    let compressed = zstd::bulk::compress(&precompiled, 19).unwrap();
    group.bench_function(
        format!(
            "decode/precompiled-policy-{}-of-{}-bytes",
            compressed.len(),
            precompiled.len()
        ),
        |b| {
            b.iter(|| {
                let file = fleet_release::Sha256Digest::of(&compressed);
                let content = zstd::bulk::decompress(&compressed, precompiled.len()).unwrap();
                (file, fleet_release::Sha256Digest::of(&content))
            })
        },
    );
    for how in ["precompiled", "compiled"] {
        group.bench_function(format!("swap-cold/{how}-policy-to-first-decision"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let registry = Arc::new(
                        ModuleRegistry::new(
                            common::engine(),
                            common::models(),
                            ModuleSource::Release(source.clone()),
                        )
                        .unwrap(),
                    );
                    let mut pipeline = Pipeline::new(registry.clone());
                    let mut feed = common::Feed::new(common::fleet_events(64, 1_000));
                    pipeline.process(feed.next_batch(64));
                    let set = registry.current();
                    let start = Instant::now();
                    let module = if how == "precompiled" {
                        // SAFETY: precompiled above by an engine of the same configuration.
                        unsafe {
                            LoadedModule::from_precompiled(
                                registry.engine(),
                                &set.models,
                                manifest(),
                                digest.clone(),
                                &precompiled,
                            )
                        }
                    } else {
                        LoadedModule::from_bytes(
                            registry.engine(),
                            &set.models,
                            manifest(),
                            &policy,
                        )
                    }
                    .unwrap();
                    registry.replace(module).unwrap();
                    let decisions = pipeline.process(feed.next_batch(1)).decisions;
                    total += start.elapsed();
                    assert!(decisions[0].modules.policy.contains("@9.1+"));
                }
                total
            })
        });
    }
    group.finish();
}

/// From component bytes to the first decision made by them: compile, checks, instantiate,
/// configure, publish, first batch.
fn swap_policy(
    registry: &ModuleRegistry,
    pipeline: &mut Pipeline,
    bytes: &[u8],
    version: u64,
    batch: Vec<fleet_host::event::Event>,
) -> Duration {
    let start = Instant::now();
    let mut manifest = embedded_manifest("late-risk-policy", ModuleKind::Policy);
    manifest.version = format!("9.{version}");
    let module =
        LoadedModule::from_bytes(registry.engine(), registry.models(), manifest, bytes).unwrap();
    registry.replace(module).unwrap();
    let decisions = pipeline.process(batch).decisions;
    let elapsed = start.elapsed();
    assert!(
        decisions
            .iter()
            .all(|d| d.modules.policy.contains(&format!("@9.{version}+")))
    );
    elapsed
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
