//! The embedded history: one sled tree (1.0 alpha: real fsync on flush), indexes as key
//! prefixes so that one ingest is one atomic batch. One writer (the committer); readers
//! anywhere.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;

use fleet_proto::record::{ActionRecord, DecisionRecord, EventRecord, Schema, Severity};
use fleet_proto::{Entry, Record, Seq};
use serde::{Deserialize, Serialize};

use super::keys::{self, Key};
use super::plan::{self, LatestOf};
use super::rows::{Counters, DeviceRow, LatestRow};
use super::views::{self, AlertRow, StateRow, TaskItem};
use super::{
    Alert, DeviceStatus, History, HistoryError, IngestOutcome, Latest, RoutePoint, Stats,
    TaskTimeline, TimelineItem,
};

type Db = sled::Db<64>;

/// sled-backed [`History`].
pub struct SledHistory {
    /// sled 1.0's handle is `Send` but not `Sync`: each use works on its own clone.
    db_handle: Mutex<Db>,
    written: Mutex<Written>,
}

/// Rows every ingest rewrites, as the last successful ingest wrote them: ingest is the only
/// writer of these keys, so it need not read them back from sled (a lookup and a decode per
/// courier, task and device in each batch).
struct Written {
    counters: Counters,
    devices: HashMap<String, DeviceRow>,
    /// Latest rows of tasks and couriers; emptied when it holds [`MAX_WRITTEN_LATEST`].
    latest: HashMap<Vec<u8>, LatestRow>,
}

/// About three times the tasks and couriers of a 10,000-courier city at once.
const MAX_WRITTEN_LATEST: usize = 65_536;

const COUNTERS: &[u8] = &[keys::COUNTER];
const LAYOUT: &[u8] = &[keys::LAYOUT];
/// Bumped whenever what is stored under a key changes meaning. 2: events stored once, under
/// the route index; the task index holds decisions; states compacted per key.
const LAYOUT_VERSION: u8 = 2;

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

    pub fn open(path: &Path) -> Result<Self, HistoryError> {
        let db: Db = sled::Config::new()
            .path(path)
            .cache_capacity_bytes(256 << 20)
            // Durability comes from the committer's ingest log and its checkpoints (a flush
            // every 30 s or 32 MiB of log); the background flush only writes earlier (batches stay
            // atomic), and each flush re-serializes every leaf dirtied since the last, so it is
            // kept rare. With `None`, sled flushes (and fsyncs) on every dropped handle or
            // iterator, i.e. on nearly every read.
            .flush_every_ms(Some(600_000))
            .zstd_compression_level(1)
            .open()?;
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
            }),
        })
    }

    fn written(&self) -> std::sync::MutexGuard<'_, Written> {
        self.written.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn latest_row(&self, key: &[u8]) -> Result<Option<LatestRow>, HistoryError> {
        read(&self.db(), key)
    }

    /// Device rows with the time each device last connected, by device id.
    fn device_rows(&self) -> Result<BTreeMap<String, DeviceRow>, HistoryError> {
        let db = self.db();
        let mut rows = BTreeMap::new();
        for item in fleet_sled::range::prefix(&db, &[keys::DEVICE]) {
            let (k, v) = item?;
            let device = str_at(&k, 1).map(|(d, _)| d).unwrap_or_default();
            rows.insert(device, decode::<DeviceRow>(&k, &v)?);
        }
        for item in fleet_sled::range::prefix(&db, &[keys::SEEN]) {
            let (k, v) = item?;
            let device = str_at(&k, 1).map(|(d, _)| d).unwrap_or_default();
            let seen: i64 = decode(&k, &v)?;
            let row = rows.entry(device).or_default();
            row.last_seen_ms = row.last_seen_ms.max(seen);
        }
        Ok(rows)
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
}

