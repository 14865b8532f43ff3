//! The embedded history: one sled tree (1.0 alpha: real fsync on flush), indexes as key
//! prefixes so that one ingest is one atomic batch. One writer (the committer); readers
//! anywhere. This file writes; [`queries`] reads, a page at a time.

mod drift;
mod queries;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use fleet_proto::record::{AlertStep, DecisionRecord, Schema};
use fleet_proto::{JournalId, Record, Seq};
use fleet_sled::Db;
use serde::{Deserialize, Serialize};

use super::alerts::{AlertRow, KeyAlerts};
use super::keys::{self, Key};
use super::plan::{self, LatestOf, Plan};
use super::rows::{Counters, DeadLetterRow, DeviceRow, LatestRow, Span};
use super::views::{StateRow, TaskItem};
use super::{Alert, AlertChange, Batch, HistoryError, IngestOutcome, JournalView};
use crate::drift::{Baselines, DriftRow};

/// sled-backed [`History`](super::History).
pub struct SledHistory {
    /// sled 1.0's handle is `Send` but not `Sync`: each use works on its own clone.
    db_handle: Mutex<Db>,
    written: Mutex<Written>,
    /// What decisions are binned by for drift.
    baselines: Arc<Baselines>,
}

/// Rows every ingest rewrites, as the last successful ingest wrote them: ingest is the only
/// writer of these keys, so it need not read them back from sled (a lookup and a decode per
/// courier, task and device in each batch).
struct Written {
    counters: Counters,
    devices: HashMap<String, DeviceRow>,
    /// Latest rows of tasks and couriers; emptied when it holds [`MAX_WRITTEN_LATEST`].
    latest: HashMap<Vec<u8>, LatestRow>,
    /// The open alert (or none) of tasks and couriers by [`Key::alert_open`]; emptied when it
    /// holds [`MAX_WRITTEN_LATEST`].
    open_alerts: OpenAlerts,
    /// Drift windows by [`Key::drift`], and their spans by [`Key::drift_span`].
    drift: HashMap<Vec<u8>, DriftRow>,
    drift_spans: HashMap<Vec<u8>, (i64, i64)>,
    /// Decisions since start of models without a known baseline.
    unbaselined: u64,
}

/// The open alert (or none) of each key an ingest touched, by [`Key::alert_open`].
type OpenAlerts = HashMap<Vec<u8>, Option<AlertRow>>;

/// About three times the tasks and couriers of a 10,000-courier city at once.
const MAX_WRITTEN_LATEST: usize = 65_536;

const COUNTERS: &[u8] = &[keys::COUNTER];
const LAYOUT: &[u8] = &[keys::LAYOUT];
/// Bumped whenever what is stored under a key changes meaning. 2: events stored once, under
/// the route index; the task index holds decisions; states compacted per key. 3: device rows
/// know their journals, dead letters and their counters.
const LAYOUT_VERSION: u8 = 3;

/// Stamps a new history with [`LAYOUT_VERSION`] and refuses one written in another layout
/// (an unstamped history with data in it is layout 1).
fn check_layout(db: &Db, path: &Path) -> Result<(), HistoryError> {
    let found = match db.get(LAYOUT)? {
        Some(v) => v.first().copied().unwrap_or_default(),
        None if db.is_empty()? => {
            db.insert(LAYOUT, [LAYOUT_VERSION])?;
            db.flush()?;
            LAYOUT_VERSION
        }
        None => 1,
    };
    if found != LAYOUT_VERSION {
        return Err(HistoryError::Layout {
            path: path.display().to_string(),
            found,
            expected: LAYOUT_VERSION,
        });
    }
    Ok(())
}

fn decode<T: for<'de> Deserialize<'de>>(key: &[u8], bytes: &[u8]) -> Result<T, HistoryError> {
    postcard::from_bytes(bytes).map_err(|e| HistoryError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        message: e.to_string(),
    })
}

