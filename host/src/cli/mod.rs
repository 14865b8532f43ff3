//! Command-line interface: argument definitions and dispatch.

mod device;
mod features;
mod lines;
mod score;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use fleet_host::engine::{SandboxEngine, SandboxLimits};
use fleet_host::features_only::FeatureExtractor;
use fleet_host::inference::{Model, ModelRegistry};
use fleet_host::module::{ModuleKind, load_kind_from_dir};
use fleet_host::registry::{ModuleRegistry, ModuleSource, embedded};
use fleet_host::release::{ReleaseSource, ReleaseStore};
use fleet_release::TrustedKeys;

/// The delivery-fleet edge runtime: sandboxed WASM modules and on-device inference.
#[derive(Parser, Debug)]
#[command(name = "edge-host", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Score events offline: JSON lines in (stdin or --input), one decision per scored event
    /// as JSON lines on stdout. Malformed lines are reported on stderr and skipped.
    Score(score::ScoreArgs),
    /// Run only the features module: JSON-line events in, CSV feature rows out (for training
    /// and inspection).
    Features(features::FeaturesArgs),
    /// Run as a device: events from stdin and a loopback HTTP endpoint are scored, journaled
    /// durably (then acknowledged) and synced to the aggregator over QUIC.
    Device(device::DeviceArgs),
}

/// Where modules and models come from, and the sandbox limits.
#[derive(Args, Debug, Clone)]
pub(crate) struct RuntimeArgs {
    /// Directory of module manifests (`*.toml`) and components; watched and hot-swapped.
    /// Default: the modules built into this binary.
    #[arg(long, env = "EDGE_MODULES", conflicts_with = "release")]
    modules: Option<PathBuf>,
    /// ONNX model to register (its metadata names it). Default: the built-in late_risk model.
    #[arg(long, env = "EDGE_MODEL", conflicts_with = "release")]
    model: Vec<PathBuf>,
    /// A signed release file (`fleetctl release build`): its modules and models, verified
    /// against the keys in --release-keys; watched and hot-swapped like a directory.
    #[arg(long, env = "EDGE_RELEASE")]
    release: Option<PathBuf>,
    /// The release keys this host trusts: a directory of `*.pub` files. Default: the fleet
    /// directory's `release-keys/` (`certs/release-keys`, or under `device --certs`), kept
    /// apart from its TLS CA.
    #[arg(long)]
    pub(crate) release_keys: Option<PathBuf>,
    /// Largest release (its artifacts' total size) this host takes, in MiB.
    #[arg(long, default_value_t = 64)]
    release_budget_mib: u64,
    /// CPU deadline for one call into a module, in milliseconds.
    #[arg(long, default_value_t = 100)]
    deadline_ms: u64,
    /// Linear-memory cap per module instance, in MiB.
    #[arg(long, default_value_t = 64)]
    memory_mib: usize,
}

impl RuntimeArgs {
    fn engine(&self) -> anyhow::Result<Arc<SandboxEngine>> {
        let limits = SandboxLimits {
            memory_bytes: self.memory_mib << 20,
            deadline: Duration::from_millis(self.deadline_ms),
            ..SandboxLimits::default()
        };
        let engine = SandboxEngine::new(limits)
            .map_err(anyhow::Error::from)
            .context("creating the wasm engine")?;
        Ok(Arc::new(engine))
    }

    /// The built-in late_risk model, or the `--model` files.
    fn models(&self) -> anyhow::Result<Arc<ModelRegistry>> {
        let mut models = ModelRegistry::new();
        if self.model.is_empty() {
            models.insert(
                fleet_host::defaults::late_risk_model().context("loading the built-in model")?,
            );
        }
        for path in &self.model {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading model {}", path.display()))?;
            let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
            let model = Model::load(name, &bytes)
                .with_context(|| format!("loading model {}", path.display()))?;
            models.insert(model);
        }
        Ok(Arc::new(models))
    }

    /// Engine, models and the module set, ready for a pipeline.
    pub(crate) fn registry(&self) -> anyhow::Result<Arc<ModuleRegistry>> {
        self.registry_with_store(None)
    }

    /// Like [`Self::registry`], for a host with a release store in `store` (a device): a
    /// release it installed runs without `--release`, an offered one is installed through it.
    pub(crate) fn registry_with_store(
        &self,
        store: Option<&std::path::Path>,
    ) -> anyhow::Result<Arc<ModuleRegistry>> {
        let store = match store {
            Some(dir) if self.modules.is_none() => Some(
                ReleaseStore::open(dir)
                    .with_context(|| format!("opening the release store {}", dir.display()))?,
            ),
            _ => None,
        };
        // A device (a store) takes releases: it runs the built-in modules until one is
        // installed, from a file or from the aggregator.
        let source = match (&self.release, &self.modules) {
            (None, None) if store.is_none() => ModuleSource::Embedded,
            (None, Some(dir)) => ModuleSource::Dir(dir.clone()),
            (path, _) => ModuleSource::Release(Arc::new(self.release_source(path.clone(), store)?)),
        };
        let registry = ModuleRegistry::new(self.engine()?, self.models()?, source)
            .context("loading modules")?;
        Ok(Arc::new(registry))
    }

    fn release_source(
        &self,
        path: Option<PathBuf>,
        store: Option<ReleaseStore>,
    ) -> anyhow::Result<ReleaseSource> {
        let dir = self
            .release_keys
            .clone()
            .unwrap_or_else(|| PathBuf::from("certs/release-keys"));
        let trusted = TrustedKeys::load(&dir)?;
        // A device without release keys runs what it has and refuses every offered release.
        anyhow::ensure!(
            !trusted.is_empty() || path.is_none(),
            "no trusted release keys in {}: copy the operator's public key there \
             (`fleetctl keys init` makes one and says how)",
            dir.display()
        );
        Ok(ReleaseSource::new(
            path,
            trusted,
            self.release_budget_mib << 20,
            store,
        ))
    }

    /// Reloads `registry` when its directory changes or on SIGHUP, until dropped.
    pub(crate) fn reload_triggers(
        &self,
        registry: &Arc<ModuleRegistry>,
    ) -> anyhow::Result<fleet_host::watch::ReloadTriggers> {
        fleet_host::watch::reload_triggers(registry.clone(), Duration::from_millis(500))
            .context("installing the SIGHUP handler")
    }

    /// Just the features module (no model needed), for feature extraction.
    pub(crate) fn feature_extractor(&self) -> anyhow::Result<FeatureExtractor> {
        if self.release.is_some() {
            let registry = self.registry()?;
            let set = registry.current();
            return FeatureExtractor::new(
                registry.engine().clone(),
                set.models.clone(),
                set.features.clone(),
            );
        }
        let engine = self.engine()?;
        let models = Arc::new(ModelRegistry::new());
        let module = match &self.modules {
            Some(dir) => load_kind_from_dir(&engine, &models, dir, ModuleKind::Features)?,
            None => embedded(
                &engine,
                &models,
                "late-risk-features",
                ModuleKind::Features,
                fleet_guest_modules::FEATURES_WASM,
            )?,
        };
        FeatureExtractor::new(engine, models, module)
    }
}

pub(crate) fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Score(args) => score::run(args),
        Command::Features(args) => features::run(args),
        Command::Device(args) => device::run(args),
    }
}
