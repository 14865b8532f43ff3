//! The late-risk scorer: feature vectors to probabilities and top factors, through the host's
//! `inference` import. The model itself runs natively on the host.
//!
//! Configuration: `model` (registered model name, default `late_risk`), `top_factors`
//! (how many factors to report per score, default 3).

use std::cell::RefCell;

// Our allocator and `cabi_realloc` (see the crate).
use guest_alloc as _;

wit_bindgen::generate!({
    path: "../../../wit",
    world: "scorer",
});

use exports::fleet::edge::module::Guest as Module;
use exports::fleet::edge::scoring::Guest as Scoring;
use fleet::edge::inference::{self, NamedTensor, Tensor, TensorType};
use fleet::edge::types::{Config, Factor, FeatureMatrix, Score as Scored};

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
    fn score_batch(batch: FeatureMatrix) -> Result<Vec<Scored>, String> {
        SETUP.with(|s| {
            let setup = s.borrow();
            let setup = setup.as_ref().ok_or("score called before init")?;
            score_with(setup, &batch)
        })
    }
}

fn score_with(setup: &Setup, batch: &FeatureMatrix) -> Result<Vec<Scored>, String> {
    let width = setup.features.len();
    if batch.width as usize != width {
        return Err(format!(
            "rows have {} features, the model reads {width}",
            batch.width
        ));
    }
    if !batch.values.len().is_multiple_of(width.max(1)) {
        return Err(format!(
            "{} values do not make whole rows of {width}",
            batch.values.len()
        ));
    }
    let rows = batch.values.len() / width.max(1);
    if rows == 0 {
        return Ok(Vec::new());
    }
    let mut data = Vec::with_capacity(batch.values.len() * 4);
    for v in &batch.values {
        data.extend_from_slice(&v.to_le_bytes());
    }
    let input = NamedTensor {
        name: "input".into(),
        tensor: Tensor {
            dimensions: vec![rows as u32, width as u32],
            ty: TensorType::Fp32,
            data,
        },
    };
    let wanted = ["probabilities".to_string(), "contributions".to_string()];
    let outputs = inference::compute(setup.graph, &[input], &wanted)
        .map_err(|e| format!("inference failed: {e:?}"))?;
    let probabilities = output(&outputs, "probabilities", rows * 2)?;
    let contributions = output(&outputs, "contributions", rows * width)?;
    Ok((0..rows)
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

/// The `k` largest contributions by magnitude, largest first (zeros left out). A pass that
/// keeps the best `k` so far: with 15 features and k = 3 it is a fraction of a full sort.
fn top_factors(contributions: &[f32], k: usize) -> Vec<Factor> {
    let mut top: Vec<Factor> = Vec::with_capacity(k + 1);
    for (i, &c) in contributions.iter().enumerate() {
        if c == 0.0 || c.is_nan() {
            continue;
        }
        // After the last kept factor whose magnitude is at least this one's: ties keep
        // feature order.
        let at = top.partition_point(|f| f.contribution.abs() >= c.abs());
        if at < k {
            top.insert(
                at,
                Factor {
                    feature: i as u32,
                    contribution: c,
                },
            );
            top.truncate(k);
        }
    }
    top
}

export!(Scorer);
