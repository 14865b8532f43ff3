//! A model graph run by tract (with our tree-ensemble op registered): any ONNX graph tract
//! supports, for models that are more than one tree ensemble.

use std::sync::Arc;

use tract_onnx::prelude::*;

use super::InferenceError;
use super::forest::Forest;
use super::onnx_op::{self, ForestOp};

/// An optimized plan, ready to run from many threads.
pub(crate) struct Graph {
    plan: Arc<TypedRunnableModel>,
    probabilities_output: usize,
    /// Present when the optimized graph is exactly `input -> tree ensemble -> outputs`.
    forest: Option<Arc<Forest>>,
}

impl Graph {
    /// Loads and optimizes `bytes` for inputs of `[N, width]`.
    pub(crate) fn load(bytes: &[u8], width: usize) -> anyhow::Result<Self> {
        let mut onnx = onnx();
        onnx_op::register(&mut onnx.op_register);
        let mut model = onnx.model_for_read(&mut &bytes[..])?;
        let batch = model.symbols.sym("N");
        model.set_input_fact(0, f32::fact(&[batch.to_dim(), width.to_dim()]).into())?;
        let typed = model.into_optimized()?;
        let forest = whole_graph_forest(&typed)?;
        let probabilities_output = typed
            .output_outlets()?
            .iter()
            .position(|o| {
                typed
                    .outlet_fact(*o)
                    .is_ok_and(|f| f.datum_type == f32::datum_type())
            })
            .ok_or_else(|| anyhow::anyhow!("no f32 output for probabilities"))?;
        Ok(Self {
            plan: typed.into_runnable()?,
            probabilities_output,
            forest,
        })
    }

    /// The forest that is the whole optimized graph, if it is one.
    pub(crate) fn forest(&self) -> Option<&Arc<Forest>> {
        self.forest.as_ref()
    }

    /// Probabilities (`[rows, classes]`, row-major) for `rows` rows of `width` values.
    pub(crate) fn probabilities(
        &self,
        input: &[f32],
        rows: usize,
        width: usize,
    ) -> Result<Vec<f32>, InferenceError> {
        let runtime = |e: anyhow::Error| InferenceError::Runtime(format!("{e:#}"));
        let tensor = Tensor::from_shape(&[rows, width], input).map_err(runtime)?;
        let mut outputs = self
            .plan
            .run(tvec!(tensor.into_tvalue()))
            .map_err(runtime)?;
        let probabilities = outputs.swap_remove(self.probabilities_output);
        let view = probabilities
            .to_plain_array_view::<f32>()
            .map_err(runtime)?;
        Ok(view.iter().copied().collect())
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
