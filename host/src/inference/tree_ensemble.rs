//! A `TreeEnsembleClassifier` node's attributes turned into a [`Forest`]: the same for a model
//! the host runs itself and for the op registered with tract.

use anyhow::{Context as _, bail, ensure};

use super::forest::{Forest, LeafSpec, Mode, NodeSpec, PostTransform};
use fleet_onnx::proto::NodeProto;

fn ints(node: &NodeProto, name: &str) -> anyhow::Result<Vec<i64>> {
    node.attr(name)
        .map(|a| a.ints.clone())
        .with_context(|| format!("missing attribute {name}"))
}

fn floats(node: &NodeProto, name: &str) -> anyhow::Result<Vec<f32>> {
    node.attr(name)
        .map(|a| a.floats.clone())
        .with_context(|| format!("missing attribute {name}"))
}

fn strings(node: &NodeProto, name: &str) -> anyhow::Result<Vec<String>> {
    node.attr(name)
        .map(|a| {
            a.strings
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .with_context(|| format!("missing attribute {name}"))
}

fn index(v: i64, what: &str) -> anyhow::Result<usize> {
    usize::try_from(v).map_err(|_| anyhow::anyhow!("negative {what}: {v}"))
}

pub(crate) fn parse(node: &NodeProto) -> anyhow::Result<Forest> {
    if node.attr("classlabels_strings").is_some() {
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
    let missing = node
        .attr("nodes_missing_value_tracks_true")
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
        .collect::<anyhow::Result<Vec<_>>>()?;
    let base = node
        .attr("base_values")
        .map(|a| a.floats.clone())
        .unwrap_or_default();
    let post = match node
        .attr("post_transform")
        .map(|a| String::from_utf8_lossy(&a.s).into_owned())
    {
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
