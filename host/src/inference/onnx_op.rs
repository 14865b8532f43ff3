//! Our `TreeEnsembleClassifier` for tract's ONNX op register: the attributes become a
//! [`Forest`], run by one typed op with both ONNX outputs (labels, probabilities).
//!
//! tract's own implementation skips linearly through the leaves for every tree and builds an
//! error value per leaf visit (~4 ms a row for a 200-tree model), and refuses onnxmltools' single
//! `base_values` for a binary classifier. Registering ours under the same op name keeps tract as
//! the loader and runtime for everything else in the graph.

use std::sync::Arc;

use tract_hir::internal::*;
use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;

use super::forest::Forest;
use super::tree_ensemble;
use fleet_onnx::proto as onnx;

/// Replaces tract's `TreeEnsembleClassifier` with ours.
pub(crate) fn register(register: &mut OnnxOpRegister) {
    register.insert("TreeEnsembleClassifier", build);
}

fn build(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let forest = reread(node)
        .and_then(|node| tree_ensemble::parse(&node))
        .with_context(|| format!("TreeEnsembleClassifier {:?}", node.name))?;
    Ok((
        expand(ForestClassifier {
            forest: Arc::new(forest),
        }),
        vec![],
    ))
}

/// tract's node as our own type: both are prost messages of the same ONNX schema, so the
/// attributes are parsed by one piece of code whichever way the model is run.
fn reread(node: &NodeProto) -> TractResult<onnx::NodeProto> {
    use prost::Message as _;
    Ok(onnx::NodeProto::decode(node.encode_to_vec().as_slice())?)
}

/// The inference-model op: declares the two outputs and wires [`ForestOp`].
#[derive(Debug, Clone)]
struct ForestClassifier {
    forest: Arc<Forest>,
}

impl Expansion for ForestClassifier {
    fn name(&self) -> StaticName {
        "TreeEnsembleClassifier".into()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(2)
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 2)?;
        s.equals(&outputs[0].datum_type, DatumType::I64)?;
        s.equals(&outputs[1].datum_type, DatumType::F32)?;
        s.equals(&outputs[0].rank, 1)?;
        s.equals(&outputs[1].rank, 2)?;
        s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
        s.equals(&outputs[1].shape[0], &inputs[0].shape[0])?;
        s.equals(&outputs[1].shape[1], self.forest.labels().len().to_dim())?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(
            prefix,
            ForestOp {
                forest: self.forest.clone(),
            },
            inputs,
        )
    }
}

/// The typed op that runs a [`Forest`]: input `[N, F]` (any float type), outputs labels `[N]`
/// and probabilities `[N, labels]`.
#[derive(Debug, Clone)]
pub(crate) struct ForestOp {
    pub(crate) forest: Arc<Forest>,
}

impl PartialEq for ForestOp {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.forest, &other.forest)
    }
}

impl Eq for ForestOp {}

impl Op for ForestOp {
    fn name(&self) -> StaticName {
        "ForestClassifier".into()
    }

    op_as_typed_op!();
}

impl EvalOp for ForestOp {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let input = input.cast_to::<f32>()?;
        let view = input.to_plain_array_view::<f32>()?;
        let view = view.into_dimensionality::<tract_ndarray::Ix2>()?;
        let (rows, width) = view.dim();
        ensure!(
            width >= self.forest.n_features(),
            "input has {width} features, the model reads {}",
            self.forest.n_features()
        );
        let n_labels = self.forest.labels().len();
        let mut probabilities = vec![0f32; rows * n_labels];
        let mut winners = vec![0usize; rows];
        let owned;
        let flat = match view.as_slice() {
            Some(slice) => slice,
            None => {
                owned = view.iter().copied().collect::<Vec<f32>>();
                &owned
            }
        };
        self.forest
            .predict_rows(flat, width, &mut probabilities, &mut winners);
        let labels: Vec<i64> = winners.iter().map(|&w| self.forest.labels()[w]).collect();
        let labels = Tensor::from_shape(&[rows], &labels)?;
        let probabilities = Tensor::from_shape(&[rows, n_labels], &probabilities)?;
        Ok(tvec!(labels.into_tvalue(), probabilities.into_tvalue()))
    }
}

impl TypedOp for ForestOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let n = inputs[0].shape[0].clone();
        Ok(tvec!(
            i64::fact([n.clone()]),
            f32::fact([n, self.forest.labels().len().to_dim()])
        ))
    }

    as_op!();
}
