//! `edge-host`: the runtime on a courier handset or an edge node.

mod cli;

use clap::Parser;

/// glibc's allocator was 11-15 % of the CPU of a fleet run (sled allocates per key and per
/// leaf); mimalloc does the same work in less. `main` turns transparent huge pages off first:
/// they back mimalloc's eagerly committed regions in 2 MiB pages (0.6 GiB more resident on a
/// 10,000-courier run).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    let args = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,fleet_host=info".into()),
        )
        .init();
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edge-host: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
