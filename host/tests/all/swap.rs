//! Hot swap under continuous load: no event dropped or reordered, batches finish on the
//! version they started with, each decision names the versions that made it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fleet_host::compile_cache::CompileCacheStats;
use fleet_host::engine::{SandboxEngine, SandboxLimits};
use fleet_host::module::ModuleKind;
use fleet_host::pipeline::Pipeline;
use fleet_host::registry::{ModuleRegistry, ModuleSource};

use crate::util;

#[test]
fn swapping_the_policy_under_load_drops_and_reorders_nothing() {
    let registry = util::registry();
    let v1 = util::load("policy", ModuleKind::Policy, "1.0.0", &[]).unwrap();
    let v2 = util::load(
        "policy",
        ModuleKind::Policy,
        "2.0.0",
        &[("critical_threshold", "0.9")],
    )
    .unwrap();
    registry.replace(v1.clone()).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicUsize::new(0));
    let swapper = {
        let (registry, stop, swaps) = (registry.clone(), stop.clone(), swaps.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let next = if swaps.load(Ordering::Relaxed) % 2 == 0 {
                    v2.clone()
                } else {
                    v1.clone()
                };
                registry.replace(next).unwrap();
                swaps.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };

    let mut pipeline = Pipeline::new(registry.clone());
    let mut seen_versions = std::collections::BTreeSet::new();
    let mut total = 0;
    // At least 150 batches and 20 swaps under them, however fast either side runs (bounded:
    // the swapper swaps every 2 ms).
    let mut batch = 0;
    while batch < 150 || swaps.load(Ordering::Relaxed) < 20 {
        batch += 1;
        let events: Vec<_> = (0..4)
            .flat_map(|k| util::healthy_task(&format!("T-{batch}-{k}")))
            .collect();
        let ids: Vec<String> = events.iter().map(|e| e.event_id.clone()).collect();
        let outcome = pipeline.process(events);
        assert!(
            outcome.dead_letters.is_empty(),
            "{:?}",
            outcome.dead_letters.first()
        );
        let got: Vec<String> = outcome
            .decisions
            .iter()
            .map(|d| d.event_id.clone())
            .collect();
        assert_eq!(got, ids, "batch {batch}: every event decided, in order");
        let versions: std::collections::BTreeSet<_> = outcome
            .decisions
            .iter()
            .map(|d| d.modules.policy.clone())
            .collect();
        assert_eq!(
            versions.len(),
            1,
            "batch {batch} ran on one version: {versions:?}"
        );
        seen_versions.extend(versions);
        total += got.len();
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    assert_eq!(total, batch * 4 * 5);
    assert_eq!(
        seen_versions.len(),
        2,
        "both versions served: {seen_versions:?}"
    );
}

#[test]
fn a_changed_module_file_is_swapped_in_by_the_watcher() {
    let dir = tempfile::tempdir().unwrap();
    util::module_dir(dir.path(), "policy", "1.0.0", &[]);
    let registry = Arc::new(
        ModuleRegistry::new(
            util::engine(),
            util::models(),
            ModuleSource::Dir(dir.path().into()),
        )
        .unwrap(),
    );
    let _watcher = fleet_host::watch::watch(registry.clone(), Duration::from_millis(50));
    let mut pipeline = Pipeline::new(registry.clone());
    let first = pipeline.process(util::healthy_task("T-a"));
    assert!(
        first.decisions[0]
            .modules
            .policy
            .starts_with("policy@1.0.0+")
    );

    util::write_manifest(dir.path(), "policy", "policy", "1.1.0", &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    loop {
        n += 1;
        let d = pipeline.process(util::healthy_task(&format!("T-b{n}")));
        assert_eq!(d.decisions.len(), 5, "no event lost while the swap happens");
        if d.decisions[0].modules.policy.starts_with("policy@1.1.0+") {
            break;
        }
        assert!(Instant::now() < deadline, "the new version never arrived");
        std::thread::sleep(Duration::from_millis(20));
    }

    // A broken replacement is refused and the running set stays.
    std::fs::write(dir.path().join("policy.wasm"), b"garbage").unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let d = pipeline.process(util::healthy_task("T-c"));
    assert_eq!(d.decisions.len(), 5);
    assert!(d.decisions[0].modules.policy.starts_with("policy@1.1.0+"));
    assert!(registry.reload().is_err());
}

#[test]
fn modules_share_compiled_functions_and_a_rebuilt_module_recompiles_few() {
    let engine = SandboxEngine::new(SandboxLimits::default()).unwrap();
    engine
        .compile("features", &util::guest("features"))
        .unwrap();
    let after_features = engine.function_cache_stats();
    assert!(after_features.misses > 0, "{after_features:?}");
    // The policy shares the allocator, formatting and glue with the features module.
    engine.compile("policy", &util::guest("policy")).unwrap();
    let after_policy = engine.function_cache_stats();
    assert!(
        after_policy.hits > after_features.hits,
        "{after_features:?} -> {after_policy:?}"
    );
    // The same code in other bytes (a custom section added): nearly every function is found
    // (25 of 381 were compiled again when this was written).
    let mut rebuilt = util::guest("policy");
    rebuilt.extend([0, 6, 5, b'b', b'u', b'i', b'l', b't']);
    engine.compile("policy-rebuilt", &rebuilt).unwrap();
    let after_rebuilt = engine.function_cache_stats();
    let looked_up = |from: CompileCacheStats, to: CompileCacheStats| {
        (to.hits - from.hits, to.misses - from.misses)
    };
    let first = looked_up(after_features, after_policy);
    let again = looked_up(after_policy, after_rebuilt);
    eprintln!("policy (hits, misses): first {first:?}, rebuilt {again:?}");
    assert_eq!(first.0 + first.1, again.0 + again.1);
    assert!(again.1 * 5 < first.0 + first.1, "{first:?} then {again:?}");
    assert!(after_rebuilt.hits > after_policy.hits);
}
