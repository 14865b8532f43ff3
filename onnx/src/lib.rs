//! The part of the ONNX format the fleet reads itself, without an inference engine: the
//! messages a model file is decoded into ([`proto`]), the metadata the training pipeline
//! writes (name, version, input feature names, what trained it and its metrics ([`ModelInfo`]),
//! and the training [`Baseline`] that drift is measured against), and a whole-graph tree ensemble for the host's own evaluator.
//! The host runs models with it; the aggregator reads the baselines of the models it
//! distributes.

pub mod baseline;
mod info;
pub mod proto;

pub use baseline::{Baseline, BaselineError, ModelBaseline};
pub use info::ModelInfo;
pub use proto::ModelProto;

/// ONNX metadata keys the training pipeline writes.
pub const META_NAME: &str = "fleet.model_name";
pub const META_VERSION: &str = "fleet.model_version";
pub const META_FEATURES: &str = "fleet.features";
/// The training baseline, as JSON (see [`ModelBaseline`]).
pub const META_BASELINE: &str = "fleet.baseline";
/// What trained the model, as JSON.
pub const META_TRAINING: &str = "fleet.training";
/// Its held-out metrics, as JSON.
pub const META_METRICS: &str = "fleet.metrics";
