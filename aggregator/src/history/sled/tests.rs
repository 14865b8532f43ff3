//! The sled history against hand-made batches.

use fleet_proto::record::{
    AlertStep, DeadLetterOutcome, DeadLetterRecord, DecisionRecord, EventKind, EventRecord,
    FailureCause, GeoE7, Severity, Stage, StateRecord,
};
use fleet_proto::{Entry, JournalId, Record, Seq};

use super::*;
use crate::history::{
    AlertFilter, AlertState, DeadLetterFilter, DeadLetterState, History, IngestOutcome, PageRequest,
};

fn event(seq: Seq, task: Option<&str>) -> Entry {
    Entry {
        seq,
        record: Record::Event(EventRecord {
            event_id: format!("e{seq}"),
            courier_id: "C-1".into(),
            task_id: task.map(Into::into),
            event_type: EventKind::Location,
            time_ms: 1_000 * seq as i64,
            utc_offset_s: 0,
            position: GeoE7::from_degrees(12.9, 77.6),
            speed_kmh: Some(18.0),
            accuracy_m: None,
            context: None,
        }),
    }
}

fn decision(seq: Seq, task: Option<&str>, severity: Severity) -> Entry {
    Entry {
        seq,
        record: Record::Decision(DecisionRecord {
            event_id: format!("e{}", seq - 1),
            prediction_id: format!("p{seq}"),
            courier_id: "C-1".into(),
            task_id: task.map(Into::into),
            time_ms: 1_000 * (seq as i64 - 1),
            score: 0.9,
            severity,
            actions: vec![],
            model: "late_risk@1".into(),
            modules: ["f@1".into(), "s@1".into(), "p@1".into()],
            schema: 7,
            features: vec![1.0],
            top_factors: vec![],
            release: None,
            alert_step: None,
        }),
    }
}

fn stepped(mut entry: Entry, step: AlertStep, score: f32) -> Entry {
    if let Record::Decision(d) = &mut entry.record {
        d.alert_step = Some(step);
        d.score = score;
    }
    entry
}

fn released(mut entry: Entry, release: &str) -> Entry {
    if let Record::Decision(d) = &mut entry.record {
        d.release = Some(release.into());
    }
    entry
}

fn state(seq: Seq, key: &str, bytes: &[u8]) -> Entry {
    Entry {
        seq,
        record: Record::State(StateRecord {
            key: key.into(),
            module: "f@1".into(),
            bytes: bytes.to_vec(),
        }),
    }
}

fn dead_letter(seq: Seq, event: &str, attempt: u32, outcome: DeadLetterOutcome) -> Entry {
    Entry {
        seq,
        record: Record::DeadLetter(DeadLetterRecord {
            event_id: event.into(),
            courier_id: "C-1".into(),
            task_id: Some("T-9".into()),
            time_ms: 1_000,
            attempt,
            outcome,
        }),
    }
}

fn failed(module: &str, cause: FailureCause) -> DeadLetterOutcome {
    DeadLetterOutcome::Failed {
        stage: Stage::Policy,
        cause,
        module: module.into(),
        error: "boom".into(),
    }
}

/// Ingests `entries` from journal `journal` of `device`, reporting the journal head at
/// `through`.
fn ingest(
    h: &SledHistory,
    device: &str,
    journal: JournalId,
    through: Seq,
    entries: &[Entry],
    now_ms: i64,
) -> Result<IngestOutcome, HistoryError> {
    h.ingest(&Batch {
        device,
        journal,
        through,
        journaled: through,
        entries,
        now_ms,
    })
}

fn page(limit: usize) -> PageRequest {
    PageRequest { limit, after: None }
}

fn all() -> PageRequest {
    page(1000)
}

