//! The in-process devices: each its own identity (certificate), journal and QUIC connection;
//! the journals share one store and one writer, so one fsync commits many devices.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use fleet_host::device::sync::{self, SyncConfig, SyncStatus};
use fleet_host::device::writer::{self, DeviceRuntime, Writer, WriterHandle};
use fleet_journal::{Journal, JournalConfig, JournalStore};
use fleet_net::pki::Pki;
use fleet_proto::Seq;
use fleet_proto::sender::SenderConfig;
use tokio::sync::{Notify, Semaphore};

use super::Places;
use super::modules::FleetModules;
use fleet_host::registry::ModuleRegistry;

/// Devices handshaking with the aggregator at once (a fleet of thousands connecting at
/// start, or again after an aggregator restart).
const HANDSHAKES_IN_FLIGHT: usize = 64;

/// One device's journal and the loops that serve it; replaced whole when the device starts
/// over with a new journal.
pub(super) struct Lane {
    pub(super) journal: Arc<Journal>,
    pub(super) writer: WriterHandle,
    pub(super) status: Arc<SyncStatus>,
    stop: Arc<Notify>,
}

pub(super) struct Device {
    pub(super) name: String,
    lane: ArcSwap<Lane>,
    /// How many journals this device had before its current one.
    resets: AtomicU64,
    /// Batches answered and not yet acknowledged by the aggregator: (through, due, events).
    pub(super) pending: Mutex<VecDeque<(Seq, Instant, u32)>>,
    /// `through` of the oldest pending batch (`Seq::MAX`: none), so the watcher checks
    /// thousands of devices with two atomic loads each.
    pub(super) oldest_pending: AtomicU64,
    pub(super) faulty: bool,
    /// Where and how it syncs (kept to start a new sync loop after a reset).
    sync: SyncConfig,
    /// What it runs (its own when it takes releases).
    pub(super) registry: Arc<ModuleRegistry>,
}

impl Device {
    pub(super) fn lane(&self) -> Arc<Lane> {
        self.lane.load_full()
    }

    /// Acknowledged through here by the aggregator (lock-free: the watcher reads it for
    /// thousands of devices every few milliseconds).
    pub(super) fn acked(&self) -> Seq {
        self.lane.load().status.acked.load(Ordering::Relaxed)
    }

    /// Keeps `oldest_pending` in step with `pending` (call with its lock held).
    pub(super) fn note_oldest_pending(&self, pending: &VecDeque<(Seq, Instant, u32)>) {
        let oldest = pending.front().map_or(Seq::MAX, |p| p.0);
        self.oldest_pending.store(oldest, Ordering::Relaxed);
    }

    /// Whether everything journaled is acknowledged by the aggregator.
    pub(super) fn synced(&self) -> bool {
        let lane = self.lane();
        lane.status.acked.load(Ordering::Relaxed) >= lane.journal.stats().last_seq
    }
}

/// Where the devices connect: straight to the aggregator, or through the fault proxy.
pub(super) struct Routes {
    pub(super) direct: (std::net::SocketAddr, quinn::Endpoint),
    pub(super) proxied: Option<(std::net::SocketAddr, quinn::Endpoint)>,
}

/// All devices of a run.
pub(super) struct Fleet {
    pub(super) devices: Vec<Arc<Device>>,
    store: Arc<JournalStore>,
    writer: Writer,
    work: std::path::PathBuf,
    rt: tokio::runtime::Handle,
}

