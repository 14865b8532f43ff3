//! Reads `models/late_risk/testdata/parity.csv`: held-out feature rows (empty cell = NaN) and
//! xgboost's own probability for each. Shared by the parity test and the inference bench.

/// The rows and the expected probabilities.
pub(super) fn parity_rows() -> (Vec<Vec<f32>>, Vec<f64>) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../models/late_risk/testdata/parity.csv"
    );
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e}; make it with models/late_risk/train.sh"));
    let mut rows = Vec::new();
    let mut expected = Vec::new();
    for line in text.lines().skip(1) {
        let cells: Vec<&str> = line.split(',').collect();
        let (p, features) = cells.split_last().expect("a row has cells");
        let row = features
            .iter()
            .map(|c| {
                if c.is_empty() {
                    f32::NAN
                } else {
                    c.parse().expect("a number")
                }
            })
            .collect();
        rows.push(row);
        expected.push(p.parse().expect("a probability"));
    }
    (rows, expected)
}
