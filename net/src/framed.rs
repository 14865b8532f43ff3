//! Frames over a QUIC stream: length-delimited postcard, decoded by the sans-IO decoder.

use fleet_proto::frame::{FrameDecoder, MAX_FRAME_LEN};
use fleet_proto::{Frame, ProtocolError};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StreamError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("reading: {}{}", .0, lost_reason_read(.0))]
    Read(#[from] quinn::ReadError),
    #[error("writing: {}{}", .0, lost_reason_write(.0))]
    Write(#[from] quinn::WriteError),
    #[error("the stream was closed in the middle of a frame")]
    Truncated,
}

/// quinn's "connection lost" leaves out why; a fleet operator needs it (timed out, reset,
/// closed by the peer).
fn lost_reason_read(e: &quinn::ReadError) -> String {
    match e {
        quinn::ReadError::ConnectionLost(why) => format!(" ({why})"),
        _ => String::new(),
    }
}

fn lost_reason_write(e: &quinn::WriteError) -> String {
    match e {
        quinn::WriteError::ConnectionLost(why) => format!(" ({why})"),
        _ => String::new(),
    }
}

/// Reads frames from a receive stream.
pub struct FrameReader {
    stream: quinn::RecvStream,
    decoder: FrameDecoder,
    buf: Vec<u8>,
}

impl FrameReader {
    pub fn new(stream: quinn::RecvStream) -> Self {
        Self::with_limit(stream, MAX_FRAME_LEN)
    }

    pub fn with_limit(stream: quinn::RecvStream, max: usize) -> Self {
        Self {
            stream,
            decoder: FrameDecoder::new(max),
            buf: vec![0; 64 << 10],
        }
    }

    /// The next frame; `None` at a clean end of stream.
    pub async fn next(&mut self) -> Result<Option<Frame>, StreamError> {
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(Some(frame));
            }
            match self.stream.read(&mut self.buf).await? {
                Some(n) => self.decoder.push(&self.buf[..n]),
                None if self.decoder.buffered() == 0 => return Ok(None),
                None => return Err(StreamError::Truncated),
            }
        }
    }
}

/// Writes one frame.
pub async fn write_frame(stream: &mut quinn::SendStream, frame: &Frame) -> Result<(), StreamError> {
    stream.write_all(&frame.encode()).await?;
    Ok(())
}
