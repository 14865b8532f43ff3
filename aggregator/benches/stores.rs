//! sled 1.0.0-alpha.124 beside redb on the aggregator's write pattern: per event a record
//! keyed (device, seq), a route entry keyed (courier, time), a task-index entry and an update
//! of the courier's latest row; events of 200 devices interleaved; one durable commit (fsync)
//! per group. Reports events/s and commit latency by group size.
//!
//! `cargo bench -p fleet-aggregator --bench stores`

use std::time::Instant;

const DEVICES: u64 = 200;

/// The key/value writes of event `n`.
fn writes(n: u64) -> [(Vec<u8>, Vec<u8>); 4] {
    let device = n % DEVICES;
    let seq = n / DEVICES + 1;
    let time = 1_795_300_000_000u64 + seq * 5_000;
    let key = |prefix: u8, parts: &[u64]| {
        let mut k = vec![prefix];
        for p in parts {
            k.extend_from_slice(&p.to_be_bytes());
        }
        k
    };
    [
        (key(b'R', &[device, seq]), vec![7u8; 64]),
        (key(b'P', &[device, time, seq]), vec![3u8; 24]),
        (
            key(b'T', &[device * 1000 + seq / 360, time, seq]),
            Vec::new(),
        ),
        (key(b'M', &[device]), vec![5u8; 40]),
    ]
}

trait Store {
    fn commit(&mut self, from: u64, to: u64);
}

struct Sled<const F: usize>(sled::Db<F>);

impl<const F: usize> Store for Sled<F> {
    fn commit(&mut self, from: u64, to: u64) {
        let mut batch = sled::Batch::default();
        for n in from..to {
            for (k, v) in writes(n) {
                batch.insert(k, v);
            }
        }
        self.0.apply_batch(batch).unwrap();
        self.0.flush().unwrap();
    }
}

const TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("history");

struct Redb(redb::Database);

impl Store for Redb {
    fn commit(&mut self, from: u64, to: u64) {
        let txn = self.0.begin_write().unwrap();
        {
            let mut table = txn.open_table(TABLE).unwrap();
            for n in from..to {
                for (k, v) in writes(n) {
                    table.insert(k.as_slice(), v.as_slice()).unwrap();
                }
            }
        }
        txn.commit().unwrap();
    }
}

fn run(name: &str, store: &mut dyn Store, total: u64, group: u64) {
    let mut commits = Vec::new();
    let started = Instant::now();
    let mut n = 0;
    while n < total {
        let t = Instant::now();
        store.commit(n, n + group);
        commits.push(t.elapsed());
        n += group;
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    commits.sort();
    let pct = |p: f64| commits[((commits.len() - 1) as f64 * p) as usize];
    println!(
        "{name:<22} {group:>8} {rate:>12.0} {:>12.2?} {:>12.2?}",
        pct(0.5),
        pct(0.99)
    );
}

fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench`: keep that run short.
    let quick = !std::env::args().any(|a| a == "--bench");
    let total: u64 = if quick { 8_192 } else { 1_048_576 };
    println!("{total} events, 4 writes each, {DEVICES} devices interleaved");
    println!(
        "{:<22} {:>8} {:>12} {:>12} {:>12}",
        "store", "group", "events/s", "commit p50", "commit p99"
    );
    for group in [512u64, 4_096, 32_768] {
        let group = group.min(total);
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new()
            .path(dir.path())
            .flush_every_ms(Some(1000))
            .zstd_compression_level(1)
            .open::<64>()
            .unwrap();
        run("sled alpha.124 (64)", &mut Sled(db), total, group);
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new()
            .path(dir.path())
            .flush_every_ms(Some(1000))
            .open::<1024>()
            .unwrap();
        run("sled alpha.124 (1024)", &mut Sled(db), total, group);
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("h.redb")).unwrap();
        run("redb 4.6", &mut Redb(db), total, group);
    }
}
