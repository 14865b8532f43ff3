//! Live streams: what history made durable, pushed to subscribers as it happens.
//!
//! The committer publishes after each group commit (never before: a subscriber sees only what
//! a restart would still hold) the alert steps, courier positions (at most one per courier per
//! interval), task status changes, and device and release status. Each live event gets a
//! sequence number; the last [`LiveConfig::ring`] are kept so a subscriber that reconnects
//! with the last number it saw resumes without a gap. Publishing never waits on a
//! subscriber: one that falls behind the broadcast channel catches up from the ring, and is
//! told what it missed when the ring no longer holds it.
//!
//! `derive.rs` turns committed batches into live events, `filter.rs` is what a subscriber asks
//! for, `endpoint.rs` serves them as WebSocket or Server-Sent Events.

mod derive;
pub mod endpoint;
mod filter;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use fleet_proto::record::Severity;
use tokio::sync::broadcast;

pub use derive::Derived;
pub use filter::{Filter, Topic, bbox_param, severity_param};

/// How much the feed keeps and how often it pushes a courier's position.
#[derive(Clone, Copy, Debug)]
pub struct LiveConfig {
    /// Live events kept for resumption.
    pub ring: usize,
    /// Least time between two pushed positions of one courier (event time).
    pub position_interval_ms: i64,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            ring: 100_000,
            position_interval_ms: 1_000,
        }
    }
}

/// One live event, serialized once for every subscriber.
#[derive(Debug)]
pub struct LiveEvent {
    pub seq: u64,
    pub topic: Topic,
    /// What filters look at.
    pub courier: Option<String>,
    pub task: Option<String>,
    pub position: Option<(f64, f64)>,
    pub severity: Option<Severity>,
    /// `{"seq":..,"topic":..,"data":..}`.
    pub json: String,
}

/// Live events published together (one group commit), in order.
pub type Published = Arc<Vec<Arc<LiveEvent>>>;

/// The feed: the recent events and the channel that wakes subscribers.
pub struct LiveFeed {
    config: LiveConfig,
    state: Mutex<FeedState>,
    wake: broadcast::Sender<Published>,
}

struct FeedState {
    next_seq: u64,
    /// The last [`LiveConfig::ring`] events, in the groups they were published in (shared
    /// with the broadcast), so that a subscriber catching up takes the lock only to copy a
    /// few group pointers.
    ring: VecDeque<Published>,
    /// Events in `ring`.
    ring_events: usize,
    /// Event time of the last position pushed per courier.
    last_position: HashMap<String, i64>,
}

/// Where a subscriber resumes: what the ring still holds after its last sequence, or the
/// sequence the ring starts at when it no longer holds what the subscriber missed.
pub struct Resumed {
    pub events: Vec<Arc<LiveEvent>>,
    /// Events the subscriber missed for good (published after `since` and gone from the ring).
    pub missed: u64,
}

/// Group commits a subscriber may fall behind before it catches up from the ring.
pub(crate) const CHANNEL: usize = 1024;

