//! The read side of [`SledHistory`]: every list a page at a time, resumed after the key its
//! previous page ended on (the cursor, hex-encoded).

use std::collections::HashMap;

use fleet_proto::record::EventRecord;
use fleet_proto::{JournalId, Seq};

use super::{SledHistory, decode, decode_task_item, read, str_at, u64_at};
use crate::history::alerts::AlertRow;
use crate::history::keys::{self, Key};
use crate::history::rows::{DeadLetterRow, DeviceRow, LatestRow};
use crate::history::views::{self, StateRow, TaskItem};
use crate::history::{
    Alert, AlertFilter, Batch, DeadLetterFilter, DeadLetters, DeviceStatus, History, HistoryError,
    IngestOutcome, JournalView, Latest, Page, PageRequest, RoutePoint, Stats, TaskTimeline,
    TimelineItem,
};

fn alert_matches(f: &AlertFilter, row: &AlertRow) -> bool {
    let is = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
    f.min.is_none_or(|min| row.severity >= min)
        && f.state.is_none_or(|s| s == row.state())
        && f.task
            .as_deref()
            .is_none_or(|t| row.task_id.as_deref() == Some(t))
        && is(&f.courier, &row.courier_id)
        && is(&f.device, &row.device)
        && is(&f.model, &row.model)
}

/// Where a page starts: just after the cursor's key, which must lie in `[lo, hi]`.
fn page_start(page: &PageRequest, lo: &[u8], hi: &[u8]) -> Result<Vec<u8>, HistoryError> {
    let Some(cursor) = &page.after else {
        return Ok(lo.to_vec());
    };
    let bad = || HistoryError::BadCursor(cursor.clone());
    let mut key = hex_decode(cursor).ok_or_else(bad)?;
    if key.as_slice() < lo || key.as_slice() > hi {
        return Err(bad());
    }
    // The smallest key after it.
    key.push(0);
    Ok(key)
}

/// Walks `lo..=hi` from the page's start, keeping what `f` makes of each entry (`None`:
/// skipped), until the page is full; the next cursor is the key of the page's last item.
fn scan_page<T>(
    history: &SledHistory,
    lo: &[u8],
    hi: &[u8],
    page: &PageRequest,
    mut f: impl FnMut(&[u8], &[u8]) -> Result<Option<T>, HistoryError>,
) -> Result<Page<T>, HistoryError> {
    let start = page_start(page, lo, hi)?;
    let mut items = Vec::new();
    let mut last = None;
    for item in fleet_sled::range::inclusive(&history.db(), &start, hi) {
        if items.len() >= page.limit {
            return Ok(Page {
                items,
                next: last.map(|k: Vec<u8>| hex(&k)),
            });
        }
        let (k, v) = item?;
        if let Some(t) = f(&k, &v)? {
            items.push(t);
            last = Some(k.to_vec());
        }
    }
    Ok(Page { items, next: None })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// The keys just past every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut hi = prefix.to_vec();
    hi.extend_from_slice(&[0xff; 300]);
    hi
}

impl SledHistory {
    fn seen_ms(&self, device: &str) -> Result<i64, HistoryError> {
        Ok(read(&self.db(), &Key::new(keys::SEEN).str(device).0)?.unwrap_or(0))
    }
}

impl History for SledHistory {
    fn open_journal(
        &self,
        device: &str,
        journal: JournalId,
        now_ms: i64,
    ) -> Result<JournalView, HistoryError> {
        self.resolve_journal(device, journal, now_ms)
    }

    fn cursor(&self, device: &str) -> Result<Seq, HistoryError> {
        self.device_cursor(device)
    }

    fn ingest(&self, batch: &Batch<'_>) -> Result<IngestOutcome, HistoryError> {
        self.apply(batch)
    }

    fn flush(&self) -> Result<(), HistoryError> {
        self.flush_db()
    }

    fn seen(&self, device: &str, now_ms: i64) -> Result<(), HistoryError> {
        self.record_seen(device, now_ms)
    }

