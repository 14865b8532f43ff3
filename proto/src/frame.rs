//! Frames and their encoding: a 4-byte little-endian length, then the postcard-encoded
//! [`Frame`]. A length above [`MAX_FRAME_LEN`] is refused before any of it is buffered.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::batch::Codec;
use crate::distribution::{DeviceReport, Digest, Offer};
use crate::record::{JournalId, Seq};

/// Largest encoded frame accepted (length prefix excluded).
pub const MAX_FRAME_LEN: usize = 4 << 20;

const LEN_PREFIX: usize = 4;

/// Everything that crosses the wire, both directions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Frame {
    /// Device -> aggregator, first frame of a connection.
    Hello {
        version: u16,
        /// The journal the device sends from: a new id means the device started over, and
        /// its sequence numbers begin a new range at the aggregator.
        journal: JournalId,
        /// What the device believes the aggregator has acknowledged. Informational: the
        /// aggregator's own record decides where to resume.
        acked_through: Seq,
        /// The id the device believes it has. Optional and never trusted: the aggregator takes
        /// the id from the verified certificate and refuses a hello claiming another.
        device: Option<String>,
        /// Free text (build, role), for logs.
        agent: String,
    },
    /// Aggregator -> device: resume after `acked_through`.
    Welcome {
        version: u16,
        acked_through: Seq,
        /// The most unacknowledged batches the device may have in flight.
        window: u32,
    },
    /// Device -> aggregator: records covering the journal range `from..=through`. Entries
    /// compacted or thinned away inside the range are simply absent.
    Batch {
        from: Seq,
        through: Seq,
        /// The device's durable journal head when it sent this batch: what the aggregator is
        /// missing is `journaled - through`, which defines its sync lag.
        journaled: Seq,
        codec: Codec,
        body: Vec<u8>,
    },
    /// Aggregator -> device: everything up to `through` is durable.
    Ack { through: Seq },
    /// Either way: the sender closes the connection after this.
    Error { code: ErrorCode, message: String },
    /// Control plane (kept off the bulk path).
    Control(Control),
}

/// Why a peer was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    VersionMismatch,
    Malformed,
    Oversized,
    Unauthorized,
    /// Protocol order violated (a batch before hello, a gap, ...).
    Protocol,
    Internal,
    /// The journal in the hello was replaced by a newer one of the same device: another
    /// process is using this device's identity.
    StaleJournal,
    /// The aggregator cannot store anything now (its disk is full, say); try again later.
    Unavailable,
}

/// Control messages, on a stream of their own. Version 3 adds release distribution (see
/// [`crate::distribution`]); variants are only ever added at the end, so a version-2 peer
/// decodes what it knows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Control {
    Ping {
        nonce: u64,
    },
    Pong {
        nonce: u64,
    },
    /// Device -> aggregator: its releases and labels, and where an offered install stands.
    Report(DeviceReport),
    /// Aggregator -> device: the release it should run.
    Offer(Offer),
    /// Device -> aggregator: `len` bytes of an artifact of the offered release at `offset`.
    Fetch {
        artifact: Digest,
        offset: u64,
        len: u32,
    },
    /// Aggregator -> device: the bytes asked for.
    Piece {
        artifact: Digest,
        offset: u64,
        data: Vec<u8>,
    },
    /// Aggregator -> device: that artifact cannot be served (not in the offered release).
    Unavailable {
        artifact: Digest,
    },
}

impl Control {
    /// Short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Ping { .. } => "ping",
            Self::Pong { .. } => "pong",
            Self::Report(_) => "report",
            Self::Offer(_) => "offer",
            Self::Fetch { .. } => "fetch",
            Self::Piece { .. } => "piece",
            Self::Unavailable { .. } => "unavailable",
        }
    }
}

/// Why bytes could not become a frame (or a frame was out of place).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    Oversized { len: usize, max: usize },
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("malformed batch body: {0}")]
    MalformedBatch(String),
    #[error("protocol version {theirs} is not supported (this build speaks {ours})")]
    VersionMismatch { theirs: u16, ours: u16 },
    #[error("unexpected {got} frame in state {state}")]
    Unexpected {
        got: &'static str,
        state: &'static str,
    },
    #[error("batch {from}..={through} is invalid: {why}")]
    BadRange {
        from: Seq,
        through: Seq,
        why: &'static str,
    },
    #[error("peer refused: {code:?}: {message}")]
    Refused { code: ErrorCode, message: String },
}

impl ProtocolError {
    /// The code to send the peer when closing because of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Oversized { .. } => ErrorCode::Oversized,
            Self::Malformed(_) | Self::MalformedBatch(_) => ErrorCode::Malformed,
            Self::VersionMismatch { .. } => ErrorCode::VersionMismatch,
            Self::Unexpected { .. } | Self::BadRange { .. } => ErrorCode::Protocol,
            Self::Refused { code, .. } => *code,
        }
    }
}

