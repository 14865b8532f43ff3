//! Release distribution on the control stream (protocol version 3), without I/O: the
//! aggregator offers a device its desired release (the signed manifest, a few KB); the device
//! checks the signature and fetches the artifacts it lacks, by digest, in pieces well under
//! the frame cap, a few in flight; it reports each step back.
//!
//! Content addressing makes the rest follow: an artifact the device already holds (from any
//! earlier release) is not fetched, so a release that changes only the policy sends only the
//! policy; a download cut by a reconnect resumes at the length the device holds. Whether a
//! piece is whole and the artifact is what the manifest says is checked by the driver, which
//! owns the files ([`Fetcher`] only tracks requests). The stream is reliable and ordered
//! (QUIC): pieces come back in the order asked, and a lost connection is the only loss.
//!
//! [`Fetcher`] is the device end, [`Distributor`] the aggregator end of one connection.

use std::collections::{HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::frame::{Control, Frame, ProtocolError};

/// A sha256 digest: an artifact's content address, or a release id (the digest of its
/// canonical manifest).
pub type Digest = [u8; 32];

/// Largest piece of an artifact asked for or sent (the frame cap is 4 MiB).
pub const MAX_PIECE: u32 = 1 << 20;

/// The release the aggregator wants a device to run: the signed manifest as published.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    pub release: Digest,
    pub manifest: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Where a device's install of an offered release stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Received, not yet checked.
    Offered,
    /// Manifest verified; fetching the artifacts it lacks (bytes of those artifacts).
    Downloading { have: u64, total: u64 },
    /// Every artifact here and verified; staged as the candidate, loading.
    Verified,
    /// Running.
    Active,
    /// Refused; the device keeps its current release. `reason` is a short code.
    Failed { reason: String, message: String },
}

impl Step {
    /// Short name (status tables).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Offered => "offered",
            Self::Downloading { .. } => "downloading",
            Self::Verified => "verified",
            Self::Active => "active",
            Self::Failed { .. } => "failed",
        }
    }
}

/// What a device says about its releases, when its control stream opens and after each step.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceReport {
    /// The release it runs (`None`: the built-in modules).
    pub active: Option<Digest>,
    /// Its label (`name@version+id`); without a release, `built-in:` (or `directory:`) and
    /// the module set's identity.
    pub active_label: String,
    /// The device's labels (`region=north`), for deployments that select by label.
    pub labels: Vec<(String, String)>,
    /// Build and role, for the operator's device list.
    pub agent: String,
    /// The release offered last, and where its install stands.
    pub offered: Option<(Digest, Step)>,
}

/// One artifact a device lacks, and how much of it is already here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Need {
    pub artifact: Digest,
    pub size: u64,
    pub have: u64,
}

/// Device-end settings.
#[derive(Clone, Debug)]
pub struct FetchConfig {
    /// Pieces in flight at once.
    pub window: usize,
    /// Bytes asked for per piece (at most [`MAX_PIECE`]).
    pub piece: u32,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            window: 4,
            piece: 256 << 10,
        }
    }
}

/// What the device's driver must do after a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum FetchEvent {
    /// A release is offered: verify its manifest, then call [`Fetcher::fetch`] with the
    /// artifacts it lacks (or report it refused).
    Offered(Offer),
    /// Store this piece, then call [`Fetcher::written`] with how much of the artifact is here.
    Piece {
        artifact: Digest,
        offset: u64,
        data: Vec<u8>,
    },
    /// The aggregator cannot serve an artifact of the release being fetched: the download
    /// failed.
    Unavailable { artifact: Digest },
}

#[derive(Clone, Copy, Debug)]
struct Request {
    artifact: Digest,
    offset: u64,
    len: u32,
}

#[derive(Debug)]
struct Download {
    release: Digest,
    needs: Vec<Need>,
    /// Index into `needs` and offset of the next piece to ask for.
    cursor: (usize, u64),
}

