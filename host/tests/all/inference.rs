//! The shipped model, run by our forest (and through tract, the two checked against each
//! other): parity with xgboost, bad models.

use fleet_host::inference::{InferenceError, Model};

use crate::util;

#[path = "../../benches/common/parity.rs"]
mod parity;

use parity::parity_rows;

#[test]
fn parity_with_xgboost() {
    let models = util::models();
    let model = models.get("late_risk").unwrap();
    let (rows, expected) = parity_rows();
    assert!(rows.len() >= 1000);
    assert!(
        rows.iter().any(|r| r.iter().any(|v| v.is_nan())),
        "the vectors exercise missing values"
    );
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let batched = model.probabilities(&flat, rows.len()).unwrap();
    let mut worst = 0f64;
    for (i, (row, want)) in rows.iter().zip(&expected).enumerate() {
        let single = model.probabilities(row, 1).unwrap();
        assert_eq!(
            single[1],
            batched[i * 2 + 1],
            "row {i}: single and batched agree"
        );
        assert!((single[0] + single[1] - 1.0).abs() < 1e-6);
        worst = worst.max((f64::from(single[1]) - want).abs());
    }
    assert!(worst <= 1e-5, "max |host - xgboost| = {worst}");
}

#[test]
fn contributions_explain_the_log_odds() {
    let models = util::models();
    let model = models.get("late_risk").unwrap();
    let (rows, _) = parity_rows();
    let row = &rows[0];
    let p = model.probabilities(row, 1).unwrap()[1];
    let c = model.contributions(row, 1).unwrap();
    assert_eq!(c.len(), model.features.len());
    // Contributions sum to the margin minus a bias that is the same for every row.
    let logit = |p: f32| (p / (1.0 - p)).ln();
    let bias = logit(p) - c.iter().sum::<f32>();
    let row2 = &rows[1];
    let p2 = model.probabilities(row2, 1).unwrap()[1];
    let c2 = model.contributions(row2, 1).unwrap();
    assert!((logit(p2) - c2.iter().sum::<f32>() - bias).abs() < 1e-3);
}

#[test]
fn bad_models_are_refused_with_a_reason() {
    for (bytes, why) in [
        (b"not an onnx file".to_vec(), "garbage"),
        (
            fleet_host::defaults::LATE_RISK_ONNX[..1000].to_vec(),
            "truncated",
        ),
        (Vec::new(), "empty"),
    ] {
        match Model::load("broken", &bytes) {
            Err(InferenceError::InvalidModel { model, reason }) => {
                assert_eq!(model, "broken");
                assert!(!reason.is_empty(), "{why}");
            }
            other => panic!("{why}: {other:?}"),
        }
    }
}

#[test]
fn wrong_input_shapes_are_errors() {
    let models = util::models();
    let model = models.get("late_risk").unwrap();
    assert!(matches!(
        model.probabilities(&[1.0; 14], 1),
        Err(InferenceError::InvalidInput(_))
    ));
    assert!(matches!(
        model.contributions(&[1.0; 31], 2),
        Err(InferenceError::InvalidInput(_))
    ));
    assert_eq!(model.probabilities(&[], 0).unwrap(), Vec::<f32>::new());
}

#[test]
fn our_forest_matches_the_tract_plan_and_explains_in_one_pass() {
    let models = util::models();
    let model = models.get("late_risk").unwrap();
    assert!(
        model.outputs().iter().any(|o| o == "contributions"),
        "the shipped graph is one tree ensemble"
    );
    let tract =
        Model::load_through_tract("late_risk", fleet_host::defaults::LATE_RISK_ONNX).unwrap();
    assert_eq!(
        (&tract.name, &tract.version, &tract.features, &tract.digest),
        (&model.name, &model.version, &model.features, &model.digest)
    );
    let (rows, _) = parity_rows();
    // Whole blocks of eight rows, and a remainder walked row by row.
    for n in [rows.len(), rows.len() - 3, 1] {
        let flat: Vec<f32> = rows[..n].iter().flatten().copied().collect();
        let (p, c) = model.explained(&flat, n).unwrap();
        let via_tract = tract.probabilities(&flat, n).unwrap();
        let alone = model.probabilities(&flat, n).unwrap();
        assert!(p.iter().zip(&alone).all(|(a, b)| (a - b).abs() <= 1e-6));
        let walked = model.contributions(&flat, n).unwrap();
        assert_eq!((p.len(), c.len()), (via_tract.len(), walked.len()));
        assert!(p.iter().zip(&via_tract).all(|(a, b)| (a - b).abs() <= 1e-6));
        assert!(c.iter().zip(&walked).all(|(a, b)| (a - b).abs() <= 1e-4));
    }
}
