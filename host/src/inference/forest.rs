//! A tree ensemble laid out for fast evaluation: every tree padded to a complete binary tree,
//! so a row walks each tree in exactly `depth` branch-free steps with no leaf test.
//!
//! Built from the attributes of an ONNX `TreeEnsembleClassifier` (see [`super::tree_ensemble`]).
//! It also explains a prediction: per-feature contributions along the decision path, where a
//! node's value is the mean of the leaves below it (Saabas attribution). Contributions plus
//! [`Forest::bias`] add up to the raw margin exactly.

use thiserror::Error;

/// Deepest tree accepted; a complete tree of this depth has 2^16 leaves.
pub(crate) const MAX_DEPTH: u32 = 16;
/// Upper bound on padded nodes over all trees, to refuse pathological models up front.
const MAX_PADDED_NODES: usize = 1 << 24;
/// Set on a split's feature index when a missing value (NaN) goes to the right child.
const MISSING_RIGHT: u32 = 1 << 31;

/// Why an ensemble's attributes cannot be turned into a [`Forest`].
#[derive(Debug, Error, PartialEq)]
#[non_exhaustive]
pub enum ForestError {
    /// The attribute arrays do not describe a set of trees (dangling ids, cycles, lengths).
    #[error("malformed tree ensemble: {0}")]
    Malformed(String),
    /// A valid ensemble this evaluator does not implement.
    #[error("unsupported tree ensemble: {0}")]
    Unsupported(String),
}

/// How the summed leaf weights become probabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PostTransform {
    /// Probabilities are the raw scores.
    None,
    /// Sigmoid per column.
    Logistic,
    /// Softmax across columns.
    Softmax,
}

/// Comparison a split makes between the feature and its threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Less,
    LessEqual,
    Greater,
    GreaterEqual,
}

/// One ONNX tree-ensemble node, as given by the `nodes_*` attributes.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub tree: usize,
    pub id: usize,
    /// `None` for a leaf.
    pub mode: Option<Mode>,
    pub feature: usize,
    pub threshold: f32,
    pub true_id: usize,
    pub false_id: usize,
    pub missing_tracks_true: bool,
}

/// One leaf weight, as given by the `class_*` attributes.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    pub tree: usize,
    pub id: usize,
    pub class: usize,
    pub weight: f32,
}

#[derive(Clone, Copy, Debug)]
struct Split {
    /// Feature index, with [`MISSING_RIGHT`] set when NaN goes right.
    feature: u32,
    /// Go left when `x < threshold`.
    threshold: f32,
}

const PADDING: Split = Split {
    feature: 0,
    threshold: f32::INFINITY,
};

/// Independent walks advanced in lockstep, so the CPU overlaps their load latencies.
const LANES: usize = 8;

#[derive(Clone, Copy, Debug)]
struct TreeInfo {
    /// Offset of the tree's root in `splits`.
    split_offset: usize,
    /// Offset of the tree's first leaf in `leaves`.
    leaf_offset: usize,
    column: usize,
    /// Mean of the tree's leaves: its share of the bias.
    mean: f32,
}

/// A compiled ensemble; see the module documentation.
#[derive(Debug)]
pub struct Forest {
    n_features: usize,
    n_columns: usize,
    labels: Vec<i64>,
    base: Vec<f32>,
    post: PostTransform,
    /// Every tree is padded to this depth.
    depth: u32,
    trees: Vec<TreeInfo>,
    splits: Vec<Split>,
    /// Per split, parallel to `splits`: change of the subtree mean going left, and right.
    deltas: Vec<(f32, f32)>,
    leaves: Vec<f32>,
}

