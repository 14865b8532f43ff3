//! The training baseline a model ships in its metadata ([`crate::META_BASELINE`]): for each
//! input feature and for the score, bin edges and the share of the training pipeline's
//! held-out rows in each bin. Drift is the distance of what the fleet sees from these shares.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::proto::ModelProto;
use crate::{META_BASELINE, META_FEATURES, META_NAME, META_VERSION};

/// The bins of one feature (or the score): `edges` split the values into `edges.len() + 1`
/// bins (a value equal to an edge goes above it); `expected` holds each bin's share of the
/// baseline rows, then the share of missing values (NaN).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub edges: Vec<f32>,
    pub expected: Vec<f64>,
}

impl Baseline {
    /// Bins, the missing-value bin included.
    pub fn bins(&self) -> usize {
        self.edges.len() + 2
    }

    /// The bin `value` falls in.
    pub fn bin(&self, value: f32) -> usize {
        if value.is_nan() {
            return self.edges.len() + 1;
        }
        self.edges.partition_point(|&e| e <= value)
    }

    fn check(&self, what: &str) -> Result<(), BaselineError> {
        let bad = |why: String| Err(BaselineError::Invalid(format!("{what}: {why}")));
        if self.expected.len() != self.bins() {
            return bad(format!(
                "{} shares for {} edges (want edges + 2)",
                self.expected.len(),
                self.edges.len()
            ));
        }
        if self.edges.iter().any(|e| !e.is_finite()) {
            return bad("an edge is not finite".into());
        }
        if self.edges.windows(2).any(|w| w[0] >= w[1]) {
            return bad("edges are not strictly increasing".into());
        }
        if self.expected.iter().any(|s| !(0.0..=1.0).contains(s)) {
            return bad("a share is outside 0..=1".into());
        }
        let sum: f64 = self.expected.iter().sum();
        if (sum - 1.0).abs() > 1e-3 {
            return bad(format!("shares sum to {sum}, not 1"));
        }
        Ok(())
    }
}

/// One input feature's baseline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureBaseline {
    pub name: String,
    #[serde(flatten)]
    pub baseline: Baseline,
    /// A calendar feature (hour, weekday): a span shorter than its period differs from
    /// training by construction, so it never raises a drift alert.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub seasonal: bool,
}

/// A model's training baseline: what `fleet.baseline` holds, and the model it belongs to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelBaseline {
    /// `name@version` of the model (not part of the metadata's JSON: taken from the model).
    #[serde(skip)]
    pub model: String,
    /// Rows the shares were counted on.
    pub rows: u64,
    /// One per input feature, in the model's input order.
    pub features: Vec<FeatureBaseline>,
    pub score: Baseline,
}

#[derive(Debug, Error)]
pub enum BaselineError {
    #[error("not an ONNX model: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("{META_BASELINE} metadata is not a baseline: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{META_BASELINE} metadata: {0}")]
    Invalid(String),
}

impl ModelBaseline {
    /// The input features' names, in the model's input order.
    pub fn feature_names(&self) -> Vec<String> {
        self.features.iter().map(|f| f.name.clone()).collect()
    }

    /// The baseline in a model file's metadata; `None` when it ships none.
    pub fn of_model(onnx: &[u8]) -> Result<Option<Self>, BaselineError> {
        Self::of_proto(&ModelProto::parse(onnx)?)
    }

    /// The baseline in a decoded model's metadata, checked against its input features.
    pub fn of_proto(proto: &ModelProto) -> Result<Option<Self>, BaselineError> {
        let Some(json) = proto.meta(META_BASELINE) else {
            return Ok(None);
        };
        let mut baseline: Self = serde_json::from_str(json)?;
        baseline.model = format!(
            "{}@{}",
            proto.meta(META_NAME).unwrap_or("unnamed"),
            proto.meta(META_VERSION).unwrap_or("unversioned")
        );
        if let Some(names) = proto.meta(META_FEATURES) {
            let names: Vec<&str> = names.split(',').map(str::trim).collect();
            let ours: Vec<&str> = baseline.features.iter().map(|f| f.name.as_str()).collect();
            if names != ours {
                return Err(BaselineError::Invalid(format!(
                    "features {ours:?} differ from the model's inputs {names:?}"
                )));
            }
        }
        for f in &baseline.features {
            f.baseline.check(&f.name)?;
        }
        baseline.score.check("score")?;
        Ok(Some(baseline))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::StringStringEntryProto;

    fn quartiles() -> Baseline {
        Baseline {
            edges: vec![1.0, 2.0, 3.0],
            expected: vec![0.25, 0.25, 0.25, 0.25, 0.0],
        }
    }

    #[test]
    fn values_fall_in_their_bins_edges_going_above() {
        let b = quartiles();
        let bins: Vec<usize> = [-5.0, 0.5, 1.0, 2.5, 3.0, 9.0, f32::NAN]
            .iter()
            .map(|&v| b.bin(v))
            .collect();
        assert_eq!(bins, [0, 0, 1, 2, 3, 3, 4]);
    }

    fn model(meta: &[(&str, &str)]) -> ModelProto {
        ModelProto {
            graph: None,
            metadata_props: meta
                .iter()
                .map(|(k, v)| StringStringEntryProto {
                    key: (*k).into(),
                    value: (*v).into(),
                })
                .collect(),
        }
    }

    const GOOD: &str = r#"{"rows":4,"features":[{"name":"a","edges":[1.0,2.0,3.0],"expected":[0.25,0.25,0.25,0.25,0.0]}],"score":{"edges":[0.5],"expected":[0.5,0.5,0.0]}}"#;

    #[test]
    fn a_baseline_is_read_with_its_model_and_checked() {
        let meta = |json: &'static str, features: &'static str| {
            model(&[
                (META_NAME, "m"),
                (META_VERSION, "1.0.0"),
                (META_FEATURES, features),
                (META_BASELINE, json),
            ])
        };
        let b = ModelBaseline::of_proto(&meta(GOOD, "a")).unwrap().unwrap();
        assert_eq!(b.model, "m@1.0.0");
        assert_eq!(b.features[0].baseline, quartiles());
        assert_eq!(b.feature_names(), ["a"]);
        assert_eq!(b.score.bins(), 3);
        assert!(ModelBaseline::of_proto(&model(&[])).unwrap().is_none());

        let wrong_names = ModelBaseline::of_proto(&meta(GOOD, "b")).unwrap_err();
        assert!(wrong_names.to_string().contains("differ"), "{wrong_names}");
        let unsorted = GOOD.replace("[1.0,2.0,3.0]", "[2.0,1.0,3.0]");
        let err = ModelBaseline::of_proto(&meta(unsorted.leak(), "a")).unwrap_err();
        assert!(err.to_string().contains("strictly increasing"), "{err}");
        let short = GOOD.replace("[0.5,0.5,0.0]", "[0.5,0.5]");
        let err = ModelBaseline::of_proto(&meta(short.leak(), "a")).unwrap_err();
        assert!(err.to_string().contains("edges + 2"), "{err}");
        let not_one = GOOD.replace("[0.5,0.5,0.0]", "[0.5,0.6,0.0]");
        let err = ModelBaseline::of_proto(&meta(not_one.leak(), "a")).unwrap_err();
        assert!(err.to_string().contains("sum to"), "{err}");
        let err = ModelBaseline::of_proto(&meta("{", "a")).unwrap_err();
        assert!(matches!(err, BaselineError::Json(_)), "{err}");
    }
}
