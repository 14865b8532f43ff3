//! The report of a run: counts that must balance, latencies, alert quality against ground
//! truth, and the audit that reads every courier's route back from the aggregator.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Instant;

use xxhash_rust::xxh3::xxh3_64;

use super::FleetOptions;
use super::devices::Fleet;
use super::ledger::Ledger;
use super::quality::task_quality;
use super::release::Release;
use crate::aggregator::Aggregator;
use crate::report::{
    Alerts, BaselineQuality, BurstReport, DriftSummary, Percentiles, ProcessUsage, Report,
};

/// What a finished run hands to its report.
pub(super) struct Run<'a> {
    pub(super) aggregator: &'a Aggregator,
    pub(super) fleet: &'a Fleet,
    pub(super) release: Release,
    pub(super) ledger: Ledger,
    pub(super) faults: Vec<String>,
    pub(super) burst: Option<BurstReport>,
    pub(super) started: Instant,
    pub(super) generation_s: f64,
    pub(super) options: &'a FleetOptions,
}

pub(super) fn report(run: Run<'_>) -> anyhow::Result<Report> {
    let Run {
        aggregator,
        fleet,
        release,
        ledger,
        mut faults,
        burst,
        started,
        generation_s,
        options,
    } = run;
    let wall_s = started.elapsed().as_secs_f64();
    let simulated_ms = (release.sim_now - release.start_ms) as f64;
    let mut report = Report {
        scenario: release.name.clone(),
        couriers: release.feeds.len(),
        devices: fleet.devices.len(),
        simulated_hours: simulated_ms / 3.6e6,
        wall_s,
        speed: simulated_ms / 1000.0 / generation_s,
        speed_asked: options.speed,
        aggregator_http: aggregator.http().to_string(),
        ..Report::default()
    };
    if let Some(t) = release.behind_since {
        faults.push(format!(
            "fell behind real time from {:.1} s (the machine could not keep up)",
            (t - started).as_secs_f64()
        ));
    }
    if ledger.failed_submits > 0 {
        faults.push(format!(
            "{} batches refused by a device writer (sent again until accepted)",
            ledger.failed_submits
        ));
    }
    let e = &mut report.events;
    e.generated = release.generated;
    e.sent = release.sent;
    e.repeats_sent = release.repeats;
    e.rejected = ledger.rejected;
    e.rejected_examples = ledger.rejected_examples.clone();
    e.acknowledged = ledger.acknowledged;
    e.repeats_absorbed = ledger.repeats_absorbed;
    e.thinned = ledger.thinned;
    e.dead_lettered = ledger.dead_lettered;
    e.journaled = ledger.acknowledged - ledger.thinned;
    e.synced = ledger.stored_micros.len() as u64;
    report.latency_ms.event_to_decision = Percentiles::of(ledger.decision_micros.clone());
    report.latency_ms.event_to_stored = Percentiles::of(ledger.stored_micros.clone());
    report.alerts = alerts(&release, &ledger);
    report.sync.connects = fleet
        .devices
        .iter()
        .map(|d| d.lane().status.connects.load(Ordering::Relaxed))
        .sum();
    report.sync.failures = fleet
        .devices
        .iter()
        .map(|d| d.lane().status.failures.load(Ordering::Relaxed))
        .sum();
    report.sync.faults = faults;
    report.burst = burst;

    let stats = aggregator.api().get_json("/api/v1/stats")?;
    report.events.stored = stats["events"].as_u64().unwrap_or(0);
    report.drift = DriftSummary::of_api(&aggregator.api().get_json("/api/v1/drift")?);
    let courier_ids: Vec<String> = release
        .feeds
        .iter()
        .map(|f| f.courier_id().to_string())
        .collect();
    if options.audit {
        let (lost, duplicated) = audit(
            aggregator,
            &courier_ids,
            &ledger.ids,
            report.events.journaled,
        )?;
        report.events.lost = lost;
        report.events.duplicated = duplicated;
        report.events.audited = true;
    } else {
        report.events.lost = report.events.journaled.saturating_sub(report.events.stored);
        report.events.duplicated = report.events.stored.saturating_sub(report.events.journaled);
    }
    report.processes.extend(ProcessUsage::read(
        "device-sim (devices, writer, sync)",
        std::process::id(),
        wall_s,
    ));
    if let Some(pid) = aggregator.pid() {
        report.processes.extend(ProcessUsage::read(
            "aggregator (since its last start)",
            pid,
            wall_s,
        ));
    }
    report.sample_task = release.truth.first().map(|t| t.task_id.clone());
    report.sample_courier = courier_ids.first().cloned();
    Ok(report)
}

/// Alert precision and recall per task, against the tasks that ended late.
fn alerts(release: &Release, ledger: &Ledger) -> Alerts {
    let per_task: Vec<u32> = ledger.alerted.values().copied().collect();
    // Alerted at all is alerted at warning or above.
    let warning = task_quality(&release.truth, &ledger.first_alerts, false);
    let critical = task_quality(&release.truth, &ledger.first_alerts, true);
    let baseline = release
        .baseline
        .judged_at_recall(&release.truth, critical.recall)
        .map(|(margin_min, quality)| BaselineQuality {
            margin_min,
            quality,
        });
    Alerts {
        raised: ledger.alerts_raised,
        resolved: ledger.alerts_resolved,
        per_alerted_task: if per_task.is_empty() {
            0.0
        } else {
            f64::from(per_task.iter().sum::<u32>()) / per_task.len() as f64
        },
        most_on_a_task: per_task.iter().copied().max().unwrap_or(0),
        tasks: release.truth.len() as u64,
        tasks_late: release.truth.iter().filter(|t| t.late).count() as u64,
        tasks_alerted: warning.tasks_alerted,
        precision: warning.precision,
        recall: warning.recall,
        warning,
        critical,
        baseline,
    }
}

/// Reads every courier's route back and compares it with what the devices acknowledged.
/// Returns (lost, duplicated).
fn audit(
    aggregator: &Aggregator,
    couriers: &[String],
    ids: &[HashSet<u64>],
    journaled: u64,
) -> anyhow::Result<(u64, u64)> {
    let mut found = 0u64;
    let mut duplicated = 0u64;
    for (c, courier) in couriers.iter().enumerate() {
        let mut seen = HashSet::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                None => format!("/api/v1/couriers/{courier}/route?limit=10000"),
                Some(c) => format!("/api/v1/couriers/{courier}/route?limit=10000&cursor={c}"),
            };
            let route = aggregator.api().get_json(&path)?;
            for p in route["points"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                let id = xxh3_64(p["event_id"].as_str().unwrap_or("").as_bytes());
                if !seen.insert(id) || !ids[c].contains(&id) {
                    duplicated += 1;
                } else {
                    found += 1;
                }
            }
            match route["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => break,
            }
        }
    }
    Ok((journaled.saturating_sub(found), duplicated))
}
