//! The late-risk scorer: feature vectors to probabilities and top factors, through the host's
//! `inference` import. The model itself runs natively on the host.
//!
//! Configuration: `model` (registered model name, default `late_risk`), `top_factors`
//! (how many factors to report per score, default 3).

use std::cell::RefCell;

wit_bindgen::generate!({
    path: "../../../wit",
    world: "scorer",
});

use exports::fleet::edge::module::Guest as Module;
use exports::fleet::edge::scoring::Guest as Scoring;
use fleet::edge::inference::{self, NamedTensor, Tensor, TensorType};
use fleet::edge::types::{Config, Factor, FeatureVector, Score as Scored};

struct Scorer;

/// Set up by `init`: the graph handle and what the host says about the model.
struct Setup {
    graph: inference::Graph,
    features: Vec<String>,
    top_factors: usize,
}

thread_local! {
    static SETUP: RefCell<Option<Setup>> = const { RefCell::new(None) };
}

impl Module for Scorer {
    fn init(config: Config) -> Result<(), String> {
        let mut model = "late_risk".to_string();
        let mut top_factors = 3;
        for (key, value) in config {
            match key.as_str() {
                "model" => model = value,
                "top_factors" => {
                    top_factors = value
                        .parse()
                        .map_err(|_| format!("top_factors must be a whole number, got {value:?}"))?
                }
                "version" => {}
                other => return Err(format!("unknown configuration key {other:?}")),
            }
        }
        let graph = inference::load(&model).map_err(|e| format!("model {model:?}: {e:?}"))?;
        let info = inference::info(graph).map_err(|e| format!("model {model:?}: {e:?}"))?;
        for needed in ["probabilities", "contributions"] {
            if !info.outputs.iter().any(|o| o == needed) {
                return Err(format!("model {model:?} has no {needed:?} output"));
            }
        }
        SETUP.with(|s| {
            *s.borrow_mut() = Some(Setup {
                graph,
                features: info.features,
                top_factors,
            })
        });
        Ok(())
    }
}

impl Scoring for Scorer {
    fn score_batch(vectors: Vec<FeatureVector>) -> Result<Vec<Scored>, String> {
        SETUP.with(|s| {
            let setup = s.borrow();
            let setup = setup.as_ref().ok_or("score called before init")?;
            score_with(setup, &vectors)
        })
    }
}

fn score_with(setup: &Setup, vectors: &[FeatureVector]) -> Result<Vec<Scored>, String> {
    if vectors.is_empty() {
        return Ok(Vec::new());
    }
    let width = setup.features.len();
    let mut data = Vec::with_capacity(vectors.len() * width * 4);
    for (i, v) in vectors.iter().enumerate() {
        if v.len() != width {
            return Err(format!(
                "vector {i} has {} features, the model reads {width}",
                v.len()
            ));
        }
        data.extend(v.iter().flat_map(|x| x.to_le_bytes()));
    }
    let input = NamedTensor {
        name: "input".into(),
        tensor: Tensor {
            dimensions: vec![vectors.len() as u32, width as u32],
            ty: TensorType::Fp32,
            data,
        },
    };
    let wanted = ["probabilities".to_string(), "contributions".to_string()];
    let outputs = inference::compute(setup.graph, &[input], &wanted)
        .map_err(|e| format!("inference failed: {e:?}"))?;
    let probabilities = output(&outputs, "probabilities", vectors.len() * 2)?;
    let contributions = output(&outputs, "contributions", vectors.len() * width)?;
    Ok((0..vectors.len())
        .map(|row| Scored {
            probability: probabilities[row * 2 + 1],
            top_factors: top_factors(
                &contributions[row * width..(row + 1) * width],
                setup.top_factors,
            ),
        })
        .collect())
}

fn output(outputs: &[NamedTensor], name: &str, len: usize) -> Result<Vec<f32>, String> {
    let tensor = outputs
        .iter()
        .find(|o| o.name == name)
        .ok_or_else(|| format!("the host returned no {name:?}"))?;
    let values: Vec<f32> = tensor
        .tensor
        .data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if values.len() != len {
        return Err(format!(
            "{name:?} has {} values, expected {len}",
            values.len()
        ));
    }
    Ok(values)
}

fn top_factors(contributions: &[f32], k: usize) -> Vec<Factor> {
    let mut idx: Vec<usize> = (0..contributions.len()).collect();
    idx.sort_by(|&a, &b| contributions[b].abs().total_cmp(&contributions[a].abs()));
    idx.into_iter()
        .take(k)
        .filter(|&i| contributions[i] != 0.0)
        .map(|i| Factor {
            feature: i as u32,
            contribution: contributions[i],
        })
        .collect()
}

export!(Scorer);