impl LiveFeed {
    pub fn new(config: LiveConfig) -> Arc<Self> {
        let (wake, _) = broadcast::channel(CHANNEL);
        Arc::new(Self {
            config,
            state: Mutex::new(FeedState {
                next_seq: 1,
                ring: VecDeque::new(),
                ring_events: 0,
                last_position: HashMap::new(),
            }),
            wake,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FeedState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Numbers, keeps and pushes what one group commit made durable. Positions of a courier
    /// closer in event time than the interval to the last one pushed are left out.
    pub fn publish(&self, derived: Derived) {
        if derived.is_empty() {
            return;
        }
        let mut state = self.state();
        let mut out = Vec::with_capacity(derived.len());
        for item in derived.into_items() {
            if let (Topic::Positions, Some(courier), Some(at)) =
                (item.topic, &item.courier, item.time_ms)
            {
                match state.last_position.get(courier) {
                    Some(&last) if at < last + self.config.position_interval_ms => continue,
                    _ => {
                        state.last_position.insert(courier.clone(), at);
                    }
                }
            }
            let seq = state.next_seq;
            state.next_seq += 1;
            out.push(Arc::new(item.numbered(seq)));
        }
        if out.is_empty() {
            return;
        }
        let published: Published = Arc::new(out);
        state.ring_events += published.len();
        state.ring.push_back(published.clone());
        while state.ring_events > self.config.ring {
            let excess = state.ring_events - self.config.ring;
            let front = state.ring.front().expect("the ring holds events");
            if front.len() <= excess {
                state.ring_events -= front.len();
                state.ring.pop_front();
            } else {
                let tail = Arc::new(front[excess..].to_vec());
                state.ring[0] = tail;
                state.ring_events -= excess;
            }
        }
        // Sent under the lock, so that subscribers receive groups in the order of their
        // numbers. No subscriber is not an error.
        let _ = self.wake.send(published);
    }

    /// A receiver of what is published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Published> {
        self.wake.subscribe()
    }

    /// What was published after `since`, as far as the ring still holds it.
    pub fn since(&self, since: u64) -> Resumed {
        let (groups, first) = {
            let state = self.state();
            let first = state
                .ring
                .front()
                .and_then(|g| g.first())
                .map_or(state.next_seq, |e| e.seq);
            let start = state
                .ring
                .partition_point(|g| g.last().is_some_and(|e| e.seq <= since));
            let groups: Vec<Published> = state.ring.range(start..).cloned().collect();
            (groups, first)
        };
        let events = groups
            .iter()
            .flat_map(|g| g.iter())
            .filter(|e| e.seq > since)
            .cloned()
            .collect();
        Resumed {
            events,
            missed: first.saturating_sub(since + 1),
        }
    }

    /// The sequence of the newest event published (0: none yet).
    pub fn head(&self) -> u64 {
        self.state().next_seq - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position(courier: &str, at: i64) -> derive::Item {
        derive::Item {
            topic: Topic::Positions,
            courier: Some(courier.into()),
            task: None,
            position: Some((1.0, 2.0)),
            severity: None,
            time_ms: Some(at),
            data: serde_json::json!({"courier_id": courier, "time_ms": at}),
        }
    }

    #[test]
    fn positions_are_thinned_per_courier_and_the_ring_resumes_or_counts_what_it_lost() {
        let feed = LiveFeed::new(LiveConfig {
            ring: 3,
            position_interval_ms: 1_000,
        });
        let mut rx = feed.subscribe();
        let mut d = Derived::default();
        for (c, t) in [("a", 0), ("a", 500), ("b", 600), ("a", 1_000), ("a", 1_999)] {
            d.push(position(c, t));
        }
        feed.publish(d);
        let got = rx.try_recv().unwrap();
        let shown: Vec<(u64, &str)> = got
            .iter()
            .map(|e| (e.seq, e.courier.as_deref().unwrap()))
            .collect();
        assert_eq!(shown, [(1, "a"), (2, "b"), (3, "a")]);
        let first: serde_json::Value = serde_json::from_str(&got[0].json).unwrap();
        assert_eq!(
            (&first["seq"], &first["topic"], &first["data"]["courier_id"]),
            (&1.into(), &"positions".into(), &"a".into())
        );

        let mut d = Derived::default();
        d.push(position("c", 0));
        feed.publish(d);
        assert_eq!(feed.head(), 4);
        // The ring holds 2..=4: a subscriber that saw 2 resumes with 3 and 4; one that saw
        // nothing lost the first.
        let r = feed.since(2);
        assert_eq!(
            (r.events.iter().map(|e| e.seq).collect::<Vec<_>>(), r.missed),
            (vec![3, 4], 0)
        );
        let r = feed.since(0);
        assert_eq!((r.events.len(), r.missed), (3, 1));
        assert_eq!(feed.since(4).events.len(), 0);
    }
}
