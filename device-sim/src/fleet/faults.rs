//! The faults of a run, each at a wall time from the start: a network partition of the
//! faulty devices, the aggregator killed with SIGKILL and restarted, a disk that fills up
//! (the devices' or the aggregator's) and empties again, devices that start over with new
//! journals, and a load burst. Each says in the report what it did.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fleet_wal::testing::SmallDisk;
use tokio::sync::Semaphore;

use super::FleetOptions;
use super::devices::Fleet;
use super::ledger::Ledger;
use crate::aggregator::Aggregator;
use crate::proxy::ProxyControl;

/// How fast a `--disk-full` fault fills the disk: about what another program writing flat
/// out to a handset's flash would.
const FILL_RATE: u64 = 64 << 20;

/// Whose disk fills up in a `--disk-full` fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskOwner {
    /// The devices' journal store.
    Devices,
    /// The aggregator's history.
    Aggregator,
}

/// A disk that fills at `at_s` and empties `for_s` later (wall seconds).
#[derive(Clone, Copy, Debug)]
pub struct DiskFull {
    pub owner: DiskOwner,
    pub at_s: f64,
    pub for_s: f64,
}

/// Devices that start over with new, empty journals (reinstalled handsets) at `at_s`.
#[derive(Clone, Copy, Debug)]
pub struct JournalReset {
    pub at_s: f64,
    pub devices: usize,
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
    pub(super) fn factor_at(&self, wall: f64) -> f64 {
        if wall >= self.at_s && wall < self.at_s + self.for_s {
            self.factor
        } else {
            1.0
        }
    }
}

/// Where a timed fault stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Before,
    Active,
    Over,
}

/// What the faults act on.
pub(super) struct Targets<'a> {
    pub(super) aggregator: &'a mut Aggregator,
    pub(super) fleet: &'a Fleet,
    pub(super) proxy: &'a ProxyControl,
    /// Permits of the batches in flight into the devices (all taken: none in flight).
    pub(super) in_flight: &'a Arc<Semaphore>,
    pub(super) max_in_flight: u32,
    pub(super) disk: Option<&'a SmallDisk>,
    pub(super) ledger: &'a Arc<std::sync::Mutex<Ledger>>,
}

/// The scheduled faults of a run and what they did.
pub(super) struct Faults<'a> {
    options: &'a FleetOptions,
    partition: Phase,
    kill: Phase,
    disk_full: Phase,
    reset: Phase,
    /// Batches refused by device writers before the disk filled (to count those during).
    refused_before: u64,
    pub(super) log: Vec<String>,
}

impl<'a> Faults<'a> {
    pub(super) fn new(options: &'a FleetOptions) -> Self {
        Self {
            options,
            partition: Phase::Before,
            kill: Phase::Before,
            disk_full: Phase::Before,
            reset: Phase::Before,
            refused_before: 0,
            log: Vec::new(),
        }
    }

    /// Whether a fault has begun and is not over yet.
    pub(super) fn active(&self) -> bool {
        [self.partition, self.kill, self.disk_full].contains(&Phase::Active)
    }

    /// Starts and ends what is due at `wall` seconds from the start.
    pub(super) async fn apply(&mut self, wall: f64, t: &mut Targets<'_>) {
        self.partition(wall, t);
        self.kill(wall, t);
        self.disk_full(wall, t);
        self.reset(wall, t).await;
    }

    fn partition(&mut self, wall: f64, t: &Targets<'_>) {
        let Some((at, dur)) = self.options.partition else {
            return;
        };
        if self.partition == Phase::Before && wall >= at {
            t.proxy.partitioned.store(true, Ordering::Relaxed);
            self.partition = Phase::Active;
            self.log.push(format!(
                "partitioned {} devices at {wall:.1} s",
                self.options.faulty
            ));
        } else if self.partition == Phase::Active && wall >= at + dur {
            t.proxy.partitioned.store(false, Ordering::Relaxed);
            self.partition = Phase::Over;
            self.log.push(format!("partition healed at {wall:.1} s"));
        }
    }

