//! The bounded dedup index: one mark per accepted event id, in acceptance order, the oldest
//! forgotten first once there are more than the capacity.

use std::collections::HashMap;

use sled::InlineArray;

use crate::keys::{self, DEDUP};
use crate::store::JournalError;
use crate::writes::Writes;

/// The marks one commit adds (and the old ones it evicts), on top of what the tree holds.
pub(crate) struct DedupMarks {
    pub(crate) head: u64,
    pub(crate) tail: u64,
    capacity: u64,
    /// Marks written by this commit are not in the tree yet: evicting them looks here.
    marks_here: HashMap<u64, String>,
    latest_here: HashMap<String, u64>,
}

impl DedupMarks {
    pub(crate) fn new(head: u64, tail: u64, capacity: u64) -> Self {
        Self {
            head,
            tail,
            capacity,
            marks_here: HashMap::new(),
            latest_here: HashMap::new(),
        }
    }

    pub(crate) fn len(&self) -> u64 {
        self.head - self.tail
    }

    /// Marks `event_id` as accepted, evicting the oldest marks past the capacity; `read`
    /// reads the tree as the commit began.
    pub(crate) fn mark(
        &mut self,
        event_id: &str,
        batch: &mut Writes,
        read: &impl Fn(&[u8]) -> Result<Option<InlineArray>, JournalError>,
    ) -> Result<(), JournalError> {
        let head = self.head;
        batch.insert(keys::prefixed_str(DEDUP, event_id), head.to_be_bytes());
        batch.insert(keys::dedup_order(head), event_id.as_bytes());
        self.marks_here.insert(head, event_id.to_string());
        self.latest_here.insert(event_id.to_string(), head);
        self.head += 1;
        while self.len() > self.capacity {
            self.evict_oldest(batch, read)?;
        }
        Ok(())
    }

    fn evict_oldest(
        &mut self,
        batch: &mut Writes,
        read: &impl Fn(&[u8]) -> Result<Option<InlineArray>, JournalError>,
    ) -> Result<(), JournalError> {
        let tail = self.tail;
        let id = match self.marks_here.remove(&tail) {
            Some(id) => Some(id),
            None => {
                read(&keys::dedup_order(tail))?.map(|v| String::from_utf8_lossy(&v).into_owned())
            }
        };
        if let Some(id) = id {
            // Only if no newer mark for the same id replaced it.
            let current = match self.latest_here.get(&id) {
                Some(&m) => Some(m),
                None => read(&keys::prefixed_str(DEDUP, &id))?
                    .as_deref()
                    .and_then(keys::read_u64),
            };
            if current == Some(tail) {
                batch.remove(keys::prefixed_str(DEDUP, &id));
            }
        }
        batch.remove(keys::dedup_order(tail));
        self.tail += 1;
        Ok(())
    }
}