    fn route(
        &self,
        courier: &str,
        from_ms: i64,
        to_ms: i64,
        page: &PageRequest,
    ) -> Result<Page<RoutePoint>, HistoryError> {
        let at_time = Key::new(keys::ROUTE).str(courier).0.len();
        let lo = Key::new(keys::ROUTE).str(courier).time(from_ms).0;
        let hi = prefix_end(&Key::new(keys::ROUTE).str(courier).time(to_ms).0);
        scan_page(self, &lo, &hi, page, |k, v| {
            let e: EventRecord = decode(k, v)?;
            let device = str_at(k, at_time + 8).map(|(d, _)| d).unwrap_or_default();
            Ok(Some(RoutePoint {
                time: views::rfc3339(e.time_ms),
                lat: e.position.lat_deg(),
                lon: e.position.lon_deg(),
                event_type: e.event_type.as_str().into(),
                event_id: e.event_id,
                task_id: e.task_id,
                speed_kmh: e.speed_kmh,
                device,
            }))
        })
    }

    fn task(&self, task: &str, page: &PageRequest) -> Result<Option<TaskTimeline>, HistoryError> {
        let prefix = Key::new(keys::TASK).str(task).0;
        let at_time = prefix.len();
        let mut schemas = HashMap::new();
        let items = scan_page(self, &prefix, &prefix_end(&prefix), page, |k, v| {
            let time_ms = keys::time_at(k, at_time).unwrap_or_default();
            let Some((device, after)) = str_at(k, at_time + 8) else {
                return Ok(None);
            };
            let Some(seq) = u64_at(k, after) else {
                return Ok(None);
            };
            let (kind, data) = match decode_task_item(k, v)? {
                TaskItem::Event { courier_id } => {
                    let key = Key::route(&courier_id, time_ms, &device, seq).0;
                    let Some(bytes) = self.db().get(&key)? else {
                        return Ok(None);
                    };
                    ("event", views::event_json(&decode(&key, &bytes)?))
                }
                TaskItem::Decision(d) => {
                    let schema = self.schema(d.schema, &mut schemas)?;
                    ("decision", views::decision_json(&d, schema.as_ref()))
                }
            };
            Ok(Some(TimelineItem {
                kind,
                time: views::rfc3339(time_ms),
                device,
                seq,
                data,
            }))
        })?;
        let latest = self
            .latest_row(&Key::new(keys::LATEST_TASK).str(task).0)?
            .map(|l| l.view());
        let state_key = Key::new(keys::STATE).str(task).0;
        let state = match self.db().get(&state_key)? {
            Some(bytes) => Some(decode::<StateRow>(&state_key, &bytes)?.summary()),
            None => None,
        };
        if items.items.is_empty() && latest.is_none() && page.after.is_none() {
            return Ok(None);
        }
        Ok(Some(TaskTimeline {
            task_id: task.into(),
            latest,
            state,
            items: items.items,
            next_cursor: items.next,
        }))
    }

    fn alerts(
        &self,
        filter: &AlertFilter,
        page: &PageRequest,
    ) -> Result<Page<Alert>, HistoryError> {
        let lo = Key::new(keys::ALERT_BY_TIME)
            .time(filter.since_ms.unwrap_or(i64::MIN))
            .0;
        let hi = prefix_end(&[keys::ALERT_BY_TIME]);
        let mut schemas = HashMap::new();
        scan_page(self, &lo, &hi, page, |k, v| {
            let row: AlertRow = decode(k, v)?;
            if !alert_matches(filter, &row) {
                return Ok(None);
            }
            self.alert_view(&row, &mut schemas).map(Some)
        })
    }

    fn alert(&self, id: &str) -> Result<Option<Alert>, HistoryError> {
        let db = self.db();
        let Some(opened_ms) = read::<i64>(&db, &Key::alert_id(id).0)? else {
            return Ok(None);
        };
        let Some(row) = read::<AlertRow>(&db, &Key::alert(opened_ms, id).0)? else {
            return Ok(None);
        };
        self.alert_view(&row, &mut HashMap::new()).map(Some)
    }

    fn prediction(&self, id: &str) -> Result<Option<serde_json::Value>, HistoryError> {
        let db = self.db();
        let Some(key) = db.get(Key::prediction(id).0)? else {
            return Ok(None);
        };
        let Some(bytes) = db.get(&key)? else {
            return Ok(None);
        };
        let decision = match key.first() {
            Some(&keys::TASK) => match decode_task_item(&key, &bytes)? {
                TaskItem::Decision(d) => d.into_owned(),
                TaskItem::Event { .. } => return Ok(None),
            },
            _ => match decode::<fleet_proto::Record>(&key, &bytes)? {
                fleet_proto::Record::Decision(d) => d,
                _ => return Ok(None),
            },
        };
        let schema = self.schema(decision.schema, &mut HashMap::new())?;
        let device = match key.first() {
            Some(&keys::TASK) => {
                let at = Key::new(keys::TASK)
                    .str(decision.task_id.as_deref().unwrap_or(""))
                    .0
                    .len()
                    + 8;
                str_at(&key, at).map(|(d, _)| d)
            }
            _ => str_at(&key, 1).map(|(d, _)| d),
        };
        let mut json = views::decision_json(&decision, schema.as_ref());
        json["device"] = device.into();
        Ok(Some(json))
    }

