//! The rows history keeps per device, per task and courier (latest), and its counters, with
//! the rules that move them.

use std::collections::BTreeMap;

use fleet_proto::record::{
    DeadLetterOutcome, DeadLetterRecord, DecisionRecord, EventRecord, FailureCause, GeoE7,
    Severity, Stage,
};
use fleet_proto::{JournalId, Seq};
use serde::{Deserialize, Serialize};

use super::plan::Fold;
use super::views::{self, DeadLetter, DeadLetterState, DeviceStatus, Failures, Latest};

/// Stored per device.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct DeviceRow {
    /// Everything up to here is stored, in history's numbering across the device's journals.
    pub(crate) cursor: Seq,
    pub(crate) last_seen_ms: i64,
    pub(crate) last_event_ms: Option<i64>,
    pub(crate) last_ingest_ms: Option<i64>,
    pub(crate) events: u64,
    pub(crate) decisions: u64,
    /// The journal the device syncs from, and where its sequence 1 falls (`base + 1`).
    pub(crate) journal: Option<JournalId>,
    pub(crate) base: Seq,
    /// Journals the device replaced, newest last (at most [`RETIRED_KEPT`]).
    pub(crate) retired: Vec<Retired>,
    /// How many times the device started over with a new journal.
    pub(crate) resets: u32,
    /// The device's journal head at its last batch (history's numbering).
    pub(crate) journaled: Seq,
    /// When history last held everything the device had reported journaled.
    pub(crate) synced_ms: Option<i64>,
}

/// A journal a device replaced: where its numbering started, and where it ended.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Retired {
    pub(crate) journal: JournalId,
    pub(crate) base: Seq,
    pub(crate) end: Seq,
}

/// Replaced journals remembered per device, to refuse them if they come back.
const RETIRED_KEPT: usize = 16;

/// Where a journal's entries go in a device's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Span {
    /// The device's current journal: entries go after `base`.
    Current { base: Seq },
    /// A replaced journal: what it sent up to `end` is stored; it may send nothing new.
    Retired {
        base: Seq,
        end: Seq,
        current: JournalId,
    },
}

impl DeviceRow {
    /// Where `journal`'s entries go. A journal not seen before becomes the current one after
    /// everything stored (the device started over), and the old one is retired; returns it.
    pub(crate) fn open(&mut self, journal: JournalId) -> (Span, Option<JournalId>) {
        match self.journal {
            Some(current) if current == journal => (Span::Current { base: self.base }, None),
            Some(current) => {
                if let Some(r) = self.retired.iter().find(|r| r.journal == journal) {
                    let span = Span::Retired {
                        base: r.base,
                        end: r.end,
                        current,
                    };
                    return (span, None);
                }
                self.retired.push(Retired {
                    journal: current,
                    base: self.base,
                    end: self.cursor,
                });
                if self.retired.len() > RETIRED_KEPT {
                    self.retired.remove(0);
                }
                self.journal = Some(journal);
                self.base = self.cursor;
                self.journaled = self.cursor;
                self.resets += 1;
                (Span::Current { base: self.base }, Some(current))
            }
            None => {
                self.journal = Some(journal);
                self.base = self.cursor;
                (Span::Current { base: self.base }, None)
            }
        }
    }

    /// The device's last batch ended at `through` and reported its journal head at
    /// `journaled` (both history's numbering).
    pub(crate) fn synced(&mut self, through: Seq, journaled: Seq, now_ms: i64) {
        self.cursor = self.cursor.max(through);
        self.journaled = self.journaled.max(journaled);
        self.last_seen_ms = now_ms;
        if self.cursor >= self.journaled {
            self.synced_ms = Some(now_ms);
        }
    }

    pub(crate) fn view(&self, device: String, last_seen_ms: i64, now_ms: i64) -> DeviceStatus {
        let unsynced = self.journaled.saturating_sub(self.cursor);
        DeviceStatus {
            device,
            journal: self.journal.map(|j| format!("{j:016x}")),
            journal_resets: self.resets,
            journal_seq: self.cursor.saturating_sub(self.base),
            journaled: self.journaled.saturating_sub(self.base),
            unsynced,
            lag_ms: if unsynced == 0 {
                0
            } else {
                (now_ms - self.synced_ms.unwrap_or(last_seen_ms)).max(0)
            },
            last_seq: self.cursor,
            last_seen: views::rfc3339(last_seen_ms),
            last_seen_ms,
            events: self.events,
            decisions: self.decisions,
        }
    }
}

/// Stored per task and per courier.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct LatestRow {
    pub(crate) time_ms: i64,
    pub(crate) event_type: String,
    pub(crate) position: Option<GeoE7>,
    pub(crate) courier_id: String,
    pub(crate) task_id: Option<String>,
    pub(crate) score_time_ms: i64,
    pub(crate) score: Option<f32>,
    pub(crate) severity: Option<Severity>,
    pub(crate) device: String,
}

