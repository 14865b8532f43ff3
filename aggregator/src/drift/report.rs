//! A model's drift over a span of windows: the PSI of each feature and of the score, their
//! bands, and the drift alert (a PSI over [`ALERT_PSI`] on enough decisions).

use serde::Serialize;

use super::{Band, Baseline, DriftRow, Histogram, KnownBaseline, WINDOW_MS, psi};
use crate::history::rfc3339;

/// Decisions a span needs before its PSI may raise an alert: with fewer, chance alone moves
/// the shares of ten bins by several points.
pub const MIN_DECISIONS: u64 = 500;

/// PSI over which a feature (or the score) drifted: the field's "significant" band.
pub const ALERT_PSI: f64 = 0.25;

/// One feature's (or the score's) drift.
#[derive(Clone, Debug, Serialize)]
pub struct FeatureDrift {
    pub name: String,
    /// A calendar feature: shown, but never raising the alert nor setting the band.
    pub seasonal: bool,
    /// `None` without decisions.
    pub psi: Option<f64>,
    pub band: Option<Band>,
    pub edges: Vec<f32>,
    /// Each bin's share in training, then the missing values'.
    pub expected: Vec<f64>,
    /// Each bin's share in the span.
    pub actual: Vec<f64>,
}

impl FeatureDrift {
    fn of(name: &str, seasonal: bool, baseline: &Baseline, actual: &Histogram) -> Self {
        let total = actual.total().max(1) as f64;
        let psi = psi(baseline, actual).map(|p| (p * 10_000.0).round() / 10_000.0);
        Self {
            name: name.into(),
            seasonal,
            psi,
            band: psi.map(Band::of),
            edges: baseline.edges.clone(),
            expected: baseline.expected.clone(),
            actual: actual
                .counts
                .iter()
                .map(|&n| (n as f64 / total * 10_000.0).round() / 10_000.0)
                .collect(),
        }
    }

    fn drifted(&self) -> bool {
        !self.seasonal && self.psi.is_some_and(|p| p > ALERT_PSI)
    }
}

/// A model's drift over the windows asked for.
#[derive(Clone, Debug, Serialize)]
pub struct DriftReport {
    pub model: String,
    /// Rows of the training pipeline's baseline.
    pub baseline_rows: u64,
    /// Start of the first window with decisions and end of the last (event time).
    pub from: Option<String>,
    pub to: Option<String>,
    pub windows: usize,
    pub decisions: u64,
    /// The worst band of the score and the features (seasonal ones left out).
    pub band: Option<Band>,
    /// Whether the drift alert is raised: some PSI over [`ALERT_PSI`] on at least
    /// [`MIN_DECISIONS`] decisions.
    pub alert: bool,
    /// What drifted past [`ALERT_PSI`] ("score" or feature names), worst first.
    pub drifting: Vec<String>,
    pub score: FeatureDrift,
    pub features: Vec<FeatureDrift>,
    /// Why there is no alert although something drifted, or no PSI at all.
    pub note: Option<String>,
}