    fn latest_courier(&self, courier: &str) -> Result<Option<Latest>, HistoryError> {
        Ok(self
            .latest_row(&Key::new(keys::LATEST_COURIER).str(courier).0)?
            .map(|l| l.view()))
    }

    fn latest_couriers(&self, page: &PageRequest) -> Result<Page<Latest>, HistoryError> {
        let lo = [keys::LATEST_COURIER];
        scan_page(self, &lo, &prefix_end(&lo), page, |k, v| {
            Ok(Some(decode::<LatestRow>(k, v)?.view()))
        })
    }

    fn open_alerts(&self, page: &PageRequest) -> Result<Page<Alert>, HistoryError> {
        let lo = [keys::ALERT_OPEN];
        let db = self.db();
        let mut schemas = HashMap::new();
        scan_page(self, &lo, &prefix_end(&lo), page, |k, v| {
            let (opened_ms, id): (i64, String) = decode(k, v)?;
            match read::<AlertRow>(&db, &Key::alert(opened_ms, &id).0)? {
                Some(row) => self.alert_view(&row, &mut schemas).map(Some),
                None => Ok(None),
            }
        })
    }

    fn devices(&self, now_ms: i64, page: &PageRequest) -> Result<Page<DeviceStatus>, HistoryError> {
        let lo = [keys::DEVICE];
        scan_page(self, &lo, &prefix_end(&lo), page, |k, v| {
            let device = str_at(k, 1).map(|(d, _)| d).unwrap_or_default();
            let row: DeviceRow = decode(k, v)?;
            let seen = row.last_seen_ms.max(self.seen_ms(&device)?);
            Ok(Some(row.view(device, seen, now_ms)))
        })
    }

    fn dead_letters(
        &self,
        filter: &DeadLetterFilter,
        page: &PageRequest,
    ) -> Result<DeadLetters, HistoryError> {
        let lo = match &filter.device {
            Some(device) => Key::new(keys::DEAD_LETTER).str(device).0,
            None => vec![keys::DEAD_LETTER],
        };
        let list = scan_page(self, &lo, &prefix_end(&lo), page, |k, v| {
            let Some((device, after)) = str_at(k, 1) else {
                return Ok(None);
            };
            let event_id = str_at(k, after).map(|(e, _)| e).unwrap_or_default();
            let row: DeadLetterRow = decode(k, v)?;
            if filter.state.is_some_and(|s| s != row.state) {
                return Ok(None);
            }
            Ok(Some(row.view(device, event_id)))
        })?;
        let counters = self.written().counters.clone();
        Ok(DeadLetters {
            open: counters.dead_letters_open,
            rescored: counters.dead_letters_rescored,
            failures: counters.failures(),
            items: list.items,
            next_cursor: list.next,
        })
    }

    fn stats(&self) -> Result<Stats, HistoryError> {
        let (c, unbaselined) = {
            let written = self.written();
            (written.counters.clone(), written.unbaselined)
        };
        let devices = fleet_sled::range::prefix(&self.db(), &[keys::DEVICE]).count() as u64;
        Ok(Stats {
            events: c.events,
            decisions: c.decisions,
            alerts: c.alerts,
            states: c.states,
            devices,
            duplicates_absorbed: c.duplicates,
            dead_letters_open: c.dead_letters_open,
            dead_letters_rescored: c.dead_letters_rescored,
            decisions_without_baseline: unbaselined,
        })
    }

    fn drift(
        &self,
        model: &str,
        fingerprint: u64,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(i64, crate::drift::DriftRow)>, HistoryError> {
        self.read_drift(model, fingerprint, from_ms, to_ms)
    }

    fn drift_span(
        &self,
        model: &str,
        fingerprint: u64,
    ) -> Result<Option<(i64, i64)>, HistoryError> {
        self.read_drift_span(model, fingerprint)
    }
}
