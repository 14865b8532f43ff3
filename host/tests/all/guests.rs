//! One test per guest component: `foreach_guest!` below does not compile when a guest in
//! `guest-modules/guests/` has no test here.

use fleet_host::module::ModuleKind;

use crate::util;

macro_rules! assert_test_exists {
    ($name:ident) => {
        const _: fn() = $name;
    };
}
fleet_guest_modules::foreach_guest!(assert_test_exists);

#[test]
fn features() {
    let m = util::load("features", ModuleKind::Features, "1", &[]).unwrap();
    assert_eq!(m.kind(), ModuleKind::Features);
    assert!(util::load("features", ModuleKind::Features, "1", &[("colour", "red")]).is_err());
}

#[test]
fn scorer() {
    util::load("scorer", ModuleKind::Scorer, "1", &[]).unwrap();
    let err = util::load(
        "scorer",
        ModuleKind::Scorer,
        "1",
        &[("model", "no_such_model")],
    )
    .unwrap_err();
    assert!(err.to_string().contains("no_such_model"), "{err}");
}

/// One row per score, the largest factors first; a matrix that does not fit the model is
/// refused whole.
#[test]
fn scorer_reads_a_row_major_matrix() {
    use fleet_host::bindings::types::FeatureMatrix;
    use fleet_host::module::Exports;

    let scorer = util::load("scorer", ModuleKind::Scorer, "1", &[]).unwrap();
    let mut instance = scorer
        .instantiate(&util::engine(), &util::models())
        .unwrap();
    let width = util::models().get("late_risk").unwrap().features.len();
    let mut score = |batch: FeatureMatrix| {
        let Exports::Scorer(s) = &instance.exports else {
            unreachable!("loaded as a scorer")
        };
        instance.store.set_epoch_deadline(1000);
        s.fleet_edge_scoring()
            .call_score_batch(&mut instance.store, &batch)
            .unwrap()
    };

    // Two rows that differ only in minutes to the promise (feature 4): far ahead, long past.
    let mut values = vec![1.0f32; width * 2];
    values[4] = 60.0;
    values[width + 4] = -60.0;
    let scores = score(FeatureMatrix {
        width: width as u32,
        values,
    })
    .unwrap();
    assert_eq!(scores.len(), 2);
    assert!(scores[1].probability > scores[0].probability, "{scores:?}");
    for s in &scores {
        assert!((0.0..=1.0).contains(&s.probability));
        assert!(!s.top_factors.is_empty() && s.top_factors.len() <= 3);
        let magnitudes: Vec<f32> = s.top_factors.iter().map(|f| f.contribution.abs()).collect();
        assert!(
            magnitudes.windows(2).all(|w| w[0] >= w[1]),
            "{magnitudes:?}"
        );
    }
    assert!(
        score(FeatureMatrix {
            width: width as u32,
            values: Vec::new()
        })
        .unwrap()
        .is_empty()
    );

    let wrong_width = score(FeatureMatrix {
        width: width as u32 - 1,
        values: vec![0.0; (width - 1) * 2],
    })
    .unwrap_err();
    assert!(wrong_width.contains("features"), "{wrong_width}");
    let ragged = score(FeatureMatrix {
        width: width as u32,
        values: vec![0.0; width + 1],
    })
    .unwrap_err();
    assert!(ragged.contains("whole rows"), "{ragged}");
}

#[test]
fn policy() {
    util::load(
        "policy",
        ModuleKind::Policy,
        "1",
        &[("reassign_threshold", "0.9")],
    )
    .unwrap();
}

#[test]
fn hostile() {
    util::load("hostile", ModuleKind::Policy, "1", &[("mode", "none")]).unwrap();
}

#[test]
fn partial() {
    assert!(util::load("partial", ModuleKind::Policy, "1", &[]).is_err());
}
