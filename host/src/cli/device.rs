//! `edge-host device`: the device role. Events from stdin (JSON lines) and from a loopback
//! HTTP endpoint are scored, journaled durably (then acknowledged) and synced to the
//! aggregator over QUIC.

use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use fleet_host::device::http;
use fleet_host::device::sync::{self, SyncConfig, SyncStatus};
use fleet_host::device::writer::{self, DeviceRuntime};
use fleet_host::release::{DeviceLabels, ReleaseAgent};
use fleet_journal::{Journal, JournalConfig, ThinPolicy};
use fleet_net::pki::{DeviceFiles, Pki};
use fleet_proto::sender::{Outbox, SenderConfig};
use tokio::sync::Notify;

use super::score::{DeadLetterSink, write_outcome};
use super::{RuntimeArgs, lines};

#[derive(Args, Debug)]
pub(crate) struct DeviceArgs {
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// This device's id: the common name of its certificate.
    #[arg(long, default_value = "device-1")]
    device: String,
    /// Fleet PKI directory (`ca.pem`, `devices/ID.pem`, `devices/ID-key.pem`), as made by
    /// `aggregator certs init` and `aggregator certs issue --device ID`.
    #[arg(long, default_value = "certs")]
    certs: PathBuf,
    /// Aggregator QUIC address.
    #[arg(long, default_value = "127.0.0.1:4433")]
    aggregator: SocketAddr,
    /// Name the aggregator's certificate must carry.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Journal directory. Default: `device-data/ID`.
    #[arg(long)]
    journal: Option<PathBuf>,
    /// Loopback HTTP endpoint for the handset app (`POST /v1/events`).
    #[arg(long, default_value = "127.0.0.1:8081")]
    http: SocketAddr,
    /// Do not serve HTTP.
    #[arg(long)]
    no_http: bool,
    /// A label of this device (`region=north`), repeatable: deployments select devices by
    /// label (`fleetctl deploy --label region=north`).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Events as JSON lines; `-` or absent reads stdin.
    #[arg(long, short)]
    input: Option<PathBuf>,
    /// Most events per batch through the modules.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Exit once the input has ended and the aggregator has acknowledged everything journaled.
    #[arg(long)]
    exit_when_synced: bool,
    /// Unsynced journal bytes (MiB) above which location pings are thinned.
    #[arg(long, default_value_t = 256)]
    journal_budget_mib: u64,
    /// While thinning, keep one location ping per courier per this many seconds.
    #[arg(long, default_value_t = 60)]
    thin_keep_one_per_s: i64,
    /// Do not print decisions on stdout.
    #[arg(long)]
    quiet: bool,
    /// Most KiB per second a release download takes (0: no limit), so a download on a
    /// thin or metered link leaves room for event sync.
    #[arg(long, default_value_t = 0)]
    release_download_kib_s: u64,
    /// KiB asked for per piece of a release download (1 to 1024): smaller pieces send less
    /// again when a flaky link cuts a download.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=1024))]
    release_piece_kib: u32,
    /// Highest sync protocol version to offer. The newest by default; a lower one makes
    /// this device speak as one of an older build (no releases, decisions without their
    /// release), as during a fleet upgrade.
    #[arg(long, default_value_t = fleet_proto::PROTOCOL_VERSION,
          value_parser = clap::value_parser!(u16).range(i64::from(fleet_proto::MIN_PROTOCOL_VERSION)..=i64::from(fleet_proto::PROTOCOL_VERSION)))]
    protocol_version: u16,
}

/// `KEY=VALUE`, both non-empty.
fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => {
            Ok((k.trim().to_string(), v.trim().to_string()))
        }
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

