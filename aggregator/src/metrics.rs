//! Counters for `GET /metrics`, in the Prometheus text format. Written by hand: a handful of
//! counters and gauges do not need a metrics framework.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::history::DeviceStatus;

#[derive(Default)]
pub struct Metrics {
    pub events: AtomicU64,
    pub decisions: AtomicU64,
    pub batches: AtomicU64,
    pub duplicates: AtomicU64,
    pub commits: AtomicU64,
    pub commit_micros: AtomicU64,
    pub checkpoints: AtomicU64,
    pub checkpoint_micros: AtomicU64,
    pub connected: AtomicU64,
    pub connections: AtomicU64,
    pub handshake_failures: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub storage_errors: AtomicU64,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// The exposition text, with per-device lag from `devices`.
    pub fn render(&self, devices: &[DeviceStatus]) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, kind: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        counter(
            "fleet_ingest_events_total",
            "Events stored.",
            "counter",
            self.events.load(Relaxed),
        );
        counter(
            "fleet_ingest_decisions_total",
            "Decisions stored.",
            "counter",
            self.decisions.load(Relaxed),
        );
        counter(
            "fleet_ingest_batches_total",
            "Batches persisted.",
            "counter",
            self.batches.load(Relaxed),
        );
        counter(
            "fleet_ingest_duplicates_total",
            "Entries absorbed as already stored.",
            "counter",
            self.duplicates.load(Relaxed),
        );
        counter(
            "fleet_commits_total",
            "Group commits (one ingest log fdatasync each).",
            "counter",
            self.commits.load(Relaxed),
        );
        counter(
            "fleet_commit_seconds_micros_total",
            "Time spent in group commits, microseconds.",
            "counter",
            self.commit_micros.load(Relaxed),
        );
        counter(
            "fleet_checkpoints_total",
            "History flushes that let the ingest log drop what they covered.",
            "counter",
            self.checkpoints.load(Relaxed),
        );
        counter(
            "fleet_checkpoint_seconds_micros_total",
            "Time spent in checkpoints, microseconds.",
            "counter",
            self.checkpoint_micros.load(Relaxed),
        );
        counter(
            "fleet_connected_devices",
            "Devices connected now.",
            "gauge",
            self.connected.load(Relaxed),
        );
        counter(
            "fleet_connections_total",
            "Connections accepted.",
            "counter",
            self.connections.load(Relaxed),
        );
        counter(
            "fleet_handshake_failures_total",
            "Connections refused during the TLS handshake.",
            "counter",
            self.handshake_failures.load(Relaxed),
        );
        counter(
            "fleet_protocol_errors_total",
            "Connections closed for a protocol error.",
            "counter",
            self.protocol_errors.load(Relaxed),
        );
        counter(
            "fleet_storage_errors_total",
            "Batches that failed to persist.",
            "counter",
            self.storage_errors.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP fleet_device_lag_ms Ingest time minus event time of the newest event stored.\n# TYPE fleet_device_lag_ms gauge"
        );
        for d in devices {
            if let Some(lag) = d.lag_ms {
                let _ = writeln!(
                    out,
                    "fleet_device_lag_ms{{device=\"{}\"}} {lag}",
                    d.device.replace(['"', '\\', '\n'], "_")
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP fleet_device_last_seq Highest sequence stored per device.\n# TYPE fleet_device_last_seq gauge"
        );
        for d in devices {
            let _ = writeln!(
                out,
                "fleet_device_last_seq{{device=\"{}\"}} {}",
                d.device.replace(['"', '\\', '\n'], "_"),
                d.last_seq
            );
        }
        out
    }
}