impl Forest {
    /// Compiles the ensemble. `labels` are the class labels; `base` the base values (empty,
    /// one per score column, or a single value for a binary classifier with one column).
    pub fn build(
        nodes: &[NodeSpec],
        leaves: &[LeafSpec],
        labels: Vec<i64>,
        base: Vec<f32>,
        post: PostTransform,
    ) -> Result<Self, ForestError> {
        let malformed = |m: String| ForestError::Malformed(m);
        if labels.len() < 2 {
            return Err(malformed(format!("{} class labels", labels.len())));
        }
        let n_trees = nodes.iter().map(|n| n.tree + 1).max().unwrap_or(0);
        if n_trees == 0 {
            return Err(malformed("no nodes".into()));
        }
        let mut by_tree: Vec<std::collections::HashMap<usize, &NodeSpec>> =
            vec![Default::default(); n_trees];
        for n in nodes {
            if by_tree[n.tree].insert(n.id, n).is_some() {
                return Err(malformed(format!(
                    "tree {} has node {} twice",
                    n.tree, n.id
                )));
            }
        }
        let mut leaf_weight: std::collections::HashMap<(usize, usize), (usize, f32)> =
            Default::default();
        for l in leaves {
            if let Some((class, _)) = leaf_weight.insert((l.tree, l.id), (l.class, l.weight)) {
                return Err(ForestError::Unsupported(format!(
                    "leaf {} of tree {} has weights for classes {class} and {}",
                    l.id, l.tree, l.class
                )));
            }
        }
        let n_columns = leaves.iter().map(|l| l.class + 1).max().unwrap_or(1);
        let binary_single = labels.len() == 2 && n_columns == 1;
        if !binary_single && n_columns != labels.len() {
            return Err(malformed(format!(
                "{n_columns} score columns for {} labels",
                labels.len()
            )));
        }
        let base = match base.len() {
            0 => vec![0.0; n_columns],
            n if n == n_columns => base,
            // onnxmltools writes one base value for a binary classifier with one score column.
            _ => {
                return Err(malformed(format!(
                    "{} base values for {n_columns} columns",
                    base.len()
                )));
            }
        };
        if binary_single && post == PostTransform::Softmax {
            return Err(ForestError::Unsupported(
                "softmax over a single score column".into(),
            ));
        }

        let mut roots = Vec::with_capacity(n_trees);
        let mut depth = 0;
        for (tree, index) in by_tree.iter().enumerate() {
            let root = root_of(tree, index)?;
            depth = depth.max(depth_of(index, root, 0, tree)?);
            roots.push(root);
        }
        if n_trees.saturating_mul((1usize << depth) - 1) > MAX_PADDED_NODES {
            return Err(ForestError::Unsupported(format!(
                "{n_trees} trees of depth {depth} are too large to pad"
            )));
        }
        let mut forest = Self {
            n_features: 0,
            n_columns,
            labels,
            base,
            post,
            depth,
            trees: Vec::with_capacity(n_trees),
            splits: Vec::new(),
            deltas: Vec::new(),
            leaves: Vec::new(),
        };
        for (tree, index) in by_tree.iter().enumerate() {
            forest.add_tree(tree, roots[tree], index, &leaf_weight)?;
        }
        Ok(forest)
    }

