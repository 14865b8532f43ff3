//! Counters for `GET /metrics`, in the Prometheus text format. Written by hand: a handful of
//! counters and gauges do not need a metrics framework.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::history::{DeadLetters, DeviceStatus};

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
    pub journal_resets: AtomicU64,
    pub stale_journals: AtomicU64,
    pub revoked_closed: AtomicU64,
    pub crl_reloads: AtomicU64,
    pub api_unauthorized: AtomicU64,
    pub api_forbidden: AtomicU64,
    pub api_rate_limited: AtomicU64,
    pub stream_subscribers: AtomicU64,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// For gauges.
    pub fn sub(gauge: &AtomicU64, n: u64) {
        gauge.fetch_sub(n, Relaxed);
    }

    /// The exposition text, with per-device lag from `devices` and dead letters from
    /// `dead_letters`.
    pub fn render(&self, devices: &[DeviceStatus], dead_letters: &DeadLetters) -> String {
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
            "fleet_stream_subscribers",
            "Live stream subscribers (WebSocket) now.",
            "gauge",
            self.stream_subscribers.load(Relaxed),
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
        counter(
            "fleet_journal_resets_total",
            "Devices that started over with a new journal (a new sequence range each).",
            "counter",
            self.journal_resets.load(Relaxed),
        );
        counter(
            "fleet_stale_journals_total",
            "Connections refused for sending from a journal the device replaced.",
            "counter",
            self.stale_journals.load(Relaxed),
        );
        counter(
            "fleet_revoked_connections_closed_total",
            "Open connections closed because their certificate was revoked.",
            "counter",
            self.revoked_closed.load(Relaxed),
        );
        counter(
            "fleet_crl_reloads_total",
            "Times the revocation list was read again while running.",
            "counter",
            self.crl_reloads.load(Relaxed),
        );
        counter(
            "fleet_api_unauthorized_total",
            "API requests refused for a missing or unknown token (401).",
            "counter",
            self.api_unauthorized.load(Relaxed),
        );
        counter(
            "fleet_api_forbidden_total",
            "API requests refused for a role too weak for the endpoint (403).",
            "counter",
            self.api_forbidden.load(Relaxed),
        );
        counter(
            "fleet_api_rate_limited_total",
            "API requests refused over their token's rate limit (429).",
            "counter",
            self.api_rate_limited.load(Relaxed),
        );
        counter(
            "fleet_dead_letters_open",
            "Events a device's modules failed on that no retry has scored yet.",
            "gauge",
            dead_letters.open,
        );
        counter(
            "fleet_dead_letters_rescored_total",
            "Dead letters a later retry scored.",
            "counter",
            dead_letters.rescored,
        );
        let label = |s: &str| s.replace(['"', '\\', '\n'], "_");
        let _ = writeln!(
            out,
            "# HELP fleet_dead_letter_failures_total Failed attempts by module, stage and cause.\n# TYPE fleet_dead_letter_failures_total counter"
        );
        for f in &dead_letters.failures {
            let _ = writeln!(
                out,
                "fleet_dead_letter_failures_total{{module=\"{}\",stage=\"{}\",cause=\"{}\"}} {}",
                label(&f.module),
                f.stage,
                f.cause,
                f.count
            );
        }
        let per_device =
            |out: &mut String, name: &str, help: &str, value: fn(&DeviceStatus) -> i64| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
                for d in devices {
                    let _ = writeln!(
                        out,
                        "{name}{{device=\"{}\"}} {}",
                        label(&d.device),
                        value(d)
                    );
                }
            };
        per_device(
            &mut out,
            "fleet_device_lag_ms",
            "How long history has been missing entries the device reported journaled (0: none missing).",
            |d| d.lag_ms,
        );
        per_device(
            &mut out,
            "fleet_device_unsynced_entries",
            "Entries the device reported journaled that history does not hold yet.",
            |d| d.unsynced as i64,
        );
        per_device(
            &mut out,
            "fleet_device_last_seq",
            "Highest sequence stored per device.",
            |d| d.last_seq as i64,
        );
        out
    }
}
