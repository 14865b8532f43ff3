//! The journal on a real sled database on disk, including kill -9 of a writing process.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fleet_journal::{Journal, JournalConfig, JournalStore, ThinPolicy};
use fleet_proto::Record;
use fleet_proto::record::{EventKind, EventRecord, GeoE7, StateRecord};
use fleet_proto::sender::Outbox;

fn event(n: u64, kind: EventKind, time_ms: i64) -> Record {
    Record::Event(EventRecord {
        event_id: format!("e{n}"),
        courier_id: format!("C{}", n % 3),
        task_id: Some(format!("T-{}", n % 5)),
        event_type: kind,
        time_ms,
        utc_offset_s: 0,
        position: GeoE7::from_degrees(12.97, 77.59),
        speed_kmh: Some(18.0),
        accuracy_m: Some(4.0),
        context: None,
    })
}

fn state(key: &str, n: u8) -> Record {
    Record::State(StateRecord {
        key: key.into(),
        module: "features@1".into(),
        bytes: vec![n; 16],
    })
}

#[test]
fn commits_survive_a_reopen_and_acknowledged_entries_leave_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (j, recovery) = Journal::open(JournalConfig::new(dir.path())).unwrap();
        assert_eq!(recovery.last_seq, 0);
        let c = j
            .append(vec![
                event(1, EventKind::Location, 0),
                state("T-1", 1),
                event(2, EventKind::PickedUp, 5),
            ])
            .unwrap();
        assert_eq!((c.first, c.last), (1, 3));
        j.append(vec![state("T-1", 2)]).unwrap();
        j.flush().unwrap();
        assert!(j.superseded("T-1", 2));
        assert!(!j.superseded("T-1", 4));
        assert_eq!(j.state("T-1").unwrap(), Some(vec![2; 16]));
        j.acknowledge(2).unwrap();
        j.flush().unwrap();
    }
    let (j, recovery) = Journal::open(JournalConfig::new(dir.path())).unwrap();
    assert_eq!(
        (recovery.last_seq, recovery.acked, recovery.backlog),
        (4, 2, 2)
    );
    assert!(!recovery.repaired);
    assert!(j.is_duplicate("e1").unwrap() && j.is_duplicate("e2").unwrap());
    assert!(!j.is_duplicate("e3").unwrap());
    let seqs: Vec<u64> = j.read_after(0, 100).iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![3, 4], "acknowledged entries are gone");
    assert_eq!(
        j.state("T-1").unwrap(),
        Some(vec![2; 16]),
        "state outlives the ack"
    );
}

#[test]
fn only_flushed_entries_are_offered_to_the_aggregator() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(JournalConfig::new(dir.path())).unwrap();
    j.append(vec![event(1, EventKind::Location, 0)]).unwrap();
    j.flush().unwrap();
    j.append(vec![event(2, EventKind::Location, 1)]).unwrap();
    assert_eq!(j.stats().last_seq, 2);
    assert_eq!(
        j.last_seq(),
        1,
        "an unflushed entry could be lost and its seq reused"
    );
    j.flush().unwrap();
    assert_eq!(j.last_seq(), 2);
}

#[test]
fn journals_sharing_a_store_keep_their_own_sequences_state_and_dedup() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = JournalStore::open(dir.path(), 8 << 20).unwrap();
        let (a, _) = store.journal("a", JournalConfig::new(dir.path())).unwrap();
        let (b, _) = store.journal("b", JournalConfig::new(dir.path())).unwrap();
        a.append(vec![event(1, EventKind::Location, 0), state("T-1", 1)])
            .unwrap();
        b.append(vec![event(1, EventKind::Location, 0)]).unwrap();
        b.append(vec![event(2, EventKind::Location, 0)]).unwrap();
        assert_eq!((a.durable_seq(), b.durable_seq()), (0, 0));
        Journal::flush_all(&[&a, &b]).unwrap();
        assert_eq!((a.durable_seq(), b.durable_seq()), (2, 2));
        assert!(b.state("T-1").unwrap().is_none());
        assert!(b.is_duplicate("e2").unwrap() && !a.is_duplicate("e2").unwrap());
    }
    let store = JournalStore::open(dir.path(), 8 << 20).unwrap();
    let open = |name: &str| {
        store
            .journal(name, JournalConfig::new(dir.path()))
            .unwrap()
            .0
    };
    let (a, b) = (open("a"), open("b"));
    let seqs = |j: &Journal| {
        j.read_after(0, 10)
            .iter()
            .map(|e| e.seq)
            .collect::<Vec<_>>()
    };
    assert_eq!((seqs(&a), seqs(&b)), (vec![1, 2], vec![1, 2]));
    assert_eq!(a.state("T-1").unwrap(), Some(vec![1; 16]));
}

#[test]
fn the_dedup_index_forgets_the_oldest_ids_past_its_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = JournalConfig::new(dir.path());
    config.dedup_capacity = 10;
    let (j, _) = Journal::open(config).unwrap();
    j.append(
        (0..25)
            .map(|n| event(n, EventKind::Location, n as i64))
            .collect(),
    )
    .unwrap();
    assert!(!j.is_duplicate("e14").unwrap());
    assert!(j.is_duplicate("e15").unwrap() && j.is_duplicate("e24").unwrap());
    assert_eq!(j.stats().dedup_marks, 10);
}

