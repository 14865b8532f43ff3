//! Events parked for a retry: the device's modules failed on them, so they wait, journaled,
//! until a retry scores them. The journal only keeps them; what a payload holds and when a
//! retry runs is the caller's.

use serde::{Deserialize, Serialize};

use crate::keys::{self, PARKED};
use crate::writes::Writes;

/// One parked event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parked {
    /// Its place in the parking order (oldest first).
    pub id: u64,
    /// Attempts so far, the first included.
    pub attempts: u32,
    /// The caller's note of what the last attempt ran on (so it is not tried again on the
    /// same thing).
    pub tag: u64,
    pub payload: Vec<u8>,
}

/// A change to the parked events, committed atomically with the records of the same
/// [`crate::Journal::append_parking`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parking {
    /// Parks an event after its first failed attempt (or after `attempts`), made on `tag`.
    Park {
        attempts: u32,
        tag: u64,
        payload: Vec<u8>,
    },
    /// Another attempt failed; it stays parked.
    Retried { parked: Parked },
    /// A retry succeeded; it leaves.
    Resolved { id: u64 },
}

#[derive(Serialize, Deserialize)]
struct Value<'a> {
    attempts: u32,
    tag: u64,
    #[serde(borrow)]
    payload: &'a [u8],
}

pub(crate) fn key(id: u64) -> [u8; 9] {
    keys::prefixed_u64(PARKED, id)
}

pub(crate) fn encode(attempts: u32, tag: u64, payload: &[u8]) -> Vec<u8> {
    postcard::to_stdvec(&Value {
        attempts,
        tag,
        payload,
    })
    .expect("encoding into memory")
}

pub(crate) fn decode(id: u64, bytes: &[u8]) -> Result<Parked, postcard::Error> {
    let v: Value<'_> = postcard::from_bytes(bytes)?;
    Ok(Parked {
        id,
        attempts: v.attempts,
        tag: v.tag,
        payload: v.payload.to_vec(),
    })
}

/// Writes `changes`; returns how the number parked changes. `next_id` hands out new ids.
pub(crate) fn apply(changes: Vec<Parking>, batch: &mut Writes, next_id: &mut u64) -> i64 {
    let mut delta = 0;
    for change in changes {
        match change {
            Parking::Park {
                attempts,
                tag,
                payload,
            } => {
                batch.insert(key(*next_id), encode(attempts, tag, &payload));
                *next_id += 1;
                delta += 1;
            }
            Parking::Retried { parked } => {
                batch.insert(
                    key(parked.id),
                    encode(parked.attempts, parked.tag, &parked.payload),
                );
            }
            Parking::Resolved { id } => {
                batch.remove(key(id));
                delta -= 1;
            }
        }
    }
    delta
}