#[test]
fn each_record_is_stored_once_and_every_index_answers() {
    let dir = tempfile::tempdir().unwrap();
    let history = SledHistory::open(&dir.path().join("h")).unwrap();
    let entries = [
        event(1, Some("T-1")),
        decision(2, Some("T-1"), Severity::Critical),
        state(3, "T-1", b"old"),
        event(4, None),
        decision(5, None, Severity::Info),
        state(6, "T-1", b"newest"),
    ];
    let outcome = ingest(&history, "d1", 7, 6, &entries, 0).unwrap();
    assert_eq!(
        (outcome.events, outcome.decisions, outcome.alerts),
        (2, 2, 1)
    );

    let route = history.route("C-1", 0, 10_000, &all()).unwrap().items;
    let ids: Vec<_> = route.iter().map(|p| p.event_id.as_str()).collect();
    assert_eq!(ids, ["e1", "e4"]);
    assert_eq!(route[0].task_id.as_deref(), Some("T-1"));

    let task = history.task("T-1", &all()).unwrap().unwrap();
    let kinds: Vec<_> = task.items.iter().map(|i| (i.kind, i.seq)).collect();
    assert_eq!(kinds, [("event", 1), ("decision", 2)]);
    assert_eq!(task.items[0].data["event_id"], "e1");
    assert_eq!(task.items[1].data["prediction_id"], "p2");
    let state = task.state.unwrap();
    assert_eq!((state.seq, state.bytes), (6, b"newest".len()), "compacted");

    // The decision without a task is kept under its record key, nowhere else.
    let untasked = history.db().get(Key::record("d1", 5).0).unwrap().unwrap();
    assert!(matches!(
        decode::<Record>(b"R", &untasked).unwrap(),
        Record::Decision(d) if d.prediction_id == "p5"
    ));
    assert!(history.db().get(Key::record("d1", 1).0).unwrap().is_none());
    let latest = history.latest_courier("C-1").unwrap().unwrap();
    assert_eq!(latest.time_ms, 4_000);
    assert_eq!(
        history
            .alerts(&AlertFilter::default(), &all())
            .unwrap()
            .items
            .len(),
        1
    );
    assert_eq!(history.stats().unwrap().states, 2);
}

#[test]
fn decisions_and_alerts_name_their_release_and_rows_from_before_read_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let history = SledHistory::open(&dir.path().join("h")).unwrap();
    let release = "city@1.1.0+0123456789abcdef";
    let entries = [
        decision(1, Some("T-1"), Severity::Critical),
        released(decision(2, Some("T-1"), Severity::Critical), release),
        released(decision(3, None, Severity::Warning), release),
    ];
    ingest(&history, "d1", 7, 3, &entries, 0).unwrap();
    let task = history.task("T-1", &all()).unwrap().unwrap();
    let releases: Vec<_> = task
        .items
        .iter()
        .map(|i| i.data["release"].clone())
        .collect();
    assert_eq!(releases, [serde_json::Value::Null, release.into()]);
    // Decisions of a policy without state: the task's second alert repeats its first.
    let alerts = history
        .alerts(&AlertFilter::default(), &all())
        .unwrap()
        .items;
    let releases: Vec<_> = alerts
        .iter()
        .map(|a| (a.id.as_str(), a.release.as_deref(), a.repeats))
        .collect();
    assert_eq!(releases, [("p1", None, 1), ("p3", Some(release), 0)]);

    // A row as written before decisions named their release: the row alone.
    let Record::Decision(d) = &entries[0].record else {
        unreachable!()
    };
    let old = encode(&TaskItem::Decision(Box::new(Cow::Borrowed(d))));
    let (item, release): (TaskItem, Option<String>) = decode_extended(b"T", &old).unwrap();
    assert!(matches!(item, TaskItem::Decision(d) if d.prediction_id == "p1"));
    assert_eq!(release, None);
    let mut broken = encode_extended(&TaskItem::Decision(Box::new(Cow::Borrowed(d))), &Some("x"));
    broken.push(0xff);
    assert!(decode_extended::<TaskItem, Option<String>>(b"T", &broken).is_err());
}

