//! The fleet at run time: in-process devices (each its own identity, journal and QUIC
//! connection; journals share one sled database and one writer, so one fsync commits many
//! devices), a clock that releases each courier's events when they fall due, at-least-once
//! delivery faults, network faults, and the bookkeeping the report is made from.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fleet_host::decision::Severity;
use fleet_host::device::sync::{self, SyncConfig, SyncStatus};
use fleet_host::device::writer::{self, DeviceRuntime, WriterHandle};
use fleet_host::event::Event;
use fleet_journal::{Journal, JournalConfig, JournalStore};
use fleet_net::pki::Pki;
use fleet_proto::Seq;
use fleet_proto::sender::SenderConfig;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{Notify, Semaphore};
use xxhash_rust::xxh3::xxh3_64;

use crate::aggregator::Aggregator;
use crate::proxy::{self, Impairment, ProxyControl};
use crate::report::{Percentiles, ProcessUsage, Report};
use crate::source::{Scenario, TaskTruth};

/// How the fleet runs and what goes wrong.
#[derive(Clone, Debug)]
pub struct FleetOptions {
    /// Couriers sharing one device (1: a handset each; many: an edge node for all).
    pub couriers_per_device: usize,
    /// Simulated seconds per wall second.
    pub speed: f64,
    pub tick: Duration,
    pub seed: u64,
    /// Chance an event is delivered to its device twice.
    pub repeat_rate: f64,
    /// Chance an event arrives after the next tick's events.
    pub late_rate: f64,
    /// The first `faulty` devices reach the aggregator through the fault proxy.
    pub faulty: usize,
    pub impairment: Impairment,
    /// Clock skew of the faulty devices' handsets, seconds.
    pub skew_s: i64,
    /// Wall seconds from the start: partition the faulty devices at `.0` for `.1`.
    pub partition: Option<(f64, f64)>,
    /// Wall seconds from the start: SIGKILL the aggregator at `.0`, restart it `.1` later.
    pub kill_aggregator: Option<(f64, f64)>,
    pub burst: Option<Burst>,
    /// Longest wait for the aggregator to acknowledge everything after the last event.
    pub drain_timeout: Duration,
    /// Read every courier's route back from the aggregator and compare event by event.
    pub audit: bool,
    pub progress: bool,
    pub max_in_flight: usize,
}

/// Devices handshaking with the aggregator at once (a fleet of thousands connecting at
/// start, or again after an aggregator restart).
const HANDSHAKES_IN_FLIGHT: usize = 64;

struct Device {
    name: String,
    journal: Arc<Journal>,
    writer: WriterHandle,
    status: Arc<SyncStatus>,
    stop: Arc<Notify>,
    /// Batches answered and not yet acknowledged by the aggregator: (through, due, events).
    pending: Mutex<VecDeque<(Seq, Instant, u32)>>,
    /// `through` of the oldest pending batch (`Seq::MAX`: none), so the watcher checks
    /// thousands of devices with two atomic loads each.
    oldest_pending: std::sync::atomic::AtomicU64,
    faulty: bool,
}

impl Device {
    /// Keeps `oldest_pending` in step with `pending` (call with its lock held).
    fn note_oldest_pending(&self, pending: &VecDeque<(Seq, Instant, u32)>) {
        let oldest = pending.front().map_or(Seq::MAX, |p| p.0);
        self.oldest_pending.store(oldest, Ordering::Relaxed);
    }
}

/// Everything counted while running.
#[derive(Default)]
struct Ledger {
    acknowledged: u64,
    repeats_absorbed: u64,
    thinned: u64,
    rejected: u64,
    rejected_examples: Vec<String>,
    decision_micros: Vec<u32>,
    stored_micros: Vec<u32>,
    alerts_raised: u64,
    alerted: HashSet<String>,
    /// Event ids (hashed) each courier's device acknowledged as new.
    ids: Vec<HashSet<u64>>,
    failed_submits: u64,
}