/// A row followed by a field added after rows of its kind were first written: a row from
/// before ends where the field would start, and reads back with the field's default.
fn decode_extended<T, X>(key: &[u8], bytes: &[u8]) -> Result<(T, X), HistoryError>
where
    T: for<'de> Deserialize<'de>,
    X: for<'de> Deserialize<'de> + Default,
{
    let corrupt = |e: postcard::Error| HistoryError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        message: e.to_string(),
    };
    let (row, rest) = postcard::take_from_bytes(bytes).map_err(corrupt)?;
    if rest.is_empty() {
        return Ok((row, X::default()));
    }
    match postcard::take_from_bytes(rest).map_err(corrupt)? {
        (extra, []) => Ok((row, extra)),
        (_, trailing) => Err(HistoryError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            message: format!("{} bytes after the row", trailing.len()),
        }),
    }
}

fn encode_extended<T: Serialize, X: Serialize>(row: &T, extra: &X) -> Vec<u8> {
    let mut bytes = encode(row);
    postcard::to_io(extra, &mut bytes).expect("rows always serialize");
    bytes
}

fn read<T: for<'de> Deserialize<'de>>(db: &Db, key: &[u8]) -> Result<Option<T>, HistoryError> {
    db.get(key)?.map(|v| decode(key, &v)).transpose()
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("rows always serialize")
}

/// Reads a length-prefixed string at `at`; returns it and the offset after it.
fn str_at(key: &[u8], at: usize) -> Option<(String, usize)> {
    let len = usize::from(*key.get(at)?);
    let s = key.get(at + 1..at + 1 + len)?;
    Some((String::from_utf8_lossy(s).into_owned(), at + 1 + len))
}

fn u64_at(key: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(at..at + 8)?.try_into().ok()?))
}

