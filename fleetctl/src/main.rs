//! `fleetctl`: the operator's command line. Release keys, signed releases built from a module
//! directory and models, and what ships built in as a starting point; through the
//! aggregator's API: publishing, deploying, and where each device stands.

mod api;
mod fleet;
mod keys;
mod observe;
mod release;

use clap::{Parser, Subcommand};

/// The fleet operator's tool: release keys, signed releases, deployments.
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
    /// Signed releases: build, inspect, export what ships built in; publish to and list on
    /// the aggregator.
    #[command(subcommand)]
    Release(release::ReleaseCommand),
    /// Deploy a published release: to every device, to listed devices, or to devices
    /// carrying labels. The newest deployment that targets a device decides what it runs.
    Deploy(fleet::DeployArgs),
    /// Where a release stands on each device it targets: offered, downloading, verified,
    /// active, failed (with the reason), pending.
    Status(fleet::StatusArgs),
    /// Every device: the release it runs, its labels, when it was last seen.
    Devices(fleet::DevicesArgs),
    /// Alerts (open ones by default), oldest first: one per task and episode of risk, with
    /// its lifecycle, peak score and the release that raised it.
    Alerts(observe::AlertsArgs),
    /// Each model's drift against its training baseline: PSI per feature and for the score,
    /// and whether the drift alert is raised.
    Drift(observe::DriftArgs),
    /// The model registry: every model the fleet knows, its stage (production, canary,
    /// retired, published), the devices running it, its metrics and the releases carrying it.
    Models(observe::ModelsArgs),
}

fn main() -> std::process::ExitCode {
    fleet_process::prepare();
    fleet_process::log_to_stderr("warn");
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keys(command) => keys::run(command),
        Command::Release(command) => release::run(command),
        Command::Deploy(args) => fleet::deploy(args),
        Command::Status(args) => fleet::status(args),
        Command::Devices(args) => fleet::devices(args),
        Command::Alerts(args) => observe::alerts(args),
        Command::Drift(args) => observe::drift(args),
        Command::Models(args) => observe::models(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
