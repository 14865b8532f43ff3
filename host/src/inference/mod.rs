//! Model inference on the host, behind the WIT `inference` import (shaped like wasi-nn).
//!
//! Models are registered by name in a [`ModelRegistry`]; a scorer instance gets an
//! [`InferenceCtx`] that resolves names to graph handles. The model runs natively; the module
//! only sees tensors.

mod forest;
#[cfg(feature = "tract")]
mod graph;
mod model;
#[cfg(feature = "tract")]
mod onnx_op;
mod tree_ensemble;

use std::collections::HashMap;
use std::sync::Arc;

use thiserror::Error;

pub use forest::{Forest, ForestError};
pub use model::{META_FEATURES, META_NAME, META_VERSION, Model};

use crate::bindings::inference as wit;

/// Why a model could not be loaded or run.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum InferenceError {
    /// The bytes are not a model we can load.
    #[error("model {model}: {reason}")]
    InvalidModel {
        /// The name it was registered under.
        model: String,
        /// What the parser, tract or our checks said.
        reason: String,
    },
    /// No model of that name is registered.
    #[error("no model named {0:?}")]
    NotFound(String),
    /// Inputs that do not fit the model.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The model failed while running.
    #[error("inference failed: {0}")]
    Runtime(String),
}

/// The models this host serves, by name.
#[derive(Debug, Default, Clone)]
pub struct ModelRegistry {
    models: HashMap<String, Arc<Model>>,
}

impl ModelRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `model` under its own name, replacing any model of that name.
    pub fn insert(&mut self, model: Model) -> Arc<Model> {
        let model = Arc::new(model);
        self.insert_shared(model.clone());
        model
    }

    /// [`Self::insert`] for a model other registries hold too.
    pub fn insert_shared(&mut self, model: Arc<Model>) {
        self.models.insert(model.name.clone(), model);
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Model>> {
        self.models.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Model>> {
        self.models.values()
    }
}

/// One instance's view of the models: graph handles index into `graphs`.
#[derive(Default)]
pub struct InferenceCtx {
    registry: Arc<ModelRegistry>,
    graphs: Vec<Arc<Model>>,
}

impl InferenceCtx {
    pub fn new(registry: Arc<ModelRegistry>) -> Self {
        Self {
            registry,
            graphs: Vec::new(),
        }
    }

    /// Models this instance has loaded, in handle order.
    pub fn loaded(&self) -> &[Arc<Model>] {
        &self.graphs
    }

    fn graph(&self, graph: wit::Graph) -> Result<&Arc<Model>, wit::Error> {
        self.graphs
            .get(graph as usize)
            .ok_or_else(|| wit::Error::NotFound(format!("no graph handle {graph}")))
    }
}

impl From<InferenceError> for wit::Error {
    fn from(e: InferenceError) -> Self {
        match e {
            InferenceError::NotFound(m) => Self::NotFound(m),
            InferenceError::InvalidInput(m) => Self::InvalidInput(m),
            other => Self::Runtime(other.to_string()),
        }
    }
}

impl wit::Host for crate::sandbox::HostState {
    fn load(&mut self, name: String) -> Result<wit::Graph, wit::Error> {
        let ctx = &mut self.inference;
        if let Some(i) = ctx.graphs.iter().position(|m| m.name == name) {
            return Ok(i as wit::Graph);
        }
        let model = ctx
            .registry
            .get(&name)
            .ok_or(wit::Error::NotFound(name))?
            .clone();
        ctx.graphs.push(model);
        Ok((ctx.graphs.len() - 1) as wit::Graph)
    }

    fn info(&mut self, graph: wit::Graph) -> Result<wit::GraphInfo, wit::Error> {
        let model = self.inference.graph(graph)?;
        Ok(wit::GraphInfo {
            name: model.name.clone(),
            version: model.version.clone(),
            features: model.features.clone(),
            outputs: model.outputs(),
        })
    }

    fn compute(
        &mut self,
        graph: wit::Graph,
        inputs: Vec<wit::NamedTensor>,
        outputs: Vec<String>,
    ) -> Result<Vec<wit::NamedTensor>, wit::Error> {
        let model = self.inference.graph(graph)?.clone();
        let [input] = &inputs[..] else {
            return Err(wit::Error::InvalidInput(format!(
                "expected 1 input tensor, got {}",
                inputs.len()
            )));
        };
        let (rows, values) = input_rows(&input.tensor, model.features.len())?;
        let wants = |name: &str| outputs.iter().any(|o| o == name);
        if let Some(other) = outputs.iter().find(|o| !model.outputs().contains(o)) {
            return Err(wit::Error::InvalidInput(format!(
                "no output named {other:?}"
            )));
        }
        let (mut probabilities, mut contributions) =
            match (wants("probabilities"), wants("contributions")) {
                (true, true) => {
                    let (p, c) = model.explained(&values, rows)?;
                    (Some(p), Some(c))
                }
                (true, false) => (Some(model.probabilities(&values, rows)?), None),
                (false, true) => (None, Some(model.contributions(&values, rows)?)),
                (false, false) => (None, None),
            };
        outputs
            .iter()
            .map(|name| {
                let (data, width) = match name.as_str() {
                    "probabilities" => {
                        let p = probabilities.take().unwrap_or_default();
                        let width = p.len().checked_div(rows).unwrap_or(0);
                        (p, width)
                    }
                    _ => (
                        contributions.take().unwrap_or_default(),
                        model.features.len(),
                    ),
                };
                Ok(wit::NamedTensor {
                    name: name.clone(),
                    tensor: wit::Tensor {
                        dimensions: vec![rows as u32, width as u32],
                        ty: wit::TensorType::Fp32,
                        data: le_bytes(&data),
                    },
                })
            })
            .collect()
    }
}

/// Tensor data for `values`: little-endian fp32, sized once (a `flat_map` collect grows the
/// vector a dozen times for a batch's contributions).
fn le_bytes(values: &[f32]) -> Vec<u8> {
    let mut data = Vec::with_capacity(values.len() * 4);
    for v in values {
        data.extend_from_slice(&v.to_le_bytes());
    }
    data
}

/// Checks an fp32 `[rows, width]` tensor and decodes its values.
fn input_rows(tensor: &wit::Tensor, width: usize) -> Result<(usize, Vec<f32>), wit::Error> {
    let invalid = |m: String| wit::Error::InvalidInput(m);
    if tensor.ty != wit::TensorType::Fp32 {
        return Err(invalid("input must be fp32".into()));
    }
    let [rows, cols] = tensor.dimensions[..] else {
        return Err(invalid(format!(
            "input must be 2-D, got {:?}",
            tensor.dimensions
        )));
    };
    if cols as usize != width {
        return Err(invalid(format!(
            "input has {cols} columns, the model reads {width}"
        )));
    }
    let expected = rows as usize * width * 4;
    if tensor.data.len() != expected {
        return Err(invalid(format!(
            "input has {} bytes, shape needs {expected}",
            tensor.data.len()
        )));
    }
    let values = tensor
        .data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok((rows as usize, values))
}