    fn add_tree(
        &mut self,
        tree: usize,
        root: usize,
        index: &std::collections::HashMap<usize, &NodeSpec>,
        leaf_weight: &std::collections::HashMap<(usize, usize), (usize, f32)>,
    ) -> Result<(), ForestError> {
        let malformed = |m: String| ForestError::Malformed(m);
        let depth = self.depth;
        let padded = (1usize << depth) - 1;
        let info = TreeInfo {
            split_offset: self.splits.len(),
            leaf_offset: self.leaves.len(),
            column: 0,
            mean: 0.0,
        };
        self.splits.resize(info.split_offset + padded, PADDING);
        self.deltas.resize(info.split_offset + padded, (0.0, 0.0));
        self.leaves.resize(info.leaf_offset + padded + 1, 0.0);
        let mut column = None;
        // Walk the original tree, filling the complete tree; a leaf above the bottom fills the
        // whole subtree below its position, so either way down reaches its value.
        let mut stack = vec![(root, 0usize, 0u32)];
        while let Some((id, pos, level)) = stack.pop() {
            let node = index[&id];
            match node.mode {
                Some(mode) => {
                    let (threshold, go_left_when_less) = normalize(mode, node.threshold);
                    let (left, right) = if go_left_when_less {
                        (node.true_id, node.false_id)
                    } else {
                        (node.false_id, node.true_id)
                    };
                    let missing_right = node.missing_tracks_true != go_left_when_less;
                    self.n_features = self.n_features.max(node.feature + 1);
                    let feature = u32::try_from(node.feature)
                        .ok()
                        .filter(|f| f & MISSING_RIGHT == 0)
                        .ok_or_else(|| malformed(format!("feature index {}", node.feature)))?;
                    self.splits[info.split_offset + pos] = Split {
                        feature: feature | if missing_right { MISSING_RIGHT } else { 0 },
                        threshold,
                    };
                    stack.push((left, 2 * pos + 1, level + 1));
                    stack.push((right, 2 * pos + 2, level + 1));
                }
                None => {
                    let &(class, weight) = leaf_weight.get(&(tree, id)).ok_or_else(|| {
                        malformed(format!("leaf {id} of tree {tree} has no weight"))
                    })?;
                    if *column.get_or_insert(class) != class {
                        return Err(ForestError::Unsupported(format!(
                            "tree {tree} has leaves for more than one class"
                        )));
                    }
                    // Leaves of the complete tree below position `pos`.
                    let span = 1usize << (depth - level);
                    let first = (pos + 1) * span - 1 - padded;
                    self.leaves[info.leaf_offset + first..info.leaf_offset + first + span]
                        .fill(weight);
                }
            }
        }
        let mean = self.fill_deltas(&info);
        self.trees.push(TreeInfo {
            column: column.unwrap_or(0),
            mean,
            ..info
        });
        Ok(())
    }

    /// Sets each split's deltas (child mean minus own mean, a node's value being the mean of
    /// the leaves below it) and returns the tree's mean.
    fn fill_deltas(&mut self, t: &TreeInfo) -> f32 {
        let padded = (1usize << self.depth) - 1;
        let mut means = vec![0f32; padded];
        let value = |means: &[f32], pos: usize| {
            if pos >= padded {
                self.leaves[t.leaf_offset + pos - padded]
            } else {
                means[pos]
            }
        };
        for pos in (0..padded).rev() {
            let (left, right) = (value(&means, 2 * pos + 1), value(&means, 2 * pos + 2));
            means[pos] = (left + right) / 2.0;
            self.deltas[t.split_offset + pos] = (left - means[pos], right - means[pos]);
        }
        value(&means, 0)
    }

    /// Number of input features a row must have (at least).
    pub fn n_features(&self) -> usize {
        self.n_features
    }

    /// Class labels, in probability-column order.
    pub fn labels(&self) -> &[i64] {
        &self.labels
    }

    /// Number of trees.
    pub fn n_trees(&self) -> usize {
        self.trees.len()
    }

    /// Probabilities for `rows` rows of `width` values (`width >= n_features()`), one per label
    /// per row into `out`; the index of each row's winning label into `winners`.
    pub fn predict_rows(
        &self,
        input: &[f32],
        width: usize,
        out: &mut [f32],
        winners: &mut [usize],
    ) {
        let n_labels = self.labels.len();
        let rows = winners.len();
        assert!(
            width >= self.n_features && input.len() >= rows * width,
            "rows narrower than the model"
        );
        assert!(out.len() >= rows * n_labels, "output too small");
        let mut margins = vec![0f32; rows * self.n_columns];
        for (m, _) in margins.chunks_exact_mut(self.n_columns).zip(0..rows) {
            m.copy_from_slice(&self.base);
        }
        // Eight rows at a time through each tree; the rest one by one, eight trees at a time.
        let blocks = rows / LANES;
        for block in 0..blocks {
            let first = block * LANES;
            let row_start: [usize; LANES] = std::array::from_fn(|l| (first + l) * width);
            for t in &self.trees {
                let leaves = self.walk([t.split_offset; LANES], row_start, input, |_, _, _, _| {});
                for (l, leaf) in leaves.iter().enumerate() {
                    margins[(first + l) * self.n_columns + t.column] +=
                        self.leaves[t.leaf_offset + leaf];
                }
            }
        }
        for r in blocks * LANES..rows {
            let m = &mut margins[r * self.n_columns..(r + 1) * self.n_columns];
            self.tree_lanes(&input[r * width..(r + 1) * width], |t, leaf| {
                m[t.column] += self.leaves[t.leaf_offset + leaf]
            });
        }
        for r in 0..rows {
            let scores = &mut margins[r * self.n_columns..(r + 1) * self.n_columns];
            winners[r] = self.finish(scores, &mut out[r * n_labels..(r + 1) * n_labels]);
        }
    }

