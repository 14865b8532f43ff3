//! A commit's writes, kept as a list so that the same writes go into sled (one atomic batch)
//! and into the store's write-ahead log.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// Inserts and removals in order; a later write to a key wins, as in a sled batch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Writes(Vec<(Vec<u8>, Option<Vec<u8>>)>);

impl Writes {
    /// Owned keys and values (a record's encoding) are moved in, not copied.
    pub(crate) fn insert(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.0.push((key.into(), Some(value.into())));
    }

    pub(crate) fn remove(&mut self, key: impl Into<Vec<u8>>) {
        self.0.push((key.into(), None));
    }

    pub(crate) fn to_batch(&self) -> sled::Batch {
        let mut batch = sled::Batch::default();
        for (key, value) in &self.0 {
            match value {
                Some(value) => batch.insert(key.as_slice(), value.as_slice()),
                None => batch.remove(key.as_slice()),
            }
        }
        batch
    }
}

/// One commit as logged: which journal (`None`: the database's default tree), its commit
/// number, and its writes (the commit number's own write included).
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LoggedCommit<'a> {
    #[serde(borrow)]
    pub(crate) tree: Option<&'a str>,
    pub(crate) number: u64,
    pub(crate) writes: Cow<'a, Writes>,
}

impl<'a> LoggedCommit<'a> {
    pub(crate) fn encode(&self, buf: &mut Vec<u8>) {
        // Writing into a Vec cannot fail.
        postcard::to_io(self, buf).expect("encoding into memory");
    }

    pub(crate) fn decode(payload: &'a [u8]) -> Result<Self, String> {
        postcard::from_bytes(payload)
            .map_err(|e| format!("an intact log frame does not decode as a commit: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logged_commit_decodes_to_what_was_encoded() {
        let mut writes = Writes::default();
        writes.insert(b"k1", b"v1");
        writes.remove(b"k2");
        writes.insert(b"k1", b"v2");
        let commit = LoggedCommit {
            tree: Some("device-7"),
            number: 42,
            writes: Cow::Borrowed(&writes),
        };
        let mut buf = Vec::new();
        commit.encode(&mut buf);
        assert_eq!(LoggedCommit::decode(&buf).unwrap(), commit);
        assert!(LoggedCommit::decode(&buf[..buf.len() - 1]).is_err());
    }
}