fn alert_message(d: &DecisionRecord) -> String {
    d.actions
        .iter()
        .find_map(|a| match a {
            ActionRecord::Alert { message, .. } => Some(message.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

impl History for SledHistory {
    fn cursor(&self, device: &str) -> Result<Seq, HistoryError> {
        if let Some(row) = self.written().devices.get(device) {
            return Ok(row.cursor);
        }
        let key = Key::new(keys::DEVICE).str(device).0;
        Ok(read::<DeviceRow>(&self.db(), &key)?.map_or(0, |r| r.cursor))
    }

    fn ingest(
        &self,
        device: &str,
        through: Seq,
        entries: &[Entry],
        now_ms: i64,
    ) -> Result<IngestOutcome, HistoryError> {
        let db = self.db();
        let mut written = self.written();
        let device_key = Key::new(keys::DEVICE).str(device).0;
        let mut row = match written.devices.get(device) {
            Some(row) => row.clone(),
            None => read(&db, &device_key)?.unwrap_or_default(),
        };
        let plan = plan::plan(row.cursor, entries);
        let mut batch = sled::Batch::default();
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
            match &d.task_id {
                Some(task) => {
                    let item = TaskItem::Decision(Box::new(Cow::Borrowed(d)));
                    batch.insert(Key::task(task, d.time_ms, device, seq).0, encode(&item));
                }
                None => batch.insert(
                    Key::record(device, seq).0,
                    encode(&Record::Decision(d.clone())),
                ),
            }
        }
        for &(seq, d) in &plan.alerts {
            let alert = AlertRow {
                severity: d.severity,
                message: alert_message(d),
                score: d.score,
                task_id: d.task_id.clone(),
                courier_id: d.courier_id.clone(),
                event_id: d.event_id.clone(),
                prediction_id: d.prediction_id.clone(),
            };
            batch.insert(
                Key::new(keys::ALERT).time(d.time_ms).str(device).u64(seq).0,
                encode(&alert),
            );
        }
        // Rows overwritten per key: folded here so that a batch writes each once.
        let mut latest: HashMap<Vec<u8>, LatestRow> = HashMap::new();
        for &(of, fold) in &plan.folds {
            let key = match of {
                LatestOf::Task(task) => Key::new(keys::LATEST_TASK).str(task).0,
                LatestOf::Courier(courier) => Key::new(keys::LATEST_COURIER).str(courier).0,
            };
            if !latest.contains_key(&key) {
                let existing = match written.latest.get(&key) {
                    Some(row) => row.clone(),
                    None => read(&db, &key)?.unwrap_or_default(),
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
        let outcome = plan.outcome;
        if let Some(t) = plan.newest_event_ms {
            row.last_event_ms = Some(row.last_event_ms.map_or(t, |l| l.max(t)));
        }
        row.cursor = row.cursor.max(through);
        row.last_seen_ms = now_ms;
        row.events += outcome.events;
        row.decisions += outcome.decisions;
        if outcome.events > 0 {
            row.last_ingest_ms = Some(now_ms);
        }
        batch.insert(device_key, encode(&row));
        let mut next = written.counters.clone();
        next.events += outcome.events;
        next.decisions += outcome.decisions;
        next.alerts += outcome.alerts;
        next.states += plan.states_received;
        next.duplicates += outcome.duplicates;
        batch.insert(COUNTERS, encode(&next));
        db.apply_batch(batch)?;
        written.counters = next;
        written.devices.insert(device.into(), row);
        if written.latest.len() + latest.len() > MAX_WRITTEN_LATEST {
            written.latest.clear();
        }
        written.latest.extend(latest);
        Ok(outcome)
    }

    fn flush(&self) -> Result<(), HistoryError> {
        self.db().flush()?;
        Ok(())
    }

    /// Under its own key: the device row is ingest's alone (a read-modify-write of it here
    /// could put back a cursor from before an ingest that ran in between).
    fn seen(&self, device: &str, now_ms: i64) -> Result<(), HistoryError> {
        self.db()
            .insert(Key::new(keys::SEEN).str(device).0, encode(&now_ms))?;
        Ok(())
    }

    fn route(
        &self,
        courier: &str,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<RoutePoint>, HistoryError> {
        let prefix = Key::new(keys::ROUTE).str(courier);
        let at_time = prefix.0.len();
        let lo = Key::new(keys::ROUTE).str(courier).time(from_ms).0;
        let hi = Key::new(keys::ROUTE)
            .str(courier)
            .time(to_ms)
            .u64(u64::MAX)
            .0;
        let mut out = Vec::new();
        for item in fleet_sled::range::inclusive(&self.db(), &lo, &hi).take(limit) {
            let (k, v) = item?;
            let e: EventRecord = decode(&k, &v)?;
            let device = str_at(&k, at_time + 8).map(|(d, _)| d).unwrap_or_default();
            out.push(RoutePoint {
                time: views::rfc3339(e.time_ms),
                lat: e.position.lat_deg(),
                lon: e.position.lon_deg(),
                event_type: e.event_type.as_str().into(),
                event_id: e.event_id,
                task_id: e.task_id,
                speed_kmh: e.speed_kmh,
                device,
            });
        }
        Ok(out)
    }

    fn task(&self, task: &str, limit: usize) -> Result<Option<TaskTimeline>, HistoryError> {
        let prefix = Key::new(keys::TASK).str(task).0;
        let at_time = prefix.len();
        let mut schemas = HashMap::new();
        let mut items = Vec::new();
        for item in fleet_sled::range::prefix(&self.db(), &prefix).take(limit) {
            let (k, v) = item?;
            let time_ms = keys::time_at(&k, at_time).unwrap_or_default();
            let Some((device, after)) = str_at(&k, at_time + 8) else {
                continue;
            };
            let Some(seq) = u64_at(&k, after) else {
                continue;
            };
            let item: TaskItem = decode(&k, &v)?;
            let (kind, data) = match item {
                TaskItem::Event { courier_id } => {
                    let key = Key::route(&courier_id, time_ms, &device, seq).0;
                    let Some(bytes) = self.db().get(&key)? else {
                        continue;
                    };
                    ("event", views::event_json(&decode(&key, &bytes)?))
                }
                TaskItem::Decision(d) => {
                    let schema = self.schema(d.schema, &mut schemas)?;
                    ("decision", views::decision_json(&d, schema.as_ref()))
                }
            };
            items.push(TimelineItem {
                kind,
                time: views::rfc3339(time_ms),
                device,
                seq,
                data,
            });
        }
        let latest = self
            .latest_row(&Key::new(keys::LATEST_TASK).str(task).0)?
            .map(|l| l.view());
        let state_key = Key::new(keys::STATE).str(task).0;
        let state = match self.db().get(&state_key)? {
            Some(bytes) => Some(decode::<StateRow>(&state_key, &bytes)?.summary()),
            None => None,
        };
        if items.is_empty() && latest.is_none() {
            return Ok(None);
        }
        Ok(Some(TaskTimeline {
            task_id: task.into(),
            latest,
            state,
            items,
        }))
    }

    fn alerts(
        &self,
        since_ms: i64,
        min: Severity,
        limit: usize,
    ) -> Result<Vec<Alert>, HistoryError> {
        let lo = Key::new(keys::ALERT).time(since_ms).0;
        let hi = vec![keys::ALERT + 1];
        let mut out = Vec::new();
        for item in fleet_sled::range::exclusive(&self.db(), &lo, &hi) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item?;
            let row: AlertRow = decode(&k, &v)?;
            if row.severity < min {
                continue;
            }
            out.push(Alert {
                time: views::rfc3339(keys::time_at(&k, 1).unwrap_or_default()),
                severity: row.severity.as_str().into(),
                message: row.message,
                score: row.score,
                task_id: row.task_id,
                courier_id: row.courier_id,
                event_id: row.event_id,
                prediction_id: row.prediction_id,
                device: str_at(&k, 9).map(|(d, _)| d).unwrap_or_default(),
            });
        }
        Ok(out)
    }

    fn latest_courier(&self, courier: &str) -> Result<Option<Latest>, HistoryError> {
        Ok(self
            .latest_row(&Key::new(keys::LATEST_COURIER).str(courier).0)?
            .map(|l| l.view()))
    }

    fn devices(&self) -> Result<Vec<DeviceStatus>, HistoryError> {
        let mut out = Vec::new();
        for (device, row) in self.device_rows()? {
            out.push(DeviceStatus {
                device,
                last_seq: row.cursor,
                last_seen: views::rfc3339(row.last_seen_ms),
                last_seen_ms: row.last_seen_ms,
                lag_ms: row
                    .last_ingest_ms
                    .zip(row.last_event_ms)
                    .map(|(i, e)| i - e),
                events: row.events,
                decisions: row.decisions,
            });
        }
        Ok(out)
    }

    fn stats(&self) -> Result<Stats, HistoryError> {
        let c = self.written().counters.clone();
        Ok(Stats {
            events: c.events,
            decisions: c.decisions,
            alerts: c.alerts,
            states: c.states,
            devices: self.device_rows()?.len() as u64,
            duplicates_absorbed: c.duplicates,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_proto::record::{EventKind, GeoE7, StateRecord};

    fn event(seq: Seq, task: Option<&str>) -> Entry {
        Entry {
            seq,
            record: Record::Event(EventRecord {
                event_id: format!("e{seq}"),
                courier_id: "C-1".into(),
                task_id: task.map(Into::into),
                event_type: EventKind::Location,
                time_ms: 1_000 * seq as i64,
                utc_offset_s: 0,
                position: GeoE7::from_degrees(12.9, 77.6),
                speed_kmh: Some(18.0),
                accuracy_m: None,
                context: None,
            }),
        }
    }

    fn decision(seq: Seq, task: Option<&str>, severity: Severity) -> Entry {
        Entry {
            seq,
            record: Record::Decision(DecisionRecord {
                event_id: format!("e{}", seq - 1),
                prediction_id: format!("p{seq}"),
                courier_id: "C-1".into(),
                task_id: task.map(Into::into),
                time_ms: 1_000 * (seq as i64 - 1),
                score: 0.9,
                severity,
                actions: vec![],
                model: "late_risk@1".into(),
                modules: ["f@1".into(), "s@1".into(), "p@1".into()],
                schema: 7,
                features: vec![1.0],
                top_factors: vec![],
            }),
        }
    }

    fn state(seq: Seq, key: &str, bytes: &[u8]) -> Entry {
        Entry {
            seq,
            record: Record::State(StateRecord {
                key: key.into(),
                module: "f@1".into(),
                bytes: bytes.to_vec(),
            }),
        }
    }

    #[test]
    fn each_record_is_stored_once_and_every_index_answers() {
        let dir = tempfile::tempdir().unwrap();
        let history = SledHistory::open(&dir.path().join("h")).unwrap();
        let entries = [
            event(1, Some("T-1")),
            decision(2, Some("T-1"), Severity::Critical),
            state(3, "T-1", b"old"),
            event(4, None),
            decision(5, None, Severity::Info),
            state(6, "T-1", b"newest"),
        ];
        let outcome = history.ingest("d1", 6, &entries, 0).unwrap();
        assert_eq!(
            (outcome.events, outcome.decisions, outcome.alerts),
            (2, 2, 1)
        );

        let route = history.route("C-1", 0, 10_000, 100).unwrap();
        let ids: Vec<_> = route.iter().map(|p| p.event_id.as_str()).collect();
        assert_eq!(ids, ["e1", "e4"]);
        assert_eq!(route[0].task_id.as_deref(), Some("T-1"));

        let task = history.task("T-1", 100).unwrap().unwrap();
        let kinds: Vec<_> = task.items.iter().map(|i| (i.kind, i.seq)).collect();
        assert_eq!(kinds, [("event", 1), ("decision", 2)]);
        assert_eq!(task.items[0].data["event_id"], "e1");
        assert_eq!(task.items[1].data["prediction_id"], "p2");
        let state = task.state.unwrap();
        assert_eq!((state.seq, state.bytes), (6, b"newest".len()), "compacted");

        // The decision without a task is kept under its record key, nowhere else.
        let untasked = history.db().get(Key::record("d1", 5).0).unwrap().unwrap();
        assert!(matches!(
            decode::<Record>(b"R", &untasked).unwrap(),
            Record::Decision(d) if d.prediction_id == "p5"
        ));
        assert!(history.db().get(Key::record("d1", 1).0).unwrap().is_none());
        let latest = history.latest_courier("C-1").unwrap().unwrap();
        assert_eq!(latest.time_ms, 4_000);
        assert_eq!(history.alerts(0, Severity::Warning, 10).unwrap().len(), 1);
        assert_eq!(history.stats().unwrap().states, 2);
    }

    #[test]
    fn rows_kept_by_the_writer_match_what_a_reopened_history_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h");
        let task_time = |h: &SledHistory| h.task("T-1", 10).unwrap().unwrap().latest.unwrap();
        {
            let history = SledHistory::open(&path).unwrap();
            history
                .ingest("d1", 5, &[event(5, Some("T-1"))], 0)
                .unwrap();
            // An older event, later: the latest row keeps the newer one.
            let mut older = event(6, Some("T-1"));
            if let Record::Event(e) = &mut older.record {
                e.time_ms = 2_000;
            }
            history.ingest("d1", 6, &[older], 0).unwrap();
            assert_eq!(task_time(&history).time_ms, 5_000);
            let again = history
                .ingest("d1", 5, &[event(5, Some("T-1"))], 0)
                .unwrap();
            assert_eq!(again.duplicates, 1);
            assert_eq!(history.cursor("d1").unwrap(), 6);
            history.flush().unwrap();
        }
        let history = SledHistory::open(&path).unwrap();
        assert_eq!(history.cursor("d1").unwrap(), 6);
        assert_eq!(task_time(&history).time_ms, 5_000);
        history
            .ingest("d1", 7, &[event(7, Some("T-1"))], 0)
            .unwrap();
        assert_eq!(task_time(&history).time_ms, 7_000);
        let stats = history.stats().unwrap();
        assert_eq!((stats.events, stats.duplicates_absorbed), (3, 1));
    }

    #[test]
    fn a_connection_is_recorded_apart_from_the_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let history = SledHistory::open(&dir.path().join("h")).unwrap();
        history.ingest("d1", 4, &[event(4, None)], 1_000).unwrap();
        history.seen("d1", 5_000).unwrap();
        history.seen("d2", 6_000).unwrap();
        let devices = history.devices().unwrap();
        let d1 = &devices[0];
        assert_eq!(
            (d1.device.as_str(), d1.last_seq, d1.last_seen_ms),
            ("d1", 4, 5_000)
        );
        let d2 = &devices[1];
        assert_eq!(
            (d2.device.as_str(), d2.last_seq, d2.last_seen_ms),
            ("d2", 0, 6_000)
        );
        assert_eq!(history.stats().unwrap().devices, 2);
        history.ingest("d1", 6, &[event(6, None)], 7_000).unwrap();
        assert_eq!(history.devices().unwrap()[0].last_seen_ms, 7_000);
    }

    #[test]
    fn a_history_in_another_layout_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h");
        drop(SledHistory::open(&path).unwrap());
        SledHistory::open(&path).expect("its own layout opens again");

        let old = dir.path().join("old");
        {
            let db: Db = sled::Config::new().path(&old).open().unwrap();
            db.insert(Key::record("d1", 1).0, &[1u8][..]).unwrap();
            db.flush().unwrap();
        }
        let err = SledHistory::open(&old).err().expect("layout 1 refused");
        assert!(
            matches!(
                err,
                HistoryError::Layout {
                    found: 1,
                    expected: 2,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("--data"), "{err}");
    }
}