impl Fleet {
    /// Issues certificates and starts `count` devices: the first `faulty` through the proxy.
    pub(super) fn start(
        count: usize,
        faulty: usize,
        places: &Places<'_>,
        routes: &Routes,
        modules: &FleetModules,
        rt: &tokio::runtime::Runtime,
    ) -> anyhow::Result<Self> {
        let pki = Pki::at(places.certs);
        let issue_started = Instant::now();
        let names: Vec<String> = (0..count).map(|d| format!("sim-{d:05}")).collect();
        for name in &names {
            if !pki.device(name).cert.exists() {
                pki.issue_device(name, 7)
                    .with_context(|| format!("issuing a certificate for {name}"))?;
            }
        }
        tracing::info!(
            devices = count,
            took_ms = issue_started.elapsed().as_millis() as u64,
            "device certificates ready"
        );
        let store = JournalStore::open(places.devices, 256 << 20)?;
        let writer = writer::spawn_shared(DeviceRuntime::new(modules.shared.clone()));
        let handshakes = Arc::new(Semaphore::new(HANDSHAKES_IN_FLIGHT));
        let mut fleet = Self {
            devices: Vec::with_capacity(count),
            store,
            writer,
            work: places.work.to_path_buf(),
            rt: rt.handle().clone(),
        };
        for (d, name) in names.into_iter().enumerate() {
            let faulty = d < faulty;
            let (registry, agent) = modules.device(&name)?;
            let (addr, endpoint) = match (&routes.proxied, faulty) {
                (Some((addr, ep)), true) => (*addr, ep.clone()),
                _ => (routes.direct.0, routes.direct.1.clone()),
            };
            let sync = SyncConfig {
                aggregator: addr,
                server_name: "localhost".into(),
                client: fleet_net::tls::client_config(&pki.ca_cert(), &pki.device(&name))?,
                device: name.clone(),
                backoff_min: Duration::from_millis(100),
                backoff_max: Duration::from_secs(2),
                sender: SenderConfig::default(),
                endpoint: Some(endpoint),
                handshakes: Some(handshakes.clone()),
                releases: agent,
            };
            let lane = fleet.lane(&name, &sync, &registry)?;
            fleet.devices.push(Arc::new(Device {
                name,
                lane: ArcSwap::from_pointee(lane),
                resets: AtomicU64::new(0),
                pending: Mutex::new(VecDeque::new()),
                oldest_pending: AtomicU64::new(Seq::MAX),
                faulty,
                sync,
                registry,
            }));
        }
        Ok(fleet)
    }

    /// Opens the journal called `journal` and starts its writer handle and sync loop.
    fn lane(
        &self,
        journal: &str,
        sync: &SyncConfig,
        registry: &Arc<ModuleRegistry>,
    ) -> anyhow::Result<Lane> {
        let (journal, _) = self
            .store
            .journal(journal, JournalConfig::new(&self.work))?;
        let journal = Arc::new(journal);
        let wake = Arc::new(Notify::new());
        let status = Arc::new(SyncStatus::default());
        let stop = Arc::new(Notify::new());
        self.rt.spawn(sync::run(
            journal.clone(),
            wake.clone(),
            sync.clone(),
            status.clone(),
            stop.clone(),
        ));
        Ok(Lane {
            writer: self
                .writer
                .device_on(journal.clone(), wake, registry.clone()),
            journal,
            status,
            stop,
        })
    }

    /// The device starts over with a new, empty journal under the same identity (a
    /// reinstalled handset). Call once it is synced and nothing is in flight for it.
    pub(super) fn reset_journal(&self, device: &Device) -> anyhow::Result<()> {
        let resets = device.resets.fetch_add(1, Ordering::Relaxed) + 1;
        let lane = self.lane(
            &format!("{}#{resets}", device.name),
            &device.sync,
            &device.registry,
        )?;
        let old = device.lane.swap(Arc::new(lane));
        old.stop.notify_one();
        Ok(())
    }

    /// Why the devices' store must be reopened, if it must (a flush failed on a full disk).
    pub(super) fn broken(&self) -> Option<String> {
        self.store.broken()
    }

    /// Journal resets done so far.
    pub(super) fn resets(&self) -> u64 {
        self.devices
            .iter()
            .map(|d| d.resets.load(Ordering::Relaxed))
            .sum()
    }

    pub(super) fn stop(&self) {
        for d in &self.devices {
            d.lane().stop.notify_one();
        }
    }
}