pub(crate) fn run(mut args: DeviceArgs) -> anyhow::Result<()> {
    if args.runtime.release_keys.is_none() {
        args.runtime.release_keys = Some(args.certs.join("release-keys"));
    }
    let path = args
        .journal
        .clone()
        .unwrap_or_else(|| PathBuf::from("device-data").join(&args.device));
    let registry = args
        .runtime
        .registry_with_store(Some(&path.join("releases")))?;
    let _reloads = args.runtime.reload_triggers(&registry)?;
    let mut config = JournalConfig::new(&path);
    config.thin = ThinPolicy {
        budget_bytes: args.journal_budget_mib << 20,
        keep_one_per_ms: args.thin_keep_one_per_s * 1000,
    };
    let (journal, recovery) = Journal::open(config)
        .with_context(|| format!("opening the journal at {}", path.display()))?;
    tracing::info!(
        journal = %path.display(),
        last_seq = recovery.last_seq,
        backlog = recovery.backlog,
        took_ms = recovery.took.as_secs_f64() * 1e3,
        "journal recovered"
    );
    let journal = Arc::new(journal);
    watch_store(&journal);
    let pki = Pki::at(&args.certs);
    let files: DeviceFiles = pki.device(&args.device);
    let client = fleet_net::tls::client_config(&pki.ca_cert(), &files).with_context(|| {
        format!(
            "loading credentials for {} from {}",
            args.device,
            args.certs.display()
        )
    })?;
    let wake = Arc::new(Notify::new());
    let stop = Arc::new(Notify::new());
    let status = Arc::new(SyncStatus::default());
    let handle = writer::spawn(
        DeviceRuntime::new(registry.clone()),
        journal.clone(),
        wake.clone(),
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let sync_task = rt.spawn(sync::run(
        journal.clone(),
        wake.clone(),
        SyncConfig {
            aggregator: args.aggregator,
            server_name: args.server_name.clone(),
            client,
            device: args.device.clone(),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            sender: SenderConfig {
                max_version: args.protocol_version,
                ..SenderConfig::default()
            },
            endpoint: None,
            handshakes: None,
            releases: Some(Arc::new(
                ReleaseAgent::new(
                    registry.clone(),
                    DeviceLabels {
                        labels: args.labels.clone(),
                        agent: concat!("edge-host/", env!("CARGO_PKG_VERSION"), " device").into(),
                    },
                )
                .with_download_limit(Some(args.release_download_kib_s << 10))
                .with_piece_size(args.release_piece_kib << 10),
            )),
        },
        status.clone(),
        stop.clone(),
    ));
    if !args.no_http {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(args.http))
            .with_context(|| format!("binding HTTP on {}", args.http))?;
        tracing::info!(http = %listener.local_addr()?, "accepting events over HTTP");
        let app = http::router(handle.clone(), status.clone(), registry.clone());
        rt.spawn(async move { axum::serve(listener, app).await });
    }

    let input = lines::open(args.input.as_deref())?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut stderr = DeadLetterSink::stderr();
    let quiet = args.quiet;
    // Events far ahead of this device's clock are refused like malformed lines.
    let clock = |e: &fleet_host::event::Event| e.check_clock(chrono::Utc::now().timestamp_millis());
    let stats = lines::for_each_batch(input, args.batch, clock, |batch| {
        match handle.submit_blocking(batch) {
            Ok(accepted) if !quiet => write_outcome(
                &mut out,
                &mut stderr,
                &accepted.decisions,
                &accepted.dead_letters,
            )?,
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "batch not journaled"),
        }
        Ok(())
    })?;
    out.flush()?;
    tracing::info!(
        lines = stats.lines,
        malformed = stats.malformed,
        "input ended"
    );

    rt.block_on(async {
        if args.exit_when_synced {
            while status.acked.load(Ordering::Relaxed) < journal.last_seq() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tracing::info!(
                acked = journal.last_seq(),
                "everything journaled is in the aggregator's history"
            );
        } else {
            let _ = tokio::signal::ctrl_c().await;
        }
        stop.notify_one();
        let _ = tokio::time::timeout(Duration::from_secs(2), sync_task).await;
    });
    journal.flush()?;
    Ok(())
}

/// Restarts the process when the journal's store broke on a failed flush (only a new process
/// can reopen it) and the disk has room again; the log holds everything acknowledged.
fn watch_store(journal: &Arc<Journal>) {
    let store = journal.store().clone();
    let dir = store.path().to_path_buf();
    fleet_process::restart_when(
        "the journal store",
        move || store.broken(),
        move || fleet_wal::free_bytes(&dir).is_ok_and(|free| free >= 2 * fleet_wal::MIN_FLUSH_ROOM),
    );
}
