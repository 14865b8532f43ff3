//! The central aggregator: devices sync their journals to it over QUIC ([`ingest`]); it keeps
//! history ([`history`]) and answers questions about it over HTTP ([`api`]).
//!
//! Invariant: a batch is acknowledged to its device only after the group commit that made it
//! durable in the ingest log ([`ingest_log`]), which is replayed into history after a crash;
//! ingest is idempotent per (device, sequence), so resends and replays are absorbed whenever
//! they come.

pub mod api;
pub mod auth;
pub mod committer;
pub mod dashboard;
pub mod drift;
pub mod history;
pub mod ingest;
pub mod ingest_log;
pub mod live;
pub mod metrics;
pub mod models;
pub mod nearby;
pub mod releases;
pub mod revocation;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use fleet_net::pki::Pki;
use history::{History, SledHistory};
use ingest_log::IngestLog;
use metrics::Metrics;

/// What the ingest and API tasks share.
pub struct Shared {
    pub history: Arc<dyn History>,
    pub metrics: Arc<Metrics>,
    pub committer: committer::CommitterHandle,
    pub storage: Arc<committer::StorageHealth>,
    /// Open device connections, to close those of a device whose certificate is revoked.
    pub connections: ingest::Connections,
    /// Published releases, deployments and what devices report (`DATA/releases/`).
    pub releases: Arc<releases::FleetReleases>,
    /// What was made durable, pushed to stream subscribers.
    pub live: Arc<live::LiveFeed>,
    /// The couriers' latest positions, for "near here" queries.
    pub nearby: Arc<nearby::Nearby>,
    /// The models' training baselines and the last evaluation of the drift alert.
    pub drift: Arc<drift::DriftWatch>,
}

impl Shared {
    /// The releases kept in `data` (and the baselines of their models).
    pub fn open_releases(data: &Path) -> anyhow::Result<Arc<releases::FleetReleases>> {
        let dir = data.join(RELEASES_DIR);
        Ok(Arc::new(releases::FleetReleases::open(&dir).with_context(
            || format!("opening releases at {}", dir.display()),
        )?))
    }

    /// Starts the committer on `history` with its ingest log in `data`, first replaying
    /// into `history` whatever the log holds (batches acknowledged before a crash that the
    /// history may not have made durable). `history` bins decisions for drift by the
    /// baselines `releases` knows.
    pub fn open(
        history: Arc<dyn History>,
        releases: Arc<releases::FleetReleases>,
        data: &Path,
    ) -> anyhow::Result<Arc<Self>> {
        let log_dir = &data.join(INGEST_LOG_DIR);
        let started = std::time::Instant::now();
        let (log, batches) = IngestLog::recover(
            log_dir,
            |b| {
                history
                    .ingest(&b.batch())
                    .map(drop)
                    .map_err(|e| e.to_string())
            },
            || history.flush().map_err(|e| e.to_string()),
        )?;
        if batches > 0 {
            tracing::info!(batches, elapsed = ?started.elapsed(), "replayed the ingest log");
        }
        let metrics = Arc::new(Metrics::default());
        let live = live::LiveFeed::new(live::LiveConfig::default());
        let nearby = Arc::new(nearby::Nearby::default());
        let couriers = nearby
            .seed(history.as_ref())
            .context("reading the couriers' latest positions")?;
        if couriers > 0 {
            tracing::info!(couriers, "couriers' latest positions read from history");
        }
        let (committer, storage) = committer::spawn(
            history.clone(),
            log,
            committer::CHECKPOINTS,
            metrics.clone(),
            live.clone(),
            nearby.clone(),
        );
        Ok(Arc::new(Self {
            history,
            metrics,
            committer,
            storage,
            connections: ingest::Connections::default(),
            live,
            nearby,
            drift: Arc::new(drift::DriftWatch::new(releases.baselines())),
            releases,
        }))
    }

    /// Why storage cannot take writes now, if it cannot (for `/healthz`).
    pub fn storage_problem(&self) -> Option<String> {
        self.storage.problem()
    }

    /// History in sled at `data` and the ingest log beside it (the embedded default).
    pub fn open_sled(data: &Path) -> anyhow::Result<Arc<Self>> {
        let releases = Self::open_releases(data)?;
        let history = SledHistory::open_with(data, releases.baselines())
            .with_context(|| format!("opening history at {}", data.display()))?;
        Self::open(Arc::new(history), releases, data)
    }
}

/// The ingest log's directory inside the aggregator's data directory.
pub const INGEST_LOG_DIR: &str = "ingest-log";