    /// Probabilities for one row (`labels().len()` values into `out`); returns the winner.
    pub fn predict_into(&self, row: &[f32], out: &mut [f32]) -> usize {
        let mut winner = [0];
        self.predict_rows(row, row.len(), out, &mut winner);
        winner[0]
    }

    /// Walks every tree for one row, eight trees in lockstep, calling `leaf(tree, index)` for
    /// the leaf reached.
    #[inline(always)]
    fn tree_lanes(&self, row: &[f32], mut leaf: impl FnMut(&TreeInfo, usize)) {
        let mut chunks = self.trees.chunks_exact(LANES);
        for group in &mut chunks {
            let starts: [usize; LANES] = std::array::from_fn(|l| group[l].split_offset);
            let leaves = self.walk(starts, [0; LANES], row, |_, _, _, _| {});
            for (t, &i) in group.iter().zip(&leaves) {
                leaf(t, i);
            }
        }
        for t in chunks.remainder() {
            let [i] = self.walk([t.split_offset], [0], row, |_, _, _, _| {});
            leaf(t, i);
        }
    }

    /// Advances `K` walks (tree root offset, row start in `input`) level by level to the
    /// bottom and returns each walk's leaf index; `step(lane, feature, split, right)` sees each
    /// split passed.
    #[inline(always)]
    fn walk<const K: usize>(
        &self,
        roots: [usize; K],
        row_start: [usize; K],
        input: &[f32],
        mut step: impl FnMut(usize, usize, usize, bool),
    ) -> [usize; K] {
        debug_assert!(
            roots
                .iter()
                .all(|&r| r + (1usize << self.depth) - 1 <= self.splits.len())
        );
        debug_assert!(
            row_start
                .iter()
                .all(|&r| r + self.n_features <= input.len())
        );
        let mut pos = [0usize; K];
        for _ in 0..self.depth {
            for l in 0..K {
                // SAFETY: `roots` are tree offsets made by `add_tree`, each followed by
                // 2^depth - 1 splits, and `pos` stays below that for `depth` steps; every
                // caller checks that each row holds at least `n_features` values and no split
                // reads a feature at or past `n_features` (build sets it to the maximum + 1).
                let split = unsafe { *self.splits.get_unchecked(roots[l] + pos[l]) };
                let feature = (split.feature & !MISSING_RIGHT) as usize;
                let x = unsafe { *input.get_unchecked(row_start[l] + feature) };
                // Branch-free: NaN compares false, so it goes right only when so tracked.
                let right =
                    (x >= split.threshold) | (x.is_nan() & (split.feature & MISSING_RIGHT != 0));
                step(l, feature, roots[l] + pos[l], right);
                pos[l] = 2 * pos[l] + 1 + usize::from(right);
            }
        }
        let padded = (1usize << self.depth) - 1;
        pos.map(|p| p - padded)
    }

