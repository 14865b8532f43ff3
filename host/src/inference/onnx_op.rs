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
use tract_onnx::pb::{AttributeProto, NodeProto};

use super::forest::{Forest, LeafSpec, Mode, NodeSpec, PostTransform};

/// Replaces tract's `TreeEnsembleClassifier` with ours.
pub(crate) fn register(register: &mut OnnxOpRegister) {
    register.insert("TreeEnsembleClassifier", build);
}

fn build(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let forest = parse(node).with_context(|| format!("TreeEnsembleClassifier {:?}", node.name))?;
    Ok((
        expand(ForestClassifier {
            forest: Arc::new(forest),
        }),
        vec![],
    ))
}

fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

fn ints(node: &NodeProto, name: &str) -> TractResult<Vec<i64>> {
    attr(node, name)
        .map(|a| a.ints.clone())
        .with_context(|| format!("missing attribute {name}"))
}

fn floats(node: &NodeProto, name: &str) -> TractResult<Vec<f32>> {
    attr(node, name)
        .map(|a| a.floats.clone())
        .with_context(|| format!("missing attribute {name}"))
}

fn strings(node: &NodeProto, name: &str) -> TractResult<Vec<String>> {
    attr(node, name)
        .map(|a| {
            a.strings
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .with_context(|| format!("missing attribute {name}"))
}

fn index(v: i64, what: &str) -> TractResult<usize> {
    usize::try_from(v).map_err(|_| format_err!("negative {what}: {v}"))
}

fn parse(node: &NodeProto) -> TractResult<Forest> {
    if attr(node, "classlabels_strings").is_some() {
        bail!("string class labels are not supported");
    }
    let labels = ints(node, "classlabels_int64s")?;
    let tree_ids = ints(node, "nodes_treeids")?;
    let node_ids = ints(node, "nodes_nodeids")?;
    let features = ints(node, "nodes_featureids")?;
    let values = floats(node, "nodes_values")?;
    let modes = strings(node, "nodes_modes")?;
    let true_ids = ints(node, "nodes_truenodeids")?;
    let false_ids = ints(node, "nodes_falsenodeids")?;
    let n = tree_ids.len();
    let missing = attr(node, "nodes_missing_value_tracks_true")
        .map(|a| a.ints.clone())
        .unwrap_or(vec![0; n]);
    for (name, len) in [
        ("nodes_nodeids", node_ids.len()),
        ("nodes_featureids", features.len()),
        ("nodes_values", values.len()),
        ("nodes_modes", modes.len()),
        ("nodes_truenodeids", true_ids.len()),
        ("nodes_falsenodeids", false_ids.len()),
        ("nodes_missing_value_tracks_true", missing.len()),
    ] {
        ensure!(len == n, "{name} has {len} entries, nodes_treeids has {n}");
    }
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        let mode = match modes[i].as_str() {
            "LEAF" => None,
            "BRANCH_LT" => Some(Mode::Less),
            "BRANCH_LEQ" => Some(Mode::LessEqual),
            "BRANCH_GT" => Some(Mode::Greater),
            "BRANCH_GTE" => Some(Mode::GreaterEqual),
            other => bail!("unsupported node mode {other}"),
        };
        nodes.push(NodeSpec {
            tree: index(tree_ids[i], "tree id")?,
            id: index(node_ids[i], "node id")?,
            mode,
            feature: index(features[i], "feature id")?,
            threshold: values[i],
            true_id: index(true_ids[i], "node id")?,
            false_id: index(false_ids[i], "node id")?,
            missing_tracks_true: missing[i] != 0,
        });
    }
    let leaf_trees = ints(node, "class_treeids")?;
    let leaf_nodes = ints(node, "class_nodeids")?;
    let leaf_classes = ints(node, "class_ids")?;
    let weights = floats(node, "class_weights")?;
    let m = leaf_trees.len();
    for (name, len) in [
        ("class_nodeids", leaf_nodes.len()),
        ("class_ids", leaf_classes.len()),
        ("class_weights", weights.len()),
    ] {
        ensure!(len == m, "{name} has {len} entries, class_treeids has {m}");
    }
    let leaves = (0..m)
        .map(|i| {
            Ok(LeafSpec {
                tree: index(leaf_trees[i], "tree id")?,
                id: index(leaf_nodes[i], "node id")?,
                class: index(leaf_classes[i], "class id")?,
                weight: weights[i],
            })
        })
        .collect::<TractResult<Vec<_>>>()?;
    let base = attr(node, "base_values")
        .map(|a| a.floats.clone())
        .unwrap_or_default();
    let post =
        match attr(node, "post_transform").map(|a| String::from_utf8_lossy(&a.s).into_owned()) {
            None => PostTransform::None,
            Some(s) => match s.as_str() {
                "NONE" => PostTransform::None,
                "LOGISTIC" => PostTransform::Logistic,
                "SOFTMAX" => PostTransform::Softmax,
                other => bail!("unsupported post_transform {other}"),
            },
        };
    Ok(Forest::build(&nodes, &leaves, labels, base, post)?)
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