/// Published releases, deployments and device reports, inside the data directory.
pub const RELEASES_DIR: &str = "releases";

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Where the aggregator keeps its data and listens.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub data: PathBuf,
    pub listen: SocketAddr,
    pub http: SocketAddr,
    /// The fleet directory: the PKI, and the API tokens (`api-tokens.json`).
    pub certs: PathBuf,
    /// API requests per second per token.
    pub api_rate: u32,
}

impl ServeConfig {
    /// Both listeners on loopback with ports the system picks (tests, benchmarks, embedding).
    pub fn loopback(data: impl Into<PathBuf>, certs: impl Into<PathBuf>) -> Self {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            data: data.into(),
            listen: any,
            http: any,
            certs: certs.into(),
            api_rate: auth::DEFAULT_RATE,
        }
    }
}

/// Binds both listeners and returns the running servers' addresses and the future that
/// serves them (until the QUIC endpoint or the HTTP server stops).
pub async fn start(
    config: &ServeConfig,
    shared: Arc<Shared>,
) -> anyhow::Result<(
    SocketAddr,
    SocketAddr,
    impl Future<Output = anyhow::Result<()>> + use<>,
)> {
    let pki = Pki::at(&config.certs);
    let tls = fleet_net::tls::server_config(&pki)?;
    let endpoint = ingest::bind(tls, config.listen)
        .with_context(|| format!("binding QUIC on {}", config.listen))?;
    let http = tokio::net::TcpListener::bind(config.http)
        .await
        .with_context(|| format!("binding HTTP on {}", config.http))?;
    let (quic_addr, http_addr) = (endpoint.local_addr()?, http.local_addr()?);
    let tokens = auth::TokenFile::in_dir(&config.certs);
    let authority = Arc::new(auth::Authority::load(
        tokens,
        config.api_rate,
        shared.metrics.clone(),
    )?);
    let release_keys = config.certs.join("release-keys");
    let serving = async move {
        releases::spawn_saver(shared.releases.clone());
        drift::spawn_watch(
            shared.drift.clone(),
            shared.history.clone(),
            shared.live.clone(),
        );
        let api = axum::serve(
            http,
            api::router(shared.clone(), authority.clone(), release_keys),
        );
        let revocations = revocation::watch(pki, endpoint.clone(), shared.clone(), authority);
        tokio::select! {
            () = ingest::serve(endpoint, shared) => Ok(()),
            r = api => r.context("HTTP server"),
            () = revocations => Ok(()),
        }
    };
    Ok((quic_addr, http_addr, serving))
}

/// Restarts the process when the history broke on a failed flush (only a new process can
/// reopen it) and the disk has room again; the ingest log holds everything acknowledged.
fn watch_storage(shared: &Arc<Shared>, data: &Path) {
    let storage = shared.storage.clone();
    let dir = data.to_path_buf();
    fleet_process::restart_when(
        "the history",
        move || storage.broken(),
        move || fleet_wal::free_bytes(&dir).is_ok_and(|free| free >= 2 * fleet_wal::MIN_FLUSH_ROOM),
    );
}

/// Runs the aggregator until Ctrl-C or SIGTERM: creates the PKI on first start, opens history, serves.
/// Prints `quic=ADDR http=ADDR` on stdout once listening.
pub fn run(config: &ServeConfig) -> anyhow::Result<()> {
    let pki = Pki::at(&config.certs);
    if !pki.ca_cert().exists() {
        pki.init(&[])
            .with_context(|| format!("creating the fleet PKI in {}", config.certs.display()))?;
        tracing::info!(dir = %config.certs.display(), "created a fleet CA; issue device certificates with `aggregator certs issue --device ID`");
    }
    let tokens = auth::TokenFile::in_dir(&config.certs);
    if tokens.bootstrap()?.is_some() {
        tracing::info!(token = %tokens.admin_token_path().display(), "issued the first admin token for the HTTP API; issue more with `aggregator tokens issue --role viewer|operator|admin`");
    }
    let shared = Shared::open_sled(&config.data)?;
    watch_storage(&shared, &config.data);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let (quic, http, serving) = start(config, shared).await?;
        tracing::info!(%quic, %http, "aggregator listening");
        println!("quic={quic} http={http}");
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = serving => r,
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("interrupted; shutting down");
                Ok(())
            }
            _ = terminate.recv() => {
                tracing::info!("terminated; shutting down");
                Ok(())
            }
        }
    })
}
