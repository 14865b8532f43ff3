//! `edge-host`: the runtime on a courier handset or an edge node.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    fleet_process::prepare();
    let args = cli::Cli::parse();
    fleet_process::log_to_stderr("warn,fleet_host=info");
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edge-host: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
