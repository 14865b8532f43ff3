//! Drift in sled: each batch's decisions counted into their model's window histograms
//! (binned by the model's training baseline, written in the batch's own commit so that a
//! replayed or resent batch is never counted twice), and the windows read back.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use fleet_proto::record::Schema;
use fleet_sled::Db;

use super::{SledHistory, Written, decode, encode, read};
use crate::drift::{DriftRow, FeatureMap, window_of};
use crate::history::HistoryError;
use crate::history::keys::{self, Key};
use crate::history::plan::Plan;

/// What a batch wrote for drift, for [`Written`] once it is applied.
#[derive(Default)]
pub(super) struct DriftWrites {
    pub(super) rows: HashMap<Vec<u8>, DriftRow>,
    pub(super) spans: HashMap<Vec<u8>, (i64, i64)>,
    /// Decisions of models without a known baseline.
    pub(super) unbaselined: u64,
}

/// The window decisions are being counted into: its row, taken out of [`DriftWrites::rows`]
/// until the next decision belongs elsewhere.
struct Slot<'a> {
    model: &'a str,
    schema: u64,
    window: i64,
    known: std::sync::Arc<crate::drift::KnownBaseline>,
    map: FeatureMap,
    key: Vec<u8>,
    row: DriftRow,
}

impl Slot<'_> {
    fn put_back(self, out: &mut DriftWrites) {
        out.rows.insert(self.key, self.row);
    }
}

/// Drift rows kept in memory between batches (a few models' recent hours).
const MAX_WRITTEN_DRIFT: usize = 4096;

impl DriftWrites {
    /// Keeps what the batch wrote, once it is applied.
    pub(super) fn remember(self, written: &mut Written) {
        if written.drift.len() + self.rows.len() > MAX_WRITTEN_DRIFT {
            written.drift.clear();
        }
        written.drift.extend(self.rows);
        written.drift_spans.extend(self.spans);
        written.unbaselined += self.unbaselined;
    }
}

impl SledHistory {
    /// Counts the plan's decisions into their windows and writes each window it changed once.
    /// A batch's decisions mostly share one model, schema and window: lookups happen when
    /// that changes, and each decision costs only its binning.
    pub(super) fn write_drift(
        &self,
        db: &Db,
        written: &Written,
        plan: &Plan<'_>,
        schemas: &mut HashMap<u64, Option<Schema>>,
        batch: &mut sled::Batch,
    ) -> Result<DriftWrites, HistoryError> {
        let mut out = DriftWrites::default();
        let mut maps: HashMap<(u64, u64), Option<FeatureMap>> = HashMap::new();
        let mut slot: Option<Slot<'_>> = None;
        for &(_, d) in &plan.decisions {
            let window = window_of(d.time_ms);
            let same = slot
                .as_ref()
                .is_some_and(|s| s.model == d.model && s.schema == d.schema && s.window == window);
            if !same {
                if let Some(done) = slot.take() {
                    done.put_back(&mut out);
                }
                let Some(known) = self.baselines.get(&d.model) else {
                    out.unbaselined += 1;
                    continue;
                };
                let map = match maps.entry((d.schema, known.fingerprint)) {
                    Entry::Occupied(e) => e.into_mut(),
                    Entry::Vacant(e) => {
                        let names = self.schema(d.schema, schemas)?.map(|s| s.feature_names);
                        e.insert(names.map(|n| FeatureMap::new(&known.baseline, &n)))
                    }
                };
                let Some(map) = map.clone() else {
                    // A decision whose schema history does not hold: nothing names its features.
                    out.unbaselined += 1;
                    continue;
                };
                let key = Key::drift(&d.model, known.fingerprint, window).0;
                let row = match out.rows.remove(&key) {
                    Some(row) => row,
                    None => match written.drift.get(&key) {
                        Some(row) => row.clone(),
                        None => read(db, &key)?.unwrap_or_else(|| DriftRow::new(&known.baseline)),
                    },
                };
                let span_key = Key::drift_span(&d.model, known.fingerprint).0;
                let span = match out.spans.entry(span_key) {
                    Entry::Occupied(e) => e.into_mut(),
                    Entry::Vacant(e) => {
                        let span = match written.drift_spans.get(e.key()) {
                            Some(&span) => span,
                            None => read(db, e.key())?.unwrap_or((window, window)),
                        };
                        e.insert(span)
                    }
                };
                *span = (span.0.min(window), span.1.max(window));
                slot = Some(Slot {
                    model: &d.model,
                    schema: d.schema,
                    window,
                    known,
                    map,
                    key,
                    row,
                });
            }
            if let Some(s) = slot.as_mut() {
                s.row.fold(&s.known.baseline, &s.map, &d.features, d.score);
            }
        }
        if let Some(done) = slot.take() {
            done.put_back(&mut out);
        }
        for (key, row) in &out.rows {
            batch.insert(key.clone(), encode(row));
        }
        for (key, span) in &out.spans {
            batch.insert(key.clone(), encode(span));
        }
        Ok(out)
    }

