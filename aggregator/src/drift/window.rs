//! What history keeps for drift: per model, baseline and hour of event time, how many
//! decisions there were and the histogram of each feature and of the score.

use fleet_onnx::ModelBaseline;
use serde::{Deserialize, Serialize};

use super::Histogram;

/// Windows are hours of event time.
pub const WINDOW_MS: i64 = 3_600_000;

/// The start of the window `time_ms` falls in.
pub fn window_of(time_ms: i64) -> i64 {
    time_ms.div_euclid(WINDOW_MS) * WINDOW_MS
}

/// Where each of the baseline's features sits in a decision's feature vector (by its
/// schema's names); `None` for a feature the schema lacks (counted as missing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeatureMap(Vec<Option<usize>>);

impl FeatureMap {
    pub fn new(baseline: &ModelBaseline, schema: &[String]) -> Self {
        Self(
            baseline
                .features
                .iter()
                .map(|f| schema.iter().position(|n| *n == f.name))
                .collect(),
        )
    }
}

/// One window's counts, binned by one baseline.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftRow {
    pub decisions: u64,
    pub score: Histogram,
    /// In the baseline's feature order.
    pub features: Vec<Histogram>,
}

impl DriftRow {
    pub fn new(baseline: &ModelBaseline) -> Self {
        Self {
            decisions: 0,
            score: Histogram::new(&baseline.score),
            features: baseline
                .features
                .iter()
                .map(|f| Histogram::new(&f.baseline))
                .collect(),
        }
    }

    /// Counts one decision: its score and features (`map` says where each is).
    pub fn fold(
        &mut self,
        baseline: &ModelBaseline,
        map: &FeatureMap,
        features: &[f32],
        score: f32,
    ) {
        self.decisions += 1;
        self.score.add(&baseline.score, score);
        for ((h, f), at) in self.features.iter_mut().zip(&baseline.features).zip(&map.0) {
            let value = at
                .and_then(|i| features.get(i).copied())
                .unwrap_or(f32::NAN);
            h.add(&f.baseline, value);
        }
    }

    /// Adds another window's counts (of the same baseline).
    pub fn merge(&mut self, other: &Self) {
        self.decisions += other.decisions;
        self.score.merge(&other.score);
        if self.features.len() < other.features.len() {
            self.features
                .resize(other.features.len(), Histogram::default());
        }
        for (a, b) in self.features.iter_mut().zip(&other.features) {
            a.merge(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use fleet_onnx::Baseline;
    use fleet_onnx::baseline::FeatureBaseline;

    use super::*;

    fn baseline() -> ModelBaseline {
        let halves = |edge: f32| Baseline {
            edges: vec![edge],
            expected: vec![0.5, 0.5, 0.0],
        };
        ModelBaseline {
            model: "m@1".into(),
            rows: 2,
            features: ["a", "b"]
                .iter()
                .map(|n| FeatureBaseline {
                    name: (*n).into(),
                    baseline: halves(1.0),
                    seasonal: false,
                })
                .collect(),
            score: halves(0.5),
        }
    }

    #[test]
    fn decisions_are_binned_by_their_schemas_names_and_windows_merge() {
        let b = baseline();
        // The decision's vector has the features the other way round, and one more.
        let map = FeatureMap::new(&b, &["b".into(), "x".into(), "a".into()]);
        let mut row = DriftRow::new(&b);
        row.fold(&b, &map, &[0.0, 7.0, 2.0], 0.9);
        assert_eq!(row.features[0].counts, [0, 1, 0], "a = 2.0");
        assert_eq!(row.features[1].counts, [1, 0, 0], "b = 0.0");
        assert_eq!(row.score.counts, [0, 1, 0]);

        // A schema without "b": counted as missing.
        let short = FeatureMap::new(&b, &["a".into()]);
        let mut other = DriftRow::new(&b);
        other.fold(&b, &short, &[0.5], 0.1);
        assert_eq!(other.features[1].counts, [0, 0, 1]);

        row.merge(&other);
        assert_eq!(row.decisions, 2);
        assert_eq!(row.features[0].counts, [1, 1, 0]);
        assert_eq!(row.score.counts, [1, 1, 0]);
    }

    #[test]
    fn windows_are_hours_of_event_time() {
        assert_eq!(window_of(0), 0);
        assert_eq!(window_of(WINDOW_MS - 1), 0);
        assert_eq!(window_of(WINDOW_MS), WINDOW_MS);
        assert_eq!(window_of(-1), -WINDOW_MS);
    }
}