impl Download {
    fn next_request(&mut self, piece: u32) -> Option<(Digest, u64, u32)> {
        loop {
            let (index, offset) = self.cursor;
            let need = self.needs.get(index)?;
            if offset >= need.size {
                self.cursor = (index + 1, self.needs.get(index + 1).map_or(0, |n| n.have));
                continue;
            }
            let len = (need.size - offset).min(u64::from(piece)) as u32;
            self.cursor.1 = offset + u64::from(len);
            return Some((need.artifact, offset, len));
        }
    }

    fn bytes(&self) -> (u64, u64) {
        self.needs
            .iter()
            .fold((0, 0), |(have, total), n| (have + n.have, total + n.size))
    }
}

/// The device end of the release control stream.
#[derive(Debug)]
pub struct Fetcher {
    config: FetchConfig,
    download: Option<Download>,
    in_flight: VecDeque<Request>,
    out: VecDeque<Frame>,
}

impl Fetcher {
    pub fn new(mut config: FetchConfig) -> Self {
        config.piece = config.piece.clamp(1, MAX_PIECE);
        config.window = config.window.max(1);
        Self {
            config,
            download: None,
            in_flight: VecDeque::new(),
            out: VecDeque::new(),
        }
    }

    /// Queues a report for the aggregator (on connect, and after each step).
    pub fn report(&mut self, report: DeviceReport) {
        self.out.push_back(Frame::Control(Control::Report(report)));
    }

    /// Starts fetching `release`: `needs` are the artifacts the device lacks, with what it
    /// holds of each. Returns true when nothing is missing (the release can be staged now).
    pub fn fetch(&mut self, release: Digest, needs: Vec<Need>) -> bool {
        self.in_flight.clear();
        let needs: Vec<Need> = needs.into_iter().filter(|n| n.have < n.size).collect();
        if needs.is_empty() {
            self.download = None;
            return true;
        }
        let cursor = (0, needs[0].have);
        self.download = Some(Download {
            release,
            needs,
            cursor,
        });
        false
    }

    /// Gives up the current download (it failed, or another release was offered).
    pub fn cancel(&mut self) {
        self.download = None;
        self.in_flight.clear();
    }

    /// The release being fetched, and its bytes held and needed.
    pub fn progress(&self) -> Option<(Digest, u64, u64)> {
        let d = self.download.as_ref()?;
        let (have, total) = d.bytes();
        Some((d.release, have, total))
    }

    /// The driver stored a piece: `have` bytes of `artifact` are here now. Returns the
    /// release when every artifact of the download is whole.
    pub fn written(&mut self, artifact: Digest, have: u64) -> Option<Digest> {
        let download = self.download.as_mut()?;
        for need in download.needs.iter_mut().filter(|n| n.artifact == artifact) {
            need.have = need.have.max(have);
        }
        if download.needs.iter().all(|n| n.have >= n.size) {
            let done = download.release;
            self.cancel();
            return Some(done);
        }
        None
    }

    /// The connection is gone: what was asked is asked again on the next one (from what the
    /// driver then holds, when the release is offered again).
    pub fn disconnected(&mut self) {
        self.out.clear();
        self.cancel();
    }

    pub fn handle(&mut self, frame: Frame) -> Result<Option<FetchEvent>, ProtocolError> {
        let Frame::Control(control) = frame else {
            return Err(ProtocolError::Unexpected {
                got: frame.name(),
                state: "release control",
            });
        };
        match control {
            Control::Offer(offer) => Ok(Some(FetchEvent::Offered(offer))),
            Control::Piece {
                artifact,
                offset,
                data,
            } => {
                let Some(at) = self
                    .in_flight
                    .iter()
                    .position(|r| r.artifact == artifact && r.offset == offset)
                else {
                    // An answer to a request given up (a cancelled download, a repeat).
                    return Ok(None);
                };
                let request = self.in_flight.remove(at).expect("found");
                if data.len() != request.len as usize {
                    self.cancel();
                    return Err(ProtocolError::Malformed(format!(
                        "piece at {offset} holds {} bytes, {} were asked",
                        data.len(),
                        request.len
                    )));
                }
                Ok(Some(FetchEvent::Piece {
                    artifact,
                    offset,
                    data,
                }))
            }
            Control::Unavailable { artifact } => {
                let ours = self
                    .download
                    .as_ref()
                    .is_some_and(|d| d.needs.iter().any(|n| n.artifact == artifact));
                if !ours {
                    return Ok(None);
                }
                self.cancel();
                Ok(Some(FetchEvent::Unavailable { artifact }))
            }
            Control::Pong { .. } => Ok(None),
            other => Err(ProtocolError::Unexpected {
                got: other.name(),
                state: "device release control",
            }),
        }
    }