impl LatestRow {
    /// Moves the row by one event or decision: the newest by event time wins.
    pub(crate) fn fold(&mut self, device: &str, fold: Fold<'_>) {
        match fold {
            Fold::Event(e) => self.fold_event(device, e),
            Fold::Decision(d) => self.fold_decision(d),
        }
    }

    fn fold_event(&mut self, device: &str, e: &EventRecord) {
        if e.time_ms >= self.time_ms || self.event_type.is_empty() {
            self.time_ms = e.time_ms;
            self.event_type = e.event_type.as_str().into();
            self.position = Some(e.position);
            self.courier_id.clone_from(&e.courier_id);
            self.task_id.clone_from(&e.task_id);
            self.device = device.into();
        }
    }

    fn fold_decision(&mut self, d: &DecisionRecord) {
        if d.time_ms >= self.score_time_ms || self.score.is_none() {
            self.score_time_ms = d.time_ms;
            self.score = Some(d.score);
            self.severity = Some(d.severity);
        }
    }

    pub(crate) fn view(&self) -> Latest {
        let p = self.position.unwrap_or(GeoE7 { lat: 0, lon: 0 });
        Latest {
            time: views::rfc3339(self.time_ms),
            time_ms: self.time_ms,
            event_type: self.event_type.clone(),
            lat: p.lat_deg(),
            lon: p.lon_deg(),
            courier_id: self.courier_id.clone(),
            task_id: self.task_id.clone(),
            score: self.score,
            severity: self.severity.map(|s| s.as_str().into()),
            device: self.device.clone(),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Counters {
    pub(crate) dead_letters_open: u64,
    pub(crate) dead_letters_rescored: u64,
    /// Failed attempts by module, stage and cause.
    pub(crate) failures: BTreeMap<FailureKey, u64>,
    pub(crate) events: u64,
    pub(crate) decisions: u64,
    pub(crate) alerts: u64,
    pub(crate) states: u64,
    pub(crate) duplicates: u64,
}

/// Who failed where and why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct FailureKey {
    pub(crate) module: String,
    pub(crate) stage: Stage,
    pub(crate) cause: FailureCause,
}

impl Counters {
    pub(crate) fn failures(&self) -> Vec<Failures> {
        self.failures
            .iter()
            .map(|(k, &count)| Failures {
                module: k.module.clone(),
                stage: k.stage,
                cause: k.cause,
                count,
            })
            .collect()
    }
}

/// Stored per dead-lettered event (per device): where it stands, and its last failure.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct DeadLetterRow {
    pub(crate) courier_id: String,
    pub(crate) task_id: Option<String>,
    pub(crate) time_ms: i64,
    pub(crate) attempts: u32,
    pub(crate) state: DeadLetterState,
    pub(crate) stage: Stage,
    pub(crate) cause: FailureCause,
    pub(crate) module: String,
    pub(crate) error: String,
    pub(crate) prediction_id: Option<String>,
}

impl DeadLetterRow {
    /// Moves an event's dead-letter row (none yet: its first failure) by one record, and the
    /// counters with it. Records arrive once each, in journal order.
    pub(crate) fn fold(
        row: Option<Self>,
        record: &DeadLetterRecord,
        counters: &mut Counters,
    ) -> Option<Self> {
        match &record.outcome {
            DeadLetterOutcome::Failed {
                stage,
                cause,
                module,
                error,
            } => {
                *counters
                    .failures
                    .entry(FailureKey {
                        module: module.clone(),
                        stage: *stage,
                        cause: *cause,
                    })
                    .or_default() += 1;
                if row
                    .as_ref()
                    .is_none_or(|r| r.state != DeadLetterState::Open)
                {
                    counters.dead_letters_open += 1;
                }
                Some(Self {
                    courier_id: record.courier_id.clone(),
                    task_id: record.task_id.clone(),
                    time_ms: record.time_ms,
                    attempts: record.attempt,
                    state: DeadLetterState::Open,
                    stage: *stage,
                    cause: *cause,
                    module: module.clone(),
                    error: error.clone(),
                    prediction_id: None,
                })
            }
            DeadLetterOutcome::Rescored { prediction_id } => {
                let mut row = row?;
                if row.state == DeadLetterState::Open {
                    counters.dead_letters_open = counters.dead_letters_open.saturating_sub(1);
                    counters.dead_letters_rescored += 1;
                }
                row.state = DeadLetterState::Rescored;
                row.attempts = record.attempt;
                row.prediction_id.clone_from(prediction_id);
                Some(row)
            }
        }
    }

    pub(crate) fn view(&self, device: String, event_id: String) -> DeadLetter {
        DeadLetter {
            device,
            event_id,
            courier_id: self.courier_id.clone(),
            task_id: self.task_id.clone(),
            event_time: views::rfc3339(self.time_ms),
            state: self.state,
            attempts: self.attempts,
            stage: self.stage,
            cause: self.cause,
            module: self.module.clone(),
            error: self.error.clone(),
            prediction_id: self.prediction_id.clone(),
        }
    }
}
