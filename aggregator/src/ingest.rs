//! The QUIC side: accepts devices (mutual TLS against the fleet CA), takes the device id from
//! the verified certificate, and runs one [`Receiver`] per bulk stream. Control streams
//! (pings, releases: [`crate::releases`]) are separate QUIC streams, so they never wait
//! behind bulk data, nor bulk data behind a download.
//!
//! A peer that sends a malformed, oversized or out-of-place frame gets an `error` frame and
//! its connection is closed; nothing else is affected.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use fleet_net::framed::{FrameReader, write_frame};
use fleet_proto::frame::ErrorCode;
use fleet_proto::receiver::{Receiver, ReceiverAction};
use fleet_proto::{Frame, ProtocolError, Seq};
use tokio::sync::mpsc;

use crate::Shared;
use crate::committer::CommitError;
use crate::metrics::Metrics;

/// Most batches a device may have in flight (sent, not yet acknowledged).
pub const WINDOW: u32 = 16;

/// Application close codes.
pub mod close {
    pub const DONE: u32 = 0;
    pub const PROTOCOL: u32 = 1;
    pub const UNAUTHORIZED: u32 = 2;
    pub const STORAGE: u32 = 3;
}

/// Binds the QUIC endpoint.
pub fn bind(config: quinn::ServerConfig, addr: SocketAddr) -> std::io::Result<quinn::Endpoint> {
    quinn::Endpoint::server(config, addr)
}

/// Accepts connections until the endpoint closes.
pub async fn serve(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        let shared = shared.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => connection(conn, shared).await,
                Err(e) => {
                    Metrics::add(&shared.metrics.handshake_failures, 1);
                    tracing::warn!(%remote, error = %e, "connection refused during the handshake");
                }
            }
        });
    }
}

/// The open connections, by quinn's stable id, with the certificate serial each was
/// verified with.
#[derive(Default)]
pub struct Connections(Mutex<HashMap<usize, (fleet_net::identity::Peer, quinn::Connection)>>);

impl Connections {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<usize, (fleet_net::identity::Peer, quinn::Connection)>>
    {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes every connection whose certificate serial is in `revoked`; returns the devices.
    pub fn close_revoked(&self, revoked: &HashSet<Vec<u8>>) -> Vec<String> {
        let mut closed = Vec::new();
        for (peer, conn) in self.lock().values() {
            if revoked.contains(&peer.serial) {
                conn.close(close::UNAUTHORIZED.into(), b"certificate revoked");
                closed.push(peer.device.clone());
            }
        }
        closed
    }
}

/// Keeps a connection in [`Connections`] and the connected gauge while it lives.
struct ConnectedGuard(Arc<Shared>, usize);

impl Drop for ConnectedGuard {
    fn drop(&mut self) {
        self.0.connections.lock().remove(&self.1);
        self.0
            .metrics
            .connected
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn connection(conn: quinn::Connection, shared: Arc<Shared>) {
    let remote = conn.remote_address();
    let peer = match fleet_net::identity::peer(&conn) {
        Ok(peer) => peer,
        Err(e) => {
            tracing::warn!(%remote, error = %e, "no device identity");
            conn.close(close::UNAUTHORIZED.into(), e.to_string().as_bytes());
            return;
        }
    };
    let device: Arc<str> = peer.device.clone().into();
    Metrics::add(&shared.metrics.connections, 1);
    Metrics::add(&shared.metrics.connected, 1);
    shared
        .connections
        .lock()
        .insert(conn.stable_id(), (peer, conn.clone()));
    let _guard = ConnectedGuard(shared.clone(), conn.stable_id());
    if let Err(e) = shared.history.seen(&device, crate::now_ms()) {
        tracing::error!(%device, error = %e, "recording the device");
    }
    tracing::info!(%device, %remote, "device connected");
    publish_device(&shared, &device, true);
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let (conn, shared, device) = (conn.clone(), shared.clone(), device.clone());
                tokio::spawn(async move {
                    if let Err(e) = stream(&conn, send, recv, &shared, &device).await {
                        close_for(&conn, &shared, &device, e);
                    }
                });
            }
            Err(e) => {
                tracing::info!(%device, reason = %e, "device disconnected");
                publish_device(&shared, &device, false);
                return;
            }
        }
    }
}

/// Tells stream subscribers a device connected or went away.
fn publish_device(shared: &Shared, device: &str, connected: bool) {
    let mut live = crate::live::Derived::default();
    live.device(device, connected, crate::now_ms());
    shared.live.publish(live);
}

/// Why a stream ended badly, and how the connection is closed.
#[derive(Debug)]
enum StreamEnd {
    Protocol(ProtocolError),
    Unauthorized(String),
    Storage(String),
    Transport(String),
}

fn close_for(conn: &quinn::Connection, shared: &Shared, device: &str, end: StreamEnd) {
    let (code, reason) = match &end {
        StreamEnd::Protocol(e) => {
            Metrics::add(&shared.metrics.protocol_errors, 1);
            (close::PROTOCOL, e.to_string())
        }
        StreamEnd::Unauthorized(m) => {
            Metrics::add(&shared.metrics.protocol_errors, 1);
            (close::UNAUTHORIZED, m.clone())
        }
        StreamEnd::Storage(m) => (close::STORAGE, m.clone()),
        StreamEnd::Transport(m) => {
            tracing::debug!(%device, reason = %m, "stream ended");
            return;
        }
    };
    tracing::warn!(%device, %reason, "closing the connection");
    conn.close(code.into(), reason.as_bytes());
}

