//! `fleetctl release build`: a module directory and its models into one signed release file.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use fleet_host::engine::{SandboxEngine, SandboxLimits};
use fleet_release::{ReleaseSigner, TrustedKeys};

#[derive(Args, Debug)]
pub(crate) struct BuildArgs {
    /// Module directory: one `*.toml` manifest per kind (features, scorer, policy) with its
    /// component, and the `*.onnx` models the scorer reads (each registered under its file
    /// name without `.onnx`).
    dir: PathBuf,
    /// The release's semantic version (a device never goes back to a lower one by itself).
    #[arg(long)]
    version: semver::Version,
    /// The release's name.
    #[arg(long, default_value = "late-risk")]
    name: String,
    /// The operator's secret key (`fleetctl keys init`).
    #[arg(long, default_value = "release.key")]
    key: PathBuf,
    /// More ONNX models, beside those in the directory.
    #[arg(long)]
    model: Vec<PathBuf>,
    /// The release file to write. Default: `NAME-VERSION.release`.
    #[arg(long, short)]
    out: Option<PathBuf>,
    /// Leave out the precompiled components (devices then compile every module themselves).
    #[arg(long)]
    no_precompile: bool,
}

pub(crate) fn run(args: BuildArgs) -> anyhow::Result<()> {
    let signer = ReleaseSigner::read(&args.key).with_context(|| {
        format!(
            "reading the signing key (make one with `fleetctl keys init --key {}`)",
            args.key.display()
        )
    })?;
    let engine = SandboxEngine::new(SandboxLimits::default())
        .map_err(anyhow::Error::from)
        .context("creating the wasm engine")?;
    let contents = fleet_host::release::build_contents(
        &args.name,
        args.version.clone(),
        &args.dir,
        &args.model,
        (!args.no_precompile).then_some(&engine),
    )?;

    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}-{}.release", args.name, args.version)));
    anyhow::ensure!(
        !out.exists(),
        "{} exists; a release file is never overwritten (choose another --out or --version)",
        out.display()
    );
    let staging = out.with_extension("unchecked");
    let id = contents
        .write(&staging, &signer)
        .with_context(|| format!("writing {}", staging.display()))?;
    // Load it as a device would, from the file, verified, precompiled where it fits; only a
    // release that loads is kept.
    let stats = match load_as_a_device(&staging, &signer, &engine) {
        Ok(stats) => stats,
        Err(e) => {
            let _ = std::fs::remove_file(&staging);
            return Err(e.context("the release does not load; nothing was written"));
        }
    };
    std::fs::rename(&staging, &out).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "{} -> {} ({} bytes of artifacts, {} decompressed; {} artifacts, signed by key {})",
        contents.manifest.label(),
        out.display(),
        contents.manifest.file_size(None),
        contents.manifest.size(),
        contents.manifest.artifacts.len(),
        signer.key_id()
    );
    println!(
        "  release id {id}; loaded here: {} precompiled, {} compiled",
        stats.precompiled, stats.compiled
    );
    Ok(())
}

fn load_as_a_device(
    path: &std::path::Path,
    signer: &ReleaseSigner,
    engine: &SandboxEngine,
) -> anyhow::Result<fleet_host::release::LoadStats> {
    let mut trusted = TrustedKeys::default();
    trusted.add_public_line(&signer.public_line(""))?;
    let release = fleet_release::open_bundle(path, &trusted, u64::MAX)?;
    let (_, stats) = fleet_host::release::module_set(engine, &release, 1)?;
    Ok(stats)
}
