//! Key encoding of the single-tree layout (see the crate docs).

use fleet_proto::Seq;

pub(crate) const JOURNAL: u8 = b'j';
pub(crate) const STATE: u8 = b's';
pub(crate) const DEDUP: u8 = b'd';
pub(crate) const DEDUP_ORDER: u8 = b'o';
pub(crate) const PARKED: u8 = b'x';

pub(crate) fn journal(seq: Seq) -> [u8; 9] {
    prefixed_u64(JOURNAL, seq)
}

pub(crate) fn dedup_order(mark: u64) -> [u8; 9] {
    prefixed_u64(DEDUP_ORDER, mark)
}

pub(crate) fn prefixed_u64(prefix: u8, n: u64) -> [u8; 9] {
    let mut k = [prefix; 9];
    k[1..].copy_from_slice(&n.to_be_bytes());
    k
}

pub(crate) fn prefixed_str(prefix: u8, s: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + s.len());
    k.push(prefix);
    k.extend_from_slice(s.as_bytes());
    k
}

pub(crate) fn meta(name: &str) -> Vec<u8> {
    prefixed_str(b'm', name)
}

/// The u64 after a one-byte prefix, or in the first 8 bytes of a value.
pub(crate) fn read_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}
