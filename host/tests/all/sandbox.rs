//! Hostile and broken modules: each is contained with a clear error, nothing is lost, and the
//! host goes on.

use std::sync::Arc;

use fleet_host::decision::{FailureCause, Stage};
use fleet_host::module::{LoadError, ModuleKind};
use fleet_host::pipeline::Pipeline;

use crate::util;

/// A pipeline whose policy is the hostile guest in `mode`, triggered by task ids with "poison".
fn hostile_pipeline(mode: &str) -> Pipeline {
    let registry = util::registry();
    let policy = util::load(
        "hostile",
        ModuleKind::Policy,
        "6.6.6",
        &[("mode", mode), ("trigger", "poison")],
    )
    .unwrap();
    registry.replace(policy).unwrap();
    Pipeline::new(Arc::clone(&registry))
}

fn contained(mode: &str, expect: &str) {
    let mut pipeline = hostile_pipeline(mode);
    let good = pipeline.process(util::healthy_task("T-good-1"));
    assert_eq!(
        (good.decisions.len(), good.dead_letters.len()),
        (5, 0),
        "{mode}: before"
    );

    let poison = util::healthy_task("T-poison");
    let started = std::time::Instant::now();
    let bad = pipeline.process(poison.clone());
    assert!(started.elapsed().as_secs() < 5, "{mode}: contained quickly");
    assert!(bad.decisions.is_empty());
    assert_eq!(
        bad.dead_letters.len(),
        poison.len(),
        "{mode}: every event is kept"
    );
    for (n, (dl, event)) in bad.dead_letters.iter().zip(&poison).enumerate() {
        assert_eq!(&dl.event, event);
        assert_eq!(dl.stage, Stage::Policy);
        assert!(dl.module.starts_with("hostile@6.6.6+"), "{}", dl.module);
        assert_eq!(dl.key, "T-poison");
        // The first event the policy sees fails on its own; the task's later events wait
        // behind it, so they are never scored out of order.
        if n == 0 {
            assert!(dl.error.contains(expect), "{mode}: {}", dl.error);
            assert_ne!(dl.cause, FailureCause::HeldBack);
        } else {
            assert_eq!(dl.cause, FailureCause::HeldBack, "{mode}: {}", dl.error);
            assert!(
                dl.error.contains("held back behind T-poison-e1"),
                "{}",
                dl.error
            );
        }
    }

    // The instance was re-created: other events keep flowing, and the poisoned ones can be
    // replayed (they were not marked as seen).
    let after = pipeline.process(util::healthy_task("T-good-2"));
    assert_eq!(
        (after.decisions.len(), after.dead_letters.len()),
        (5, 0),
        "{mode}: after"
    );
    let replay = pipeline.process(poison);
    assert_eq!(
        (replay.duplicates, replay.dead_letters.len()),
        (0, 5),
        "{mode}: replayable"
    );
}

#[test]
fn a_poison_task_is_isolated_and_the_rest_of_its_batch_is_scored() {
    let mut pipeline = hostile_pipeline("panic");
    let mut batch = util::healthy_task("T-good-a");
    batch.extend(util::healthy_task("T-poison-x"));
    batch.extend(util::healthy_task("T-good-b"));
    // Interleave the tasks, as a device's batch would.
    batch.sort_by_key(|e| e.event_time);
    let out = pipeline.process(batch.clone());
    let dead: Vec<&str> = out.dead_letters.iter().map(|d| d.key.as_str()).collect();
    assert_eq!(dead, ["T-poison-x"; 5], "only the poison task's events");
    let decided: Vec<&str> = out.decisions.iter().map(|d| d.event_id.as_str()).collect();
    let expected: Vec<&str> = batch
        .iter()
        .filter(|e| !e.event_id.contains("poison"))
        .map(|e| e.event_id.as_str())
        .collect();
    assert_eq!(
        decided, expected,
        "every other event decided, in input order"
    );
    assert!(out.failed_calls > 1);
}

#[test]
fn infinite_loop_hits_the_deadline() {
    contained("loop", "deadline");
}

#[test]
fn memory_bomb_hits_the_memory_cap() {
    contained("membomb", "memory limit");
}

#[test]
fn runaway_recursion_overflows_the_stack() {
    contained("recursion", "stack overflow");
}

#[test]
fn panic_is_reported_with_its_message() {
    contained("panic", "hostile module panicked on purpose");
}

#[test]
fn a_module_of_the_wrong_world_is_refused() {
    let err = util::load("policy", ModuleKind::Features, "1", &[]).unwrap_err();
    assert!(
        matches!(
            err,
            LoadError::Exports {
                kind: ModuleKind::Features,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("does not export the features world"),
        "{err}"
    );
    // A scorer imports inference, which a policy module may not use.
    let err = util::load("scorer", ModuleKind::Policy, "1", &[]).unwrap_err();
    assert!(matches!(err, LoadError::Imports { .. }), "{err}");
}

#[test]
fn a_missing_export_is_refused() {
    let err = util::load("partial", ModuleKind::Policy, "1", &[]).unwrap_err();
    assert!(matches!(err, LoadError::Exports { .. }), "{err}");
    assert!(
        err.to_string().contains("decide"),
        "names what is missing: {err}"
    );
}

#[test]
fn bytes_that_are_not_a_component_are_refused() {
    let engine = util::engine();
    let models = util::models();
    let load = |bytes: &[u8]| {
        fleet_host::module::LoadedModule::from_bytes(
            &engine,
            &models,
            util::manifest("junk", ModuleKind::Policy, "1", &[]),
            bytes,
        )
        .unwrap_err()
    };
    assert!(matches!(
        load(b"MZ\x90\x00 definitely not wasm"),
        LoadError::NotWasm { .. }
    ));
    assert!(matches!(load(b""), LoadError::NotWasm { .. }));
    assert!(matches!(
        load(b"\0asm\x01\0\0\0"),
        LoadError::NotComponent { .. }
    ));
    let policy = util::guest("policy");
    assert!(matches!(
        load(&policy[..policy.len() / 2]),
        LoadError::Compile { .. }
    ));
}

#[test]
fn a_refused_configuration_fails_at_load() {
    let err = util::load(
        "policy",
        ModuleKind::Policy,
        "1",
        &[("warning_threshold", "0.9"), ("critical_threshold", "0.5")],
    )
    .unwrap_err();
    assert!(matches!(err, LoadError::Init { .. }), "{err}");
    assert!(
        err.to_string().contains("above critical_threshold"),
        "{err}"
    );
    let err = util::load("hostile", ModuleKind::Policy, "1", &[("mode", "explode")]).unwrap_err();
    assert!(err.to_string().contains("unknown mode"), "{err}");
}