impl DriftReport {
    /// The drift of the windows' decisions (windows of `known`'s baseline, in time order).
    pub fn of(known: &KnownBaseline, windows: &[(i64, DriftRow)]) -> Self {
        let b = &known.baseline;
        let mut total = DriftRow::new(b);
        for (_, row) in windows {
            total.merge(row);
        }
        let score = FeatureDrift::of("score", false, &b.score, &total.score);
        let features: Vec<FeatureDrift> = b
            .features
            .iter()
            .zip(&total.features)
            .map(|(f, h)| FeatureDrift::of(&f.name, f.seasonal, &f.baseline, h))
            .collect();
        let mut drifted: Vec<&FeatureDrift> = std::iter::once(&score)
            .chain(&features)
            .filter(|f| f.drifted())
            .collect();
        drifted.sort_by(|x, y| {
            y.psi
                .partial_cmp(&x.psi)
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        let enough = total.decisions >= MIN_DECISIONS;
        let note = if total.decisions == 0 {
            Some("no decisions of this model in the span".to_string())
        } else if !enough && !drifted.is_empty() {
            Some(format!(
                "{} decisions, fewer than the {MIN_DECISIONS} an alert needs",
                total.decisions
            ))
        } else {
            None
        };
        let band = std::iter::once(&score)
            .chain(&features)
            .filter(|f| !f.seasonal)
            .filter_map(|f| f.band)
            .max();
        let mut with_decisions = windows.iter().filter(|(_, r)| r.decisions > 0);
        Self {
            model: b.model.clone(),
            baseline_rows: b.rows,
            from: with_decisions.clone().next().map(|(w, _)| rfc3339(*w)),
            to: with_decisions
                .next_back()
                .map(|(w, _)| rfc3339(w + WINDOW_MS)),
            windows: windows.len(),
            decisions: total.decisions,
            band,
            alert: enough && !drifted.is_empty(),
            drifting: drifted.iter().map(|f| f.name.clone()).collect(),
            score,
            features,
            note,
        }
    }
}

#[cfg(test)]
mod tests {
    use fleet_onnx::ModelBaseline;
    use fleet_onnx::baseline::FeatureBaseline;

    use super::*;
    use crate::drift::FeatureMap;

    fn known() -> KnownBaseline {
        let quartiles = Baseline {
            edges: vec![1.0, 2.0, 3.0],
            expected: vec![0.25, 0.25, 0.25, 0.25, 0.0],
        };
        KnownBaseline {
            baseline: ModelBaseline {
                model: "m@1".into(),
                rows: 100,
                // "h" is a calendar feature.
                features: [("a", false), ("h", true)]
                    .iter()
                    .map(|&(name, seasonal)| FeatureBaseline {
                        name: name.into(),
                        baseline: quartiles.clone(),
                        seasonal,
                    })
                    .collect(),
                score: Baseline {
                    edges: vec![0.5],
                    expected: vec![0.5, 0.5, 0.0],
                },
            },
            fingerprint: 1,
        }
    }

    /// A window of decisions with "a" = `a` and "h" = `h`, `n` times each.
    fn window(known: &KnownBaseline, values: &[(f32, f32, usize)]) -> DriftRow {
        let b = &known.baseline;
        let map = FeatureMap::new(b, &["a".into(), "h".into()]);
        let mut row = DriftRow::new(b);
        for &(a, h, n) in values {
            for i in 0..n {
                row.fold(b, &map, &[a, h], if i % 2 == 0 { 0.2 } else { 0.8 });
            }
        }
        row
    }

    #[test]
    fn a_feature_that_moved_raises_the_alert_once_there_are_enough_decisions() {
        let k = known();
        // Everything in the top bin: PSI far over 0.25; the score keeps its halves.
        let moved = window(&k, &[(3.5, 3.5, 400)]);
        let few = DriftReport::of(&k, &[(0, moved.clone())]);
        assert_eq!(few.drifting, ["a"]);
        assert!(!few.alert, "400 decisions are too few");
        assert!(few.note.as_deref().unwrap().contains("fewer than"));

        let report = DriftReport::of(&k, &[(0, moved.clone()), (WINDOW_MS, moved)]);
        assert_eq!(report.decisions, 800);
        assert!(report.alert);
        assert_eq!(report.band, Some(Band::Significant));
        assert_eq!(report.features[0].actual, [0.0, 0.0, 0.0, 1.0, 0.0]);
        assert_eq!(report.score.psi, Some(0.0));
        assert_eq!(report.windows, 2);
        assert_eq!(report.to.as_deref(), Some(rfc3339(2 * WINDOW_MS).as_str()));

        // The training shape: stable, no alert.
        let same = window(
            &k,
            &[
                (0.5, 0.5, 200),
                (1.5, 1.5, 200),
                (2.5, 2.5, 200),
                (3.5, 3.5, 200),
            ],
        );
        let stable = DriftReport::of(&k, &[(0, same)]);
        assert!(!stable.alert);
        assert_eq!(stable.band, Some(Band::Stable));
        assert!(stable.drifting.is_empty());

        // A calendar feature that moved (a morning's decisions against a whole day's):
        // shown, but neither an alert nor the band.
        let morning = window(
            &k,
            &[
                (0.5, 0.5, 200),
                (1.5, 0.5, 200),
                (2.5, 0.5, 200),
                (3.5, 0.5, 200),
            ],
        );
        let seasonal = DriftReport::of(&k, &[(0, morning)]);
        assert!(seasonal.features[1].psi.unwrap() > ALERT_PSI);
        assert!(seasonal.features[1].seasonal);
        assert!(!seasonal.alert && seasonal.drifting.is_empty());
        assert_eq!(seasonal.band, Some(Band::Stable));

        let empty = DriftReport::of(&k, &[]);
        assert_eq!((empty.decisions, empty.band, empty.alert), (0, None, false));
        assert!(empty.note.is_some());
    }
}
