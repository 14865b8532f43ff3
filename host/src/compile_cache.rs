//! Cranelift's incremental compilation cache, kept in memory: machine code per function, keyed
//! by the function's compiler input.
//!
//! Swapping in a new module version is mostly compilation (60-90 ms for our ~100 KB
//! components on this machine). Most of a new version's functions are the same as the last
//! one's, and as every other module's built by the same toolchain: the allocator, `core::fmt`,
//! the panic path, the bindings' glue. With this cache those compile once per process and a
//! new version pays only for the functions that changed.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};

use quick_cache::Weighter;
use quick_cache::sync::Cache;

/// Bytes of machine code (plus keys) kept; the three shipped modules take about 1 MiB.
pub const COMPILE_CACHE_BYTES: u64 = 32 << 20;

/// Hits and misses since the engine started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompileCacheStats {
    pub hits: u64,
    pub misses: u64,
}

#[derive(Clone)]
struct ByLength;

impl Weighter<Vec<u8>, Vec<u8>> for ByLength {
    fn weight(&self, key: &Vec<u8>, value: &Vec<u8>) -> u64 {
        (key.len() + value.len()) as u64
    }
}

/// A bounded map from a function's compiler input to its compiled code; when it is full,
/// quick_cache evicts entries not used since they came in first.
pub struct FunctionCodeCache {
    entries: Cache<Vec<u8>, Vec<u8>, ByLength>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl FunctionCodeCache {
    pub fn new(bytes: u64) -> Self {
        Self {
            // About 1.2 KiB per entry for our modules.
            entries: Cache::with_weighter((bytes / 1200).max(16) as usize, bytes, ByLength),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub fn stats(&self) -> CompileCacheStats {
        CompileCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }
}

impl std::fmt::Debug for FunctionCodeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionCodeCache")
            .field("entries", &self.entries.len())
            .field("bytes", &self.entries.weight())
            .field("stats", &self.stats())
            .finish()
    }
}

impl wasmtime::CacheStore for FunctionCodeCache {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        let found = self.entries.get(key);
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found.map(Cow::Owned)
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        self.entries.insert(key.to_vec(), value);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::CacheStore;

    #[test]
    fn keeps_what_fits_and_counts_hits_and_misses() {
        let cache = FunctionCodeCache::new(64 << 10);
        assert!(cache.get(b"f").is_none());
        cache.insert(b"f", vec![1, 2, 3]);
        assert_eq!(cache.get(b"f").as_deref(), Some(&[1u8, 2, 3][..]));
        assert_eq!(cache.stats(), CompileCacheStats { hits: 1, misses: 1 });
        // Far more than fits: the cache stays within its budget.
        for i in 0..1_000u32 {
            cache.insert(&i.to_le_bytes(), vec![0; 1024]);
        }
        assert!(cache.entries.weight() <= 64 << 10, "{cache:?}");
    }
}