    pub(super) fn read_drift(
        &self,
        model: &str,
        fingerprint: u64,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(i64, DriftRow)>, HistoryError> {
        if to_ms <= from_ms {
            return Ok(Vec::new());
        }
        let lo = Key::drift(model, fingerprint, window_of(from_ms)).0;
        let hi = Key::drift(model, fingerprint, to_ms - 1).0;
        let at = lo.len() - 8;
        let mut out = Vec::new();
        for item in fleet_sled::range::inclusive(&self.db(), &lo, &hi) {
            let (k, v) = item?;
            let window = keys::time_at(&k, at).ok_or_else(|| HistoryError::Corrupt {
                key: String::from_utf8_lossy(&k).into_owned(),
                message: "a drift key without its window".into(),
            })?;
            out.push((window, decode(&k, &v)?));
        }
        Ok(out)
    }

    pub(super) fn read_drift_span(
        &self,
        model: &str,
        fingerprint: u64,
    ) -> Result<Option<(i64, i64)>, HistoryError> {
        let key = Key::drift_span(model, fingerprint).0;
        if let Some(&span) = self.written().drift_spans.get(&key) {
            return Ok(Some(span));
        }
        read(&self.db(), &key)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use fleet_proto::record::{DecisionRecord, Schema, Severity};
    use fleet_proto::{Entry, Record};

    use crate::drift::{Baselines, WINDOW_MS};
    use crate::history::sled::SledHistory;
    use crate::history::{Batch, History};

    fn decision(seq: u64, model: &str, time_ms: i64, features: Vec<f32>) -> Entry {
        Entry {
            seq,
            record: Record::Decision(DecisionRecord {
                event_id: format!("e{seq}"),
                prediction_id: format!("p{seq}"),
                courier_id: "C-1".into(),
                task_id: Some("T-1".into()),
                time_ms,
                score: 0.5,
                severity: Severity::Info,
                actions: vec![],
                model: model.into(),
                modules: ["f@1".into(), "s@1".into(), "p@1".into()],
                schema: 3,
                features,
                top_factors: vec![],
                release: None,
                alert_step: None,
            }),
        }
    }

    #[test]
    fn decisions_are_counted_once_per_window_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h");
        let baselines = Arc::new(Baselines::with_builtin());
        let known = baselines.all().remove(0);
        let (model, fp) = (known.baseline.model.clone(), known.fingerprint);
        let names = known.baseline.feature_names();
        let values = vec![1.0; names.len()];
        let entries = vec![
            Entry {
                seq: 1,
                record: Record::Schema(Schema {
                    id: 3,
                    model: model.clone(),
                    feature_names: names,
                }),
            },
            decision(2, &model, 10, values.clone()),
            decision(3, &model, WINDOW_MS - 1, values.clone()),
            decision(4, &model, WINDOW_MS + 5, values.clone()),
            decision(5, "other@1", 20, values),
        ];
        let batch = Batch {
            device: "d",
            journal: 1,
            through: 5,
            journaled: 5,
            entries: &entries,
            now_ms: 0,
        };
        {
            let h = SledHistory::open_with(&path, baselines.clone()).unwrap();
            h.ingest(&batch).unwrap();
            // Sent again (a lost ack): absorbed, not counted twice.
            h.ingest(&batch).unwrap();
            let windows = h.drift(&model, fp, 0, 2 * WINDOW_MS).unwrap();
            let counts: Vec<(i64, u64)> = windows.iter().map(|(w, r)| (*w, r.decisions)).collect();
            assert_eq!(counts, [(0, 2), (WINDOW_MS, 1)]);
            assert_eq!(h.drift_span(&model, fp).unwrap(), Some((0, WINDOW_MS)));
            assert_eq!(h.stats().unwrap().decisions_without_baseline, 1);
            // Only the windows asked for.
            assert_eq!(
                h.drift(&model, fp, WINDOW_MS, 2 * WINDOW_MS).unwrap().len(),
                1
            );
            assert!(
                h.drift(&model, fp ^ 1, 0, 2 * WINDOW_MS)
                    .unwrap()
                    .is_empty()
            );
            h.flush().unwrap();
        }
        let h = SledHistory::open_with(&path, baselines).unwrap();
        let windows = h.drift(&model, fp, 0, 2 * WINDOW_MS).unwrap();
        assert_eq!(windows[0].1.decisions, 2);
        // Every feature's value 1.0 landed in one bin of each histogram.
        assert!(
            windows[0]
                .1
                .features
                .iter()
                .all(|f| f.total() == 2 && f.counts.contains(&2))
        );
        assert_eq!(h.drift_span(&model, fp).unwrap(), Some((0, WINDOW_MS)));
    }
}
