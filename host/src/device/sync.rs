//! The device's QUIC client: connects to the aggregator with its fleet certificate, streams
//! the journal through the sans-IO [`Sender`], and drops from the journal whatever the
//! aggregator acknowledges. Reconnects with exponential backoff and jitter, resuming from the
//! aggregator's record; a separate control stream (`control.rs`) carries pings and releases,
//! so control never waits behind bulk data.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fleet_journal::Journal;
use fleet_net::framed::{FrameReader, write_frame};
use fleet_proto::sender::{Sender, SenderConfig, SenderEvent};
use tokio::sync::{Notify, Semaphore};

/// Least time between two openings of a connection's control stream.
const CONTROL_REOPEN: Duration = Duration::from_secs(1);

/// Where and how to sync.
#[derive(Clone)]
pub struct SyncConfig {
    pub aggregator: SocketAddr,
    /// Name the aggregator's certificate must carry.
    pub server_name: String,
    pub client: quinn::ClientConfig,
    pub device: String,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub sender: SenderConfig,
    /// A client endpoint to share (one UDP socket for many devices in one process); `None`
    /// opens one for this device.
    pub endpoint: Option<quinn::Endpoint>,
    /// Handshakes in flight at once among the devices sharing this gate (an edge node or a
    /// simulator with thousands of devices): without it they all start together and time
    /// out against a busy aggregator. A permit is held from connect to the end of the
    /// handshake. `None`: no limit.
    pub handshakes: Option<Arc<Semaphore>>,
    /// Takes releases the aggregator offers (`None`: this host takes none).
    pub releases: Option<Arc<crate::release::ReleaseAgent>>,
}

/// Live figures of the sync loop.
#[derive(Default)]
pub struct SyncStatus {
    pub connected: AtomicBool,
    pub acked: AtomicU64,
    pub connects: AtomicU64,
    pub failures: AtomicU64,
    /// Last control-stream round trip, microseconds.
    pub rtt_micros: AtomicU64,
}

/// Runs until `stop` is notified.
pub async fn run(
    journal: Arc<Journal>,
    wake: Arc<Notify>,
    config: SyncConfig,
    status: Arc<SyncStatus>,
    stop: Arc<Notify>,
) {
    let mut sender = Sender::new(
        SenderConfig {
            device: Some(config.device.clone()),
            journal: journal.id(),
            ..config.sender.clone()
        },
        journal.stats().acked,
    );
    status.acked.store(sender.acked(), Ordering::Relaxed);
    let endpoint = match config.endpoint.clone() {
        Some(e) => e,
        None => match client_endpoint(config.aggregator) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "cannot open a UDP socket; sync disabled");
                return;
            }
        },
    };
    let mut backoff = config.backoff_min;
    loop {
        let attempt = async {
            let permit = match &config.handshakes {
                Some(gate) => Some(
                    gate.clone()
                        .acquire_owned()
                        .await
                        .map_err(|e| e.to_string())?,
                ),
                None => None,
            };
            let conn = endpoint
                .connect_with(
                    config.client.clone(),
                    config.aggregator,
                    &config.server_name,
                )
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())?;
            drop(permit);
            status.connects.fetch_add(1, Ordering::Relaxed);
            status.connected.store(true, Ordering::Relaxed);
            tracing::info!(aggregator = %config.aggregator, "connected");
            let result = session(
                &conn,
                &journal,
                &wake,
                &mut sender,
                &status,
                config.releases.clone(),
            )
            .await;
            status.connected.store(false, Ordering::Relaxed);
            sender.disconnected();
            conn.close(0u32.into(), b"bye");
            result
        };
        let started = Instant::now();
        let outcome = tokio::select! {
            r = attempt => r,
            () = stop.notified() => {
                if config.endpoint.is_none() {
                    endpoint.close(0u32.into(), b"shutdown");
                }
                return;
            }
        };
        if let Err(e) = outcome {
            status.failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "sync connection ended");
        }
        // A connection that lasted a while resets the backoff.
        if started.elapsed() > Duration::from_secs(10) {
            backoff = config.backoff_min;
        }
        let jitter = backoff.mul_f64(rand::random::<f64>() * 0.5);
        tokio::select! {
            () = tokio::time::sleep(backoff + jitter) => {}
            () = stop.notified() => return,
        }
        backoff = (backoff * 2).min(config.backoff_max);
    }
}

/// A QUIC client endpoint on an ephemeral port of the same family as `peer`.
pub fn client_endpoint(peer: SocketAddr) -> std::io::Result<quinn::Endpoint> {
    let bind: SocketAddr = if peer.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()
    .expect("literal");
    quinn::Endpoint::client(bind)
}

async fn session(
    conn: &quinn::Connection,
    journal: &Arc<Journal>,
    wake: &Notify,
    sender: &mut Sender,
    status: &Arc<SyncStatus>,
    releases: Option<Arc<crate::release::ReleaseAgent>>,
) -> Result<(), String> {
    let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let mut reader = FrameReader::new(recv);
    write_frame(&mut send, &sender.connected())
        .await
        .map_err(|e| e.to_string())?;
    // The control stream opens once the welcome says which version the aggregator speaks,
    // and opens again (at most once a second) if it ended while the connection lives: a
    // device whose control stream failed would otherwise take no release until it
    // reconnected.
    let mut control: Option<(tokio::task::JoinHandle<()>, Instant)> = None;
    let clock = Instant::now();
    let result = loop {
        if control
            .as_ref()
            .is_some_and(|(task, at)| task.is_finished() && at.elapsed() >= CONTROL_REOPEN)
        {
            control = None;
        }
        if control.is_none()
            && let Some(version) = sender.version()
        {
            let (conn, releases, status) = (conn.clone(), releases.clone(), status.clone());
            let task = tokio::spawn(async move {
                if let Err(e) = super::control::run(conn, version, releases, status).await {
                    tracing::debug!(error = %e, "control stream ended");
                }
            });
            control = Some((task, Instant::now()));
        }
        // Fill the window.
        let mut write_error = None;
        while let Some(batch) = sender.poll_transmit(clock.elapsed(), &**journal) {
            if let Err(e) = write_frame(&mut send, &batch).await {
                write_error = Some(e.to_string());
                break;
            }
        }
        if let Some(e) = write_error {
            break Err(e);
        }
        let timeout = sender.poll_timeout().map_or(Duration::from_secs(1), |t| {
            t.saturating_sub(clock.elapsed())
        });
        tokio::select! {
            frame = reader.next() => match frame {
                Ok(Some(frame)) => match sender.handle(frame) {
                    Ok(Some(SenderEvent::Acked(seq))) => {
                        if let Err(e) = journal.acknowledge(seq) {
                            tracing::error!(error = %e, "dropping acknowledged entries");
                        }
                        status.acked.store(seq, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(e) => break Err(format!("aggregator: {e}")),
                },
                Ok(None) => break Err("the aggregator closed the stream".into()),
                Err(e) => break Err(e.to_string()),
            },
            () = wake.notified() => {}
            () = tokio::time::sleep(timeout.max(Duration::from_millis(1))) => sender.handle_timeout(clock.elapsed()),
        }
    };
    if let Some((control, _)) = control {
        control.abort();
    }
    result
}