    fn finish(&self, scores: &mut [f32], out: &mut [f32]) -> usize {
        if self.n_columns == 1 {
            // Binary classifier with one score column: it is the positive class's margin.
            let p = match self.post {
                PostTransform::Logistic => sigmoid(scores[0]),
                _ => scores[0],
            };
            out[0] = 1.0 - p;
            out[1] = p;
            return usize::from(p > 0.5);
        }
        match self.post {
            PostTransform::None => {}
            PostTransform::Logistic => scores.iter_mut().for_each(|s| *s = sigmoid(*s)),
            PostTransform::Softmax => {
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for s in scores.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                scores.iter_mut().for_each(|s| *s /= sum);
            }
        }
        out.copy_from_slice(scores);
        scores
            .iter()
            .enumerate()
            .fold(0, |best, (i, &s)| if s > scores[best] { i } else { best })
    }

    /// The part of the margin not attributed to any feature: base value plus the trees' leaf
    /// means, for score column `column`.
    pub fn bias(&self, column: usize) -> f32 {
        self.base[column]
            + self
                .trees
                .iter()
                .filter(|t| t.column == column)
                .map(|t| t.mean)
                .sum::<f32>()
    }

    /// Adds each feature's contribution to score column `column`'s margin into `out`
    /// (`n_features()` values, log-odds for a logistic model).
    pub fn contributions_into(&self, row: &[f32], column: usize, out: &mut [f32]) {
        assert!(
            row.len() >= self.n_features && out.len() >= self.n_features,
            "row narrower than the model"
        );
        self.explain_row(row, column, out);
    }

    /// Walks score column `column`'s trees for one row, eight in lockstep, adding each split
    /// passed to the contribution of the feature it splits on; returns the sum of the leaves
    /// reached.
    fn explain_row(&self, row: &[f32], column: usize, out: &mut [f32]) -> f32 {
        let mut trees = self.trees.iter().filter(|t| t.column == column);
        let mut margin = 0.0;
        loop {
            let group: [Option<&TreeInfo>; LANES] = std::array::from_fn(|_| trees.next());
            if group.iter().any(Option::is_none) {
                for t in group.into_iter().flatten() {
                    let [leaf] =
                        self.walk([t.split_offset], [0], row, |_, feature, split, right| {
                            out[feature] += self.delta(split, right)
                        });
                    margin += self.leaves[t.leaf_offset + leaf];
                }
                return margin;
            }
            let group = group.map(Option::unwrap);
            let starts = group.map(|t| t.split_offset);
            let leaves = self.walk(starts, [0; LANES], row, |_, feature, split, right| {
                out[feature] += self.delta(split, right)
            });
            for (t, leaf) in group.iter().zip(leaves) {
                margin += self.leaves[t.leaf_offset + leaf];
            }
        }
    }

    /// The change of the subtree mean when `split` sends a row right, or left.
    #[inline(always)]
    fn delta(&self, split: usize, right: bool) -> f32 {
        let (left_delta, right_delta) = self.deltas[split];
        if right { right_delta } else { left_delta }
    }

    /// Probabilities (as [`Forest::predict_rows`]) and the positive column's contributions (as
    /// [`Forest::contributions_into`]) of `rows` rows of `width` values, in one walk per row.
    /// `None` for a model with more than one score column.
    pub fn predict_explained(
        &self,
        input: &[f32],
        width: usize,
        rows: usize,
    ) -> Option<(Vec<f32>, Vec<f32>)> {
        if self.n_columns != 1 {
            return None;
        }
        assert!(
            width >= self.n_features && input.len() >= rows * width,
            "rows narrower than the model"
        );
        let n = self.n_features;
        let mut margins = vec![self.base[0]; rows];
        let mut contributions = vec![0f32; rows * n];
        // Eight rows at a time through each tree, adding each split's change of the subtree
        // mean to the feature it splits on: the walk's own nodes (about 200 KiB for 200 trees
        // of depth 6) stay in cache, where a per-leaf table of every feature's contribution
        // does not (13k leaves x 15 features).
        let blocks = rows / LANES;
        for block in 0..blocks {
            let first = block * LANES;
            let row_start: [usize; LANES] = std::array::from_fn(|l| (first + l) * width);
            let out = &mut contributions[first * n..(first + LANES) * n];
            for t in &self.trees {
                let leaves = self.walk(
                    [t.split_offset; LANES],
                    row_start,
                    input,
                    |l, feature, split, right| out[l * n + feature] += self.delta(split, right),
                );
                for (m, leaf) in margins[first..first + LANES].iter_mut().zip(leaves) {
                    *m += self.leaves[t.leaf_offset + leaf];
                }
            }
        }
        for r in blocks * LANES..rows {
            let row = &input[r * width..(r + 1) * width];
            margins[r] += self.explain_row(row, 0, &mut contributions[r * n..(r + 1) * n]);
        }
        let mut probabilities = vec![0f32; rows * 2];
        for (margin, p) in margins.iter_mut().zip(probabilities.chunks_exact_mut(2)) {
            self.finish(std::slice::from_mut(margin), p);
        }
        Some((probabilities, contributions))
    }

