//! `fleetctl release`: build a signed release from a module directory, inspect one, export
//! the modules and model that ship built in; publish one to the aggregator and list them.

mod build;
mod export;
mod inspect;

use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub(crate) enum ReleaseCommand {
    /// Build and sign a release from a module directory (`*.toml` manifests, their
    /// components, `*.onnx` models), precompiled for the fleet's engine; it is loaded once
    /// here, as a device would, before it is kept.
    Build(build::BuildArgs),
    /// Verify a release file and show what it holds.
    Inspect(inspect::InspectArgs),
    /// Write the built-in modules and model as a module directory, to start a release from
    /// what ships.
    ExportBuiltin(export::ExportArgs),
    /// Upload a release file to the aggregator (an operator's token); the aggregator verifies
    /// it against its own release keys before it keeps it.
    Publish(crate::fleet::PublishArgs),
    /// The releases published on the aggregator.
    List(crate::fleet::ListArgs),
}

pub(crate) fn run(command: ReleaseCommand) -> anyhow::Result<()> {
    match command {
        ReleaseCommand::Build(args) => build::run(args),
        ReleaseCommand::Inspect(args) => inspect::run(args),
        ReleaseCommand::ExportBuiltin(args) => export::run(args),
        ReleaseCommand::Publish(args) => crate::fleet::publish(args),
        ReleaseCommand::List(args) => crate::fleet::list(args),
    }
}
