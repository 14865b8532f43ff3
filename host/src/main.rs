//! `edge-host`: the runtime on a courier handset or an edge node.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    fleet_process::prepare();
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
