//! What the devices run: the built-in modules, a module directory, or a signed release. Unless
//! the fleet runs a module directory, each device has its own registry, release store and
//! release agent, so it takes what the aggregator offers by itself, as a handset does; devices
//! that run the same modules share them in memory (the engine caches compiled components and
//! models by digest, the writer's pipeline instances by what they decide).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use fleet_host::registry::{ModuleRegistry, ModuleSource};
use fleet_host::release::{DeviceLabels, ReleaseAgent, ReleaseSource, ReleaseStore};
use fleet_release::{ReleaseId, TrustedKeys};

/// Largest release a simulated device takes (as `edge-host`'s default budget).
const BUDGET: u64 = fleet_release::DEFAULT_BUDGET;

/// What the fleet starts on.
#[derive(Clone, Debug)]
pub enum Start {
    BuiltIn,
    /// A module directory (`edge-host --modules`): devices take no releases.
    Modules(PathBuf),
    /// A signed release file, verified against the fleet's release keys.
    Release(PathBuf),
}

pub struct FleetModules {
    /// What every device starts on: the writer runs devices without a registry of their own
    /// on it.
    pub(super) shared: Arc<ModuleRegistry>,
    releases: Option<Releases>,
}

/// Where the devices' releases are trusted and kept.
struct Releases {
    trusted: TrustedKeys,
    /// One directory per device's release store.
    stores: PathBuf,
    /// The release the fleet starts on, stored once: every device's store links to it.
    seed: Option<(ReleaseStore, ReleaseId)>,
}

impl FleetModules {
    /// `keys`: the release keys devices trust; `work`: where the stores go.
    pub fn open(start: &Start, keys: &Path, work: &Path) -> anyhow::Result<Self> {
        let embedded = fleet_host::defaults::embedded_registry()
            .map_err(|e| anyhow::anyhow!("loading the embedded modules and model: {e}"))?;
        let (engine, models) = (embedded.engine().clone(), embedded.models().clone());
        let stores = work.join("releases");
        let trusted = trusted(keys)?;
        let (shared, seed) = match start {
            Start::BuiltIn => (embedded, None),
            Start::Modules(dir) => {
                let registry = ModuleRegistry::new(engine, models, ModuleSource::Dir(dir.clone()))
                    .with_context(|| format!("loading the modules in {}", dir.display()))?;
                return Ok(Self {
                    shared: Arc::new(registry),
                    releases: None,
                });
            }
            Start::Release(file) => {
                let release = fleet_release::open_bundle(file, &trusted, BUDGET)
                    .with_context(|| format!("verifying {}", file.display()))?;
                let seed = ReleaseStore::open(&stores.join("seed"))?;
                seed.stage(&release)?;
                seed.activate(&release.id)?;
                let source = ReleaseSource::new(None, trusted.clone(), BUDGET, Some(seed));
                let registry =
                    ModuleRegistry::new(engine, models, ModuleSource::Release(Arc::new(source)))
                        .with_context(|| format!("loading {}", file.display()))?;
                let seed = ReleaseStore::open(&stores.join("seed"))?;
                (Arc::new(registry), Some((seed, release.id)))
            }
        };
        Ok(Self {
            shared,
            releases: Some(Releases {
                trusted,
                stores,
                seed,
            }),
        })
    }

    /// A device's registry and release agent (none on a module directory).
    pub(super) fn device(
        &self,
        name: &str,
    ) -> anyhow::Result<(Arc<ModuleRegistry>, Option<Arc<ReleaseAgent>>)> {
        let Some(releases) = &self.releases else {
            return Ok((self.shared.clone(), None));
        };
        let store = ReleaseStore::open(&releases.stores.join(name))?;
        if let Some((seed, id)) = &releases.seed {
            store
                .adopt(seed, id)
                .with_context(|| format!("giving {name} the release it starts on"))?;
        }
        let source = ReleaseSource::new(None, releases.trusted.clone(), BUDGET, Some(store));
        let registry = Arc::new(ModuleRegistry::starting_with(
            self.shared.engine().clone(),
            self.shared.models().clone(),
            ModuleSource::Release(Arc::new(source)),
            self.shared.current(),
        ));
        let agent = ReleaseAgent::new(
            registry.clone(),
            DeviceLabels {
                labels: vec![("sim".into(), "device-sim".into())],
                agent: concat!("device-sim/", env!("CARGO_PKG_VERSION")).into(),
            },
        );
        Ok((registry, Some(Arc::new(agent))))
    }
}

fn trusted(keys: &Path) -> anyhow::Result<TrustedKeys> {
    TrustedKeys::load(keys)
        .with_context(|| format!("reading the release keys in {}", keys.display()))
}
