//! The device <-> aggregator sync protocol, without any I/O (in the manner of quinn-proto).
//!
//! - [`record`]: what a device journals and ships: events, decisions, compacted feature state.
//! - [`frame`]: the versioned frames and their length-delimited postcard encoding; decoders
//!   refuse oversized or malformed input with an error, never a panic.
//! - [`batch`]: a batch body (records with their journal sequence numbers), compressed when
//!   that pays.
//! - [`sender`] / [`receiver`]: the two ends as state machines driven by frames and an explicit
//!   clock. The caller moves bytes and persists; these decide what to send and when to ack.
//! - [`distribution`]: releases on the control stream: offer, fetch by digest in pieces,
//!   reports ([`distribution::Fetcher`] on the device, [`distribution::Distributor`] at the
//!   aggregator).
//!
//! Delivery is at-least-once on the wire and exactly-once in history: the device resends from
//! the last acknowledged sequence, the aggregator absorbs anything at or below what it has
//! made durable, keyed by (device, sequence).

pub mod batch;
pub mod distribution;
pub mod frame;
pub mod receiver;
pub mod record;
pub mod sender;

pub use batch::{BatchBody, Codec, Entry};
pub use frame::{Frame, FrameDecoder, ProtocolError};
pub use record::{JournalId, Record, Seq};

/// Highest version spoken by this build. A device's `hello` carries the highest it speaks;
/// the aggregator welcomes with the highest both speak (refusing below
/// [`MIN_PROTOCOL_VERSION`]), and the device refuses a welcome below its own minimum. A
/// device refused by an older aggregator offers one version less on its next connection. So
/// a fleet upgrades gradually, the aggregator first.
/// 2: journal ids in `hello`, the device's journal head in `batch`.
/// 3: release distribution on the control stream ([`distribution`]); decisions name their
///    release ([`RELEASED_DECISIONS`]).
/// 4: decisions carry the step they make in their task's alert ([`STEPPED_DECISIONS`]).
pub const PROTOCOL_VERSION: u16 = 4;

/// First version whose decisions carry their release: a device speaking an older one leaves
/// it out of what it sends (its journal keeps it).
pub const RELEASED_DECISIONS: u16 = 3;

/// First version whose decisions carry their alert step: a device speaking an older one
/// leaves it out of what it sends (its journal keeps it), and the aggregator treats each
/// alert as an older policy's.
pub const STEPPED_DECISIONS: u16 = 4;

/// Lowest version this build still speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 2;

/// The version two peers speak, given the other's highest: `None` when there is none.
pub fn negotiate(theirs: u16) -> Option<u16> {
    (theirs >= MIN_PROTOCOL_VERSION).then(|| theirs.min(PROTOCOL_VERSION))
}

/// Entry points shared by the cargo-fuzz targets (`proto/fuzz`) and their smoke run in
/// `cargo test`: whatever the bytes, these return and never panic.
pub mod fuzz {
    use crate::batch::{BatchBody, Codec};
    use crate::frame::{Frame, FrameDecoder};
    use crate::receiver::Receiver;

    /// Feeds `data` to a frame decoder in pieces, then every decoded frame to a receiver.
    pub fn decode_stream(data: &[u8]) {
        let mut decoder = FrameDecoder::new(1 << 16);
        let mut receiver = Receiver::new(4);
        let split = data.first().map_or(1, |b| usize::from(*b % 16) + 1);
        for piece in data.chunks(split) {
            decoder.push(piece);
            loop {
                match decoder.next_frame() {
                    Ok(Some(frame)) => match receiver.handle(frame) {
                        Ok(crate::receiver::ReceiverAction::Open { .. }) => {
                            receiver.opened(0);
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    },
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
        }
    }

    /// Decodes `data` as a batch body under each codec.
    pub fn decode_batch(data: &[u8]) {
        for codec in [Codec::None, Codec::Lz4, Codec::Zstd] {
            let _ = BatchBody::decode(1, u64::MAX, codec, data);
        }
        let _ = Frame::decode_body(data);
    }
}