impl From<fleet_net::framed::StreamError> for StreamEnd {
    fn from(e: fleet_net::framed::StreamError) -> Self {
        match e {
            fleet_net::framed::StreamError::Protocol(p) => Self::Protocol(p),
            fleet_net::framed::StreamError::Truncated => Self::Protocol(ProtocolError::Malformed(
                "stream ended inside a frame".into(),
            )),
            other => Self::Transport(other.to_string()),
        }
    }
}

async fn stream(
    conn: &quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    shared: &Arc<Shared>,
    device: &Arc<str>,
) -> Result<(), StreamEnd> {
    let mut reader = FrameReader::new(recv);
    let Some(first) = reader.next().await? else {
        return Ok(());
    };
    match first {
        Frame::Hello {
            device: Some(claimed),
            ..
        } if *claimed != **device => {
            let message =
                format!("hello claims device {claimed:?}, the certificate says {device:?}");
            refuse(send, ErrorCode::Unauthorized, &message).await;
            Err(StreamEnd::Unauthorized(message))
        }
        hello @ Frame::Hello { .. } => bulk(conn, send, reader, hello, shared, device).await,
        control @ Frame::Control(_) => crate::releases::serve_control(
            send,
            reader,
            control,
            shared.releases.clone(),
            shared.live.clone(),
            device.clone(),
        )
        .await
        .map_err(StreamEnd::from),
        other => {
            let e = ProtocolError::Unexpected {
                got: other.name(),
                state: "new stream",
            };
            refuse(send, e.code(), &e.to_string()).await;
            Err(StreamEnd::Protocol(e))
        }
    }
}

/// The bulk stream: batches in, acks out once durable. Reading, persisting and acknowledging
/// are pipelined; persists complete in order (one committer), so acks do too.
async fn bulk(
    conn: &quinn::Connection,
    send: quinn::SendStream,
    mut reader: FrameReader,
    hello: Frame,
    shared: &Arc<Shared>,
    device: &Arc<str>,
) -> Result<(), StreamEnd> {
    let receiver = Arc::new(Mutex::new(Receiver::new(WINDOW)));
    let (out_tx, out_rx) = mpsc::channel::<Frame>(64);
    let writer = tokio::spawn(writer(send, out_rx));
    let (ack_tx, mut ack_rx) = mpsc::channel::<(
        Seq,
        tokio::sync::oneshot::Receiver<Result<_, CommitError>>,
    )>(WINDOW as usize * 2);
    let acker = {
        let (receiver, out_tx, conn, shared, device) = (
            receiver.clone(),
            out_tx.clone(),
            conn.clone(),
            shared.clone(),
            device.clone(),
        );
        tokio::spawn(async move {
            while let Some((through, done)) = ack_rx.recv().await {
                let result = done.await.unwrap_or(Err(CommitError::Stopped));
                match result {
                    Ok(_) => {
                        let ack = receiver
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .persisted(through);
                        if out_tx.send(ack).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        close_for(&conn, &shared, &device, StreamEnd::Storage(e.to_string()));
                        return;
                    }
                }
            }
        })
    };
    let mut next = Some(hello);
    let result = loop {
        let frame = match next.take() {
            Some(f) => f,
            None => match reader.next().await {
                Ok(Some(f)) => f,
                Ok(None) => break Ok(()),
                Err(e) => break Err(StreamEnd::from(e)),
            },
        };
        let action = receiver
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .handle(frame);
        match action {
            Ok(ReceiverAction::Reply(f)) => {
                if out_tx.send(f).await.is_err() {
                    break Ok(());
                }
            }
            Ok(ReceiverAction::Open { journal }) => {
                match shared.committer.open(device.clone(), journal).await {
                    Ok(durable) => {
                        let welcome = receiver
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .opened(durable);
                        if out_tx.send(welcome).await.is_err() {
                            break Ok(());
                        }
                    }
                    Err(e) => {
                        let (code, end) = match &e {
                            CommitError::StaleJournal(m) => {
                                (ErrorCode::StaleJournal, StreamEnd::Unauthorized(m.clone()))
                            }
                            other => (
                                ErrorCode::Unavailable,
                                StreamEnd::Storage(other.to_string()),
                            ),
                        };
                        let _ = out_tx
                            .send(Frame::Error {
                                code,
                                message: e.to_string(),
                            })
                            .await;
                        break Err(end);
                    }
                }
            }
            Ok(ReceiverAction::Persist {
                journal,
                through,
                journaled,
                entries,
            }) => {
                let done = shared
                    .committer
                    .persist(device.clone(), journal, through, journaled, entries)
                    .await;
                if ack_tx.send((through, done)).await.is_err() {
                    break Ok(());
                }
            }
            Ok(ReceiverAction::Nothing) => {}
            Err(e) => {
                let _ = out_tx
                    .send(Frame::Error {
                        code: e.code(),
                        message: e.to_string(),
                    })
                    .await;
                break Err(StreamEnd::Protocol(e));
            }
        }
    };
    drop(ack_tx);
    let _ = acker.await;
    drop(out_tx);
    let _ = writer.await;
    result
}

async fn writer(mut send: quinn::SendStream, mut frames: mpsc::Receiver<Frame>) {
    while let Some(frame) = frames.recv().await {
        if let Frame::Error { code, message } = &frame {
            refuse(send, *code, message).await;
            return;
        }
        if write_frame(&mut send, &frame).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
}

/// Sends an error frame and gives the peer a moment to read it before the connection is
/// closed (closing discards unsent stream data).
async fn refuse(mut send: quinn::SendStream, code: ErrorCode, message: &str) {
    let frame = Frame::Error {
        code,
        message: message.into(),
    };
    if write_frame(&mut send, &frame).await.is_ok() && send.finish().is_ok() {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), send.stopped()).await;
    }
}