impl Frame {
    /// Short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "hello",
            Self::Welcome { .. } => "welcome",
            Self::Batch { .. } => "batch",
            Self::Ack { .. } => "ack",
            Self::Error { .. } => "error",
            Self::Control(_) => "control",
        }
    }

    /// Appends the length-prefixed encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; LEN_PREFIX]);
        // Writing to a Vec cannot fail, and every field type here serializes.
        let mut out_vec = std::mem::take(out);
        out_vec = postcard::to_extend(self, out_vec).expect("frames always serialize");
        *out = out_vec;
        let len = u32::try_from(out.len() - start - LEN_PREFIX).expect("frame under 4 GiB");
        out[start..start + LEN_PREFIX].copy_from_slice(&len.to_le_bytes());
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Decodes one frame body (without its length prefix).
    pub fn decode_body(body: &[u8]) -> Result<Self, ProtocolError> {
        if body.len() > MAX_FRAME_LEN {
            return Err(ProtocolError::Oversized {
                len: body.len(),
                max: MAX_FRAME_LEN,
            });
        }
        match postcard::take_from_bytes::<Self>(body) {
            Ok((frame, [])) => Ok(frame),
            Ok((_, rest)) => Err(ProtocolError::Malformed(format!(
                "{} trailing bytes",
                rest.len()
            ))),
            Err(e) => Err(ProtocolError::Malformed(e.to_string())),
        }
    }
}

/// Splits a byte stream into frames. Feed it whatever arrived; take frames out.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(MAX_FRAME_LEN)
    }
}

impl FrameDecoder {
    /// A decoder refusing frames longer than `max` bytes (at most [`MAX_FRAME_LEN`]).
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max: max.min(MAX_FRAME_LEN),
        }
    }

    /// How many bytes the next frame still needs (at least 1 when nothing is buffered).
    pub fn wanted(&self) -> usize {
        match self.next_len() {
            Some(len) => (LEN_PREFIX + len).saturating_sub(self.buf.len()).max(1),
            None => LEN_PREFIX - self.buf.len(),
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    fn next_len(&self) -> Option<usize> {
        let prefix: [u8; LEN_PREFIX] = self.buf.get(..LEN_PREFIX)?.try_into().ok()?;
        Some(u32::from_le_bytes(prefix) as usize)
    }

    /// The next complete frame, `None` when more bytes are needed. After an error the stream
    /// is unusable (framing is lost): close the connection.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ProtocolError> {
        let Some(len) = self.next_len() else {
            return Ok(None);
        };
        if len > self.max {
            return Err(ProtocolError::Oversized { len, max: self.max });
        }
        if self.buf.len() < LEN_PREFIX + len {
            return Ok(None);
        }
        let frame = Frame::decode_body(&self.buf[LEN_PREFIX..LEN_PREFIX + len]);
        self.buf.drain(..LEN_PREFIX + len);
        frame.map(Some)
    }

    /// Bytes buffered and not yet part of a returned frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames() -> Vec<Frame> {
        vec![
            Frame::Hello {
                version: 1,
                journal: 99,
                acked_through: 7,
                device: Some("d1".into()),
                agent: "edge-host".into(),
            },
            Frame::Welcome {
                version: 1,
                acked_through: 5,
                window: 8,
            },
            Frame::Batch {
                from: 6,
                through: 9,
                journaled: 12,
                codec: Codec::Zstd,
                body: vec![1, 2, 3],
            },
            Frame::Ack { through: 9 },
            Frame::Error {
                code: ErrorCode::Malformed,
                message: "no".into(),
            },
            Frame::Control(Control::Ping { nonce: 3 }),
        ]
    }

    #[test]
    fn frames_round_trip_through_a_byte_stream_split_anywhere() {
        let mut wire = Vec::new();
        for f in frames() {
            f.encode_into(&mut wire);
        }
        for chunk in [1, 2, 3, 5, 64, wire.len()] {
            let mut decoder = FrameDecoder::default();
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                decoder.push(piece);
                while let Some(f) = decoder.next_frame().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, frames(), "chunk size {chunk}");
            assert_eq!(decoder.buffered(), 0);
        }
    }

    #[test]
    fn an_oversized_length_is_refused_before_the_body_arrives() {
        let mut decoder = FrameDecoder::new(1024);
        decoder.push(&(1025u32).to_le_bytes());
        assert_eq!(
            decoder.next_frame(),
            Err(ProtocolError::Oversized {
                len: 1025,
                max: 1024
            })
        );
    }

    #[test]
    fn trailing_garbage_inside_a_frame_is_malformed() {
        let mut body = postcard::to_stdvec(&Frame::Ack { through: 1 }).unwrap();
        body.push(0);
        assert!(matches!(
            Frame::decode_body(&body),
            Err(ProtocolError::Malformed(_))
        ));
    }
}
