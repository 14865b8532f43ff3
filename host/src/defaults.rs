//! What a host runs with no configuration: the late-risk model and modules built into it.

use crate::inference::{InferenceError, Model};

include!(concat!(env!("OUT_DIR"), "/model.rs"));

/// Name under which the default model is registered (and the scorer looks it up).
pub const LATE_RISK: &str = "late_risk";

/// Loads the embedded late-risk model.
pub fn late_risk_model() -> Result<Model, InferenceError> {
    if LATE_RISK_ONNX.is_empty() {
        return Err(InferenceError::InvalidModel {
            model: LATE_RISK.into(),
            reason: "this binary was built without models/late_risk/model.onnx \
                     (make it with models/late_risk/train.sh)"
                .into(),
        });
    }
    Model::load(LATE_RISK, LATE_RISK_ONNX)
}

/// The embedded modules and the built-in model under the default sandbox limits: what
/// `edge-host` runs with no options.
pub fn embedded_registry()
-> Result<std::sync::Arc<crate::registry::ModuleRegistry>, Box<dyn std::error::Error + Send + Sync>>
{
    use std::sync::Arc;
    let engine = crate::engine::SandboxEngine::new(crate::engine::SandboxLimits::default())?;
    let mut models = crate::inference::ModelRegistry::new();
    models.insert(late_risk_model()?);
    let registry = crate::registry::ModuleRegistry::new(
        Arc::new(engine),
        Arc::new(models),
        crate::registry::ModuleSource::Embedded,
    )?;
    Ok(Arc::new(registry))
}
