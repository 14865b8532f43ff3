//! Decoders against hostile input: property tests, and the smoke run of the fuzz targets
//! (random bytes and mutations of valid frames), all without a panic.

use fleet_proto::batch::{BatchBody, Codec, Entry};
use fleet_proto::frame::{Control, ErrorCode, FrameDecoder, MAX_FRAME_LEN};
use fleet_proto::record::{EventKind, EventRecord, GeoE7, Record, StateRecord};
use fleet_proto::{Frame, ProtocolError, fuzz};
use proptest::prelude::*;
use proptest::strategy::ValueTree;

fn entry_strategy() -> impl Strategy<Value = Record> {
    prop_oneof![
        (
            any::<u32>(),
            "[a-z0-9-]{1,12}",
            any::<i64>(),
            any::<i32>(),
            any::<i32>()
        )
            .prop_map(|(n, courier, t, lat, lon)| Record::Event(EventRecord {
                event_id: format!("e{n}"),
                courier_id: courier,
                task_id: None,
                event_type: EventKind::ALL[n as usize % 7],
                time_ms: t,
                utc_offset_s: 0,
                position: GeoE7 { lat, lon },
                speed_kmh: None,
                accuracy_m: Some(5.0),
                context: None,
            })),
        (
            "[A-Z]-[0-9]{1,4}",
            proptest::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(key, bytes)| Record::State(StateRecord {
                key,
                module: "features@1".into(),
                bytes,
            })),
    ]
}

fn frame_strategy() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<u16>(), any::<u64>(), any::<u64>(), ".{0,20}").prop_map(
            |(version, journal, acked_through, agent)| Frame::Hello {
                version,
                journal,
                acked_through,
                device: Some(agent.clone()),
                agent,
            }
        ),
        any::<u64>().prop_map(|through| Frame::Ack { through }),
        any::<u64>().prop_map(|nonce| Frame::Control(Control::Ping { nonce })),
        ".{0,40}".prop_map(|message| Frame::Error {
            code: ErrorCode::Protocol,
            message
        }),
        (
            1u64..1_000_000,
            proptest::collection::vec(entry_strategy(), 0..20)
        )
            .prop_map(|(from, records)| {
                let entries: Vec<Entry> = records
                    .into_iter()
                    .enumerate()
                    .map(|(i, record)| Entry {
                        seq: from + 2 * i as u64,
                        record,
                    })
                    .collect();
                let through = entries.last().map_or(from, |e| e.seq);
                let (codec, body) = BatchBody::encode(from, &entries, Codec::Zstd, 1);
                Frame::Batch {
                    from,
                    through,
                    journaled: through,
                    codec,
                    body,
                }
            }),
    ]
}

proptest! {
    #[test]
    fn any_frame_round_trips(frame in frame_strategy()) {
        let mut decoder = FrameDecoder::default();
        decoder.push(&frame.encode());
        prop_assert_eq!(decoder.next_frame().unwrap(), Some(frame));
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        fuzz::decode_stream(&data);
        fuzz::decode_batch(&data);
    }

    #[test]
    fn a_mutated_frame_decodes_or_errors(frame in frame_strategy(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let mut bytes = frame.encode();
        for (at, xor) in flips {
            let i = at % bytes.len();
            bytes[i] ^= xor.max(1);
        }
        fuzz::decode_stream(&bytes);
        if let Frame::Batch { body, .. } = frame {
            fuzz::decode_batch(&body);
        }
    }
}

#[test]
fn a_frame_claiming_four_gigabytes_is_refused_at_once() {
    let mut decoder = FrameDecoder::default();
    decoder.push(&u32::MAX.to_le_bytes());
    assert_eq!(
        decoder.next_frame(),
        Err(ProtocolError::Oversized {
            len: u32::MAX as usize,
            max: MAX_FRAME_LEN
        })
    );
}

/// The fuzz targets' smoke run: a fixed corpus of valid frames, every truncation of them, and
/// byte flips at every position.
#[test]
fn fuzz_targets_smoke_run() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for _ in 0..64 {
        let frame = frame_strategy().new_tree(&mut runner).unwrap().current();
        let bytes = frame.encode();
        for cut in 0..bytes.len().min(256) {
            fuzz::decode_stream(&bytes[..cut]);
        }
        for i in 0..bytes.len().min(256) {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0xA5;
            fuzz::decode_stream(&flipped);
            fuzz::decode_batch(&flipped[4..]);
        }
    }
}
