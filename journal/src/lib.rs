//! The device store. Everything a device has acknowledged lives here until the aggregator has
//! made it durable: a journal of records under dense sequence numbers (the outbox), the latest
//! feature state per key, a bounded index of event ids already accepted, and the sync cursor.
//!
//! The seam is [`Journal`]: no sled type crosses it. Writes of one commit go into sled as one
//! atomic batch and into the store's write-ahead log; [`Journal::flush`] is the group-commit
//! point (one `fdatasync` of the log; sled is flushed behind it every 30 s, [`CHECKPOINTS`]).
//! Acknowledge producers only after it returns.
//!
//! Many journals can share one database ([`JournalStore`], one tree per journal) so that one
//! fsync commits them all. Layout of a journal (one sled tree, so a commit is a single atomic
//! batch):
//!
//! | key | value |
//! |---|---|
//! | `j` seq (u64 BE) | postcard [`fleet_proto::Record`] |
//! | `s` state key | seq (u64 BE) + state bytes: the latest state only |
//! | `d` event id | seq of the dedup mark (for eviction) |
//! | `o` mark (u64 BE) | event id: dedup marks, oldest first |
//! | `x` id (u64 BE) | a parked event: attempts and the caller's payload ([`Parking`]) |
//! | `m` name | meta counters (u64 BE): the commit number, the journal id, ... |

mod dedup;
mod journal;
mod keys;
mod parked;
mod store;
mod thinning;
mod writes;

pub use journal::Journal;
pub use parked::{Parked, Parking};
pub use store::{
    CHECKPOINTS, Commit, JournalConfig, JournalError, JournalStats, JournalStore, LOG_DIR,
    Recovery, StoreHealth,
};
pub use thinning::ThinPolicy;
