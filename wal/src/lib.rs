//! A write-ahead log in front of a store whose own flush is slow.
//!
//! sled 1.0 makes data durable by re-serializing and compressing every leaf a write dirtied
//! (tens of microseconds per leaf, 5-100 ms for a group that touched a few thousand), while
//! an append and an `fdatasync` of the same writes take well under a millisecond. So the
//! aggregator's history and the device journals both commit to a [`SegmentLog`], acknowledge
//! after its `fdatasync`, and let a [`Checkpointer`] flush the store every few tens of
//! seconds and remove the segments that flush covered; each leaf is then serialized once per
//! checkpoint for all the commits that dirtied it. On start, the owner replays the segments
//! still on disk into the store.
//!
//! Hand-written because no maintained crate offers exactly this (a WAL beside a store
//! that already has its own on-disk format, with replay through the owner's code): the
//! format is a few dozen lines and the tests below pin it.

mod checkpoint;
mod segments;
#[cfg(feature = "testing")]
pub mod testing;

pub use checkpoint::{
    CheckpointPolicy, Checkpointer, FLUSH_ROOM_PER_LOGGED_BYTE, MIN_FLUSH_ROOM, free_bytes,
};
pub use segments::{LogError, SegmentLog};
