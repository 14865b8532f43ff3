//! One ONNX model loaded with tract (our tree-ensemble op registered), with the metadata the
//! host needs: name, version, input feature names, digest.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::framework::Framework;

use super::InferenceError;
use super::forest::Forest;
use super::onnx_op::{self, ForestOp};

/// ONNX metadata keys the training pipeline writes.
pub const META_NAME: &str = "fleet.model_name";
pub const META_VERSION: &str = "fleet.model_version";
pub const META_FEATURES: &str = "fleet.features";

/// A loaded, optimized model, ready to run from many threads.
pub struct Model {
    pub name: String,
    pub version: String,
    /// Input column names, in order.
    pub features: Vec<String>,
    /// `sha256:` and the hex digest of the ONNX bytes.
    pub digest: String,
    plan: Arc<TypedRunnableModel>,
    probabilities_output: usize,
    /// Present when the whole graph is one tree ensemble reading the input: explains
    /// predictions (and computes them with the explanation in one pass).
    forest: Option<Arc<Forest>>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("features", &self.features.len())
            .field("digest", &self.digest)
            .finish()
    }
}

impl Model {
    /// Loads and optimizes an ONNX model from bytes. `fallback_name` names it when its
    /// metadata does not.
    pub fn load(fallback_name: &str, bytes: &[u8]) -> Result<Self, InferenceError> {
        let invalid = |e: anyhow::Error| InferenceError::InvalidModel {
            model: fallback_name.to_string(),
            reason: format!("{e:#}"),
        };
        let mut onnx = onnx();
        onnx_op::register(&mut onnx.op_register);
        let proto = onnx
            .proto_model_for_read(&mut &bytes[..])
            .map_err(invalid)?;
        let meta = |key: &str| {
            proto
                .metadata_props
                .iter()
                .find(|p| p.key == key)
                .map(|p| p.value.clone())
        };
        let name = meta(META_NAME).unwrap_or_else(|| fallback_name.to_string());
        let version = meta(META_VERSION).unwrap_or_else(|| "unversioned".to_string());
        let declared_features: Option<Vec<String>> =
            meta(META_FEATURES).map(|f| f.split(',').map(|s| s.trim().to_string()).collect());

        let mut model = onnx.model_for_proto_model(&proto).map_err(invalid)?;
        let width = declared_features.as_ref().map(Vec::len).ok_or_else(|| {
            invalid(anyhow::anyhow!(
                "no {META_FEATURES} metadata: the input columns are unnamed"
            ))
        })?;
        let batch = model.symbols.sym("N");
        model
            .set_input_fact(0, f32::fact(&[batch.to_dim(), width.to_dim()]).into())
            .map_err(invalid)?;
        let typed = model.into_optimized().map_err(invalid)?;
        let forest = whole_graph_forest(&typed).map_err(invalid)?;
        let probabilities_output = typed
            .output_outlets()
            .map_err(invalid)?
            .iter()
            .position(|o| {
                typed
                    .outlet_fact(*o)
                    .is_ok_and(|f| f.datum_type == f32::datum_type())
            })
            .ok_or_else(|| invalid(anyhow::anyhow!("no f32 output for probabilities")))?;
        if let Some(forest) = &forest
            && forest.n_features() > width
        {
            return Err(invalid(anyhow::anyhow!(
                "trees read feature {} but the input has {width} columns",
                forest.n_features() - 1
            )));
        }
        let plan = typed.into_runnable().map_err(invalid)?;
        let features =
            declared_features.unwrap_or_else(|| (0..width).map(|i| format!("f{i}")).collect());
        Ok(Self {
            name,
            version,
            features,
            digest: format!("sha256:{:x}", Sha256::digest(bytes)),
            plan,
            probabilities_output,
            forest,
        })
    }

    /// Names of the outputs the model can produce (contributions only with our tree walk).
    pub fn outputs(&self) -> Vec<String> {
        let mut outputs = vec!["probabilities".to_string()];
        if self.forest.is_some() {
            outputs.push("contributions".to_string());
        }
        outputs
    }

    /// Probabilities (`[rows, classes]`, row-major) for `rows` rows of `features.len()` values.
    pub fn probabilities(&self, input: &[f32], rows: usize) -> Result<Vec<f32>, InferenceError> {
        self.check_input(input, rows)?;
        let tensor = Tensor::from_shape(&[rows, self.features.len()], input)
            .map_err(|e| InferenceError::Runtime(format!("{e:#}")))?;
        let mut outputs = self
            .plan
            .run(tvec!(tensor.into_tvalue()))
            .map_err(|e| InferenceError::Runtime(format!("{e:#}")))?;
        let probabilities = outputs.swap_remove(self.probabilities_output);
        let view = probabilities
            .to_plain_array_view::<f32>()
            .map_err(|e| InferenceError::Runtime(format!("{e:#}")))?;
        Ok(view.iter().copied().collect())
    }

    /// Probabilities and contributions together, in one pass when the model allows it.
    pub fn explained(
        &self,
        input: &[f32],
        rows: usize,
    ) -> Result<(Vec<f32>, Vec<f32>), InferenceError> {
        self.check_input(input, rows)?;
        if let Some((p, c)) = self
            .forest
            .as_ref()
            .and_then(|f| f.predict_explained(input, self.features.len(), rows))
        {
            return Ok((p, c));
        }
        Ok((
            self.probabilities(input, rows)?,
            self.contributions(input, rows)?,
        ))
    }

    /// Per-feature contributions to the positive class's log-odds (`[rows, features]`).
    pub fn contributions(&self, input: &[f32], rows: usize) -> Result<Vec<f32>, InferenceError> {
        self.check_input(input, rows)?;
        let forest = self.forest.as_ref().ok_or_else(|| {
            InferenceError::InvalidInput(format!("model {} cannot explain predictions", self.name))
        })?;
        let width = self.features.len();
        let mut out = vec![0f32; rows * width];
        for (row, contrib) in input.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
            forest.contributions_into(row, forest.positive_column(), contrib);
        }
        Ok(out)
    }

    fn check_input(&self, input: &[f32], rows: usize) -> Result<(), InferenceError> {
        let width = self.features.len();
        if input.len() != rows * width {
            return Err(InferenceError::InvalidInput(format!(
                "{} values for {rows} rows of {width} features",
                input.len()
            )));
        }
        Ok(())
    }
}

/// The forest, when the optimized graph is exactly `input -> tree ensemble -> outputs`: only
/// then do its contributions explain the model's probabilities.
fn whole_graph_forest(typed: &TypedModel) -> anyhow::Result<Option<Arc<Forest>>> {
    let inputs = typed.input_outlets()?;
    let outputs = typed.output_outlets()?;
    let mut forests = typed
        .nodes()
        .iter()
        .filter_map(|n| n.op_as::<ForestOp>().map(|op| (n, op)));
    let (Some((node, op)), None) = (forests.next(), forests.next()) else {
        return Ok(None);
    };
    let reads_input = node.inputs.len() == 1 && inputs.len() == 1 && node.inputs[0] == inputs[0];
    let writes_outputs = outputs.iter().all(|o| o.node == node.id);
    Ok((reads_input && writes_outputs).then(|| op.forest.clone()))
}
