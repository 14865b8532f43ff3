//! Deduplication by event id: a window of the last ids seen, by a 128-bit hash.

use std::collections::{HashSet, VecDeque};

use xxhash_rust::xxh3::xxh3_128;

/// The 128-bit hash event ids are deduplicated by.
pub fn event_hash(event_id: &str) -> u128 {
    xxh3_128(event_id.as_bytes())
}

/// A hasher for keys that are already uniform hashes: it keeps their low 64 bits.
#[derive(Default, Clone, Copy)]
pub struct PreHashed(u64);

impl std::hash::Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u128` is used for our keys; fold anything else in anyway.
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(b);
        }
    }

    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

pub(crate) type HashSet128 = HashSet<u128, std::hash::BuildHasherDefault<PreHashed>>;

/// The last `capacity` event ids seen, by [`event_hash`].
#[derive(Debug)]
pub struct DedupWindow {
    seen: HashSet128,
    order: VecDeque<u128>,
    capacity: usize,
}

impl DedupWindow {
    pub fn new(capacity: usize) -> Self {
        Self {
            seen: HashSet128::default(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn contains(&self, event_id: &str) -> bool {
        self.contains_hash(event_hash(event_id))
    }

    pub fn contains_hash(&self, hash: u128) -> bool {
        self.seen.contains(&hash)
    }

    pub fn insert(&mut self, event_id: &str) {
        self.insert_hash(event_hash(event_id));
    }

    pub fn insert_hash(&mut self, hash: u128) {
        if self.seen.insert(hash) {
            self.order.push_back(hash);
            if self.order.len() > self.capacity
                && let Some(old) = self.order.pop_front()
            {
                self.seen.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_window_forgets_the_oldest_ids_past_its_capacity() {
        let mut window = DedupWindow::new(2);
        window.insert("a");
        window.insert("b");
        assert!(window.contains("a") && window.contains("b"));
        window.insert("c");
        assert!(!window.contains("a") && window.contains("b") && window.contains("c"));
        // A repeat is not a new id: it evicts nothing.
        window.insert("c");
        assert!(window.contains("b"));
        assert_eq!(window.contains_hash(event_hash("c")), window.contains("c"));
    }
}
