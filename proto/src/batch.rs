//! A batch body: journal entries with their sequence numbers (delta-encoded against the batch
//! start), postcard-encoded, then compressed when that makes it smaller.

use serde::{Deserialize, Serialize};

use crate::frame::ProtocolError;
use crate::record::{Record, Seq};

/// Largest decompressed body accepted: a bound on what a hostile peer can make us allocate.
pub const MAX_BODY_LEN: usize = 16 << 20;

/// How a batch body is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Codec {
    None,
    /// LZ4 block, with the decompressed size first (4 bytes, little-endian).
    Lz4,
    /// A zstd frame (level chosen by the sender).
    Zstd,
}

/// One journal entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: Seq,
    pub record: Record,
}

/// Encoding and decoding of batch bodies.
pub struct BatchBody;

thread_local! {
    /// A zstd context per thread and level: creating one costs more than compressing a
    /// small batch.
    static ZSTD: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

fn zstd_compress(raw: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    ZSTD.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        let (_, compressor) = slot.as_mut().expect("set above");
        compressor.compress(raw)
    })
}

impl BatchBody {
    /// Encodes `entries` (strictly increasing, all after `from - 1`) and compresses them with
    /// `codec` unless that does not pay, in which case the body goes out plain. Returns the
    /// codec actually used.
    pub fn encode(from: Seq, entries: &[Entry], codec: Codec, zstd_level: i32) -> (Codec, Vec<u8>) {
        let raw = Self::encode_plain(from, entries);
        let compressed = match codec {
            Codec::None => return (Codec::None, raw),
            Codec::Lz4 => lz4_flex::compress_prepend_size(&raw),
            Codec::Zstd => match zstd_compress(&raw, zstd_level) {
                Ok(c) => c,
                Err(_) => return (Codec::None, raw),
            },
        };
        if compressed.len() < raw.len() {
            (codec, compressed)
        } else {
            (Codec::None, raw)
        }
    }

    /// The uncompressed encoding.
    pub fn encode_plain(from: Seq, entries: &[Entry]) -> Vec<u8> {
        let mut previous = from.saturating_sub(1);
        let wire: Vec<(u64, &Record)> = entries
            .iter()
            .map(|e| {
                let gap = e.seq - previous;
                previous = e.seq;
                (gap, &e.record)
            })
            .collect();
        postcard::to_stdvec(&wire).expect("records always serialize")
    }

    /// Decodes a body, checking every sequence number lies in `from..=through`, strictly
    /// increasing.
    pub fn decode(
        from: Seq,
        through: Seq,
        codec: Codec,
        body: &[u8],
    ) -> Result<Vec<Entry>, ProtocolError> {
        if from == 0 || through < from {
            return Err(ProtocolError::BadRange {
                from,
                through,
                why: "empty or starts at 0",
            });
        }
        let bad = |e: &dyn std::fmt::Display| ProtocolError::MalformedBatch(e.to_string());
        let plain;
        let raw: &[u8] = match codec {
            Codec::None => body,
            Codec::Lz4 => {
                let size = body
                    .get(..4)
                    .map(|p| u32::from_le_bytes(p.try_into().expect("4 bytes")) as usize)
                    .ok_or_else(|| bad(&"lz4 body shorter than its size prefix"))?;
                if size > MAX_BODY_LEN {
                    return Err(bad(&format_args!(
                        "lz4 body claims {size} bytes decompressed"
                    )));
                }
                plain = lz4_flex::decompress(&body[4..], size).map_err(|e| bad(&e))?;
                &plain
            }
            Codec::Zstd => {
                plain = zstd::bulk::decompress(body, MAX_BODY_LEN).map_err(|e| bad(&e))?;
                &plain
            }
        };
        let wire: Vec<(u64, Record)> = match postcard::take_from_bytes(raw) {
            Ok((wire, [])) => wire,
            Ok((_, rest)) => return Err(bad(&format_args!("{} trailing bytes", rest.len()))),
            Err(e) => return Err(bad(&e)),
        };
        let mut previous = from - 1;
        let mut entries = Vec::with_capacity(wire.len());
        for (gap, record) in wire {
            let seq = previous
                .checked_add(gap)
                .filter(|&s| gap > 0 && s <= through)
                .ok_or(ProtocolError::BadRange {
                    from,
                    through,
                    why: "an entry's sequence lies outside the range or repeats",
                })?;
            previous = seq;
            entries.push(Entry { seq, record });
        }
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Schema, StateRecord};

    fn entries() -> Vec<Entry> {
        (0..50u64)
            .map(|i| Entry {
                seq: 10 + i * 2,
                record: if i % 2 == 0 {
                    Record::State(StateRecord {
                        key: format!("T-{}", i % 5),
                        module: "features@0.1.0".into(),
                        bytes: vec![i as u8; 40],
                    })
                } else {
                    Record::Schema(Schema {
                        id: i,
                        model: "late_risk@1".into(),
                        feature_names: vec!["a".into(), "b".into()],
                    })
                },
            })
            .collect()
    }

    #[test]
    fn every_codec_round_trips() {
        for codec in [Codec::None, Codec::Lz4, Codec::Zstd] {
            let (used, body) = BatchBody::encode(9, &entries(), codec, 3);
            assert_eq!(used, codec, "these entries compress");
            assert_eq!(BatchBody::decode(9, 108, used, &body).unwrap(), entries());
        }
    }

    #[test]
    fn sequences_outside_the_declared_range_are_refused() {
        let (codec, body) = BatchBody::encode(9, &entries(), Codec::None, 3);
        assert!(matches!(
            BatchBody::decode(9, 100, codec, &body),
            Err(ProtocolError::BadRange { .. })
        ));
        assert!(matches!(
            BatchBody::decode(5, 4, codec, &body),
            Err(ProtocolError::BadRange { .. })
        ));
    }

    #[test]
    fn a_decompression_bomb_is_refused() {
        let mut body = (u32::MAX).to_le_bytes().to_vec();
        body.extend_from_slice(&[0; 16]);
        assert!(matches!(
            BatchBody::decode(1, 2, Codec::Lz4, &body),
            Err(ProtocolError::MalformedBatch(_))
        ));
        let zeros = vec![0u8; MAX_BODY_LEN + 1];
        let bomb = zstd::bulk::compress(&zeros, 3).unwrap();
        assert!(matches!(
            BatchBody::decode(1, 2, Codec::Zstd, &bomb),
            Err(ProtocolError::MalformedBatch(_))
        ));
    }
}