/// A task's alert across batches, and a history reopened in the middle: opened, escalated,
/// its peak followed, resolved; then a second one, which the task's end resolves.
#[test]
fn alerts_live_across_batches_and_a_reopened_history() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h");
    let t = Some("T-1");
    {
        let history = SledHistory::open(&path).unwrap();
        let entries = [
            stepped(decision(1, t, Severity::Warning), AlertStep::Opened, 0.6),
            stepped(decision(2, t, Severity::Info), AlertStep::Opened, 0.1),
        ];
        // The second is not an alert at all (no alert severity): it moves nothing.
        ingest(&history, "d1", 7, 2, &entries, 0).unwrap();
        let open = history
            .alerts(
                &AlertFilter {
                    state: Some(AlertState::Open),
                    ..AlertFilter::default()
                },
                &all(),
            )
            .unwrap()
            .items;
        assert_eq!(open.len(), 1);
        history.flush().unwrap();
    }
    let history = SledHistory::open(&path).unwrap();
    let mut end = event(6, t);
    if let Record::Event(e) = &mut end.record {
        e.event_type = EventKind::Delivered;
    }
    let entries = [
        stepped(
            decision(3, t, Severity::Critical),
            AlertStep::Escalated,
            0.8,
        ),
        decision(4, t, Severity::Info),
        stepped(decision(5, t, Severity::Info), AlertStep::Resolved, 0.2),
        stepped(decision(6, t, Severity::Warning), AlertStep::Opened, 0.65),
        end,
    ];
    ingest(&history, "d1", 7, 6, &entries, 0).unwrap();
    let alerts = history
        .alerts(&AlertFilter::default(), &all())
        .unwrap()
        .items;
    let [first, second] = alerts.as_slice() else {
        panic!("{alerts:#?}")
    };
    assert_eq!(
        (first.id.as_str(), first.severity.as_str(), first.state),
        ("p1", "critical", AlertState::Resolved)
    );
    assert_eq!(first.peak_score, 0.9, "decision 4 scored 0.9");
    assert!(first.escalated.is_some());
    assert_eq!(
        first.resolution.as_deref(),
        Some("risk fell below the policy's threshold")
    );
    assert_eq!(
        (second.id.as_str(), second.resolution.as_deref()),
        ("p6", Some("task ended: delivered"))
    );
    assert_eq!(history.alert("p6").unwrap().unwrap(), second.clone());
    assert!(history.alert("p2").unwrap().is_none());
    let by_task = |task: &str| {
        history
            .alerts(
                &AlertFilter {
                    task: Some(task.into()),
                    ..AlertFilter::default()
                },
                &all(),
            )
            .unwrap()
            .items
            .len()
    };
    assert_eq!((by_task("T-1"), by_task("T-2")), (2, 0));

    // Each decision by its prediction id, with its step; the timeline shows the steps.
    let d = history.prediction("p3").unwrap().unwrap();
    assert_eq!(
        (&d["alert_step"], &d["device"], &d["severity"]),
        (&"escalated".into(), &"d1".into(), &"critical".into())
    );
    assert_eq!(
        history.prediction("p4").unwrap().unwrap()["alert_step"],
        serde_json::Value::Null
    );
    assert!(history.prediction("nope").unwrap().is_none());
    let steps: Vec<_> = history
        .task("T-1", &all())
        .unwrap()
        .unwrap()
        .items
        .iter()
        .filter(|i| i.kind == "decision")
        .map(|i| i.data["alert_step"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        steps,
        [
            Some("opened".into()),
            Some("opened".into()),
            Some("escalated".into()),
            None,
            Some("resolved".into()),
            Some("opened".into())
        ]
    );
}

#[test]
fn rows_kept_by_the_writer_match_what_a_reopened_history_reads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h");
    let task_time = |h: &SledHistory| h.task("T-1", &all()).unwrap().unwrap().latest.unwrap();
    {
        let history = SledHistory::open(&path).unwrap();
        ingest(&history, "d1", 7, 5, &[event(5, Some("T-1"))], 0).unwrap();
        // An older event, later: the latest row keeps the newer one.
        let mut older = event(6, Some("T-1"));
        if let Record::Event(e) = &mut older.record {
            e.time_ms = 2_000;
        }
        ingest(&history, "d1", 7, 6, &[older], 0).unwrap();
        assert_eq!(task_time(&history).time_ms, 5_000);
        let again = ingest(&history, "d1", 7, 5, &[event(5, Some("T-1"))], 0).unwrap();
        assert_eq!(again.duplicates, 1);
        assert_eq!(history.cursor("d1").unwrap(), 6);
        history.flush().unwrap();
    }
    let history = SledHistory::open(&path).unwrap();
    assert_eq!(history.cursor("d1").unwrap(), 6);
    assert_eq!(task_time(&history).time_ms, 5_000);
    ingest(&history, "d1", 7, 7, &[event(7, Some("T-1"))], 0).unwrap();
    assert_eq!(task_time(&history).time_ms, 7_000);
    let stats = history.stats().unwrap();
    assert_eq!((stats.events, stats.duplicates_absorbed), (3, 1));
}

