//! Isolating the events a module fails on. A failed batch is run again in halves by state
//! key (a key's events stay together, in order), down to single keys; a key that fails
//! alone is run one event at a time, in order. The event that fails alone is dead-lettered,
//! and so are the key's events after it in the batch, held back behind it so that a key's
//! events are never scored out of order. Every other event is scored as usual, each key's new
//! state visible to the runs after it; each call after a trap gets a fresh instance.

use std::collections::HashMap;
use std::sync::Arc;

use crate::decision::{Decision, FailureCause, Stage};
use crate::engine::SandboxEngine;
use crate::event::Event;
use crate::inference::ModelRegistry;
use crate::sandbox::ModuleError;

use super::stages::{group_by_key, run_batch};
use super::{Live, StateStore};

/// An event that did not go through: why.
pub(super) enum Failure {
    /// A module failed on it alone.
    Failed(Stage, ModuleError),
    /// An earlier event of its key in the batch failed: it waits behind that one.
    Held { behind: String, stage: Stage },
}

impl Failure {
    pub(super) fn stage(&self) -> Stage {
        match self {
            Self::Failed(stage, _) | Self::Held { stage, .. } => *stage,
        }
    }

    pub(super) fn cause(&self) -> FailureCause {
        match self {
            Self::Failed(_, e) => e.cause(),
            Self::Held { .. } => FailureCause::HeldBack,
        }
    }

    pub(super) fn message(&self) -> String {
        match self {
            Self::Failed(_, e) => e.to_string(),
            Self::Held { behind, .. } => {
                format!("held back behind {behind}, an earlier event of its key that failed")
            }
        }
    }
}

/// What running a batch, isolating its failures, came to.
#[derive(Default)]
pub(super) struct Isolated {
    /// One per scored event, in input order.
    pub(super) decisions: Vec<Decision>,
    pub(super) unscored: usize,
    /// Events that did not go through, by their index in the batch.
    pub(super) failed: Vec<(usize, Failure)>,
    /// The new state of every key the scored events touched, in first-touched order.
    pub(super) states: Vec<(String, Vec<u8>)>,
    /// Calls that failed on the way (the whole batch's first among them).
    pub(super) failed_calls: usize,
}

/// What one isolation works on.
struct Run<'a, 'b> {
    live: &'a mut Live,
    engine: &'a SandboxEngine,
    models: &'a Arc<ModelRegistry>,
    overlay: Overlay<'b>,
    events: &'a [Event],
    out: Isolated,
}

/// Runs `events`, isolating failures.
pub(super) fn run(
    live: &mut Live,
    engine: &SandboxEngine,
    models: &Arc<ModelRegistry>,
    base: &dyn StateStore,
    events: &[Event],
) -> Isolated {
    let mut run = Run {
        live,
        engine,
        models,
        overlay: Overlay {
            base,
            states: Vec::new(),
            index: HashMap::new(),
        },
        events,
        out: Isolated::default(),
    };
    // The first try takes the batch as it came, without copying it.
    match run_batch(run.live, engine, models, &run.overlay, events) {
        Ok(done) => run.applied(done),
        Err((stage, error)) => {
            run.out.failed_calls += 1;
            tracing::debug!(%stage, events = events.len(), %error, "a batch failed; isolating the events that fail");
            let keys: Vec<Vec<usize>> = group_by_key(events)
                .into_iter()
                .map(|(_, idx)| idx)
                .collect();
            run.keys(&keys);
        }
    }
    let mut out = run.out;
    if out.failed_calls > 0 {
        // Runs by key returned decisions out of input order.
        let order: HashMap<&str, usize> = events
            .iter()
            .enumerate()
            .map(|(i, e)| (e.event_id.as_str(), i))
            .collect();
        out.decisions
            .sort_by_key(|d| order.get(d.event_id.as_str()).copied());
        out.failed.sort_by_key(|(i, _)| *i);
    }
    out.states = run.overlay.states;
    out
}

impl Run<'_, '_> {
    fn applied(&mut self, (decisions, states, unscored): super::stages::Decided) {
        for (key, state) in states {
            self.overlay.put(key, state);
        }
        self.out.decisions.extend(decisions);
        self.out.unscored += unscored;
    }

    /// Runs the events of these keys (each key's in order); on failure, each half again.
    fn keys(&mut self, keys: &[Vec<usize>]) {
        if let [key] = keys {
            return self.key(key);
        }
        let mut idx: Vec<usize> = keys.iter().flatten().copied().collect();
        idx.sort_unstable();
        let batch: Vec<Event> = idx.iter().map(|&i| self.events[i].clone()).collect();
        match run_batch(self.live, self.engine, self.models, &self.overlay, &batch) {
            Ok(done) => self.applied(done),
            Err(_) => {
                self.out.failed_calls += 1;
                let (a, b) = keys.split_at(keys.len() / 2);
                self.keys(a);
                self.keys(b);
            }
        }
    }

    /// Runs one key's events, one at a time after a failure of them all together.
    fn key(&mut self, idx: &[usize]) {
        let batch: Vec<Event> = idx.iter().map(|&i| self.events[i].clone()).collect();
        if idx.len() > 1 {
            match run_batch(self.live, self.engine, self.models, &self.overlay, &batch) {
                Ok(done) => return self.applied(done),
                Err(_) => self.out.failed_calls += 1,
            }
        }
        for (n, (&i, event)) in idx.iter().zip(&batch).enumerate() {
            match run_batch(
                self.live,
                self.engine,
                self.models,
                &self.overlay,
                std::slice::from_ref(event),
            ) {
                Ok(done) => self.applied(done),
                Err((stage, error)) => {
                    self.out.failed_calls += 1;
                    self.out.failed.push((i, Failure::Failed(stage, error)));
                    for &later in &idx[n + 1..] {
                        let behind = event.event_id.clone();
                        self.out
                            .failed
                            .push((later, Failure::Held { behind, stage }));
                    }
                    return;
                }
            }
        }
    }
}

/// The states runs produced, read before the pipeline's store.
struct Overlay<'a> {
    base: &'a dyn StateStore,
    states: Vec<(String, Vec<u8>)>,
    index: HashMap<String, usize>,
}

impl Overlay<'_> {
    fn put(&mut self, key: String, state: Vec<u8>) {
        match self.index.get(&key) {
            Some(&i) => self.states[i].1 = state,
            None => {
                self.index.insert(key.clone(), self.states.len());
                self.states.push((key, state));
            }
        }
    }
}

impl StateStore for Overlay<'_> {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        match self.index.get(key) {
            Some(&i) => Some(self.states[i].1.clone()),
            None => self.base.get(key),
        }
    }

    fn put(&mut self, key: String, state: Vec<u8>) {
        Overlay::put(self, key, state);
    }
}
