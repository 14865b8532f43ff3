//! The protocol on a virtual clock over an in-memory link that drops, duplicates, delays and
//! reorders frames, with partitions and connection resets: everything journaled reaches
//! history exactly once, in order, and superseded states are never stored. No sockets, no
//! sleeps.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use fleet_proto::frame::FrameDecoder;
use fleet_proto::receiver::{Receiver, ReceiverAction};
use fleet_proto::record::{EventKind, EventRecord, GeoE7, StateRecord};
use fleet_proto::sender::{Outbox, Sender, SenderConfig, SenderEvent};
use fleet_proto::{Entry, Frame, Record, Seq};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

#[derive(Default)]
struct MemOutbox {
    entries: BTreeMap<Seq, Record>,
    latest_state: HashMap<String, Seq>,
    last: Seq,
    /// Entries after this are journaled but not yet durable: readable, never offered.
    durable: Seq,
}

impl MemOutbox {
    fn append(&mut self, record: Record) {
        self.last += 1;
        if let Record::State(s) = &record {
            self.latest_state.insert(s.key.clone(), self.last);
        }
        self.entries.insert(self.last, record);
    }

    fn flush(&mut self) {
        self.durable = self.last;
    }

    /// Drops what is acknowledged, as the device journal does.
    fn truncate_through(&mut self, seq: Seq) {
        self.entries = self.entries.split_off(&(seq + 1));
    }
}

impl Outbox for MemOutbox {
    fn read_after(&self, after: Seq, max: usize) -> Vec<Entry> {
        self.entries
            .range(after + 1..)
            .take(max)
            .map(|(&seq, r)| Entry {
                seq,
                record: r.clone(),
            })
            .collect()
    }
    fn last_seq(&self) -> Seq {
        self.durable
    }
    fn superseded(&self, key: &str, seq: Seq) -> bool {
        self.latest_state.get(key).is_some_and(|&s| s > seq)
    }
}

/// The simulated device's journal id.
const JOURNAL: u64 = 0x005E_ED1D;

fn event(n: u64) -> Record {
    Record::Event(EventRecord {
        event_id: format!("e{n}"),
        courier_id: "C1".into(),
        task_id: Some(format!("T-{}", n % 7)),
        event_type: EventKind::Location,
        time_ms: 1_700_000_000_000 + n as i64 * 1000,
        utc_offset_s: 0,
        position: GeoE7::from_degrees(12.9, 77.6),
        speed_kmh: Some(20.0),
        accuracy_m: None,
        context: None,
    })
}

fn state(n: u64) -> Record {
    Record::State(StateRecord {
        key: format!("T-{}", n % 7),
        module: "features@1".into(),
        bytes: n.to_le_bytes().to_vec(),
    })
}

/// One direction of the link: frames in flight with their delivery time.
#[derive(Default)]
struct Wire(Vec<(Duration, u64, Vec<u8>)>);

#[derive(Clone, Copy)]
struct Faults {
    drop: f64,
    duplicate: f64,
    max_delay_ms: u64,
}

impl Wire {
    fn send(
        &mut self,
        rng: &mut SmallRng,
        now: Duration,
        faults: &Faults,
        frame: &Frame,
        id: &mut u64,
    ) {
        if rng.random_bool(faults.drop) {
            return;
        }
        let copies = if rng.random_bool(faults.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = Duration::from_millis(rng.random_range(1..=faults.max_delay_ms));
            *id += 1;
            self.0.push((now + delay, *id, frame.encode()));
        }
    }

    /// Frames due by `now`, in delivery-time order (so random delays reorder them).
    fn due(&mut self, now: Duration) -> Vec<Vec<u8>> {
        self.0.sort_by_key(|(t, id, _)| (*t, *id));
        let split = self.0.partition_point(|(t, _, _)| *t <= now);
        self.0.drain(..split).map(|(_, _, b)| b).collect()
    }
}

fn decode(bytes: &[u8]) -> Frame {
    let mut d = FrameDecoder::default();
    d.push(bytes);
    d.next_frame().unwrap().unwrap()
}

