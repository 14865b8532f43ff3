//! Opening a store: one sled configuration for the journal and the history, and an error that
//! says so when another process has the directory open.

use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// A sled database with the leaf fanout both stores use.
pub type Db = sled::Db<64>;
/// A tree of a [`Db`].
pub type Tree = sled::Tree<64>;

/// The file beside sled's own where the process holding the directory writes its pid.
pub const OWNER_FILE: &str = ".owner";

/// sled's own flusher interval: effectively never. sled 1.0.0-alpha.124's background flusher
/// aborts the whole process when a flush fails (a full disk, say; `db.rs`, `flusher`), so the
/// stores flush only from their checkpoints, which first check that the disk has room, and
/// handle a failure. `None` is no way out: then sled flushes (and fsyncs) whenever any
/// handle or iterator is dropped, i.e. on nearly every read.
const BACKGROUND_FLUSH_MS: usize = 1 << 40;

/// Why a store could not be opened.
#[derive(Debug, Error)]
pub enum OpenError {
    /// Another process has the directory open (sled locks it).
    #[error("{} is in use by another process{}: stop it first, or use another directory", path.display(), owner.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    InUse { path: PathBuf, owner: Option<u32> },
    #[error("opening {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl From<OpenError> for io::Error {
    fn from(e: OpenError) -> Self {
        let kind = match &e {
            OpenError::InUse { .. } => io::ErrorKind::ResourceBusy,
            OpenError::Io { source, .. } => source.kind(),
        };
        Self::new(kind, e)
    }
}

/// Opens (or creates) the store at `path` with a page cache of `cache_bytes`.
pub fn open(path: &Path, cache_bytes: usize) -> Result<Db, OpenError> {
    let opened = sled::Config::new()
        .path(path)
        .cache_capacity_bytes(cache_bytes)
        .flush_every_ms(Some(BACKGROUND_FLUSH_MS))
        .zstd_compression_level(1)
        .open();
    match opened {
        Ok(db) => {
            // Best effort: it only improves the message a second process gets.
            let _ = std::fs::write(path.join(OWNER_FILE), format!("{}\n", std::process::id()));
            Ok(db)
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(OpenError::InUse {
            path: path.to_path_buf(),
            owner: std::fs::read_to_string(path.join(OWNER_FILE))
                .ok()
                .and_then(|s| s.trim().parse().ok()),
        }),
        Err(source) => Err(OpenError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_held_by_another_opener_is_reported_in_use_with_its_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let db = open(&path, 1 << 20).unwrap();
        // A second open in this process takes the lock through another file description,
        // exactly as another process would.
        let err = open(&path, 1 << 20).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, OpenError::InUse { owner: Some(pid), .. } if pid == std::process::id()),
            "{text}"
        );
        assert!(text.contains("is in use by another process (pid"), "{text}");
        drop(db);
        open(&path, 1 << 20).expect("free again once closed");
    }
}