#[test]
fn a_device_lags_while_history_misses_what_it_reported_journaled() {
    let dir = tempfile::tempdir().unwrap();
    let history = SledHistory::open(&dir.path().join("h")).unwrap();
    history.open_journal("d1", 7, 1_000).unwrap();
    let batch = |through, journaled, now_ms| Batch {
        device: "d1",
        journal: 7,
        through,
        journaled,
        entries: &[],
        now_ms,
    };
    history.ingest(&batch(4, 4, 2_000)).unwrap();
    history.seen("d1", 5_000).unwrap();
    history.seen("d2", 6_000).unwrap();
    let device = |now| history.devices(now, &all()).unwrap().items[0].clone();
    let d1 = device(9_000);
    assert_eq!(
        (d1.journal_seq, d1.unsynced, d1.lag_ms, d1.last_seen_ms),
        (4, 0, 0, 5_000),
        "caught up: no lag, however old its events or its last contact"
    );
    // The device has journaled up to 10 but sent only up to 6.
    history.ingest(&batch(6, 10, 10_000)).unwrap();
    let d1 = device(12_500);
    assert_eq!((d1.unsynced, d1.lag_ms), (4, 10_500), "behind since 2 s");
    history.ingest(&batch(10, 10, 13_000)).unwrap();
    assert_eq!(device(20_000).lag_ms, 0);
    // A device that only connected has no row until it says hello.
    assert_eq!(history.stats().unwrap().devices, 1);
}

#[test]
fn a_new_journal_gets_a_new_range_and_the_one_it_replaced_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let history = SledHistory::open(&dir.path().join("h")).unwrap();
    let old = [event(1, None), event(2, None), event(3, None)];
    assert_eq!(history.open_journal("d1", 0xA, 0).unwrap().cursor, 0);
    ingest(&history, "d1", 0xA, 3, &old, 0).unwrap();
    // The device starts over: its numbering begins at 1 again.
    let view = history.open_journal("d1", 0xB, 0).unwrap();
    assert_eq!((view.cursor, view.base, view.replaced), (0, 3, Some(0xA)));
    let mut new = [event(1, None), event(2, None)];
    for (i, e) in new.iter_mut().enumerate() {
        if let Record::Event(e) = &mut e.record {
            e.event_id = format!("new-{i}");
            e.time_ms = 10_000 + i as i64;
        }
    }
    let stored = ingest(&history, "d1", 0xB, 2, &new, 0).unwrap();
    assert_eq!((stored.stored, stored.duplicates), (2, 0), "not absorbed");
    let route = history.route("C-1", 0, i64::MAX, &all()).unwrap().items;
    assert_eq!(route.len(), 5, "nothing of either journal lost");
    assert_eq!(history.open_journal("d1", 0xB, 0).unwrap().cursor, 2);
    assert_eq!(history.cursor("d1").unwrap(), 5);
    // The replaced journal may not come back (another process with this identity).
    assert!(matches!(
        history.open_journal("d1", 0xA, 0),
        Err(HistoryError::StaleJournal {
            journal: 0xA,
            current: 0xB,
            ..
        })
    ));
    // What it had sent is absorbed (a replay of the log), anything new refused.
    let replayed = ingest(&history, "d1", 0xA, 3, &old, 0).unwrap();
    assert_eq!(replayed.duplicates, 3);
    assert!(ingest(&history, "d1", 0xA, 4, &[event(4, None)], 0).is_err());
    let devices = history.devices(0, &all()).unwrap().items;
    assert_eq!(
        (devices[0].journal.as_deref(), devices[0].journal_resets),
        (Some("000000000000000b"), 1)
    );
}

