//! The bookkeeping a report is made from: what each device acknowledged, when, and what the
//! aggregator stored; the producer side of delivering a batch to a device.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fleet_host::decision::{AlertStep, Severity};
use fleet_host::event::Event;
use xxhash_rust::xxh3::xxh3_64;

use super::devices::Device;
use super::quality::FirstAlerts;

/// Everything counted while running.
#[derive(Default)]
pub(super) struct Ledger {
    pub(super) acknowledged: u64,
    pub(super) repeats_absorbed: u64,
    pub(super) thinned: u64,
    pub(super) rejected: u64,
    pub(super) rejected_examples: Vec<String>,
    pub(super) decision_micros: Vec<u32>,
    pub(super) stored_micros: Vec<u32>,
    pub(super) alerts_raised: u64,
    pub(super) dead_lettered: u64,
    /// Alerts raised per task.
    pub(super) alerted: HashMap<String, u32>,
    /// When each task was first alerted, at warning and at critical.
    pub(super) first_alerts: HashMap<String, FirstAlerts>,
    /// Alerts their policy resolved (the risk fell back).
    pub(super) alerts_resolved: u64,
    /// Event ids (hashed) each courier's device acknowledged as new.
    pub(super) ids: Vec<HashSet<u64>>,
    /// Batches a device refused (journal unavailable, ...) and that were sent again.
    pub(super) failed_submits: u64,
}

/// Delivers one batch to its device as a handset app would: events the device's clock
/// refuses are counted, the rest is sent until the device answers (at-least-once).
pub(super) async fn submit(
    device: &Device,
    batch: Vec<(usize, Event, bool)>,
    due: Instant,
    now_ms: i64,
    ledger: &Mutex<Ledger>,
) {
    let mut valid = Vec::with_capacity(batch.len());
    let mut couriers = Vec::with_capacity(batch.len());
    let mut rejected = Vec::new();
    for (c, e, _) in batch {
        match e.validate().and_then(|()| e.check_clock(now_ms)) {
            Ok(()) => {
                couriers.push(c);
                valid.push(e);
            }
            Err(err) => rejected.push(format!("{}: {err}", e.event_id)),
        }
    }
    if !rejected.is_empty() {
        let mut l = ledger.lock().unwrap_or_else(|e| e.into_inner());
        l.rejected += rejected.len() as u64;
        for r in rejected {
            if l.rejected_examples.len() < 5 {
                l.rejected_examples.push(r);
            }
        }
    }
    if valid.is_empty() {
        return;
    }
    let ids: Vec<(usize, u64)> = couriers
        .iter()
        .zip(&valid)
        .map(|(c, e)| (*c, xxh3_64(e.event_id.as_bytes())))
        .collect();
    // A producer retries until the device answers: at-least-once, backing off while the
    // device refuses (a full disk). The lane is looked up each time: the device may have
    // started over with a new journal meanwhile.
    let mut backoff = Duration::from_millis(50);
    let (accepted, lane) = loop {
        let lane = device.lane();
        match lane.writer.submit(valid.clone()).await {
            Ok(a) => break (a, lane),
            Err(_) => {
                ledger
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .failed_submits += 1;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    };
    let answered = due.elapsed().as_micros().min(u32::MAX as u128) as u32;
    let fresh = {
        let mut l = ledger.lock().unwrap_or_else(|e| e.into_inner());
        // An event is acknowledged once, however many tries it took: a try the device
        // refused may still have journaled it (made durable by a later flush), and the
        // retry is then answered as a duplicate.
        let fresh = ids.iter().filter(|&&(c, id)| l.ids[c].insert(id)).count() as u64;
        l.acknowledged += fresh;
        l.repeats_absorbed += ids.len() as u64 - fresh;
        l.thinned += accepted.thinned;
        l.dead_lettered += accepted.dead_letters.len() as u64;
        l.decision_micros
            .extend(std::iter::repeat_n(answered, fresh as usize));
        for d in &accepted.decisions {
            if matches!(d.severity, Severity::Warning | Severity::Critical) {
                l.alerts_raised += 1;
                if let Some(t) = &d.task_id {
                    *l.alerted.entry(t.clone()).or_default() += 1;
                    l.first_alerts
                        .entry(t.clone())
                        .or_default()
                        .note(d.severity, d.event_time.timestamp_millis());
                }
            }
            if d.alert_step == Some(AlertStep::Resolved) {
                l.alerts_resolved += 1;
            }
        }
        fresh
    };
    // Acknowledgement times are followed on the lane the batch went to.
    if fresh > 0 && std::sync::Arc::ptr_eq(&lane.journal, &device.lane().journal) {
        let mut pending = device.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.push_back((accepted.through, due, fresh as u32));
        device.note_oldest_pending(&pending);
    }
}

/// Moves answered batches to "stored" as the aggregator acknowledges them.
pub(super) async fn watch_acks(
    devices: Vec<std::sync::Arc<Device>>,
    ledger: std::sync::Arc<Mutex<Ledger>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    loop {
        let last_round = stop.load(Ordering::Relaxed);
        let now = Instant::now();
        let mut samples = Vec::new();
        for device in &devices {
            if device.oldest_pending.load(Ordering::Relaxed) == fleet_proto::Seq::MAX {
                continue;
            }
            let acked = device.acked();
            if acked < device.oldest_pending.load(Ordering::Relaxed) {
                continue;
            }
            let mut pending = device.pending.lock().unwrap_or_else(|e| e.into_inner());
            while let Some(&(through, due, n)) = pending.front() {
                if through > acked {
                    break;
                }
                pending.pop_front();
                let micros = (now - due).as_micros().min(u32::MAX as u128) as u32;
                samples.extend(std::iter::repeat_n(micros, n as usize));
            }
            device.note_oldest_pending(&pending);
        }
        if !samples.is_empty() {
            ledger
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .stored_micros
                .extend(samples);
        }
        if last_round {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
