//! Reloads the module set when a watched file changes.
//!
//! Polls modification times (twice a second by default) rather than using inotify: module
//! directories hold a handful of files, polling works the same on every platform and
//! filesystem (including the overlay and network mounts handsets and containers use), and it
//! needs no extra dependency.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, SystemTime};

use crate::registry::ModuleRegistry;

/// Stops the watcher thread when dropped.
pub struct Watcher {
    stop: Arc<AtomicBool>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Starts a thread that reloads `registry` whenever one of its files changes.
pub fn watch(registry: Arc<ModuleRegistry>, every: Duration) -> Watcher {
    let stop = Arc::new(AtomicBool::new(false));
    let stop_thread = stop.clone();
    let snapshot = |files: &[PathBuf]| -> Vec<Option<(SystemTime, u64)>> {
        files
            .iter()
            .map(|f| {
                std::fs::metadata(f)
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len())))
            })
            .collect()
    };
    let mut files = registry.watched_files();
    let mut last = snapshot(&files);
    thread::Builder::new()
        .name("module-watch".into())
        .spawn(move || {
            while !stop_thread.load(Ordering::Relaxed) {
                thread::sleep(every);
                let now_files = registry.watched_files();
                let now = snapshot(&now_files);
                if now_files == files && now == last {
                    continue;
                }
                // Let a writer finish before reading what it wrote.
                thread::sleep(every / 4);
                match registry.reload() {
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "module reload failed; keeping the current set")
                    }
                }
                files = registry.watched_files();
                last = snapshot(&files);
            }
        })
        .expect("spawning a thread only fails when the process is out of resources");
    Watcher { stop }
}
