//! Event-to-decision latency percentiles and host memory, as a plain bench binary.
//!
//! `cargo bench -p fleet-host --bench latency` prints: RSS after loading the three modules
//! and the model, RSS after 20,000 events, and p50/p99/p99.9/max latency of one event through
//! the whole pipeline (unbatched: an event is decided as soon as it arrives), and of a batch of
//! 32 (time until the batch's last decision).

mod common;

use std::time::{Duration, Instant};

use fleet_host::pipeline::Pipeline;

fn percentiles(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize];
    format!(
        "p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us ({} samples)",
        at(0.5).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6,
        at(0.999).as_secs_f64() * 1e6,
        samples.last().unwrap().as_secs_f64() * 1e6,
        samples.len()
    )
}

fn main() {
    // `cargo test --benches` runs bench binaries with `--bench` absent: keep that run short.
    let quick = !std::env::args().any(|a| a == "--bench");
    let events = if quick { 500 } else { 20_000 };
    let before = common::rss_bytes();
    let registry = common::registry();
    let mut pipeline = Pipeline::new(registry);
    let loaded = common::rss_bytes();
    let mut feed = common::Feed::new(common::fleet_events(1000, 50_000));
    pipeline.process(feed.next_batch(1000));

    let mut single = Vec::with_capacity(events);
    for _ in 0..events {
        let batch = feed.next_batch(1);
        let start = Instant::now();
        let outcome = pipeline.process(batch);
        single.push(start.elapsed());
        assert_eq!(outcome.decisions.len(), 1);
    }
    let mut batched = Vec::with_capacity(events / 32);
    for _ in 0..events / 32 {
        let batch = feed.next_batch(32);
        let start = Instant::now();
        pipeline.process(batch);
        batched.push(start.elapsed());
    }
    let after = common::rss_bytes();
    println!(
        "rss: process start {:.1} MiB, modules + model loaded {:.1} MiB, after {} events {:.1} MiB",
        mib(before),
        mib(loaded),
        events * 2,
        mib(after)
    );
    println!("latency, one event per call: {}", percentiles(single));
    println!(
        "latency, batch of 32 (last decision): {}",
        percentiles(batched)
    );
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
