//! Journal figures: append throughput by flush policy (events per group commit), and recovery
//! time after kill -9 with a million journaled events.
//!
//! `cargo bench -p fleet-journal --bench journal`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fleet_journal::{Journal, JournalConfig};
use fleet_proto::Record;
use fleet_proto::record::{EventKind, EventRecord, GeoE7};

fn event(n: u64) -> Record {
    Record::Event(EventRecord {
        event_id: format!("C-{:04}-{n:010}", n % 1000),
        courier_id: format!("C-{:04}", n % 1000),
        task_id: Some(format!("T-{:08}", n / 50)),
        event_type: EventKind::Location,
        time_ms: 1_795_300_000_000 + n as i64 * 5,
        utc_offset_s: 19_800,
        position: GeoE7::from_degrees(
            12.97 + (n % 97) as f64 * 1e-4,
            77.59 + (n % 89) as f64 * 1e-4,
        ),
        speed_kmh: Some(18.5),
        accuracy_m: Some(6.0),
        context: None,
    })
}

const CHILD: &str = "FLEET_JOURNAL_BENCH_CHILD";

fn main() {
    if let Ok(spec) = std::env::var(CHILD) {
        return child(&spec);
    }
    // `cargo test --all-targets` runs bench binaries without `--bench`: keep that run short.
    let quick = !std::env::args().any(|a| a == "--bench");
    println!("journal append (sled 1.0.0-alpha.124, one fsync per group commit)");
    println!(
        "{:>16} {:>12} {:>14} {:>14}",
        "events/commit", "events/s", "commit p50", "commit p99"
    );
    for per_commit in [1usize, 64, 256, 1024, 4096] {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(JournalConfig::new(dir.path())).unwrap();
        let total = match (quick, per_commit) {
            (true, _) => per_commit * 10,
            (false, 1) => 500,
            (false, _) => (per_commit * 50).max(200_000),
        };
        let mut n = 0u64;
        let mut commits = Vec::new();
        let started = Instant::now();
        while (n as usize) < total {
            let batch: Vec<Record> = (0..per_commit)
                .map(|_| {
                    n += 1;
                    event(n)
                })
                .collect();
            let t = Instant::now();
            journal.append(batch).unwrap();
            journal.flush().unwrap();
            commits.push(t.elapsed());
        }
        let rate = n as f64 / started.elapsed().as_secs_f64();
        commits.sort();
        let pct = |p: f64| commits[((commits.len() - 1) as f64 * p) as usize];
        println!(
            "{per_commit:>16} {rate:>12.0} {:>14.2?} {:>14.2?}",
            pct(0.5),
            pct(0.99)
        );
    }

    // Recovery: a child journals a million events (group commits of 4096), reports, and is
    // killed with SIGKILL; then the journal is opened again and timed.
    let total = if quick { 10_000 } else { 1_000_000 };
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD, format!("{}|{total}", dir.path().display()))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let started = Instant::now();
    let (journal, recovery) = Journal::open(JournalConfig::new(dir.path())).unwrap();
    let open = started.elapsed();
    assert_eq!(recovery.last_seq, total as u64, "{line}");
    // First read of the backlog head, as the sync loop does right after start.
    let first = journal.entries_after(0, 512).unwrap();
    let ready = started.elapsed();
    println!(
        "\nrecovery after kill -9 with {total} journaled events: open {open:.2?}, first batch readable {ready:.2?} ({} entries); {:.2} s per million; {} MiB on disk",
        first.len(),
        ready.as_secs_f64() * 1e6 / total as f64,
        journal.size_on_disk().unwrap() >> 20
    );
}

fn child(spec: &str) {
    let (dir, total) = spec.split_once('|').unwrap();
    let total: u64 = total.parse().unwrap();
    let (journal, _) = Journal::open(JournalConfig::new(dir)).unwrap();
    let mut n = 0;
    while n < total {
        let batch: Vec<Record> = (0..4096.min(total - n))
            .map(|_| {
                n += 1;
                event(n)
            })
            .collect();
        journal.append(batch).unwrap();
        journal.flush().unwrap();
    }
    println!("journaled {n}");
    std::thread::sleep(Duration::from_secs(3600));
}
