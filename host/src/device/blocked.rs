//! Keys held behind a dead letter. A key's events are never scored out of order: once an
//! event of a key is parked, the key's later events are parked behind it without running
//! (so a poison task costs one isolation, not one per batch), until a retry has scored every
//! parked event of the key. Kept per journal, in memory, rebuilt from the parked events the
//! first time a journal is seen.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use fleet_journal::{Journal, JournalError, Parked};

use crate::decision::{DeadLetter, FailureCause, Stage};
use crate::event::Event;

/// The first dead letter of a key, and how many of its events are parked.
#[derive(Clone, Debug)]
pub(super) struct Block {
    /// The event the others wait behind.
    pub(super) behind: String,
    pub(super) stage: Stage,
    pub(super) module: String,
    pub(super) parked: u64,
}

#[derive(Default)]
pub(super) struct Blocked {
    journals: HashMap<usize, HashMap<String, Block>>,
}

impl Blocked {
    /// The blocked keys of `journal`.
    pub(super) fn of(
        &mut self,
        journal: &Arc<Journal>,
    ) -> Result<&mut HashMap<String, Block>, JournalError> {
        match self.journals.entry(Arc::as_ptr(journal) as usize) {
            Entry::Occupied(keys) => Ok(keys.into_mut()),
            Entry::Vacant(slot) => Ok(slot.insert(load(journal)?)),
        }
    }
}

/// The blocked keys of a journal seen for the first time, from its parked events.
fn load(journal: &Journal) -> Result<HashMap<String, Block>, JournalError> {
    let mut keys: HashMap<String, Block> = HashMap::new();
    let mut after = 0;
    loop {
        let page = journal.parked(after, 1024)?;
        let Some(last) = page.last() else {
            return Ok(keys);
        };
        after = last.id;
        for p in &page {
            if let Some((key, block)) = block_of(p) {
                keys.entry(key)
                    .and_modify(|b| b.parked += 1)
                    .or_insert(block);
            }
        }
    }
}

impl Block {
    /// A dead letter for `event`, held behind this block's first event.
    pub(super) fn hold(&self, event: Event) -> DeadLetter {
        DeadLetter {
            stage: self.stage,
            module: self.module.clone(),
            key: event.state_key().to_string(),
            cause: FailureCause::HeldBack,
            error: format!(
                "held back behind {}, an earlier event of its key that is parked",
                self.behind
            ),
            event,
        }
    }
}

/// Notes that `d` was parked.
pub(super) fn parked(keys: &mut HashMap<String, Block>, d: &DeadLetter) {
    keys.entry(d.key.clone())
        .and_modify(|b| b.parked += 1)
        .or_insert_with(|| Block {
            behind: d.event.event_id.clone(),
            stage: d.stage,
            module: d.module.clone(),
            parked: 1,
        });
}

/// Notes that an event of `key` left the parking.
pub(super) fn resolved(keys: &mut HashMap<String, Block>, key: &str) {
    if let Some(b) = keys.get_mut(key) {
        b.parked = b.parked.saturating_sub(1);
        if b.parked == 0 {
            keys.remove(key);
        }
    }
}

/// The key a parked event blocks, from its payload (the dead letter as a JSON line).
fn block_of(p: &Parked) -> Option<(String, Block)> {
    let line: serde_json::Value = serde_json::from_slice(&p.payload).ok()?;
    let event = Event::from_json(&line.to_string()).ok()?;
    let note = &line["dead_letter"];
    let stage: Stage = serde_json::from_value(note["stage"].clone()).ok()?;
    Some((
        event.state_key().to_string(),
        Block {
            behind: event.event_id.clone(),
            stage,
            module: note["module"].as_str().unwrap_or_default().to_string(),
            parked: 1,
        },
    ))
}
