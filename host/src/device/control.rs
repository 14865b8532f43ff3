//! The device's control stream: pings (the round trip shows in `/v1/sync`), and with an
//! aggregator that speaks version 3, releases: the device reports what it runs, the
//! aggregator offers what it should run, the sans-IO [`Fetcher`] asks for the missing pieces
//! and the [`ReleaseAgent`] checks, stores and installs them off the async threads. The
//! stream is its own QUIC stream: a download never waits behind event sync, nor sync behind
//! a download.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fleet_net::framed::{FrameReader, StreamError, write_frame};
use fleet_proto::Frame;
use fleet_proto::distribution::{Digest, FetchConfig, FetchEvent, Fetcher, Step};
use fleet_proto::frame::Control;

use super::sync::SyncStatus;
use crate::release::{Accepted, ReleaseAgent};

/// How often the device pings the aggregator.
const PING_EVERY: Duration = Duration::from_secs(5);

/// Runs the control stream of one connection until it ends. `version` is the protocol
/// version agreed on the bulk stream; `agent` is `None` on a host that takes no releases.
pub(crate) async fn run(
    conn: quinn::Connection,
    version: u16,
    agent: Option<Arc<ReleaseAgent>>,
    status: Arc<SyncStatus>,
) -> Result<(), String> {
    let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let mut reader = FrameReader::new(recv);
    let agent = agent.filter(|_| version >= 3);
    let fetch = agent
        .as_ref()
        .map_or_else(FetchConfig::default, |a| a.fetch_config());
    let mut session = Session {
        fetcher: Fetcher::new(fetch),
        accepted: None,
        offered: None,
        reported_at: 0,
        pace: None,
    };
    if let Some(agent) = &agent {
        session.fetcher.report(agent.report(None));
    }
    let mut ping = tokio::time::interval(PING_EVERY);
    let mut ping_sent: Option<(u64, Instant)> = None;
    let mut nonce = 0u64;
    loop {
        while let Some(frame) = session.fetcher.poll_transmit() {
            write_frame(&mut send, &frame).await.map_err(err)?;
        }
        tokio::select! {
            frame = reader.next() => {
                let Some(frame) = frame.map_err(err)? else {
                    return Ok(());
                };
                if let Frame::Control(Control::Pong { nonce }) = &frame {
                    if let Some((_, at)) = ping_sent.take_if(|(n, _)| n == nonce) {
                        status.rtt_micros.store(at.elapsed().as_micros() as u64, Ordering::Relaxed);
                    }
                    continue;
                }
                let Some(agent) = &agent else {
                    return Err(format!("unexpected {} on the control stream", frame.name()));
                };
                match session.fetcher.handle(frame) {
                    Ok(Some(event)) => session.on_event(agent, event).await,
                    Ok(None) => {}
                    Err(e) => {
                        // A piece that is not what was asked: the download fails, the
                        // device stays on its release.
                        session.fail(agent, Step::Failed { reason: "corrupt".into(), message: e.to_string() });
                    }
                }
            }
            _ = ping.tick() => {
                nonce += 1;
                ping_sent = Some((nonce, Instant::now()));
                write_frame(&mut send, &Frame::Control(Control::Ping { nonce })).await.map_err(err)?;
            }
        }
    }
}

fn err(e: StreamError) -> String {
    e.to_string()
}

struct Session {
    fetcher: Fetcher,
    /// The offer being fetched.
    accepted: Option<Arc<Accepted>>,
    /// The release offered last, for reports.
    offered: Option<Digest>,
    /// Download progress last reported, in quarters.
    reported_at: u64,
    /// Since when this connection downloads, and the bytes it took (for the download limit).
    pace: Option<(Instant, u64)>,
}

impl Session {
    fn step(&mut self, agent: &ReleaseAgent, step: Step) {
        let release = self.offered.expect("a step of an offered release");
        self.fetcher.report(agent.report(Some((release, step))));
    }

