//! The late-risk feature extractor: folds a task's delivery events, in event-time order, into
//! the feature vector the late-risk model reads (see `models/late_risk/features.toml`).
//!
//! Pure: everything it knows about a task is in the state the host hands back. It does not read
//! clocks, files or randomness; "now" is the latest event time folded for the key.

mod fold;
mod geo;
mod state;

// Our allocator and `cabi_realloc` (see the crate).
use guest_alloc as _;

wit_bindgen::generate!({
    path: "../../../wit",
    world: "features",
});

use exports::fleet::edge::extract::{Guest as Extract, KeyBatch, KeyOutput};
use exports::fleet::edge::module::Guest as Module;
use fleet::edge::types::Config;

pub struct Features;

impl Module for Features {
    fn init(config: Config) -> Result<(), String> {
        match config.iter().find(|(k, _)| k != "version") {
            Some((key, _)) => Err(format!("unknown configuration key {key:?}")),
            None => Ok(()),
        }
    }
}

impl Extract for Features {
    fn feature_names() -> Vec<String> {
        fold::FEATURE_NAMES.iter().map(|s| s.to_string()).collect()
    }

    fn extract(batches: Vec<KeyBatch>) -> Vec<KeyOutput> {
        batches.into_iter().map(extract_key).collect()
    }
}

fn extract_key(batch: KeyBatch) -> KeyOutput {
    // A state this module cannot read (another module's, or a format from an older version)
    // starts the key afresh rather than failing every later batch for it.
    let mut task = batch
        .state
        .as_deref()
        .and_then(state::TaskState::decode)
        .unwrap_or_default();
    let features = fold::fold_batch(&mut task, &batch.events);
    KeyOutput {
        state: task.encode(),
        features,
    }
}

// Natively (benchmarks) the same code is called through the Guest traits instead.
#[cfg(target_arch = "wasm32")]
export!(Features);

/// For native callers (benchmarks): the generated types and the implementation.
pub mod native {
    pub use crate::exports::fleet::edge::extract::{Guest as Extract, KeyBatch, KeyOutput};
    pub use crate::fleet::edge::types::{Event, EventType, Geo, TaskContext};
}
