//! What the journal does when its byte budget is spent: location pings are thinned to one per
//! courier per interval; status events, decisions, states and schemas are always kept.

use std::collections::HashMap;

use fleet_proto::Record;

/// The declared policy for a full journal.
#[derive(Clone, Debug)]
pub struct ThinPolicy {
    /// Unacknowledged bytes above which pings are thinned.
    pub budget_bytes: u64,
    /// While over budget, keep at most one location ping per courier per this many ms of
    /// event time.
    pub keep_one_per_ms: i64,
}

impl Default for ThinPolicy {
    fn default() -> Self {
        Self {
            budget_bytes: 256 << 20,
            keep_one_per_ms: 60_000,
        }
    }
}

/// Per-courier memory of the last ping kept while thinning.
#[derive(Debug, Default)]
pub(crate) struct Thinner {
    last_kept: HashMap<String, i64>,
}

impl Thinner {
    /// Whether `record` is kept, given whether the journal is over budget.
    pub(crate) fn keep(&mut self, policy: &ThinPolicy, over_budget: bool, record: &Record) -> bool {
        let Record::Event(e) = record else {
            return true;
        };
        if !record.thinnable() {
            return true;
        }
        if !over_budget {
            self.last_kept.insert(e.courier_id.clone(), e.time_ms);
            return true;
        }
        match self.last_kept.get(&e.courier_id) {
            Some(&t) if (e.time_ms - t).abs() < policy.keep_one_per_ms => false,
            _ => {
                self.last_kept.insert(e.courier_id.clone(), e.time_ms);
                true
            }
        }
    }
}