    fn fail(&mut self, agent: &ReleaseAgent, step: Step) {
        self.fetcher.cancel();
        self.accepted = None;
        if self.offered.is_some() {
            self.step(agent, step);
        }
    }

    async fn on_event(&mut self, agent: &Arc<ReleaseAgent>, event: FetchEvent) {
        match event {
            FetchEvent::Offered(offer) => {
                self.fetcher.cancel();
                self.accepted = None;
                self.pace = None;
                self.offered = Some(offer.release);
                let release = offer.release;
                let considered = blocking(agent, move |a| a.consider(offer)).await;
                match considered {
                    Ok(accepted) => {
                        tracing::info!(release = %accepted.manifest.label(), "release offered; fetching what is missing");
                        let accepted = Arc::new(accepted);
                        let ready = self.fetcher.fetch(release, accepted.needs.clone());
                        self.accepted = Some(accepted);
                        if ready {
                            self.install(agent).await;
                        } else {
                            self.progress(agent, true);
                        }
                    }
                    Err(step) => self.step(agent, step),
                }
            }
            FetchEvent::Piece {
                artifact,
                offset,
                data,
            } => {
                let Some(accepted) = self.accepted.clone() else {
                    return;
                };
                self.pace(agent, data.len() as u64).await;
                let written = blocking(agent, move |a| {
                    a.write_piece(&accepted, artifact, offset, &data)
                })
                .await;
                match written {
                    Ok(have) => {
                        if self.fetcher.written(artifact, have).is_some() {
                            self.install(agent).await;
                        } else {
                            self.progress(agent, false);
                        }
                    }
                    Err(step) => self.fail(agent, step),
                }
            }
            FetchEvent::Unavailable { artifact } => {
                let hex: String = artifact.iter().map(|b| format!("{b:02x}")).collect();
                self.fail(
                    agent,
                    Step::Failed {
                        reason: "unavailable".into(),
                        message: format!("the aggregator cannot serve artifact {hex}"),
                    },
                );
            }
        }
    }

    /// Holds a piece back until the download keeps under the agent's limit: the next
    /// request goes out only after it, so the link carries at most the limit (and the
    /// window's few pieces in flight).
    async fn pace(&mut self, agent: &ReleaseAgent, bytes: u64) {
        let Some(limit) = agent.download_limit() else {
            return;
        };
        let (since, taken) = self.pace.get_or_insert_with(|| (Instant::now(), 0));
        *taken += bytes;
        let due = *since + Duration::from_secs_f64(*taken as f64 / limit as f64);
        tokio::time::sleep_until(due.into()).await;
    }

    /// Reports download progress at the start and at each quarter.
    fn progress(&mut self, agent: &ReleaseAgent, start: bool) {
        let Some((_, have, total)) = self.fetcher.progress() else {
            return;
        };
        let quarter = have * 4 / total.max(1);
        if start || quarter > self.reported_at {
            self.reported_at = quarter;
            self.step(agent, Step::Downloading { have, total });
        }
    }

    async fn install(&mut self, agent: &Arc<ReleaseAgent>) {
        let Some(accepted) = self.accepted.take() else {
            return;
        };
        self.step(agent, Step::Verified);
        let step = blocking(agent, move |a| a.install(&accepted)).await;
        if step == Step::Active {
            tracing::info!("release installed and active");
        }
        self.step(agent, step);
    }
}

/// Release work on the blocking pool at once, in a process: one serving many devices gets
/// an offer for each of them together, and would otherwise start a thread for each.
static RELEASE_WORK: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Runs `f` on the blocking pool (files, hashing, compiling).
async fn blocking<T: Send + 'static>(
    agent: &Arc<ReleaseAgent>,
    f: impl FnOnce(&ReleaseAgent) -> T + Send + 'static,
) -> T {
    let agent = agent.clone();
    let _permit = RELEASE_WORK.acquire().await.expect("never closed");
    tokio::task::spawn_blocking(move || f(&agent))
        .await
        .expect("release work does not panic")
}
