//! The fleet at run time: in-process devices (`devices.rs`) and what they run (`modules.rs`),
//! the clock that releases each courier's events when they fall due (`release.rs`), delivery
//! to the devices and the bookkeeping of what each acknowledged and the aggregator stored
//! (`ledger.rs`), the faults of a run (`faults.rs`), a release deployed mid-run
//! (`deploy.rs`), and the report with its exact audit (`audit.rs`) and the alerts' quality per
//! task (`quality.rs`).

mod audit;
mod baseline;
mod deploy;
mod devices;
mod faults;
mod ledger;
mod modules;
mod progress;
mod quality;
mod release;

pub use deploy::Deploy;
pub use faults::{Burst, DiskFull, DiskOwner, JournalReset};
pub use modules::{FleetModules, Start};

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_host::device::sync;
use fleet_wal::testing::SmallDisk;
use tokio::sync::Semaphore;

use crate::aggregator::Aggregator;
use crate::proxy::{self, Impairment, ProxyControl};
use crate::report::Report;
use crate::source::Scenario;
use devices::{Fleet, Routes};
use faults::{BurstWatch, Faults, Targets};
use ledger::Ledger;
use progress::Progress;
use release::Release;

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
    /// A disk that fills up and empties again (its store must be on the run's small disk).
    pub disk_full: Option<DiskFull>,
    /// Devices that start over with new journals.
    pub reset_journals: Option<JournalReset>,
    /// Longest wait for the aggregator to acknowledge everything after the last event.
    pub drain_timeout: Duration,
    /// Read every courier's route back from the aggregator and compare event by event.
    pub audit: bool,
    pub progress: bool,
    pub max_in_flight: usize,
    /// A release published and deployed to every device mid-run.
    pub deploy: Option<Deploy>,
}

/// Where a run keeps things.
pub struct Places<'a> {
    pub work: &'a Path,
    pub certs: &'a Path,
    /// The devices' journal store.
    pub devices: &'a Path,
    /// The small disk a `--disk-full` fault fills.
    pub disk: Option<&'a SmallDisk>,
}

pub fn run(
    scenario: Scenario,
    aggregator: &mut Aggregator,
    rt: &tokio::runtime::Runtime,
    places: &Places<'_>,
    modules: &FleetModules,
    options: &FleetOptions,
) -> anyhow::Result<Report> {
    let couriers = scenario.feeds.len();
    let device_count = couriers.div_ceil(options.couriers_per_device.max(1));
    let proxy = Arc::new(ProxyControl::default());
    let routes = routes(rt, aggregator, options, &proxy)?;
    let fleet = Fleet::start(device_count, options.faulty, places, &routes, modules, rt)?;
    let ledger = Arc::new(Mutex::new(Ledger {
        ids: vec![Default::default(); couriers],
        ..Ledger::default()
    }));
    let monitor_stop = Arc::new(AtomicBool::new(false));
    let monitor = rt.spawn(ledger::watch_acks(
        fleet.devices.clone(),
        ledger.clone(),
        monitor_stop.clone(),
    ));
    let started = Instant::now();
    let deploy_stop = Arc::new(AtomicBool::new(false));
    let deploy = options.deploy.clone().map(|d| {
        deploy::spawn(
            d,
            aggregator.api(),
            fleet.devices.iter().map(|d| d.registry.clone()).collect(),
            ledger.clone(),
            started,
            deploy_stop.clone(),
        )
    });
    let mut progress = Progress::new(options.progress, &scenario);
    let mut release = Release::new(scenario, options.seed);
    let mut faults = Faults::new(options);
    let mut burst = options.burst.map(BurstWatch::new);
    let in_flight = Arc::new(Semaphore::new(options.max_in_flight));
    let mut targets = Targets {
        aggregator,
        fleet: &fleet,
        proxy: &proxy,
        in_flight: &in_flight,
        max_in_flight: options.max_in_flight as u32,
        disk: places.disk,
        ledger: &ledger,
    };
    rt.block_on(drive(
        &mut release,
        &mut faults,
        &mut targets,
        &mut burst,
        &mut progress,
        started,
        options,
    ))?;
    let generation_s = started.elapsed().as_secs_f64();
    progress.message("waiting for the aggregator to acknowledge everything");
    // Faults scheduled after the last event still happen (and are healed) before draining.
    while faults.active() {
        std::thread::sleep(Duration::from_millis(20));
        rt.block_on(faults.apply(started.elapsed().as_secs_f64(), &mut targets));
    }
    let drain_deadline = Instant::now() + options.drain_timeout;
    while !fleet.devices.iter().all(|d| d.synced()) && Instant::now() < drain_deadline {
        std::thread::sleep(Duration::from_millis(20));
        if let Some(b) = &mut burst {
            b.observe(started.elapsed().as_secs_f64(), release.generated, &ledger);
        }
        progress.tick(release.simulated_s(), &ledger);
    }
    // A deploy still spreading finishes (it has a time limit of its own); one not made yet
    // never will be.
    let deploy = deploy.map(|handle| {
        if options
            .deploy
            .as_ref()
            .is_some_and(|d| started.elapsed().as_secs_f64() < d.at_s)
        {
            deploy_stop.store(true, Ordering::Relaxed);
        }
        progress.message("waiting for the deployed release to reach every device");
        handle
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the deploy thread panicked")))
    });
    // Let the watcher take the last acknowledgements.
    std::thread::sleep(Duration::from_millis(50));
    if let Some(b) = &mut burst {
        b.observe(started.elapsed().as_secs_f64(), release.generated, &ledger);
    }
    monitor_stop.store(true, Ordering::Relaxed);
    let _ = rt.block_on(monitor);
    progress.finish();
    if fleet.resets() > 0 {
        faults
            .log
            .push(format!("journal resets in all: {}", fleet.resets()));
    }
    if options.faulty > 0 {
        faults.log.push(format!(
            "fault proxy: {} datagrams forwarded, {} dropped",
            proxy.forwarded.load(Ordering::Relaxed),
            proxy.dropped.load(Ordering::Relaxed)
        ));
    }
    let deploy = match deploy {
        Some(Ok(report)) => Some(report),
        Some(Err(e)) => {
            faults.log.push(format!("deploy: {e:#}"));
            None
        }
        None => None,
    };
    let ledger = std::mem::take(&mut *ledger.lock().unwrap_or_else(|e| e.into_inner()));
    let mut report = audit::report(audit::Run {
        aggregator: targets.aggregator,
        fleet: &fleet,
        release,
        ledger,
        faults: faults.log,
        burst: burst.map(|b| b.report),
        started,
        generation_s,
        options,
    });
    fleet.stop();
    if let Ok(r) = &mut report {
        r.deploy = deploy;
    }
    report
}

