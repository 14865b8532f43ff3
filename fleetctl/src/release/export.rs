//! `fleetctl release export-builtin DIR`: the modules and model built into this fleet's
//! binaries, as a module directory `fleetctl release build` reads.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

#[derive(Args, Debug)]
pub(crate) struct ExportArgs {
    /// Directory to write (created if missing; it must not hold module manifests already).
    dir: PathBuf,
}

pub(crate) fn run(args: ExportArgs) -> anyhow::Result<()> {
    let dir = &args.dir;
    let written = fleet_host::release::export_embedded(dir)
        .with_context(|| format!("exporting the built-in modules into {}", dir.display()))?;
    println!("wrote {} files to {}:", written.len(), dir.display());
    for path in &written {
        println!("  {}", path.display());
    }
    println!(
        "edit a manifest's [config], then: fleetctl release build {} --version X.Y.Z",
        dir.display()
    );
    Ok(())
}
