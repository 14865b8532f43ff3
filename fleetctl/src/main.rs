//! `fleetctl`: the operator's command line. Release keys, signed releases built from a module
//! directory and models, and what ships built in as a starting point.

mod keys;
mod release;

use clap::{Parser, Subcommand};

/// The fleet operator's tool: release keys and signed releases.
#[derive(Parser, Debug)]
#[command(name = "fleetctl", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Release signing keys.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Signed releases: build, inspect, and export what ships built in.
    #[command(subcommand)]
    Release(release::ReleaseCommand),
}

fn main() -> std::process::ExitCode {
    fleet_process::prepare();
    fleet_process::log_to_stderr("warn");
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keys(command) => keys::run(command),
        Command::Release(command) => release::run(command),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