/// Where devices connect: straight to the aggregator, and the faulty ones through the proxy.
fn routes(
    rt: &tokio::runtime::Runtime,
    aggregator: &Aggregator,
    options: &FleetOptions,
    proxy: &Arc<ProxyControl>,
) -> anyhow::Result<Routes> {
    let direct = {
        let _guard = rt.enter();
        (aggregator.quic(), sync::client_endpoint(aggregator.quic())?)
    };
    let proxied = if options.faulty > 0 {
        let addr = rt.block_on(proxy::start(
            aggregator.quic(),
            options.impairment,
            proxy.clone(),
        ))?;
        let _guard = rt.enter();
        Some((addr, sync::client_endpoint(addr)?))
    } else {
        None
    };
    Ok(Routes { direct, proxied })
}

/// Releases every event when it falls due and delivers it to its device, applying the
/// faults on the way; returns once everything is released and answered.
async fn drive(
    release: &mut Release,
    faults: &mut Faults<'_>,
    targets: &mut Targets<'_>,
    burst: &mut Option<BurstWatch>,
    progress: &mut Progress,
    started: Instant,
    options: &FleetOptions,
) -> anyhow::Result<()> {
    let mut ticker = tokio::time::interval(options.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticker.tick().await;
        let wall = started.elapsed().as_secs_f64();
        faults.apply(wall, targets).await;
        if let Some(why) = targets.fleet.broken() {
            anyhow::bail!(
                "the devices' journal store broke on a failed flush ({why}); everything acknowledged is in its write-ahead log, but only a new process can reopen the store (edge-host device restarts itself; this simulator stops here)"
            );
        }
        if let Some(b) = burst {
            b.observe(wall, release.generated, targets.ledger);
        }
        let factor = options.burst.map_or(1.0, |b| b.factor_at(wall));
        let devices = &targets.fleet.devices;
        let skew = |d: usize| {
            if devices[d].faulty { options.skew_s } else { 0 }
        };
        let due = Instant::now();
        let batches = release.tick(wall, factor, options, skew);
        // The handsets' clocks are the simulated one.
        let now_ms = release.sim_now;
        for (d, batch) in batches {
            // While every permit is taken (devices refusing), faults stay on schedule.
            let permit = loop {
                tokio::select! {
                    permit = targets.in_flight.clone().acquire_owned() => {
                        break permit.expect("never closed");
                    }
                    () = tokio::time::sleep(options.tick) => {
                        faults.apply(started.elapsed().as_secs_f64(), targets).await;
                    }
                }
            };
            let device = devices[d].clone();
            let ledger = targets.ledger.clone();
            tokio::spawn(async move {
                ledger::submit(&device, batch, due, now_ms, &ledger).await;
                drop(permit);
            });
        }
        progress.tick(release.simulated_s(), targets.ledger);
        if release.finished() {
            break;
        }
    }
    // Everything submitted is answered once all permits are back.
    let _ = targets.in_flight.acquire_many(targets.max_in_flight).await;
    Ok(())
}
