//! "Couriers near here" on 10,000 couriers spread over a city: a radius query, nearest first,
//! and a bounding box; and moving one courier (what each stored ping costs the index).
//!
//! `cargo bench -p fleet-aggregator --bench nearby`

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use fleet_aggregator::nearby::{CourierAt, Nearby};

const COURIERS: usize = 10_000;

/// Deterministic spread over 40 km x 40 km around Bengaluru.
fn city() -> (Nearby, impl FnMut() -> (f64, f64)) {
    let mut seed = 42u64;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut point = move || (12.8 + next() * 0.36, 77.4 + next() * 0.37);
    let index = Nearby::default();
    for i in 0..COURIERS {
        let (lat, lon) = point();
        index.moved(at(i, lat, lon, 0));
    }
    (index, point)
}

fn at(i: usize, lat: f64, lon: f64, time_ms: i64) -> CourierAt {
    CourierAt {
        courier_id: format!("C{i:05}"),
        lat,
        lon,
        time_ms,
        task_id: None,
        device: format!("sim-{i:05}"),
        score: None,
        severity: None,
    }
}

fn bench(c: &mut Criterion) {
    let (index, mut point) = city();
    let mut group = c.benchmark_group("nearby");
    group
        .sample_size(50)
        .measurement_time(Duration::from_secs(3));
    for radius in [1.0, 3.0] {
        group.bench_function(format!("radius {radius} km, 20 nearest"), |b| {
            b.iter(|| {
                let (lat, lon) = point();
                index.near(lat, lon, radius, 20).len()
            })
        });
    }
    group.bench_function("box 2 km x 2 km", |b| {
        b.iter(|| {
            let (lat, lon) = point();
            index
                .within((lat, lon), (lat + 0.018, lon + 0.0185), 1000)
                .len()
        })
    });
    let mut t = 1;
    group.bench_function("move one courier", |b| {
        b.iter(|| {
            t += 1;
            let (lat, lon) = point();
            index.moved(at((t as usize) % COURIERS, lat, lon, t));
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