/// Runs one seeded scenario and checks the accounting.
fn run(seed: u64, faults: Faults) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut outbox = MemOutbox::default();
    let config = SenderConfig {
        max_batch_entries: 16,
        window: 4,
        resend_after: Duration::from_millis(300),
        journal: JOURNAL,
        ..SenderConfig::default()
    };
    let mut sender = Sender::new(config, 0);
    // History: the durable cursor and the stored entries, which survive "aggregator restarts".
    let mut stored: Vec<Entry> = Vec::new();
    let mut durable: Seq = 0;
    let mut handed_through: Seq = 0;
    let mut stored_seqs = std::collections::HashSet::new();
    let mut receiver = Receiver::new(4);
    let (mut up, mut down) = (Wire::default(), Wire::default());
    let mut pending_persist: Vec<(Duration, Seq, Vec<Entry>)> = Vec::new();
    let mut id = 0;
    let mut now = Duration::ZERO;
    let tick = Duration::from_millis(5);
    let mut connected_at: Option<Duration> = None;
    let mut produced = 0u64;
    let target = 2_000u64;

    for _step in 0..200_000 {
        now += tick;
        let partitioned = (now.as_millis() / 1000) % 7 == 3;
        // The producer keeps journaling: events and, now and then, a state for a key.
        if produced < target {
            for _ in 0..rng.random_range(0..4u64).min(target - produced) {
                produced += 1;
                outbox.append(if produced.is_multiple_of(3) {
                    state(produced)
                } else {
                    event(produced)
                });
            }
            // Group commits land now and then; the unflushed tail is readable meanwhile.
            if produced == target || rng.random_bool(0.5) {
                outbox.flush();
            }
        }
        // Connection management: connect when down; reset at random.
        if connected_at.is_none() && !partitioned {
            connected_at = Some(now);
            receiver = Receiver::new(4);
            handed_through = durable;
            up.0.clear();
            down.0.clear();
            let hello = sender.connected();
            up.send(
                &mut rng,
                now,
                &Faults {
                    drop: 0.0,
                    ..faults
                },
                &hello,
                &mut id,
            );
        } else if connected_at.is_some() && (rng.random_bool(0.002) || partitioned) {
            connected_at = None;
            sender.disconnected();
            pending_persist.clear();
            continue;
        }
        if partitioned {
            continue;
        }
        // Aggregator side.
        for bytes in up.due(now) {
            match receiver.handle(decode(&bytes)) {
                Ok(ReceiverAction::Reply(f)) => down.send(&mut rng, now, &faults, &f, &mut id),
                Ok(ReceiverAction::Open { journal }) => {
                    assert_eq!(journal, JOURNAL, "seed {seed}: the hello names the journal");
                    let welcome = receiver.opened(durable);
                    down.send(&mut rng, now, &faults, &welcome, &mut id);
                }
                Ok(ReceiverAction::Persist {
                    journal,
                    through,
                    journaled,
                    entries,
                }) => {
                    assert_eq!(journal, JOURNAL);
                    assert!(journaled >= through && journaled <= outbox.last_seq());
                    assert!(
                        entries
                            .iter()
                            .all(|e| e.seq > handed_through && e.seq <= through),
                        "seed {seed}: the receiver handed over an entry twice"
                    );
                    handed_through = through;
                    // Persists complete in order, after a random delay.
                    let done_at = pending_persist
                        .last()
                        .map_or(now, |p| p.0)
                        .max(now + Duration::from_millis(rng.random_range(0..20)));
                    pending_persist.push((done_at, through, entries));
                }
                Ok(ReceiverAction::Nothing) => {}
                Err(e) => panic!("seed {seed}: receiver refused a frame: {e}"),
            }
        }
        while pending_persist.first().is_some_and(|p| p.0 <= now) {
            let (_, through, entries) = pending_persist.remove(0);
            // Idempotent ingest keyed by sequence, as the aggregator's store does.
            for e in entries {
                if stored_seqs.insert(e.seq) {
                    stored.push(e);
                }
            }
            durable = durable.max(through);
            let ack = receiver.persisted(through);
            down.send(&mut rng, now, &faults, &ack, &mut id);
        }
        // Device side.
        for bytes in down.due(now) {
            match sender.handle(decode(&bytes)) {
                Ok(Some(SenderEvent::Acked(seq))) => outbox.truncate_through(seq),
                Ok(_) => {}
                Err(e) => panic!("seed {seed}: sender refused a frame: {e}"),
            }
        }
        sender.handle_timeout(now);
        while let Some(batch) = sender.poll_transmit(now, &outbox) {
            up.send(&mut rng, now, &faults, &batch, &mut id);
        }
        if produced >= target && sender.acked() == outbox.last_seq() {
            break;
        }
    }

    assert_eq!(
        sender.acked(),
        target,
        "seed {seed}: not everything was acknowledged"
    );
    assert_eq!(durable, target);
    let seqs: Vec<Seq> = stored.iter().map(|e| e.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seed {seed}: history out of order or duplicated"
    );
    // Every event is stored; of the states, at least the latest per key.
    let events = stored
        .iter()
        .filter(|e| matches!(e.record, Record::Event(_)))
        .count() as u64;
    assert_eq!(events, target - target / 3, "seed {seed}");
    for (key, latest) in &outbox.latest_state {
        assert!(
            stored.iter().any(|e| e.seq == *latest),
            "seed {seed}: latest state of {key} missing"
        );
    }
    let states = stored
        .iter()
        .filter(|e| matches!(e.record, Record::State(_)))
        .count() as u64;
    assert!(
        states < target / 3,
        "seed {seed}: no state was compacted away ({states})"
    );
}

#[test]
fn a_clean_link_delivers_everything_once() {
    run(
        1,
        Faults {
            drop: 0.0,
            duplicate: 0.0,
            max_delay_ms: 5,
        },
    );
}

#[test]
fn drops_duplicates_reordering_and_partitions_lose_nothing_and_duplicate_nothing() {
    for seed in 0..20 {
        run(
            seed,
            Faults {
                drop: 0.05,
                duplicate: 0.05,
                max_delay_ms: 60,
            },
        );
    }
}

#[test]
fn a_very_lossy_link_still_converges() {
    for seed in 100..105 {
        run(
            seed,
            Faults {
                drop: 0.3,
                duplicate: 0.2,
                max_delay_ms: 200,
            },
        );
    }
}