    /// The next frame to send: reports first, then requests while the window has room.
    /// The stream is reliable and ordered (QUIC), so a request is answered once, in order;
    /// a stalled aggregator is a dead connection, and the download resumes on the next one.
    pub fn poll_transmit(&mut self) -> Option<Frame> {
        if let Some(frame) = self.out.pop_front() {
            return Some(frame);
        }
        if self.in_flight.len() >= self.config.window {
            return None;
        }
        let (artifact, offset, len) = self.download.as_mut()?.next_request(self.config.piece)?;
        self.in_flight.push_back(Request {
            artifact,
            offset,
            len,
        });
        Some(Frame::Control(Control::Fetch {
            artifact,
            offset,
            len,
        }))
    }
}

/// What the aggregator's driver must do after a frame.
#[derive(Debug, PartialEq)]
pub enum DistributeEvent {
    /// Record the device's report; then, if the device should run another release, call
    /// [`Distributor::offer`].
    Report(DeviceReport),
    /// Read this piece of an artifact of the offered release (from disk) and send
    /// [`Distributor::piece`].
    Read {
        artifact: Digest,
        offset: u64,
        len: u32,
    },
    /// Send this frame.
    Reply(Frame),
}

/// The aggregator end of one device's release control stream.
#[derive(Debug, Default)]
pub struct Distributor {
    /// The release offered on this connection and the artifacts it may fetch.
    offered: Option<(Digest, HashSet<Digest>)>,
    /// The device's last report.
    report: Option<DeviceReport>,
}

impl Distributor {
    pub fn new() -> Self {
        Self::default()
    }

    /// The device's last report on this connection.
    pub fn report(&self) -> Option<&DeviceReport> {
        self.report.as_ref()
    }

    /// Offers `offer` (whose artifacts are `artifacts`) unless it was offered on this
    /// connection already or the device reports it active. `None`: nothing to send.
    pub fn offer(&mut self, offer: Offer, artifacts: HashSet<Digest>) -> Option<Frame> {
        if self
            .offered
            .as_ref()
            .is_some_and(|(id, _)| *id == offer.release)
        {
            return None;
        }
        if self
            .report
            .as_ref()
            .is_some_and(|r| r.active == Some(offer.release))
        {
            return None;
        }
        self.offered = Some((offer.release, artifacts));
        Some(Frame::Control(Control::Offer(offer)))
    }

    /// The offered release, if any.
    pub fn offered(&self) -> Option<Digest> {
        self.offered.as_ref().map(|(id, _)| *id)
    }

    /// The frame carrying a piece the driver read.
    pub fn piece(&self, artifact: Digest, offset: u64, data: Vec<u8>) -> Frame {
        Frame::Control(Control::Piece {
            artifact,
            offset,
            data,
        })
    }

