//! Bytes per event on the wire (whole `batch` frames) against the same events as the JSON lines
//! a producer sends, for postcard, postcard+lz4 and postcard+zstd, and the encode+decode cost.
//!
//! `cargo bench -p fleet-proto --bench wire`

use std::time::Instant;

use fleet_proto::Frame;
use fleet_proto::batch::{BatchBody, Codec, Entry};
use fleet_proto::record::{EventKind, EventRecord, GeoE7, Record, TaskContext};

/// One handset's stream: a task every 30 min with a ping every 5 s and status events, with
/// GPS noise; ids either short and sequential or random UUIDs (the worst case).
fn stream(n: usize, uuid_ids: bool) -> Vec<(EventRecord, String)> {
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let (mut lat, mut lon) = (12.9716f64, 77.5946f64);
    (0..n)
        .map(|i| {
            let task = format!("T-{:08}", 4_000_000 + i / 360);
            let kind = match i % 360 {
                0 => EventKind::TaskAssigned,
                90 => EventKind::PickedUp,
                359 => EventKind::Delivered,
                _ => EventKind::Location,
            };
            lat += ((next() % 200) as f64 - 90.0) * 1e-6;
            lon += ((next() % 200) as f64 - 90.0) * 1e-6;
            let event_id = if uuid_ids {
                let (a, b) = (next(), next());
                format!("{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}", a >> 32, a & 0xffff, b >> 52, (b >> 36) & 0xffff, b & 0xffff_ffff_ffff)
            } else {
                format!("C-0042-{i:08}")
            };
            let time_ms = 1_795_300_000_000 + i as i64 * 5_000 + (next() % 400) as i64;
            let context = (kind == EventKind::TaskAssigned).then(|| {
                Box::new(TaskContext {
                    pickup: Some(GeoE7::from_degrees(lat + 0.01, lon)),
                    dropoff: Some(GeoE7::from_degrees(lat + 0.03, lon + 0.01)),
                    promised_at_ms: Some(time_ms + 40 * 60_000),
                    stops_remaining: Some(1),
                    order_type: Some("meal".into()),
                    vehicle_type: Some("motorcycle".into()),
                    courier_rating: Some(4.6),
                    courier_age: Some(29.0),
                })
            });
            let speed = Some(10.0 + (next() % 300) as f32 / 10.0);
            let accuracy = Some(3.0 + (next() % 120) as f32 / 10.0);
            let record = EventRecord {
                event_id: event_id.clone(),
                courier_id: "C-0042".into(),
                task_id: Some(task.clone()),
                event_type: kind,
                time_ms,
                utc_offset_s: 19_800,
                position: GeoE7::from_degrees(lat, lon),
                speed_kmh: speed,
                accuracy_m: accuracy,
                context,
            };
            let time = chrono_free_rfc3339(time_ms);
            let mut json = serde_json::json!({
                "event_id": event_id, "courier_id": "C-0042", "task_id": task, "event_type": kind.as_str(),
                "event_time": time, "lat": (lat * 1e7).round() / 1e7, "lon": (lon * 1e7).round() / 1e7,
                "speed_kmh": speed, "accuracy_m": accuracy,
            });
            if let Some(c) = &record.context {
                json["pickup"] = serde_json::json!({"lat": c.pickup.unwrap().lat_deg(), "lon": c.pickup.unwrap().lon_deg()});
                json["dropoff"] = serde_json::json!({"lat": c.dropoff.unwrap().lat_deg(), "lon": c.dropoff.unwrap().lon_deg()});
                json["promised_at"] = serde_json::json!(chrono_free_rfc3339(c.promised_at_ms.unwrap()));
                json["stops_remaining"] = serde_json::json!(1);
                json["order_type"] = serde_json::json!("meal");
                json["vehicle_type"] = serde_json::json!("motorcycle");
                json["courier_rating"] = serde_json::json!(4.6);
                json["courier_age"] = serde_json::json!(29);
            }
            (record, json.to_string())
        })
        .collect()
}

/// RFC 3339 in +05:30 with milliseconds, as a handset in Bengaluru would send it.
fn chrono_free_rfc3339(ms: i64) -> String {
    let local = ms + 19_800_000;
    let (days, rem) = (local.div_euclid(86_400_000), local.rem_euclid(86_400_000));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}+05:30",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench`: keep that run short.
    let n = if std::env::args().any(|a| a == "--bench") {
        50_400
    } else {
        3_600
    };
    println!(
        "wire bytes per event, whole batch frames, vs the producer's JSON lines ({n} events of one handset)"
    );
    println!(
        "{:>6} {:>6} {:>9} {:>10} {:>8} {:>10} {:>8} {:>10} {:>8} {:>12}",
        "ids",
        "batch",
        "json B/ev",
        "postcard",
        "ratio",
        "+lz4",
        "ratio",
        "+zstd3",
        "ratio",
        "zstd enc+dec"
    );
    for uuid in [false, true] {
        let events = stream(n, uuid);
        let json_bytes: usize = events.iter().map(|(_, j)| j.len() + 1).sum();
        let entries: Vec<Entry> = events
            .iter()
            .enumerate()
            .map(|(i, (e, _))| Entry {
                seq: i as u64 + 1,
                record: Record::Event(e.clone()),
            })
            .collect();
        for batch in [16usize, 128, 512] {
            let mut sizes = [0usize; 3];
            let mut zstd_time = std::time::Duration::ZERO;
            for chunk in entries.chunks(batch) {
                let from = chunk[0].seq;
                let through = chunk.last().unwrap().seq;
                for (k, codec) in [Codec::None, Codec::Lz4, Codec::Zstd]
                    .into_iter()
                    .enumerate()
                {
                    let t = Instant::now();
                    let (used, body) = BatchBody::encode(from, chunk, codec, 3);
                    let frame = Frame::Batch {
                        from,
                        through,
                        journaled: through,
                        codec: used,
                        body,
                    };
                    let bytes = frame.encode();
                    if codec == Codec::Zstd {
                        let Frame::Batch { codec, body, .. } =
                            Frame::decode_body(&bytes[4..]).unwrap()
                        else {
                            unreachable!()
                        };
                        let decoded = BatchBody::decode(from, through, codec, &body).unwrap();
                        assert_eq!(decoded.len(), chunk.len());
                        zstd_time += t.elapsed();
                    }
                    sizes[k] += bytes.len();
                }
            }
            let per = |b: usize| b as f64 / n as f64;
            let json = per(json_bytes);
            println!(
                "{:>6} {batch:>6} {json:>9.1} {:>10.1} {:>7.1}% {:>10.1} {:>7.1}% {:>10.1} {:>7.1}% {:>9.2} µs/ev",
                if uuid { "uuid" } else { "short" },
                per(sizes[0]),
                100.0 * per(sizes[0]) / json,
                per(sizes[1]),
                100.0 * per(sizes[1]) / json,
                per(sizes[2]),
                100.0 * per(sizes[2]) / json,
                zstd_time.as_secs_f64() * 1e6 / n as f64,
            );
        }
    }
}
