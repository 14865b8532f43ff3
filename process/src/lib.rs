//! What every binary (and a benchmark measuring like one) sets for its whole process.
//!
//! A crate that links this one gets mimalloc as its global allocator: glibc's was 11-15 % of
//! the CPU of a fleet run (sled allocates per key and per leaf), and mimalloc does the same
//! work in less. A `main` also calls [`prepare`] first. Library crates do not link it, so their
//! tests keep the system allocator.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process (Linux; elsewhere nothing to do). They
/// back mimalloc's eagerly committed regions in 2 MiB pages: 0.6 GiB more resident on a
/// 10,000-courier run.
pub fn prepare() {
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}

/// Logs with `tracing` to stderr, filtered by `RUST_LOG`, else by `default_filter`.
pub fn log_to_stderr(default_filter: &str) {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .init();
}

/// Replaces this process with a fresh run of the same program and arguments (same pid, same
/// standard streams): what a store needs when it can only be reopened by a new process.
/// Returns only if that fails.
pub fn restart() -> std::io::Error {
    use std::os::unix::process::CommandExt as _;
    // The running image, even if its file was replaced since it started.
    std::process::Command::new("/proc/self/exe")
        .args(std::env::args_os().skip(1))
        .exec()
}

/// Watches on a thread of its own: once `broken` says why a store must be reopened and
/// `ready` says it can be now, logs why and [`restart`]s the process.
pub fn restart_when(
    what: &'static str,
    broken: impl Fn() -> Option<String> + Send + 'static,
    ready: impl Fn() -> bool + Send + 'static,
) {
    std::thread::Builder::new()
        .name("restart-watch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
                if let Some(why) = broken()
                    && ready()
                {
                    eprintln!(
                        "{what} must be reopened ({why}) and can be now: restarting this process"
                    );
                    let e = restart();
                    eprintln!("restarting failed: {e}; stop and start this process by hand");
                    return;
                }
            }
        })
        .expect("spawning a thread only fails when the process is out of resources");
}

/// How much lower than the hot path background work is scheduled (a nice value: at 10 a
/// busy thread gets about a tenth of the CPU a normal one gets when they compete).
const BACKGROUND_NICE: i32 = 10;

/// Schedules the calling thread at the background priority (Linux; elsewhere a no-op): for
/// threads that do only such work, like a pool pushing live streams.
pub fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), BACKGROUND_NICE);
}

/// Runs `f` on a thread of its own at a lower scheduling priority (Linux; elsewhere at the
/// normal one) and returns what it returns: work that must not take cores from the threads
/// serving events when cores are short, such as verifying and loading a release. The thread
/// is new, so no pooled thread keeps the lower priority afterwards.
pub fn in_background<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        let worker = std::thread::Builder::new().name("background".into());
        let worker = worker.spawn_scoped(s, || {
            lower_this_threads_priority();
            f()
        });
        worker
            .expect("spawning a thread")
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
