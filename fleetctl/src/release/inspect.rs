//! `fleetctl release inspect FILE`: verify a release file and show what it holds.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use fleet_host::engine::{SandboxEngine, SandboxLimits};
use fleet_release::{ArtifactKind, TrustedKeys};

#[derive(Args, Debug)]
pub(crate) struct InspectArgs {
    /// The release file.
    file: PathBuf,
    /// Trusted release keys to verify it with (a directory of `*.pub` files).
    #[arg(long, default_value = "certs/release-keys")]
    release_keys: PathBuf,
    /// Verify with this public key file instead (`<key>.pub` from `fleetctl keys init`).
    #[arg(long, conflicts_with = "release_keys")]
    public_key: Option<PathBuf>,
}

pub(crate) fn run(args: InspectArgs) -> anyhow::Result<()> {
    let trusted = match &args.public_key {
        Some(path) => {
            let line = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let mut trusted = TrustedKeys::default();
            trusted.add_public_line(&line)?;
            trusted
        }
        None => TrustedKeys::load(&args.release_keys)?,
    };
    let release = fleet_release::open_bundle(&args.file, &trusted, u64::MAX)
        .with_context(|| format!("{} is refused", args.file.display()))?;
    let manifest = &release.manifest;
    let engine = SandboxEngine::new(SandboxLimits::default())
        .map_err(anyhow::Error::from)
        .context("creating the wasm engine")?;
    let here = engine.compatibility();
    println!("{}", release.label());
    println!("  id        {}", release.id);
    println!("  signed by {} (verified)", release.signature.key);
    println!(
        "  size      {} bytes in {} artifacts ({} decompressed); a device of this build fetches {} bytes",
        manifest.file_size(None),
        manifest.artifacts.len(),
        manifest.size(),
        manifest.file_size(Some(&manifest.wanted(Some(here)))),
    );
    for module in &manifest.modules {
        let engines: Vec<String> = module
            .precompiled
            .iter()
            .map(|p| {
                let fits = if p.engine == here {
                    ", fits this build"
                } else {
                    ""
                };
                format!("{}{fits}", p.engine)
            })
            .collect();
        println!(
            "  {:<8}  {}@{}  {}",
            module.kind.to_string(),
            module.name,
            module.version,
            module.component
        );
        for (key, value) in &module.config {
            println!("            {key} = {value}");
        }
        if !engines.is_empty() {
            println!("            precompiled for {}", engines.join("; "));
        }
    }
    for model in &manifest.models {
        println!("  model     {}  {}", model.name, model.artifact);
    }
    let precompiled: u64 = manifest
        .artifacts
        .iter()
        .filter(|a| a.kind == ArtifactKind::Precompiled)
        .map(|a| a.size)
        .sum();
    println!("  ({precompiled} bytes of it precompiled code)");
    Ok(())
}
