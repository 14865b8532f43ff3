//! Reloads the module set when a watched file changes, or on SIGHUP ([`reload_triggers`]).
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

use signal_hook::consts::SIGHUP;
use signal_hook::iterator::Signals;

use crate::registry::ModuleRegistry;

/// Reloads the module set on file changes (a directory source) and on SIGHUP until dropped.
pub struct ReloadTriggers {
    _watcher: Option<Watcher>,
    sighup: signal_hook::iterator::Handle,
}

impl Drop for ReloadTriggers {
    fn drop(&mut self) {
        self.sighup.close();
    }
}

/// Starts both triggers for `registry`: a changed file (polled every `every`, directory
/// sources only) or a SIGHUP reloads the set; a set that fails to load is logged and the
/// running one stays. Installing the SIGHUP handler also keeps SIGHUP from ending the process.
pub fn reload_triggers(
    registry: Arc<ModuleRegistry>,
    every: Duration,
) -> std::io::Result<ReloadTriggers> {
    let mut signals = Signals::new([SIGHUP])?;
    let sighup = signals.handle();
    let on_signal = registry.clone();
    thread::Builder::new()
        .name("module-sighup".into())
        .spawn(move || {
            for _ in signals.forever() {
                tracing::info!("SIGHUP: reloading the module set");
                if let Err(e) = on_signal.reload() {
                    tracing::error!(error = %e, "module reload failed; keeping the current set");
                }
            }
        })?;
    let watcher = registry.is_watchable().then(|| watch(registry, every));
    Ok(ReloadTriggers {
        _watcher: watcher,
        sighup,
    })
}

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