    fn kill(&mut self, wall: f64, t: &mut Targets<'_>) {
        let Some((at, down)) = self.options.kill_aggregator else {
            return;
        };
        if self.kill == Phase::Before && wall >= at {
            self.log.push(match t.aggregator.kill9() {
                Ok(()) => format!("aggregator killed with SIGKILL at {wall:.1} s"),
                Err(e) => format!("could not kill the aggregator: {e}"),
            });
            self.kill = Phase::Active;
        } else if self.kill == Phase::Active && wall >= at + down {
            self.log.push(match t.aggregator.start() {
                Ok(()) => format!("aggregator restarted at {wall:.1} s"),
                Err(e) => format!("aggregator restart failed: {e}"),
            });
            self.kill = Phase::Over;
        }
    }

    fn disk_full(&mut self, wall: f64, t: &Targets<'_>) {
        let (Some(fault), Some(disk)) = (self.options.disk_full, t.disk) else {
            return;
        };
        let whose = match fault.owner {
            DiskOwner::Devices => "the devices'",
            DiskOwner::Aggregator => "the aggregator's",
        };
        let refused = || {
            t.ledger
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .failed_submits
        };
        if self.disk_full == Phase::Before && wall >= fault.at_s {
            self.refused_before = refused();
            self.log.push(match disk.fill_gradually(FILL_RATE) {
                Ok(()) => format!(
                    "{whose} disk began filling up at {wall:.1} s ({} MiB/s, as another program would)",
                    FILL_RATE >> 20
                ),
                Err(e) => format!("could not fill {whose} disk: {e}"),
            });
            self.disk_full = Phase::Active;
        } else if self.disk_full == Phase::Active && wall >= fault.at_s + fault.for_s {
            self.log.push(match (disk.free(), fault.owner) {
                (Ok(()), DiskOwner::Devices) => format!(
                    "{whose} disk had room again at {wall:.1} s; device writers refused {} batches meanwhile (sent again until accepted)",
                    refused() - self.refused_before
                ),
                (Ok(()), DiskOwner::Aggregator) => format!(
                    "{whose} disk had room again at {wall:.1} s (refused batches close their connections: see the sync failures)"
                ),
                (Err(e), _) => format!("could not free {whose} disk: {e}"),
            });
            self.disk_full = Phase::Over;
        }
    }

    /// Pauses deliveries, lets the chosen devices sync everything, and gives each a new,
    /// empty journal under its identity.
    async fn reset(&mut self, wall: f64, t: &Targets<'_>) {
        let Some(fault) = self.options.reset_journals else {
            return;
        };
        if self.reset != Phase::Before || wall < fault.at_s {
            return;
        }
        self.reset = Phase::Over;
        let pause = Instant::now();
        let all = t
            .in_flight
            .acquire_many(t.max_in_flight)
            .await
            .expect("never closed");
        let chosen: Vec<_> = t.fleet.devices.iter().take(fault.devices).collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !chosen.iter().all(|d| {
            d.synced()
                && d.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_empty()
        }) {
            if Instant::now() > deadline {
                self.log.push(format!(
                    "journal reset at {wall:.1} s given up: the devices did not sync within 60 s"
                ));
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut done = 0;
        for d in chosen {
            match t.fleet.reset_journal(d) {
                Ok(()) => done += 1,
                Err(e) => self
                    .log
                    .push(format!("{}: journal reset failed: {e}", d.name)),
            }
        }
        drop(all);
        self.log.push(format!(
            "{done} devices started over with new journals at {wall:.1} s (deliveries paused {:.1} s to let them sync first)",
            pause.elapsed().as_secs_f64()
        ));
    }
}

/// Follows a burst: how many events it released and when they were all absorbed.
pub(super) struct BurstWatch {
    burst: Burst,
    /// Events generated before the burst began and by its end.
    before: Option<u64>,
    after: Option<u64>,
    pub(super) report: crate::report::BurstReport,
}

impl BurstWatch {
    pub(super) fn new(burst: Burst) -> Self {
        Self {
            burst,
            before: None,
            after: None,
            report: Default::default(),
        }
    }

    /// `generated`: events released so far, before this tick's.
    pub(super) fn observe(&mut self, wall: f64, generated: u64, ledger: &std::sync::Mutex<Ledger>) {
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
