//! What drift costs: history ingest of scored batches (per decision an event and a decision
//! with the built-in model's 15 features) with decisions binned by the model's training
//! baseline, beside the same ingest without a baseline (nothing binned), alternating in one
//! run; then the drift report of the windows stored.
//!
//! `cargo bench -p fleet-aggregator --bench drift`

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_aggregator::drift::{self, Baselines};
use fleet_aggregator::history::{Batch, History, SledHistory};
use fleet_proto::record::{DecisionRecord, EventKind, EventRecord, GeoE7, Schema, Severity};
use fleet_proto::{Entry, Record};

use fleet_process as _;

const DEVICES: usize = 50;
const BATCH: u64 = 256;

fn batch(device: usize, from: u64, model: &str, names: &[String]) -> Vec<Entry> {
    let mut out = Vec::new();
    if from == 1 {
        out.push(Entry {
            seq: 0,
            record: Record::Schema(Schema {
                id: 1,
                model: model.into(),
                feature_names: names.to_vec(),
            }),
        });
    }
    for i in 0..BATCH / 2 {
        let n = from / 2 + i;
        let time_ms = 1_795_300_000_000 + n as i64 * 5_000;
        let task = format!("T-{device}-{}", n / 200);
        out.push(Entry {
            seq: 0,
            record: Record::Event(EventRecord {
                event_id: format!("e{device}-{n}"),
                courier_id: format!("C-{device}"),
                task_id: Some(task.clone()),
                event_type: EventKind::Location,
                time_ms,
                utc_offset_s: 0,
                position: GeoE7::from_degrees(12.97, 77.59),
                speed_kmh: Some(20.0),
                accuracy_m: None,
                context: None,
            }),
        });
        out.push(Entry {
            seq: 0,
            record: Record::Decision(DecisionRecord {
                event_id: format!("e{device}-{n}"),
                prediction_id: format!("p{device}-{n}"),
                courier_id: format!("C-{device}"),
                task_id: Some(task),
                time_ms,
                score: (n % 100) as f32 / 100.0,
                severity: Severity::Info,
                actions: vec![],
                model: model.into(),
                modules: ["f@1".into(), "s@1".into(), "p@1".into()],
                schema: 1,
                features: (0..names.len())
                    .map(|k| ((n + k as u64) % 40) as f32)
                    .collect(),
                top_factors: vec![(0, 0.1)],
                release: None,
                alert_step: None,
            }),
        });
    }
    for (k, e) in out.iter_mut().enumerate() {
        e.seq = from + k as u64;
    }
    out
}

/// Ingests `rounds` batches per device; returns the time ingest took (flushes apart).
fn ingest(
    history: &SledHistory,
    rounds: u64,
    model: &str,
    names: &[String],
    next: &mut [u64],
) -> Duration {
    let mut took = Duration::ZERO;
    for _ in 0..rounds {
        for (d, seq) in next.iter_mut().enumerate() {
            let entries = batch(d, *seq, model, names);
            let through = entries.last().unwrap().seq;
            let device = format!("dev-{d}");
            let started = Instant::now();
            history
                .ingest(&Batch {
                    device: &device,
                    journal: 1,
                    through,
                    journaled: through,
                    entries: &entries,
                    now_ms: 0,
                })
                .unwrap();
            took += started.elapsed();
            *seq = through + 1;
        }
    }
    took
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let (rounds, reps) = if quick { (1, 1) } else { (4, 10) };
    let builtin = Arc::new(Baselines::with_builtin());
    let known = builtin.all().remove(0);
    let model = known.baseline.model.clone();
    let names = known.baseline.feature_names();

    let dir = tempfile::tempdir().unwrap();
    let binned = SledHistory::open_with(&dir.path().join("binned"), builtin.clone()).unwrap();
    let plain =
        SledHistory::open_with(&dir.path().join("plain"), Arc::new(Baselines::default())).unwrap();
    let (mut next_b, mut next_p) = (vec![1u64; DEVICES], vec![1u64; DEVICES]);
    let (mut t_b, mut t_p) = (Duration::ZERO, Duration::ZERO);
    // Alternating which goes first, so that neither always runs on a warmer cache.
    for rep in 0..reps {
        if rep % 2 == 0 {
            t_p += ingest(&plain, rounds, &model, &names, &mut next_p);
            t_b += ingest(&binned, rounds, &model, &names, &mut next_b);
        } else {
            t_b += ingest(&binned, rounds, &model, &names, &mut next_b);
            t_p += ingest(&plain, rounds, &model, &names, &mut next_p);
        }
    }
    let decisions = (reps * rounds * DEVICES as u64 * BATCH / 2) as f64;
    println!(
        "ingest of {decisions} decisions (+ as many events): without drift {:.0} decisions/s, with drift binning {:.0} decisions/s: {:.3}x the time",
        decisions / t_p.as_secs_f64(),
        decisions / t_b.as_secs_f64(),
        t_b.as_secs_f64() / t_p.as_secs_f64()
    );
    assert_eq!(binned.stats().unwrap().decisions_without_baseline, 0);

    // Binning alone: one decision's 15 features and score into a window's histograms.
    let map = drift::FeatureMap::new(&known.baseline, &names);
    let mut row = drift::DriftRow::new(&known.baseline);
    let values: Vec<Vec<f32>> = (0..1000)
        .map(|i| (0..names.len()).map(|k| ((i + k) % 40) as f32).collect())
        .collect();
    let folds = if quick { 1_000 } else { 2_000_000 };
    let started = Instant::now();
    for i in 0..folds {
        let v = &values[i % values.len()];
        row.fold(
            &known.baseline,
            &map,
            std::hint::black_box(v),
            (i % 100) as f32 / 100.0,
        );
    }
    println!(
        "binning one decision (15 features and the score): {:.0} ns",
        started.elapsed().as_nanos() as f64 / folds as f64
    );

    let started = Instant::now();
    let n = if quick { 1 } else { 100 };
    let mut report = Vec::new();
    for _ in 0..n {
        report = drift::reports(&binned, &builtin, None, None, None).unwrap();
    }
    println!(
        "drift report of {} windows, {} decisions: {:.2?} each",
        report[0].windows,
        report[0].decisions,
        started.elapsed() / n
    );
}