pub fn run(
    scenario: Scenario,
    aggregator: &mut Aggregator,
    rt: &tokio::runtime::Runtime,
    work: &Path,
    certs: &Path,
    registry: Arc<fleet_host::registry::ModuleRegistry>,
    options: &FleetOptions,
) -> anyhow::Result<Report> {
    let couriers = scenario.feeds.len();
    let per = options.couriers_per_device.max(1);
    let device_count = couriers.div_ceil(per);
    let pki = Pki::at(certs);
    let issue_started = Instant::now();
    let names: Vec<String> = (0..device_count).map(|d| format!("sim-{d:05}")).collect();
    for name in &names {
        if !pki.device(name).cert.exists() {
            pki.issue_device(name, 7)
                .with_context(|| format!("issuing a certificate for {name}"))?;
        }
    }
    tracing::info!(
        devices = device_count,
        took_ms = issue_started.elapsed().as_millis() as u64,
        "device certificates ready"
    );

    let store = JournalStore::open(&work.join("devices"), 256 << 20)?;
    let shared_writer = writer::spawn_shared(DeviceRuntime::new(registry));
    let direct = {
        let _guard = rt.enter();
        sync::client_endpoint(aggregator.quic())?
    };
    let control = Arc::new(ProxyControl::default());
    let proxied = if options.faulty > 0 {
        let addr = rt.block_on(proxy::start(
            aggregator.quic(),
            options.impairment,
            control.clone(),
        ))?;
        let _guard = rt.enter();
        Some((addr, sync::client_endpoint(addr)?))
    } else {
        None
    };
    let ca = pki.ca_cert();
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_IN_FLIGHT));
    let mut devices = Vec::with_capacity(device_count);
    for (d, name) in names.iter().enumerate() {
        let (journal, _) = store.journal(name, JournalConfig::new(work))?;
        let journal = Arc::new(journal);
        let wake = Arc::new(Notify::new());
        let status = Arc::new(SyncStatus::default());
        let stop = Arc::new(Notify::new());
        let faulty = d < options.faulty;
        let (addr, endpoint) = match (&proxied, faulty) {
            (Some((addr, ep)), true) => (*addr, ep.clone()),
            _ => (aggregator.quic(), direct.clone()),
        };
        let client = fleet_net::tls::client_config(&ca, &pki.device(name))?;
        rt.spawn(sync::run(
            journal.clone(),
            wake.clone(),
            SyncConfig {
                aggregator: addr,
                server_name: "localhost".into(),
                client,
                device: name.clone(),
                backoff_min: Duration::from_millis(100),
                backoff_max: Duration::from_secs(2),
                sender: SenderConfig::default(),
                endpoint: Some(endpoint),
                handshakes: Some(handshakes.clone()),
            },
            status.clone(),
            stop.clone(),
        ));
        devices.push(Arc::new(Device {
            name: name.clone(),
            writer: shared_writer.device(journal.clone(), wake),
            journal,
            status,
            stop,
            pending: Mutex::new(VecDeque::new()),
            oldest_pending: std::sync::atomic::AtomicU64::new(Seq::MAX),
            faulty,
        }));
    }

    let ledger = Arc::new(Mutex::new(Ledger {
        ids: vec![HashSet::new(); couriers],
        ..Ledger::default()
    }));
    let monitor_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let monitor = rt.spawn(watch_acks(
        devices.clone(),
        ledger.clone(),
        monitor_stop.clone(),
    ));

    let started = Instant::now();
    let progress = progress_bar(options.progress, &scenario);
    let mut feeds = scenario.feeds;
    let mut truth: Vec<TaskTruth> = Vec::new();
    let mut rng = SmallRng::seed_from_u64(options.seed ^ 0x5EED);
    let mut held: Vec<Vec<Event>> = vec![Vec::new(); couriers];
    // Couriers by the time of their next event: a tick advances only those due (10,000
    // couriers polled 100 times a second cost more than the events themselves).
    let mut queue: BinaryHeap<Reverse<(i64, usize)>> = feeds
        .iter()
        .enumerate()
        .filter_map(|(c, f)| f.next_ms().map(|at| Reverse((at, c))))
        .collect();
    // Couriers with events held back for the next tick.
    let mut holding: Vec<usize> = Vec::new();
    let mut generated = 0u64;
    let mut sent = 0u64;
    let mut repeats = 0u64;
    let mut faults = Faults {
        options,
        control: &control,
        partition: Phase::Before,
        kill: Phase::Before,
        log: Vec::new(),
    };
    let in_flight = Arc::new(Semaphore::new(options.max_in_flight));
    let mut sim_now = scenario.start_ms;
    // The simulated time due, advanced tick by tick (faster during a burst).
    let mut sim_due = scenario.start_ms as f64;
    let mut last_wall = 0.0;
    let mut burst = options.burst.map(BurstWatch::new);
    let mut behind_since: Option<Instant> = None;
    rt.block_on(async {
        let mut ticker = tokio::time::interval(options.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            ticker.tick().await;
            let wall = started.elapsed().as_secs_f64();
            faults.apply(wall, aggregator);
            let factor = options.burst.map_or(1.0, |b| b.factor_at(wall));
            sim_due += (wall - last_wall) * options.speed * factor * 1000.0;
            last_wall = wall;
            let target = sim_due as i64;
            if let Some(b) = &mut burst {
                b.observe(wall, generated, &ledger);
            }
            // Never release more than a few ticks at once: a slow machine falls behind real
            // time (reported) instead of flooding the devices.
            let step = (options.tick.as_secs_f64() * options.speed * factor * 4000.0) as i64;
            sim_now = target.min(sim_now + step).min(scenario.end_ms);
            if target > sim_now + step {
                behind_since.get_or_insert_with(Instant::now);
            }
            let due = Instant::now();
            let mut batches: HashMap<usize, Vec<(usize, Event, bool)>> = HashMap::new();
            let mut advanced = Vec::new();
            while let Some(&Reverse((at, c))) = queue.peek() {
                if at > sim_now {
                    break;
                }
                queue.pop();
                advanced.push(c);
            }
            // In courier order, as if every courier were visited.
            let mut visit = std::mem::take(&mut holding);
            visit.extend_from_slice(&advanced);
            visit.sort_unstable();
            visit.dedup();
            for c in visit {
                let mut fresh = Vec::new();
                feeds[c].advance(sim_now, &mut fresh, &mut truth);
                generated += fresh.len() as u64;
                let d = c / per;
                let batch = batches.entry(d).or_default();
                let late = std::mem::take(&mut held[c]);
                for mut e in fresh {
                    if devices[d].faulty && options.skew_s != 0 {
                        e.event_time += chrono::Duration::seconds(options.skew_s);
                    }
                    if rng.random::<f64>() < options.repeat_rate {
                        held[c].push(e.clone());
                        repeats += 1;
                    }
                    if rng.random::<f64>() < options.late_rate {
                        held[c].push(e);
                    } else {
                        batch.push((c, e, false));
                    }
                }
                // Last tick's held-back events arrive after this tick's.
                batch.extend(late.into_iter().map(|e| (c, e, true)));
                if batch.is_empty() {
                    batches.remove(&d);
                }
                if !held[c].is_empty() {
                    holding.push(c);
                }
            }
            for c in advanced {
                if let Some(at) = feeds[c].next_ms() {
                    queue.push(Reverse((at, c)));
                }
            }
            for (d, batch) in batches {
                sent += batch.len() as u64;
                let permit = in_flight
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("never closed");
                let device = devices[d].clone();
                let ledger = ledger.clone();
                tokio::spawn(async move {
                    submit(&device, batch, due, &ledger).await;
                    drop(permit);
                });
            }
            if let Some(p) = &progress {
                p.set_position(((sim_now - scenario.start_ms) / 1000) as u64);
                let l = ledger.lock().unwrap_or_else(|e| e.into_inner());
                p.set_message(format!(
                    "{} events, {} stored",
                    l.acknowledged,
                    l.stored_micros.len()
                ));
            }
            let finished = sim_now >= scenario.end_ms || queue.is_empty();
            if finished && holding.is_empty() {
                break;
            }
        }
        // Everything submitted is answered once all permits are back.
        let _ = in_flight.acquire_many(options.max_in_flight as u32).await;
    });
    let generation_s = started.elapsed().as_secs_f64();
    if let Some(p) = &progress {
        p.set_message("waiting for the aggregator to acknowledge everything");
    }
    // Faults scheduled after the last event still happen (and are healed) before draining.
    while faults.active() {
        std::thread::sleep(Duration::from_millis(20));
        faults.apply(started.elapsed().as_secs_f64(), aggregator);
    }
    let drain_deadline = Instant::now() + options.drain_timeout;
    let all_synced = || {
        devices
            .iter()
            .all(|d| d.status.acked.load(Ordering::Relaxed) >= d.journal.stats().last_seq)
    };
    while !all_synced() && Instant::now() < drain_deadline {
        std::thread::sleep(Duration::from_millis(20));
        if let Some(b) = &mut burst {
            b.observe(started.elapsed().as_secs_f64(), generated, &ledger);
        }
    }
    // Let the watcher take the last acknowledgements.
    std::thread::sleep(Duration::from_millis(50));
    if let Some(b) = &mut burst {
        b.observe(started.elapsed().as_secs_f64(), generated, &ledger);
    }
    monitor_stop.store(true, Ordering::Relaxed);
    let _ = rt.block_on(monitor);
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    let wall_s = started.elapsed().as_secs_f64();

    let mut report = Report {
        scenario: scenario.name.clone(),
        couriers,
        devices: device_count,
        simulated_hours: (sim_now - scenario.start_ms) as f64 / 3.6e6,
        wall_s,
        speed: (sim_now - scenario.start_ms) as f64 / 1000.0 / generation_s,
        speed_asked: options.speed,
        aggregator_http: aggregator.http().to_string(),
        ..Report::default()
    };
    if let Some(t) = behind_since {
        faults.log.push(format!(
            "fell behind real time from {:.1} s (the machine could not keep up)",
            (t - started).as_secs_f64()
        ));
    }
    let ledger = std::mem::take(&mut *ledger.lock().unwrap_or_else(|e| e.into_inner()));
    let e = &mut report.events;
    e.generated = generated;
    e.sent = sent;
    e.repeats_sent = repeats;
    e.rejected = ledger.rejected;
    e.rejected_examples = ledger.rejected_examples;
    e.acknowledged = ledger.acknowledged;
    e.repeats_absorbed = ledger.repeats_absorbed;
    e.thinned = ledger.thinned;
    e.journaled = ledger.acknowledged - ledger.thinned;
    e.synced = ledger.stored_micros.len() as u64;
    if ledger.failed_submits > 0 {
        faults.log.push(format!(
            "{} batches refused by a device writer",
            ledger.failed_submits
        ));
    }
    report.latency_ms.event_to_decision = Percentiles::of(ledger.decision_micros);
    report.latency_ms.event_to_stored = Percentiles::of(ledger.stored_micros);

    let late: HashSet<&str> = truth
        .iter()
        .filter(|t| t.late)
        .map(|t| t.task_id.as_str())
        .collect();
    let tasks: HashSet<&str> = truth.iter().map(|t| t.task_id.as_str()).collect();
    let alerted: HashSet<&str> = ledger
        .alerted
        .iter()
        .map(String::as_str)
        .filter(|t| tasks.contains(t))
        .collect();
    let hit = alerted.iter().filter(|t| late.contains(*t)).count() as f64;
    report.alerts = crate::report::Alerts {
        raised: ledger.alerts_raised,
        tasks: tasks.len() as u64,
        tasks_late: late.len() as u64,
        tasks_alerted: alerted.len() as u64,
        precision: if alerted.is_empty() {
            0.0
        } else {
            hit / alerted.len() as f64
        },
        recall: if late.is_empty() {
            0.0
        } else {
            hit / late.len() as f64
        },
    };
    report.sync.connects = devices
        .iter()
        .map(|d| d.status.connects.load(Ordering::Relaxed))
        .sum();
    report.sync.failures = devices
        .iter()
        .map(|d| d.status.failures.load(Ordering::Relaxed))
        .sum();
    if options.faulty > 0 {
        faults.log.push(format!(
            "fault proxy: {} datagrams forwarded, {} dropped",
            control.forwarded.load(Ordering::Relaxed),
            control.dropped.load(Ordering::Relaxed)
        ));
    }
    report.sync.faults = faults.log;
    report.burst = burst.map(|b| b.report);

    let stats = crate::http::get_json(aggregator.http(), "/api/v1/stats")?;
    report.events.stored = stats["events"].as_u64().unwrap_or(0);
    let courier_ids: Vec<String> = feeds.iter().map(|f| f.courier_id().to_string()).collect();
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
    for d in &devices {
        d.stop.notify_one();
    }
    Ok(report)
}