    pub fn handle(&mut self, frame: Frame) -> Result<DistributeEvent, ProtocolError> {
        let Frame::Control(control) = frame else {
            return Err(ProtocolError::Unexpected {
                got: frame.name(),
                state: "control stream",
            });
        };
        match control {
            Control::Ping { nonce } => Ok(DistributeEvent::Reply(Frame::Control(Control::Pong {
                nonce,
            }))),
            Control::Report(report) => {
                self.report = Some(report.clone());
                Ok(DistributeEvent::Report(report))
            }
            Control::Fetch {
                artifact,
                offset,
                len,
            } => {
                if len == 0 || len > MAX_PIECE {
                    return Err(ProtocolError::Malformed(format!(
                        "a piece of {len} bytes asked (at most {MAX_PIECE})"
                    )));
                }
                let servable = self
                    .offered
                    .as_ref()
                    .is_some_and(|(_, artifacts)| artifacts.contains(&artifact));
                Ok(if servable {
                    DistributeEvent::Read {
                        artifact,
                        offset,
                        len,
                    }
                } else {
                    DistributeEvent::Reply(Frame::Control(Control::Unavailable { artifact }))
                })
            }
            other => Err(ProtocolError::Unexpected {
                got: other.name(),
                state: "aggregator release control",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(id: u8) -> Offer {
        Offer {
            release: [id; 32],
            manifest: b"{}".to_vec(),
            signature: b"sig".to_vec(),
        }
    }

    #[test]
    fn requests_cover_each_missing_artifact_from_what_is_held_in_pieces() {
        let mut f = Fetcher::new(FetchConfig {
            window: 16,
            piece: 100,
        });
        let needs = vec![
            Need {
                artifact: [1; 32],
                size: 250,
                have: 120,
            },
            Need {
                artifact: [2; 32],
                size: 10,
                have: 10,
            },
            Need {
                artifact: [3; 32],
                size: 100,
                have: 0,
            },
        ];
        assert!(!f.fetch([9; 32], needs));
        let mut asked = Vec::new();
        while let Some(Frame::Control(Control::Fetch {
            artifact,
            offset,
            len,
        })) = f.poll_transmit()
        {
            asked.push((artifact[0], offset, len));
        }
        assert_eq!(asked, vec![(1, 120, 100), (1, 220, 30), (3, 0, 100)]);
        assert_eq!(f.progress(), Some(([9; 32], 120, 350)));
        // Nothing missing: ready at once.
        assert!(f.fetch([8; 32], vec![]));
    }

    #[test]
    fn a_piece_of_the_wrong_length_fails_the_download_and_strays_are_ignored() {
        let mut f = Fetcher::new(FetchConfig::default());
        f.fetch(
            [9; 32],
            vec![Need {
                artifact: [1; 32],
                size: 10,
                have: 0,
            }],
        );
        f.poll_transmit().unwrap();
        let stray = Frame::Control(Control::Piece {
            artifact: [1; 32],
            offset: 5,
            data: vec![0; 5],
        });
        assert_eq!(f.handle(stray), Ok(None));
        let short = Frame::Control(Control::Piece {
            artifact: [1; 32],
            offset: 0,
            data: vec![0; 4],
        });
        assert!(f.handle(short).is_err());
        assert_eq!(f.progress(), None);
    }

    #[test]
    fn the_distributor_serves_only_the_offered_release_and_offers_it_once() {
        let mut d = Distributor::new();
        let fetch = |a: u8| {
            Frame::Control(Control::Fetch {
                artifact: [a; 32],
                offset: 0,
                len: 10,
            })
        };
        assert!(matches!(
            d.handle(fetch(1)),
            Ok(DistributeEvent::Reply(Frame::Control(
                Control::Unavailable { .. }
            )))
        ));
        assert!(d.offer(offer(7), HashSet::from([[1; 32]])).is_some());
        assert!(d.offer(offer(7), HashSet::from([[1; 32]])).is_none());
        assert!(matches!(
            d.handle(fetch(1)),
            Ok(DistributeEvent::Read { .. })
        ));
        assert!(matches!(d.handle(fetch(2)), Ok(DistributeEvent::Reply(_))));
        let huge = Frame::Control(Control::Fetch {
            artifact: [1; 32],
            offset: 0,
            len: MAX_PIECE + 1,
        });
        assert!(d.handle(huge).is_err());
        // A device that runs the release already is not offered it.
        let mut d = Distributor::new();
        d.handle(Frame::Control(Control::Report(DeviceReport {
            active: Some([7; 32]),
            ..DeviceReport::default()
        })))
        .unwrap();
        assert!(d.offer(offer(7), HashSet::new()).is_none());
    }
}