#[test]
fn dead_letters_are_counted_by_module_and_cause_until_rescored() {
    let dir = tempfile::tempdir().unwrap();
    let history = SledHistory::open(&dir.path().join("h")).unwrap();
    let entries = [
        dead_letter(1, "x1", 1, failed("policy@1+a", FailureCause::Panic)),
        dead_letter(2, "x2", 1, failed("policy@1+a", FailureCause::Deadline)),
        // x1 fails again on the next module set, then a third set scores it.
        dead_letter(3, "x1", 2, failed("policy@2+b", FailureCause::Panic)),
        dead_letter(
            4,
            "x1",
            3,
            DeadLetterOutcome::Rescored {
                prediction_id: Some("p-x1".into()),
            },
        ),
    ];
    ingest(&history, "d1", 7, 2, &entries[..2], 0).unwrap();
    ingest(&history, "d1", 7, 4, &entries, 0).unwrap();
    ingest(&history, "d1", 7, 4, &entries, 0).unwrap();
    let dead = history
        .dead_letters(&DeadLetterFilter::default(), &all())
        .unwrap();
    assert_eq!((dead.open, dead.rescored), (1, 1), "{dead:?}");
    let counts: Vec<_> = dead
        .failures
        .iter()
        .map(|f| (f.module.as_str(), f.cause, f.count))
        .collect();
    assert_eq!(
        counts,
        [
            ("policy@1+a", FailureCause::Deadline, 1),
            ("policy@1+a", FailureCause::Panic, 1),
            ("policy@2+b", FailureCause::Panic, 1),
        ]
    );
    let open = history
        .dead_letters(
            &DeadLetterFilter {
                state: Some(DeadLetterState::Open),
                device: Some("d1".into()),
            },
            &all(),
        )
        .unwrap();
    assert_eq!(open.items.len(), 1);
    assert_eq!(
        (open.items[0].event_id.as_str(), open.items[0].cause),
        ("x2", FailureCause::Deadline)
    );
    let x1 = &dead.items[0];
    assert_eq!(
        (x1.state, x1.attempts, x1.prediction_id.as_deref()),
        (DeadLetterState::Rescored, 3, Some("p-x1"))
    );
    let stats = history.stats().unwrap();
    assert_eq!(
        (stats.dead_letters_open, stats.dead_letters_rescored),
        (1, 1)
    );
}

#[test]
fn lists_come_a_page_at_a_time_and_resume_after_their_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let history = SledHistory::open(&dir.path().join("h")).unwrap();
    let entries: Vec<Entry> = (1..=5).map(|s| event(s, None)).collect();
    ingest(&history, "d1", 7, 5, &entries, 0).unwrap();
    let mut seen = Vec::new();
    let mut request = page(2);
    loop {
        let p = history.route("C-1", 0, i64::MAX, &request).unwrap();
        assert!(p.items.len() <= 2);
        seen.extend(p.items.into_iter().map(|i| i.event_id));
        match p.next {
            Some(next) => request.after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, ["e1", "e2", "e3", "e4", "e5"]);
    // A page that ends exactly at the last item says so with the next, empty, page.
    let first = history.route("C-1", 0, i64::MAX, &page(5)).unwrap();
    assert_eq!(first.items.len(), 5);
    for bad in ["zz", "00", "deadbeef"] {
        let request = PageRequest {
            limit: 2,
            after: Some(bad.into()),
        };
        assert!(
            matches!(
                history.route("C-1", 0, i64::MAX, &request),
                Err(HistoryError::BadCursor(_))
            ),
            "{bad}"
        );
    }
    // Another courier's cursor is not this one's.
    let other = history.route("C-1", 0, i64::MAX, &page(1)).unwrap().next;
    let request = PageRequest {
        limit: 1,
        after: other,
    };
    assert!(history.route("C-2", 0, i64::MAX, &request).is_err());
}

#[test]
fn a_history_in_another_layout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h");
    drop(SledHistory::open(&path).unwrap());
    SledHistory::open(&path).expect("its own layout opens again");

    let old = dir.path().join("old");
    {
        let db: Db = sled::Config::new().path(&old).open().unwrap();
        db.insert(Key::record("d1", 1).0, &[1u8][..]).unwrap();
        db.flush().unwrap();
    }
    let err = SledHistory::open(&old).err().expect("layout 1 refused");
    assert!(
        matches!(
            err,
            HistoryError::Layout {
                found: 1,
                expected: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("--data"), "{err}");
}
