//! The modules and model built into this binary, written as a module directory (what
//! `fleetctl release export-builtin` writes, so a first release starts from what ships).

use std::path::{Path, PathBuf};

use fleet_release::ModuleKind;

use crate::module::manifests_in;
use crate::registry::{EMBEDDED, embedded_manifest};

/// What each kind's configuration accepts, written as comments in its manifest.
fn config_help(kind: ModuleKind) -> &'static str {
    match kind {
        ModuleKind::Features => "# (no settings)\n",
        ModuleKind::Scorer => {
            "# model = \"late_risk\"   # a model file's name without .onnx\n# top_factors = 3\n"
        }
        ModuleKind::Policy => {
            "# warning_threshold = 0.5\n# critical_threshold = 0.7\n\
             # hysteresis = 0.1   # a task's alert resolves below warning_threshold - hysteresis\n\
             # reassign_threshold = 0.9   # off unless set\n# notify_courier = true\n"
        }
    }
}

/// Writes `<kind>.toml` and `<kind>.wasm` for the three built-in modules and the built-in
/// model as `late_risk.onnx` into `dir` (created if missing), and returns the files written.
/// Refuses a directory that already holds module manifests.
pub fn export_embedded(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    if let Some(existing) = manifests_in(dir)?.first() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!(
                "{} already holds module manifests ({}); export into an empty directory",
                dir.display(),
                existing.display()
            ),
        ));
    }
    let mut written = Vec::new();
    let mut write = |name: String, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes)?;
        written.push(path);
        Ok::<_, std::io::Error>(())
    };
    for (name, kind, bytes) in EMBEDDED {
        let manifest = embedded_manifest(name, kind);
        write(format!("{kind}.wasm"), bytes)?;
        let text = format!(
            "name = \"{}\"\nkind = \"{kind}\"\nversion = \"{}\"\ncomponent = \"{kind}.wasm\"\n\n[config]\n{}",
            manifest.name,
            manifest.version,
            config_help(kind)
        );
        write(format!("{kind}.toml"), text.as_bytes())?;
    }
    write(
        format!("{}.onnx", crate::defaults::LATE_RISK),
        crate::defaults::LATE_RISK_ONNX,
    )?;
    Ok(written)
}
