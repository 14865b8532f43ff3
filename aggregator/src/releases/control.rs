//! A device's control stream at the aggregator, driving the sans-IO
//! [`Distributor`]: pings answered; a device that reports (version 3) is offered the release
//! its deployments say it should run, now and whenever a deployment changes, and is served
//! the pieces it asks for, read from disk; each report goes to the live stream (`devices`). A
//! version-2 device only pings.

use std::collections::BTreeMap;
use std::sync::Arc;

use fleet_net::framed::{FrameReader, StreamError, write_frame};
use fleet_proto::Frame;
use fleet_proto::distribution::{DistributeEvent, Distributor};
use fleet_proto::frame::Control;

use super::FleetReleases;
use crate::live::{Derived, LiveFeed};

/// Serves the control stream whose first frame was `first`, until it ends.
pub async fn serve(
    mut send: quinn::SendStream,
    mut reader: FrameReader,
    first: Frame,
    releases: Arc<FleetReleases>,
    live: Arc<LiveFeed>,
    device: Arc<str>,
) -> Result<(), StreamError> {
    let mut distributor = Distributor::new();
    let mut changes = releases.subscribe();
    let mut labels: Option<BTreeMap<String, String>> = None;
    let mut next = Some(first);
    let result = loop {
        let frame = match next.take() {
            Some(frame) => frame,
            None => tokio::select! {
                frame = reader.next() => match frame {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                },
                changed = changes.changed() => {
                    if changed.is_err() {
                        break Ok(());
                    }
                    if let Some(labels) = &labels
                        && let Err(e) = offer(&mut send, &mut distributor, &releases, &device, labels).await
                    {
                        break Err(e);
                    }
                    continue;
                }
            },
        };
        let event = match distributor.handle(frame) {
            Ok(event) => event,
            Err(e) => break Err(StreamError::Protocol(e)),
        };
        let sent = match event {
            DistributeEvent::Reply(frame) => write_frame(&mut send, &frame).await,
            DistributeEvent::Report(report) => {
                let reported = releases.report(&device, &report);
                let mut pushed = Derived::default();
                pushed.release(
                    &device,
                    serde_json::json!({
                        "active": report.active_label,
                        "offered": report.offered.as_ref().map(|(id, step)| serde_json::json!({
                            "release": fleet_release::Sha256Digest(*id).hex(),
                            "step": step,
                        })),
                    }),
                );
                live.publish(pushed);
                let sent = offer(&mut send, &mut distributor, &releases, &device, &reported).await;
                labels = Some(reported);
                sent
            }
            DistributeEvent::Read {
                artifact,
                offset,
                len,
            } => {
                let frame = match releases.read_piece(artifact, offset, len).await {
                    Ok(data) => distributor.piece(artifact, offset, data),
                    Err(e) => {
                        tracing::error!(%device, error = %e, "reading a release artifact");
                        Frame::Control(Control::Unavailable { artifact })
                    }
                };
                write_frame(&mut send, &frame).await
            }
        };
        if let Err(e) = sent {
            break Err(e);
        }
    };
    if labels.is_some() {
        releases.disconnected(&device);
    }
    result
}

/// Offers the device its desired release, if it is not running it and was not offered it on
/// this connection.
async fn offer(
    send: &mut quinn::SendStream,
    distributor: &mut Distributor,
    releases: &FleetReleases,
    device: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), StreamError> {
    let Some(desired) = releases.desired(device, labels) else {
        return Ok(());
    };
    let ready = match releases.ready(&desired) {
        Ok(ready) => ready,
        Err(e) => {
            tracing::error!(%device, release = %desired, error = %e, "a deployed release cannot be read");
            return Ok(());
        }
    };
    let Some(frame) = distributor.offer(ready.offer.clone(), ready.artifacts.clone()) else {
        return Ok(());
    };
    releases.offered(device, &desired);
    write_frame(send, &frame).await
}
