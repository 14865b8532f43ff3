//! The features module through the host: event time, out-of-order and duplicate events, and
//! the one feature list shared with training and the model.

use fleet_host::event::Event;

use crate::util::{self, Task, north};

fn events() -> Vec<Event> {
    let pickup = (12.9716, 77.5946);
    let mut t = Task::new("T-7", "c7");
    vec![
        t.assigned(0.0, north(pickup, -1.0), pickup, north(pickup, 3.0), 30.0),
        t.event("location", 3.0, north(pickup, -0.5)),
        t.event("arrived_pickup", 6.0, pickup),
        t.event("picked_up", 9.0, pickup),
        t.event("location", 11.0, north(pickup, 0.7)),
        t.event("location", 12.0, north(pickup, 1.1)),
        t.event("location", 13.0, north(pickup, 1.5)),
    ]
}

/// Feature vector of a final probe event after the given arrival batches.
fn final_features(batches: Vec<Vec<Event>>) -> Vec<f32> {
    let mut pipeline = util::pipeline();
    for b in batches {
        let outcome = pipeline.process(b);
        assert!(outcome.dead_letters.is_empty());
    }
    let mut probe = Task::new("T-7", "c7");
    let mut e = probe.event("location", 13.5, north((12.9716, 77.5946), 1.6));
    e.event_id = "probe".into();
    pipeline
        .process(vec![e])
        .decisions
        .pop()
        .unwrap()
        .features
        .values
}

fn same(a: &[f32], b: &[f32]) -> bool {
    a.iter()
        .zip(b)
        .all(|(x, y)| (x.is_nan() && y.is_nan()) || (x - y).abs() < 1e-4)
}

#[test]
fn out_of_order_arrival_folds_to_the_same_state() {
    let in_order = final_features(vec![events()]);
    let mut reversed = events();
    reversed.reverse();
    assert!(
        same(&in_order, &final_features(vec![reversed.clone()])),
        "reversed in one batch"
    );
    let one_by_one: Vec<Vec<Event>> = reversed.into_iter().map(|e| vec![e]).collect();
    assert!(
        same(&in_order, &final_features(one_by_one)),
        "reversed across batches"
    );
    let mut shuffled = events();
    shuffled.swap(0, 5);
    shuffled.swap(2, 6);
    assert!(same(
        &in_order,
        &final_features(vec![shuffled[..3].to_vec(), shuffled[3..].to_vec()])
    ));
}

#[test]
fn a_late_ping_does_not_move_the_courier_back() {
    let mut pipeline = util::pipeline();
    let all = events();
    pipeline.process(all[..6].to_vec());
    let mut late = Task::new("T-7", "c7");
    let mut old = late.event("location", 4.0, north((12.9716, 77.5946), -0.4));
    old.event_id = "late-ping".into();
    let d = pipeline.process(vec![old]).decisions.pop().unwrap();
    let distance = d.features.values[0];
    assert!(
        (distance - 1.9).abs() < 0.05,
        "distance still from the newest fix: {distance}"
    );
    assert_eq!(
        d.features.values[2], 12.0,
        "now is still the newest event time"
    );
}

#[test]
fn a_repeated_event_id_is_counted_once() {
    let mut pipeline = util::pipeline();
    let all = events();
    let mut batch = all.clone();
    batch.push(all[4].clone());
    let outcome = pipeline.process(batch);
    assert_eq!((outcome.decisions.len(), outcome.duplicates), (7, 1));
    let again = pipeline.process(vec![all[6].clone(), all[1].clone()]);
    assert_eq!((again.decisions.len(), again.duplicates), (0, 2));
    // The module dedups too: a replay through a fresh host keeps its state unchanged.
    assert!(same(
        &final_features(vec![all.clone()]),
        &final_features(vec![all.clone(), all])
    ));
}

#[test]
fn feature_list_is_one_definition_for_module_training_and_model() {
    let spec_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../models/late_risk/features.toml"
    );
    let spec: toml::Table = toml::from_str(&std::fs::read_to_string(spec_path).unwrap()).unwrap();
    let spec: Vec<String> = spec["feature"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect();
    let engine = util::engine();
    let models = std::sync::Arc::new(fleet_host::inference::ModelRegistry::new());
    let module = util::load(
        "features",
        fleet_host::module::ModuleKind::Features,
        "t",
        &[],
    )
    .unwrap();
    let extractor =
        fleet_host::features_only::FeatureExtractor::new(engine, models, module).unwrap();
    assert_eq!(
        extractor.names(),
        spec,
        "features module vs models/late_risk/features.toml"
    );
    let model = util::models();
    assert_eq!(
        model.get("late_risk").unwrap().features,
        spec,
        "model metadata vs features.toml"
    );
}

#[test]
fn pings_without_a_task_and_finished_tasks_are_not_scored() {
    let mut pipeline = util::pipeline();
    let mut all = events();
    let mut t = Task::new("T-7", "c7");
    let mut done = t.event("delivered", 20.0, north((12.9716, 77.5946), 3.0));
    done.event_id = "done".into();
    let mut after = t.event("location", 21.0, north((12.9716, 77.5946), 3.0));
    after.event_id = "after".into();
    let mut idle = after.clone();
    idle.event_id = "idle".into();
    idle.task_id = None;
    all.extend([done, after, idle]);
    let outcome = pipeline.process(all);
    assert_eq!((outcome.decisions.len(), outcome.unscored), (7, 3));
}
