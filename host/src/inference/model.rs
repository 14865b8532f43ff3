//! One ONNX model with the metadata the host needs: name, version, input feature names,
//! digest. A graph that is one tree ensemble runs on our [`Forest`] directly; any other graph
//! runs on tract, in builds with the `tract` feature (the default; a handset build leaves it
//! out).

use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::InferenceError;
use super::forest::Forest;
#[cfg(feature = "tract")]
use super::graph::Graph;
use super::tree_ensemble;
pub use fleet_onnx::{META_FEATURES, META_NAME, META_VERSION};
use fleet_onnx::{ModelBaseline, ModelProto};

/// A loaded model, ready to run from many threads.
pub struct Model {
    pub name: String,
    pub version: String,
    /// Input column names, in order.
    pub features: Vec<String>,
    /// `sha256:` and the hex digest of the ONNX bytes.
    pub digest: String,
    runner: Runner,
    /// Present when the whole graph is one tree ensemble reading the input: explains
    /// predictions (and computes them with the explanation in one pass).
    forest: Option<Arc<Forest>>,
}

/// What computes the probabilities.
enum Runner {
    /// Our forest, which is the whole graph.
    Forest(Arc<Forest>),
    /// tract's plan of the graph.
    #[cfg(feature = "tract")]
    Graph(Graph),
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

/// The model's metadata, read before its graph.
struct Header {
    proto: ModelProto,
    name: String,
    version: String,
    features: Vec<String>,
}

impl Header {
    fn read(fallback_name: &str, bytes: &[u8]) -> anyhow::Result<Self> {
        let proto = ModelProto::parse(bytes)?;
        if proto.graph.is_none() {
            anyhow::bail!("no graph");
        }
        let name = proto.meta(META_NAME).unwrap_or(fallback_name).to_string();
        let version = proto
            .meta(META_VERSION)
            .unwrap_or("unversioned")
            .to_string();
        let features = proto
            .meta(META_FEATURES)
            .map(|f| f.split(',').map(|s| s.trim().to_string()).collect())
            .ok_or_else(|| {
                anyhow::anyhow!("no {META_FEATURES} metadata: the input columns are unnamed")
            })?;
        // Drift is measured against it at the aggregator: a model that ships a baseline
        // that cannot be read is refused here, where the release is built or loaded.
        ModelBaseline::of_proto(&proto)?;
        Ok(Self {
            proto,
            name,
            version,
            features,
        })
    }
}

impl Model {
    /// Loads an ONNX model from bytes. `fallback_name` names it when its metadata does not.
    pub fn load(fallback_name: &str, bytes: &[u8]) -> Result<Self, InferenceError> {
        let invalid = invalid(fallback_name);
        let header = Header::read(fallback_name, bytes).map_err(&invalid)?;
        if let Some(node) = header.proto.whole_graph_ensemble() {
            let forest = Arc::new(tree_ensemble::parse(node).map_err(&invalid)?);
            return Self::assemble(header, bytes, Runner::Forest(forest.clone()), Some(forest))
                .map_err(invalid);
        }
        Self::load_graph(header, bytes).map_err(invalid)
    }

    /// Loads the model through tract even when the host runs its graph itself, so that the
    /// two can be checked against each other.
    #[cfg(feature = "tract")]
    pub fn load_through_tract(fallback_name: &str, bytes: &[u8]) -> Result<Self, InferenceError> {
        let invalid = invalid(fallback_name);
        let header = Header::read(fallback_name, bytes).map_err(&invalid)?;
        let graph = Graph::load(bytes, header.features.len()).map_err(&invalid)?;
        let forest = graph.forest().cloned();
        Self::assemble(header, bytes, Runner::Graph(graph), forest).map_err(invalid)
    }

    #[cfg(feature = "tract")]
    fn load_graph(header: Header, bytes: &[u8]) -> anyhow::Result<Self> {
        let graph = Graph::load(bytes, header.features.len())?;
        match graph.forest().cloned() {
            Some(forest) => {
                Self::assemble(header, bytes, Runner::Forest(forest.clone()), Some(forest))
            }
            None => Self::assemble(header, bytes, Runner::Graph(graph), None),
        }
    }

    #[cfg(not(feature = "tract"))]
    fn load_graph(_header: Header, _bytes: &[u8]) -> anyhow::Result<Self> {
        anyhow::bail!(
            "its graph is not one TreeEnsembleClassifier from input to outputs, the only \
             graph this build runs (it was built without the `tract` feature)"
        )
    }

    fn assemble(
        header: Header,
        bytes: &[u8],
        runner: Runner,
        forest: Option<Arc<Forest>>,
    ) -> anyhow::Result<Self> {
        let width = header.features.len();
        if let Some(forest) = &forest
            && forest.n_features() > width
        {
            anyhow::bail!(
                "trees read feature {} but the input has {width} columns",
                forest.n_features() - 1
            );
        }
        Ok(Self {
            name: header.name,
            version: header.version,
            features: header.features,
            digest: format!("sha256:{:x}", Sha256::digest(bytes)),
            runner,
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
        let width = self.features.len();
        match &self.runner {
            Runner::Forest(forest) => {
                let mut probabilities = vec![0f32; rows * forest.labels().len()];
                let mut winners = vec![0usize; rows];
                forest.predict_rows(input, width, &mut probabilities, &mut winners);
                Ok(probabilities)
            }
            #[cfg(feature = "tract")]
            Runner::Graph(graph) => graph.probabilities(input, rows, width),
        }
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

fn invalid(model: &str) -> impl Fn(anyhow::Error) -> InferenceError + '_ {
    move |e| InferenceError::InvalidModel {
        model: model.to_string(),
        reason: format!("{e:#}"),
    }
}