impl SledHistory {
    fn db(&self) -> Db {
        self.db_handle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Opens (or creates) the history at `path`, with the built-in model's baseline for drift.
    pub fn open(path: &Path) -> Result<Self, HistoryError> {
        Self::open_with(path, Arc::new(Baselines::with_builtin()))
    }

    /// Opens (or creates) the history at `path`; decisions are binned for drift by the
    /// baselines `baselines` knows when they are ingested. Durability comes from the
    /// committer's ingest log and its checkpoints (see [`crate::committer`]).
    pub fn open_with(path: &Path, baselines: Arc<Baselines>) -> Result<Self, HistoryError> {
        let db = fleet_sled::open(path, 256 << 20).map_err(std::io::Error::from)?;
        check_layout(&db, path)?;
        let counters = match db.get(COUNTERS)? {
            Some(v) => decode(COUNTERS, &v)?,
            None => Counters::default(),
        };
        Ok(Self {
            db_handle: Mutex::new(db),
            written: Mutex::new(Written {
                counters,
                devices: HashMap::new(),
                latest: HashMap::new(),
                open_alerts: HashMap::new(),
                drift: HashMap::new(),
                drift_spans: HashMap::new(),
                unbaselined: 0,
            }),
            baselines,
        })
    }

    fn written(&self) -> std::sync::MutexGuard<'_, Written> {
        self.written.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn latest_row(&self, key: &[u8]) -> Result<Option<LatestRow>, HistoryError> {
        read(&self.db(), key)
    }

    fn schema(
        &self,
        id: u64,
        cache: &mut HashMap<u64, Option<Schema>>,
    ) -> Result<Option<Schema>, HistoryError> {
        if let Some(s) = cache.get(&id) {
            return Ok(s.clone());
        }
        let key = Key::new(keys::SCHEMA).u64(id).0;
        let schema = self
            .db()
            .get(&key)?
            .map(|v| decode::<Schema>(&key, &v))
            .transpose()?;
        cache.insert(id, schema.clone());
        Ok(schema)
    }

    /// An alert as the API shows it, its factors named by its schema.
    fn alert_view(
        &self,
        row: &AlertRow,
        schemas: &mut HashMap<u64, Option<Schema>>,
    ) -> Result<Alert, HistoryError> {
        let schema = self.schema(row.schema, schemas)?;
        Ok(row.view(schema.as_ref().map(|s| s.feature_names.as_slice())))
    }

    /// The device's row: as ingest last wrote it, or as stored.
    fn device_row(
        &self,
        db: &Db,
        written: &Written,
        device: &str,
    ) -> Result<DeviceRow, HistoryError> {
        match written.devices.get(device) {
            Some(row) => Ok(row.clone()),
            None => Ok(read(db, &Key::new(keys::DEVICE).str(device).0)?.unwrap_or_default()),
        }
    }

    fn resolve_journal(
        &self,
        device: &str,
        journal: JournalId,
        now_ms: i64,
    ) -> Result<JournalView, HistoryError> {
        let db = self.db();
        let mut written = self.written();
        let mut row = self.device_row(&db, &written, device)?;
        let known = row.journal;
        let (span, replaced) = row.open(journal);
        let base = match span {
            Span::Current { base } => base,
            Span::Retired { current, .. } => {
                return Err(HistoryError::StaleJournal {
                    device: device.into(),
                    journal,
                    current,
                });
            }
        };
        if let Some(old) = replaced {
            tracing::warn!(
                device,
                old = format!("{old:016x}"),
                new = format!("{journal:016x}"),
                after = row.cursor,
                "the device started over with a new journal; its entries get a new range"
            );
        }
        if known != row.journal {
            row.last_seen_ms = row.last_seen_ms.max(now_ms);
            db.insert(Key::new(keys::DEVICE).str(device).0, encode(&row))?;
            written.devices.insert(device.into(), row.clone());
        }
        Ok(JournalView {
            cursor: row.cursor.saturating_sub(base),
            base,
            replaced,
        })
    }

    fn device_cursor(&self, device: &str) -> Result<Seq, HistoryError> {
        let db = self.db();
        let written = self.written();
        Ok(self.device_row(&db, &written, device)?.cursor)
    }

    fn apply(&self, batch: &Batch<'_>) -> Result<IngestOutcome, HistoryError> {
        let db = self.db();
        let mut written = self.written();
        let device = batch.device;
        let mut row = self.device_row(&db, &written, device)?;
        let (span, _) = row.open(batch.journal);
        let plan = match span {
            Span::Current { base } => plan::plan(row.cursor, base, batch.entries),
            // What a replaced journal sent before it was replaced is stored; anything new
            // from it is refused (a replay of the log meets only the former).
            Span::Retired { base, end, current } => {
                let plan = plan::plan(end, base, batch.entries);
                if plan.outcome.stored > 0 {
                    return Err(HistoryError::StaleJournal {
                        device: device.into(),
                        journal: batch.journal,
                        current,
                    });
                }
                return Ok(plan.outcome);
            }
        };
        let Span::Current { base } = span else {
            unreachable!("retired journals returned above")
        };
        let mut sled_batch = sled::Batch::default();
        let mut next = written.counters.clone();
        self.write_plan(&db, &mut written, device, &plan, &mut next, &mut sled_batch)?;
        let mut schemas: HashMap<u64, Option<Schema>> = plan
            .schemas
            .iter()
            .map(|s| (s.id, Some((*s).clone())))
            .collect();
        let (open_alerts, alert_steps) =
            self.write_alerts(&db, &written, device, &plan, &mut schemas, &mut sled_batch)?;
        let drift = self.write_drift(&db, &written, &plan, &mut schemas, &mut sled_batch)?;
        let mut outcome = plan.outcome;
        outcome.alert_steps = alert_steps;
        if let Some(t) = plan.newest_event_ms {
            row.last_event_ms = Some(row.last_event_ms.map_or(t, |l| l.max(t)));
        }
        row.synced(base + batch.through, base + batch.journaled, batch.now_ms);
        row.events += outcome.events;
        row.decisions += outcome.decisions;
        if outcome.events > 0 {
            row.last_ingest_ms = Some(batch.now_ms);
        }
        sled_batch.insert(Key::new(keys::DEVICE).str(device).0, encode(&row));
        next.events += outcome.events;
        next.decisions += outcome.decisions;
        next.alerts += outcome.alerts;
        next.states += plan.states_received;
        next.duplicates += outcome.duplicates;
        sled_batch.insert(COUNTERS, encode(&next));
        db.apply_batch(sled_batch)?;
        if written.open_alerts.len() + open_alerts.len() > MAX_WRITTEN_LATEST {
            written.open_alerts.clear();
        }
        written.open_alerts.extend(open_alerts);
        drift.remember(&mut written);
        written.counters = next;
        written.devices.insert(device.into(), row);
        Ok(outcome)
    }

    /// The keys a plan writes (all but the device row and the counters).
    fn write_plan(
        &self,
        db: &Db,
        written: &mut Written,
        device: &str,
        plan: &Plan<'_>,
        counters: &mut Counters,
        batch: &mut sled::Batch,
    ) -> Result<(), HistoryError> {
        for &(seq, e) in &plan.events {
            batch.insert(
                Key::route(&e.courier_id, e.time_ms, device, seq).0,
                encode(e),
            );
            if let Some(task) = &e.task_id {
                let item = TaskItem::Event {
                    courier_id: Cow::Borrowed(&e.courier_id),
                };
                batch.insert(Key::task(task, e.time_ms, device, seq).0, encode(&item));
            }
        }
        for &(seq, d) in &plan.decisions {
            let key = match &d.task_id {
                Some(task) => {
                    let key = Key::task(task, d.time_ms, device, seq).0;
                    batch.insert(key.clone(), encode_task_decision(d));
                    key
                }
                None => {
                    let key = Key::record(device, seq).0;
                    batch.insert(key.clone(), encode(&Record::Decision(d.clone())));
                    key
                }
            };
            batch.insert(Key::prediction(&d.prediction_id).0, key);
        }
        self.write_latest(db, written, device, plan, batch)?;
        for &(seq, s) in &plan.states {
            let state = StateRow {
                device: Cow::Borrowed(device),
                seq,
                module: Cow::Borrowed(&s.module),
                bytes: Cow::Borrowed(&s.bytes),
            };
            batch.insert(Key::new(keys::STATE).str(&s.key).0, encode(&state));
        }
        for s in &plan.schemas {
            batch.insert(Key::new(keys::SCHEMA).u64(s.id).0, encode(s));
        }
        // A batch may carry several records of one dead letter: fold them in order.
        let mut dead: HashMap<Vec<u8>, Option<DeadLetterRow>> = HashMap::new();
        for d in &plan.dead_letters {
            let key = Key::dead_letter(device, &d.event_id).0;
            let row = match dead.remove(&key) {
                Some(row) => row,
                None => read(db, &key)?,
            };
            dead.insert(key, DeadLetterRow::fold(row, d, counters));
        }
        for (key, row) in dead {
            if let Some(row) = row {
                batch.insert(key, encode(&row));
            }
        }
        Ok(())
    }

    /// Folds the plan's alert moves, writing each alert it changed once; returns the open
    /// alert of every key it touched, for [`Written::open_alerts`] once the batch is applied,
    /// and the steps alerts took.
    fn write_alerts(
        &self,
        db: &Db,
        written: &Written,
        device: &str,
        plan: &Plan<'_>,
        schemas: &mut HashMap<u64, Option<Schema>>,
        batch: &mut sled::Batch,
    ) -> Result<(OpenAlerts, Vec<AlertChange>), HistoryError> {
        let mut keyed: HashMap<Vec<u8>, KeyAlerts> = HashMap::new();
        for &(of, m) in &plan.alert_moves {
            let key = Key::alert_open(of).0;
            if !keyed.contains_key(&key) {
                let open = match written.open_alerts.get(&key) {
                    Some(open) => open.clone(),
                    None => read_open_alert(db, &key)?,
                };
                keyed.insert(key.clone(), KeyAlerts::new(open));
            }
            keyed.get_mut(&key).expect("inserted above").fold(device, m);
        }
        let mut open_alerts = HashMap::with_capacity(keyed.len());
        let mut steps = Vec::new();
        for (key, mut alerts) in keyed {
            for (step, row) in std::mem::take(&mut alerts.steps) {
                steps.push(AlertChange {
                    step,
                    alert: self.alert_view(&row, schemas)?,
                });
            }
            for row in &alerts.closed {
                write_alert(row, batch);
            }
            match &alerts.open {
                Some(row) if alerts.changed => {
                    write_alert(row, batch);
                    batch.insert(key.clone(), encode(&(row.opened_ms, &row.id)));
                }
                Some(_) => {}
                None if !alerts.closed.is_empty() => batch.remove(key.clone()),
                None => {}
            }
            open_alerts.insert(key, alerts.open);
        }
        Ok((open_alerts, steps))
    }

    /// Folds the plan's latest-row moves, writing each row once.
    fn write_latest(
        &self,
        db: &Db,
        written: &mut Written,
        device: &str,
        plan: &Plan<'_>,
        batch: &mut sled::Batch,
    ) -> Result<(), HistoryError> {
        let mut latest: HashMap<Vec<u8>, LatestRow> = HashMap::new();
        for &(of, fold) in &plan.folds {
            let key = match of {
                LatestOf::Task(task) => Key::new(keys::LATEST_TASK).str(task).0,
                LatestOf::Courier(courier) => Key::new(keys::LATEST_COURIER).str(courier).0,
            };
            if !latest.contains_key(&key) {
                let existing = match written.latest.get(&key) {
                    Some(row) => row.clone(),
                    None => read(db, &key)?.unwrap_or_default(),
                };
                latest.insert(key.clone(), existing);
            }
            latest
                .get_mut(&key)
                .expect("inserted above")
                .fold(device, fold);
        }
        for (key, value) in &latest {
            batch.insert(key.clone(), encode(value));
        }
        if written.latest.len() + latest.len() > MAX_WRITTEN_LATEST {
            written.latest.clear();
        }
        written.latest.extend(latest);
        Ok(())
    }

    fn flush_db(&self) -> Result<(), HistoryError> {
        self.db().flush()?;
        Ok(())
    }

    /// Under its own key: the device row is ingest's alone (a read-modify-write of it here
    /// could put back a cursor from before an ingest that ran in between).
    fn record_seen(&self, device: &str, now_ms: i64) -> Result<(), HistoryError> {
        self.db()
            .insert(Key::new(keys::SEEN).str(device).0, encode(&now_ms))?;
        Ok(())
    }
}

/// A decision on its task's timeline: the row, then its release, then (when it moved an alert)
/// its alert step. Rows written before either read back with none.
fn encode_task_decision(d: &DecisionRecord) -> Vec<u8> {
    let item = TaskItem::Decision(Box::new(Cow::Borrowed(d)));
    match d.alert_step {
        None => encode_extended(&item, &d.release),
        Some(step) => encode_extended(&item, &(&d.release, Some(step))),
    }
}

/// Reads back what [`encode_task_decision`] (or an event's row) wrote.
fn decode_task_item(key: &[u8], bytes: &[u8]) -> Result<TaskItem<'static>, HistoryError> {
    if let Ok((item, (release, step))) =
        decode_extended::<TaskItem, (Option<String>, Option<AlertStep>)>(key, bytes)
    {
        return Ok(with_extras(item, release, step));
    }
    let (item, release) = decode_extended::<TaskItem, Option<String>>(key, bytes)?;
    Ok(with_extras(item, release, None))
}

fn with_extras(
    item: TaskItem<'_>,
    release: Option<String>,
    step: Option<AlertStep>,
) -> TaskItem<'static> {
    match item {
        TaskItem::Decision(d) => {
            let mut d = d.into_owned();
            d.release = release;
            d.alert_step = step;
            TaskItem::Decision(Box::new(Cow::Owned(d)))
        }
        TaskItem::Event { courier_id } => TaskItem::Event {
            courier_id: Cow::Owned(courier_id.into_owned()),
        },
    }
}

fn write_alert(row: &AlertRow, batch: &mut sled::Batch) {
    batch.insert(Key::alert(row.opened_ms, &row.id).0, encode(row));
    batch.insert(Key::alert_id(&row.id).0, encode(&row.opened_ms));
}

/// The open alert an [`Key::alert_open`] key points at.
fn read_open_alert(db: &Db, key: &[u8]) -> Result<Option<AlertRow>, HistoryError> {
    let Some((opened_ms, id)) = read::<(i64, String)>(db, key)? else {
        return Ok(None);
    };
    read(db, &Key::alert(opened_ms, &id).0)
}
