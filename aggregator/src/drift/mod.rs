//! Drift: how far what a model sees in the field has moved from what it was trained on, as
//! the population stability index (PSI) of each feature and of the score against the
//! training baseline's bins.
//!
//! A [`Histogram`] counts values into a baseline's bins (plus one bin for missing values);
//! histograms of the same bins merge by adding, so they can be kept per model version and
//! time window and summed over any span or over the whole fleet.
//! `PSI = Σ (actual - expected) · ln(actual / expected)` over the bins, with proportions
//! floored at [`FLOOR`] so that an empty bin counts as rare rather than infinitely far.
//! Bands as in the field's practice: under 0.1 stable, 0.1 to 0.25 moderate, over 0.25
//! significant.

mod baselines;
mod report;
mod watch;
mod window;

pub use baselines::{Baselines, KnownBaseline};
pub use fleet_onnx::Baseline;
pub use report::{ALERT_PSI, DriftReport, FeatureDrift, MIN_DECISIONS};
pub use watch::{DEFAULT_SPAN_MS, DriftWatch, EVERY, reports, spawn_watch};
pub use window::{DriftRow, FeatureMap, WINDOW_MS, window_of};

use serde::{Deserialize, Serialize};

/// Least proportion a bin counts for in the PSI.
pub const FLOOR: f64 = 1e-4;

/// Counts per bin of a [`Baseline`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histogram {
    pub counts: Vec<u64>,
}

impl Histogram {
    pub fn new(baseline: &Baseline) -> Self {
        Self {
            counts: vec![0; baseline.bins()],
        }
    }

    pub fn add(&mut self, baseline: &Baseline, value: f32) {
        if let Some(c) = self.counts.get_mut(baseline.bin(value)) {
            *c += 1;
        }
    }

    /// Adds another histogram of the same bins.
    pub fn merge(&mut self, other: &Self) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// How far a distribution moved, by the usual PSI bands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Band {
    /// Under 0.1.
    Stable,
    /// 0.1 to 0.25: worth watching.
    Moderate,
    /// Over 0.25: the model sees something else than it was trained on.
    Significant,
}

impl Band {
    pub fn of(psi: f64) -> Self {
        if psi < 0.1 {
            Self::Stable
        } else if psi <= 0.25 {
            Self::Moderate
        } else {
            Self::Significant
        }
    }
}

/// The PSI of `actual` against the baseline's expected shares; `None` when `actual` is empty
/// or of other bins.
pub fn psi(baseline: &Baseline, actual: &Histogram) -> Option<f64> {
    let total = actual.total();
    if total == 0
        || actual.counts.len() != baseline.bins()
        || baseline.expected.len() != baseline.bins()
    {
        return None;
    }
    let psi = baseline
        .expected
        .iter()
        .zip(&actual.counts)
        .map(|(&e, &n)| {
            let (e, a) = (e.max(FLOOR), (n as f64 / total as f64).max(FLOOR));
            (a - e) * (a / e).ln()
        })
        .sum();
    Some(psi)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quartiles() -> Baseline {
        // Four equal bins over [0, 4), no missing values in training.
        Baseline {
            edges: vec![1.0, 2.0, 3.0],
            expected: vec![0.25, 0.25, 0.25, 0.25, 0.0],
        }
    }

    /// By hand: shares 0.1, 0.2, 0.3, 0.4 against 0.25 each:
    /// -0.15·ln(0.4) - 0.05·ln(0.8) + 0.05·ln(1.2) + 0.15·ln(1.6) = 0.2282.
    #[test]
    fn psi_matches_a_hand_computed_case_and_its_band() {
        let b = quartiles();
        let mut h = Histogram::new(&b);
        for (value, times) in [(0.5, 10), (1.5, 20), (2.5, 30), (3.5, 40)] {
            for _ in 0..times {
                h.add(&b, value);
            }
        }
        let want =
            -0.15 * 0.4f64.ln() - 0.05 * 0.8f64.ln() + 0.05 * 1.2f64.ln() + 0.15 * 1.6f64.ln();
        let got = psi(&b, &h).unwrap();
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        assert!((got - 0.2282).abs() < 1e-4);
        assert_eq!(Band::of(got), Band::Moderate);

        // The same shape as training: no drift.
        let mut same = Histogram::new(&b);
        for value in [0.5, 1.5, 2.5, 3.5] {
            same.add(&b, value);
        }
        assert!(psi(&b, &same).unwrap().abs() < 1e-12);
        assert_eq!(Band::of(0.0), Band::Stable);
        assert_eq!(Band::of(0.3), Band::Significant);
        assert_eq!(psi(&b, &Histogram::new(&b)), None);
    }

    #[test]
    fn histograms_merge_by_adding() {
        let b = quartiles();
        let (mut a, mut c) = (Histogram::new(&b), Histogram::new(&b));
        a.add(&b, 0.5);
        c.add(&b, 0.5);
        c.add(&b, f32::NAN);
        a.merge(&c);
        assert_eq!(a.counts, [2, 0, 0, 0, 1]);
        assert_eq!(a.total(), 3);
    }
}