    /// The score column whose contributions explain the positive class.
    pub fn positive_column(&self) -> usize {
        self.n_columns - 1
    }
}

/// Rewrites a comparison as "go left when x < threshold": returns the threshold and whether
/// the left child is the ONNX true branch.
fn normalize(mode: Mode, threshold: f32) -> (f32, bool) {
    match mode {
        Mode::Less => (threshold, true),
        // x <= t  <=>  x < next_up(t)
        Mode::LessEqual => (threshold.next_up(), true),
        // x >= t  <=>  !(x < t)
        Mode::GreaterEqual => (threshold, false),
        // x > t  <=>  !(x < next_up(t))
        Mode::Greater => (threshold.next_up(), false),
    }
}

/// The root is the one node no other node points to.
fn root_of(
    tree: usize,
    index: &std::collections::HashMap<usize, &NodeSpec>,
) -> Result<usize, ForestError> {
    let mut children = std::collections::HashSet::new();
    for n in index.values().filter(|n| n.mode.is_some()) {
        children.insert(n.true_id);
        children.insert(n.false_id);
    }
    let roots: Vec<usize> = index
        .keys()
        .filter(|id| !children.contains(id))
        .copied()
        .collect();
    match roots[..] {
        [root] => Ok(root),
        _ => Err(ForestError::Malformed(format!(
            "tree {tree} has {} roots",
            roots.len()
        ))),
    }
}

