//! `fleetctl release export-builtin DIR`: the modules and model built into this fleet's
//! binaries, as a module directory `fleetctl release build` reads.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use fleet_host::module::manifests_in;
use fleet_host::registry::{EMBEDDED, embedded_manifest};

#[derive(Args, Debug)]
pub(crate) struct ExportArgs {
    /// Directory to write (created if missing; it must not hold module manifests already).
    dir: PathBuf,
}

/// What each kind's configuration accepts, written as comments in its manifest.
fn config_help(kind: fleet_release::ModuleKind) -> &'static str {
    use fleet_release::ModuleKind::*;
    match kind {
        Features => "# (no settings)\n",
        Scorer => {
            "# model = \"late_risk\"   # the model file's name without .onnx\n# top_factors = 3\n"
        }
        Policy => {
            "# warning_threshold = 0.5\n# critical_threshold = 0.7\n# reassign_threshold = 0.9   # off unless set\n# notify_courier = true\n"
        }
    }
}

pub(crate) fn run(args: ExportArgs) -> anyhow::Result<()> {
    let dir = &args.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let existing = manifests_in(dir).with_context(|| format!("reading {}", dir.display()))?;
    anyhow::ensure!(
        existing.is_empty(),
        "{} already holds module manifests ({}); export into an empty directory",
        dir.display(),
        existing[0].display()
    );
    for (name, kind, bytes) in EMBEDDED {
        let manifest = embedded_manifest(name, kind);
        write(&dir.join(format!("{kind}.wasm")), bytes)?;
        let text = format!(
            "name = \"{}\"\nkind = \"{kind}\"\nversion = \"{}\"\ncomponent = \"{kind}.wasm\"\n\n[config]\n{}",
            manifest.name,
            manifest.version,
            config_help(kind)
        );
        write(&dir.join(format!("{kind}.toml")), text.as_bytes())?;
    }
    let model = format!("{}.onnx", fleet_host::defaults::LATE_RISK);
    write(&dir.join(&model), fleet_host::defaults::LATE_RISK_ONNX)?;
    println!(
        "wrote features, scorer and policy modules and {model} to {}",
        dir.display()
    );
    println!(
        "edit a manifest's [config], then: fleetctl release build {} --version X.Y.Z",
        dir.display()
    );
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}
