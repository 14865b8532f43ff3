//! Range and prefix scans that stop at their upper bound.
//!
//! sled's `Tree::range` (and `scan_prefix`, built on it) filters each leaf by the range but
//! never stops at the upper bound: once the range is exhausted, the next `next()` call walks
//! every remaining leaf of the tree, to its end, before it returns `None`. Every bounded
//! scan therefore costs as much as the rest of the tree (a journal read paid for every
//! dedup mark and state after it; a courier's route, for every courier after it).
//!
//! These scans ask sled for an unbounded range instead, where each `next()` reads at most
//! one leaf past the last item it returns, and stop at the first key past the bound.

use std::io;
use std::ops::Bound;

use sled::{InlineArray, Tree};

pub type Item = io::Result<(InlineArray, InlineArray)>;

/// Keys in `lo..=hi`, in order.
pub fn inclusive<const F: usize>(
    tree: &Tree<F>,
    lo: &[u8],
    hi: &[u8],
) -> impl Iterator<Item = Item> + use<F> {
    let hi = hi.to_vec();
    from(tree, lo, move |k| k <= hi.as_slice())
}

/// Keys in `lo..hi`, in order.
pub fn exclusive<const F: usize>(
    tree: &Tree<F>,
    lo: &[u8],
    hi: &[u8],
) -> impl Iterator<Item = Item> + use<F> {
    let hi = hi.to_vec();
    from(tree, lo, move |k| k < hi.as_slice())
}

/// Keys starting with `prefix`, in order.
pub fn prefix<const F: usize>(
    tree: &Tree<F>,
    prefix: &[u8],
) -> impl Iterator<Item = Item> + use<F> {
    let p = prefix.to_vec();
    from(tree, prefix, move |k| k.starts_with(&p))
}

/// Keys from `lo` on while `within(key)`; an error is passed on and ends the scan.
fn from<const F: usize, W: Fn(&[u8]) -> bool>(
    tree: &Tree<F>,
    lo: &[u8],
    within: W,
) -> impl Iterator<Item = Item> + use<F, W> {
    let mut done = false;
    tree.range::<&[u8], _>((Bound::Included(lo), Bound::Unbounded))
        .map_while(move |item| {
            if done {
                return None;
            }
            match item {
                Ok((k, v)) if within(&k) => Some(Ok((k, v))),
                Ok(_) => None,
                Err(e) => {
                    done = true;
                    Some(Err(e))
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> (tempfile::TempDir, sled::Db<8>) {
        let dir = tempfile::tempdir().unwrap();
        let db: sled::Db<8> = sled::Config::new().path(dir.path()).open().unwrap();
        for p in [b'a', b'b', b'c'] {
            for i in 0u8..50 {
                db.insert([p, i], vec![i]).unwrap();
            }
        }
        (dir, db)
    }

    fn keys(it: impl Iterator<Item = Item>) -> Vec<Vec<u8>> {
        it.map(|i| i.unwrap().0.to_vec()).collect()
    }

    #[test]
    fn bounds_match_sleds_own_range() {
        let (_dir, db) = tree();
        let (lo, hi) = ([b'b', 10], [b'b', 20]);
        assert_eq!(
            keys(inclusive(&db, &lo, &hi)),
            keys(db.range(lo..=hi)),
            "inclusive"
        );
        assert_eq!(
            keys(exclusive(&db, &lo, &hi)),
            keys(db.range(lo..hi)),
            "exclusive"
        );
        assert_eq!(keys(prefix(&db, b"b")), keys(db.scan_prefix(b"b")));
        assert_eq!(prefix(&db, b"b").count(), 50);
        assert_eq!(inclusive(&db, b"z", &[b'z', 9]).count(), 0);
        assert_eq!(exclusive(&db, &hi, &lo).count(), 0, "an empty range");
    }
}