fn depth_of(
    index: &std::collections::HashMap<usize, &NodeSpec>,
    id: usize,
    level: u32,
    tree: usize,
) -> Result<u32, ForestError> {
    if level > MAX_DEPTH {
        return Err(ForestError::Unsupported(format!(
            "tree {tree} is deeper than {MAX_DEPTH} (or has a cycle)"
        )));
    }
    let node = index.get(&id).ok_or_else(|| {
        ForestError::Malformed(format!("tree {tree} points to missing node {id}"))
    })?;
    match node.mode {
        None => Ok(0),
        Some(_) => Ok(
            1 + depth_of(index, node.true_id, level + 1, tree)?.max(depth_of(
                index,
                node.false_id,
                level + 1,
                tree,
            )?),
        ),
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(
        tree: usize,
        id: usize,
        feature: usize,
        threshold: f32,
        t: usize,
        f: usize,
    ) -> NodeSpec {
        NodeSpec {
            tree,
            id,
            mode: Some(Mode::Less),
            feature,
            threshold,
            true_id: t,
            false_id: f,
            missing_tracks_true: true,
        }
    }

    fn leaf(tree: usize, id: usize) -> NodeSpec {
        NodeSpec {
            tree,
            id,
            mode: None,
            feature: 0,
            threshold: 0.0,
            true_id: 0,
            false_id: 0,
            missing_tracks_true: false,
        }
    }

    fn weight(tree: usize, id: usize, weight: f32) -> LeafSpec {
        LeafSpec {
            tree,
            id,
            class: 0,
            weight,
        }
    }

    /// Tree 0: x0 < 1 ? (x1 < 5 ? 1.0 : 2.0) : 3.0 — unbalanced, so padding matters.
    /// Tree 1: a single leaf of 0.5.
    fn sample() -> Forest {
        let nodes = vec![
            split(0, 0, 0, 1.0, 1, 2),
            split(0, 1, 1, 5.0, 3, 4),
            leaf(0, 2),
            leaf(0, 3),
            leaf(0, 4),
            leaf(1, 0),
        ];
        let leaves = vec![
            weight(0, 2, 3.0),
            weight(0, 3, 1.0),
            weight(0, 4, 2.0),
            weight(1, 0, 0.5),
        ];
        Forest::build(&nodes, &leaves, vec![0, 1], vec![0.25], PostTransform::None).unwrap()
    }

    #[test]
    fn walks_unbalanced_trees_and_single_leaf_trees() {
        let f = sample();
        let mut out = [0.0; 2];
        for (row, margin) in [
            ([0.0, 0.0], 1.0),
            ([0.0, 9.0], 2.0),
            ([2.0, 0.0], 3.0),
            ([2.0, 9.0], 3.0),
        ] {
            f.predict_into(&row, &mut out);
            assert_eq!(out[1], margin + 0.5 + 0.25, "row {row:?}");
        }
    }

    #[test]
    fn missing_values_follow_the_tracked_branch() {
        let f = sample();
        let mut out = [0.0; 2];
        f.predict_into(&[f32::NAN, f32::NAN], &mut out);
        assert_eq!(out[1], 1.0 + 0.75);
    }

    #[test]
    fn contributions_add_up_to_the_margin() {
        let f = sample();
        for row in [[0.0, 0.0], [0.0, 9.0], [2.0, 0.0], [f32::NAN, 7.0]] {
            let mut contrib = [0.0; 2];
            f.contributions_into(&row, 0, &mut contrib);
            let mut out = [0.0; 2];
            f.predict_into(&row, &mut out);
            let total = f.bias(0) + contrib.iter().sum::<f32>();
            assert!(
                (total - out[1]).abs() < 1e-6,
                "row {row:?}: {total} vs {}",
                out[1]
            );
        }
    }

    #[test]
    fn other_comparison_modes_are_normalized() {
        for (mode, at_threshold_goes_true) in [
            (Mode::LessEqual, true),
            (Mode::Less, false),
            (Mode::Greater, false),
            (Mode::GreaterEqual, true),
        ] {
            let mut root = split(0, 0, 0, 1.0, 1, 2);
            root.mode = Some(mode);
            let nodes = vec![root, leaf(0, 1), leaf(0, 2)];
            let leaves = vec![weight(0, 1, 10.0), weight(0, 2, 20.0)];
            let f =
                Forest::build(&nodes, &leaves, vec![0, 1], vec![], PostTransform::None).unwrap();
            let mut out = [0.0; 2];
            f.predict_into(&[1.0], &mut out);
            let expected = if at_threshold_goes_true { 10.0 } else { 20.0 };
            assert_eq!(out[1], expected, "{mode:?}");
        }
    }

    #[test]
    fn malformed_ensembles_are_refused_with_a_reason() {
        let dangling = vec![split(0, 0, 0, 1.0, 1, 7), leaf(0, 1)];
        let err = Forest::build(
            &dangling,
            &[weight(0, 1, 1.0)],
            vec![0, 1],
            vec![],
            PostTransform::None,
        )
        .unwrap_err();
        assert!(
            matches!(err, ForestError::Malformed(ref m) if m.contains("missing node 7")),
            "{err}"
        );
        let cycle = vec![split(0, 0, 0, 1.0, 1, 1), split(0, 1, 0, 1.0, 0, 0)];
        let err = Forest::build(&cycle, &[], vec![0, 1], vec![], PostTransform::None).unwrap_err();
        assert!(
            matches!(err, ForestError::Malformed(_) | ForestError::Unsupported(_)),
            "{err}"
        );
        let err = Forest::build(
            &[leaf(0, 0)],
            &[weight(0, 0, 1.0)],
            vec![0],
            vec![],
            PostTransform::None,
        )
        .unwrap_err();
        assert!(matches!(err, ForestError::Malformed(_)), "{err}");
    }
}
