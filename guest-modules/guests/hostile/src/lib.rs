//! A policy module that misbehaves on purpose, for sandbox tests.
//!
//! Configuration: `mode` is one of `loop` (spins forever), `membomb` (allocates until it is
//! stopped), `recursion` (recurses without end), `panic`, or `none`; `trigger` is a substring of
//! the task id that sets it off (empty: every batch). Batches without a trigger get no actions.

use std::cell::RefCell;

// The allocator of the real modules (see the crate), so the memory bomb runs into the cap
// through it.
use guest_alloc as _;

wit_bindgen::generate!({
    path: "../../../wit",
    world: "policy",
});

use exports::fleet::edge::decide::{DecisionInput, Guest as Decide};
use exports::fleet::edge::module::Guest as Module;
use fleet::edge::types::{Action, Config, FeatureMatrix};

struct Hostile;

thread_local! {
    static SETUP: RefCell<(String, String)> = RefCell::new(("none".into(), String::new()));
}

impl Module for Hostile {
    fn init(config: Config) -> Result<(), String> {
        let mut mode = "none".to_string();
        let mut trigger = String::new();
        for (key, value) in config {
            match key.as_str() {
                "mode" => mode = value,
                "trigger" => trigger = value,
                _ => {}
            }
        }
        if !["loop", "membomb", "recursion", "panic", "none"].contains(&mode.as_str()) {
            return Err(format!("unknown mode {mode:?}"));
        }
        SETUP.with(|s| *s.borrow_mut() = (mode, trigger));
        Ok(())
    }
}

impl Decide for Hostile {
    fn decide(
        _feature_names: Vec<String>,
        _features: FeatureMatrix,
        inputs: Vec<DecisionInput>,
    ) -> Vec<Vec<Action>> {
        let (mode, trigger) = SETUP.with(|s| s.borrow().clone());
        let triggered = inputs.iter().any(|i| {
            i.context
                .task_id
                .as_deref()
                .unwrap_or("")
                .contains(&trigger)
        });
        if triggered {
            misbehave(&mode);
        }
        inputs.iter().map(|_| Vec::new()).collect()
    }
}

fn misbehave(mode: &str) {
    match mode {
        "loop" => {
            let mut n = 0u64;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "membomb" => {
            // Grabs memory in 4 MiB chunks (touching one byte of each), so the cap is reached
            // in a few grows rather than after paging in every byte.
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                let mut chunk = Vec::with_capacity(4 << 20);
                chunk.push(1u8);
                hoard.push(std::hint::black_box(chunk));
            }
        }
        "recursion" => {
            std::hint::black_box(recurse(1));
        }
        "panic" => panic!("hostile module panicked on purpose"),
        _ => {}
    }
}

#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    recurse(std::hint::black_box(depth + 1)).wrapping_add(depth)
}

export!(Hostile);
