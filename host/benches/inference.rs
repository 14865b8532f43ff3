//! Scoring the shipped model on held-out rows: single row and batches of 64, probabilities and
//! explanations. Compare with `models/late_risk/bench_onnxruntime.py` on the same rows.
//!
//! `cargo bench -p fleet-host --bench inference`

mod common;
#[path = "common/parity.rs"]
mod parity;

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let models = common::models();
    let model = models.get("late_risk").unwrap();
    let (rows, _) = parity::parity_rows();
    let width = rows[0].len();
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let mut group = c.benchmark_group("inference");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(3));
    for batch in [1usize, 64] {
        group.throughput(Throughput::Elements(batch as u64));
        let mut at = 0;
        group.bench_function(BenchmarkId::new("probabilities", batch), |b| {
            b.iter(|| {
                at = (at + batch) % (rows.len() - batch);
                model
                    .probabilities(&flat[at * width..(at + batch) * width], batch)
                    .unwrap()
            })
        });
        group.bench_function(BenchmarkId::new("contributions", batch), |b| {
            b.iter(|| {
                at = (at + batch) % (rows.len() - batch);
                model
                    .contributions(&flat[at * width..(at + batch) * width], batch)
                    .unwrap()
            })
        });
        // What the scorer asks for: both in one walk.
        group.bench_function(BenchmarkId::new("explained", batch), |b| {
            b.iter(|| {
                at = (at + batch) % (rows.len() - batch);
                model
                    .explained(&flat[at * width..(at + batch) * width], batch)
                    .unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