async fn submit(
    device: &Device,
    batch: Vec<(usize, Event, bool)>,
    due: Instant,
    ledger: &Mutex<Ledger>,
) {
    let mut valid = Vec::with_capacity(batch.len());
    let mut couriers = Vec::with_capacity(batch.len());
    let mut rejected = Vec::new();
    for (c, e, _) in batch {
        match e.validate() {
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
    // A producer retries until the device answers: at-least-once.
    let mut attempts = 0;
    let accepted = loop {
        match device.writer.submit(valid.clone()).await {
            Ok(a) => break a,
            Err(e) => {
                attempts += 1;
                ledger
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .failed_submits += 1;
                if attempts >= 50 {
                    tracing::error!(device = %device.name, error = %e, "giving up on a batch");
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let answered = due.elapsed().as_micros().min(u32::MAX as u128) as u32;
    let fresh = accepted.events as u64;
    {
        let mut l = ledger.lock().unwrap_or_else(|e| e.into_inner());
        l.acknowledged += fresh;
        l.repeats_absorbed += accepted.duplicates as u64;
        l.thinned += accepted.thinned;
        l.decision_micros
            .extend(std::iter::repeat_n(answered, fresh as usize));
        for d in &accepted.decisions {
            if matches!(d.severity, Severity::Warning | Severity::Critical) {
                l.alerts_raised += 1;
                if let Some(t) = &d.task_id {
                    l.alerted.insert(t.clone());
                }
            }
        }
        for (c, id) in ids {
            l.ids[c].insert(id);
        }
    }
    if fresh > 0 {
        let mut pending = device.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.push_back((accepted.through, due, fresh as u32));
        device.note_oldest_pending(&pending);
    }
}

/// Moves answered batches to "stored" as the aggregator acknowledges them.
async fn watch_acks(
    devices: Vec<Arc<Device>>,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    loop {
        let last_round = stop.load(Ordering::Relaxed);
        let now = Instant::now();
        let mut samples = Vec::new();
        for device in &devices {
            let acked = device.status.acked.load(Ordering::Relaxed);
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

/// A load burst: from `at_s` for `for_s` wall seconds the simulated clock runs `factor`
/// times faster.
#[derive(Clone, Copy, Debug)]
pub struct Burst {
    pub at_s: f64,
    pub for_s: f64,
    pub factor: f64,
}

impl Burst {
    fn factor_at(&self, wall: f64) -> f64 {
        if wall >= self.at_s && wall < self.at_s + self.for_s {
            self.factor
        } else {
            1.0
        }
    }
}

/// Follows a burst: how many events it released and when they were all absorbed.
struct BurstWatch {
    burst: Burst,
    /// Events generated before the burst began and by its end.
    before: Option<u64>,
    after: Option<u64>,
    report: crate::report::BurstReport,
}

impl BurstWatch {
    fn new(burst: Burst) -> Self {
        Self {
            burst,
            before: None,
            after: None,
            report: Default::default(),
        }
    }

    /// `generated`: events released so far, before this tick's.
    fn observe(&mut self, wall: f64, generated: u64, ledger: &Mutex<Ledger>) {
        let Burst { at_s, for_s, .. } = self.burst;
        if wall < at_s {
            return;
        }
        let before = *self.before.get_or_insert(generated);
        if wall < at_s + for_s {
            return;
        }
        let after = *self.after.get_or_insert_with(|| {
            self.report.events = generated - before;
            self.report.window_s = wall - at_s;
            self.report.offered_per_s = (generated - before) as f64 / (wall - at_s);
            generated
        });
        let l = ledger.lock().unwrap_or_else(|e| e.into_inner());
        // Invalid events are refused, thinned ones never sent: both are accounted for.
        let settled = l.rejected + l.acknowledged;
        let stored = l.rejected + l.thinned + l.stored_micros.len() as u64;
        if self.report.devices_absorbed_s.is_none() && settled >= after {
            self.report.devices_absorbed_s = Some(wall - at_s);
        }
        if self.report.stored_s.is_none() && stored >= after {
            self.report.stored_s = Some(wall - at_s);
        }
    }
}

/// Where a timed fault (partition, aggregator kill) stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Before,
    Active,
    Over,
}

/// The scheduled faults of a run and what they did.
struct Faults<'a> {
    options: &'a FleetOptions,
    control: &'a ProxyControl,
    partition: Phase,
    kill: Phase,
    log: Vec<String>,
}

impl Faults<'_> {
    /// Whether a fault has begun and is not over yet.
    fn active(&self) -> bool {
        self.partition == Phase::Active || self.kill == Phase::Active
    }

    /// Starts and ends what is due at `wall` seconds from the start.
    fn apply(&mut self, wall: f64, aggregator: &mut Aggregator) {
        if let Some((at, dur)) = self.options.partition {
            if self.partition == Phase::Before && wall >= at {
                self.control.partitioned.store(true, Ordering::Relaxed);
                self.partition = Phase::Active;
                self.log.push(format!(
                    "partitioned {} devices at {wall:.1} s",
                    self.options.faulty
                ));
            } else if self.partition == Phase::Active && wall >= at + dur {
                self.control.partitioned.store(false, Ordering::Relaxed);
                self.partition = Phase::Over;
                self.log.push(format!("partition healed at {wall:.1} s"));
            }
        }
        if let Some((at, down)) = self.options.kill_aggregator {
            if self.kill == Phase::Before && wall >= at {
                self.log.push(match aggregator.kill9() {
                    Ok(()) => format!("aggregator killed with SIGKILL at {wall:.1} s"),
                    Err(e) => format!("could not kill the aggregator: {e}"),
                });
                self.kill = Phase::Active;
            } else if self.kill == Phase::Active && wall >= at + down {
                self.log.push(match aggregator.start() {
                    Ok(()) => format!("aggregator restarted at {wall:.1} s"),
                    Err(e) => format!("aggregator restart failed: {e}"),
                });
                self.kill = Phase::Over;
            }
        }
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
            let route = crate::http::get_json(aggregator.http(), &path)?;
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

fn progress_bar(enabled: bool, scenario: &Scenario) -> Option<indicatif::ProgressBar> {
    if !enabled {
        return None;
    }
    let bar = indicatif::ProgressBar::new(((scenario.end_ms - scenario.start_ms) / 1000) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} simulated {pos}/{len} s [{bar:30}] {elapsed} {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    Some(bar)
}