#[test]
fn over_budget_pings_are_thinned_and_counted_but_status_events_never() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = JournalConfig::new(dir.path());
    config.thin = ThinPolicy {
        budget_bytes: 2_000,
        keep_one_per_ms: 60_000,
    };
    let (j, _) = Journal::open(config).unwrap();
    // One courier, a ping every 5 s and a status event every 10th: far over a 2 KB budget.
    let mut statuses = 0;
    for n in 0..600u64 {
        let kind = if n % 10 == 0 {
            EventKind::ArrivedDropoff
        } else {
            EventKind::Location
        };
        statuses += u64::from(kind != EventKind::Location);
        let mut e = event(n, kind, n as i64 * 5_000);
        if let Record::Event(ev) = &mut e {
            ev.courier_id = "C1".into();
        }
        j.append(vec![e]).unwrap();
    }
    let kept = j.read_after(0, 10_000);
    let kept_status = kept
        .iter()
        .filter(|e| matches!(&e.record, Record::Event(ev) if ev.event_type != EventKind::Location))
        .count() as u64;
    assert_eq!(kept_status, statuses, "status events are never thinned");
    let stats = j.stats();
    assert!(stats.thinned > 400, "thinned {}", stats.thinned);
    assert_eq!(
        kept.len() as u64 + stats.thinned,
        600,
        "every event is kept or counted"
    );
    // All 600 are marked as seen, thinned or not.
    assert!(j.is_duplicate("e599").unwrap() && j.is_duplicate("e1").unwrap());
}

const CHILD_ENV: &str = "FLEET_JOURNAL_CHILD_DIR";

/// Child role for the crash test: commits batches forever, printing each acknowledged (flushed)
/// last sequence and event id.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut config = JournalConfig::new(dir);
    // Checkpoints within the run, so that kills also land during and after them.
    config.checkpoints.every = Duration::from_millis(300);
    let (j, recovery) = Journal::open(config).unwrap();
    let mut n = recovery.last_seq * 10;
    loop {
        let batch: Vec<Record> = (0..64)
            .map(|i| {
                n += 1;
                if i % 16 == 15 {
                    state(&format!("T-{}", n % 5), n as u8)
                } else {
                    event(n, EventKind::Location, n as i64)
                }
            })
            .collect();
        let commit = j.append(batch).unwrap();
        j.flush().unwrap();
        // Acknowledged only now.
        println!("acked {} e{}", commit.last, n - 1);
    }
}

#[test]
fn kill_9_at_random_instants_loses_no_acknowledged_entry() {
    let dir = tempfile::tempdir().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut rng_state = 0x9E37_79B9_7F4A_7C15u64;
    let mut runs = 0;
    let mut runs_with_acks = 0;
    let mut checked = 0;
    while runs < 8 && Instant::now() < deadline {
        runs += 1;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Let it commit for a pseudo-random 50-1,500 ms (the longer runs pass a checkpoint of
        // the store behind its log), then kill -9.
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        let run_for = Duration::from_millis(50 + rng_state % 1450);
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut last = None;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("acked ") {
                    let mut parts = rest.split(' ');
                    let seq: u64 = parts.next().unwrap().parse().unwrap();
                    last = Some((seq, parts.next().unwrap().to_string()));
                }
            }
            last
        });
        std::thread::sleep(run_for);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let acked = reader.join().unwrap();
        let (j, recovery) = Journal::open(JournalConfig::new(dir.path())).unwrap();
        if let Some((seq, event_id)) = acked {
            runs_with_acks += 1;
            assert!(
                recovery.last_seq >= seq,
                "run {runs}: acknowledged {seq}, recovered {}",
                recovery.last_seq
            );
            assert!(
                j.is_duplicate(&event_id).unwrap(),
                "run {runs}: {event_id} lost"
            );
            let entries = j.read_after(seq - 1, 1);
            assert_eq!(entries[0].seq, seq, "run {runs}: entry {seq} missing");
        }
        assert!(
            !recovery.repaired,
            "run {runs}: counters disagreed with the journal"
        );
        // Sequences are dense: nothing half-written (checked from the previous run on).
        let new = j.read_after(checked, usize::MAX);
        assert_eq!(new.len() as u64, recovery.last_seq - checked, "run {runs}");
        assert!(
            new.iter()
                .enumerate()
                .all(|(i, e)| e.seq == checked + i as u64 + 1)
        );
        checked = recovery.last_seq;
    }
    assert!(runs >= 3);
    assert!(
        runs_with_acks >= 1,
        "the writer never got to acknowledge anything"
    );
}

#[test]
fn acknowledgements_are_written_in_runs_and_a_lost_one_only_means_resending() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (j, _) = Journal::open(JournalConfig::new(dir.path())).unwrap();
        let events = (1..=300)
            .map(|i| event(i, EventKind::Location, i as i64))
            .collect();
        j.append(events).unwrap();
        j.flush().unwrap();
        j.acknowledge(10).unwrap();
        assert_eq!(j.stats().acked, 10);
        assert_eq!(
            j.read_after(0, 1).first().map(|e| e.seq),
            Some(11),
            "acknowledged entries are not offered again"
        );
        // Not flushed, and too few to be written: forgotten in a crash.
    }
    {
        let (j, recovery) = Journal::open(JournalConfig::new(dir.path())).unwrap();
        assert_eq!((recovery.acked, recovery.backlog), (0, 300));
        j.acknowledge(299).unwrap();
        // A run long enough is written without a flush of its own; the next group commit
        // (any flush of the store) makes it durable.
        j.append(vec![event(301, EventKind::Location, 301)])
            .unwrap();
        Journal::flush_all(&[&j]).unwrap();
    }
    let (j, recovery) = Journal::open(JournalConfig::new(dir.path())).unwrap();
    assert_eq!((recovery.acked, recovery.backlog), (299, 2));
    let seqs: Vec<u64> = j.read_after(0, 10).iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![300, 301]);
}
