//! `GET /api/v1/stream`: a WebSocket when the request asks to upgrade, Server-Sent Events when
//! it accepts `text/event-stream`.
//!
//! Query: `topics` (alerts, positions, tasks, devices; all by default), `courier`, `task`,
//! `bbox` (min_lat,min_lon,max_lat,max_lon), `severity` (alerts at least this severe), and
//! `since`, the last sequence number a client saw (SSE also takes `Last-Event-ID`): it is sent
//! what the feed still holds after it, and told how many it missed for good when the feed no
//! longer holds them. Browsers cannot set headers on either transport, so the token may come
//! as `access_token` (see [`crate::auth`]).
//!
//! WebSocket messages are JSON objects: `{"kind":"hello","head":N}` first, then
//! `{"kind":"events","events":[{"seq":..,"topic":..,"data":..},..]}` (events that arrived
//! together go in one message) and `{"kind":"lagged","missed":N}` when events were lost to
//! a subscriber too slow for the feed's memory. SSE sends each event with its `id` (the
//! sequence) and `event` (the topic), and `lagged` events.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, FromRequestParts, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header, request::Parts};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::broadcast::error::RecvError;

use super::{Filter, LiveEvent, LiveFeed};
use crate::Shared;
use crate::api::{ApiError, params};
use crate::auth::Caller;

/// Most events in one WebSocket message.
const MAX_PER_MESSAGE: usize = 4096;
/// A subscriber whose socket takes longer than this to take one message is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Where subscribers are served: two threads at the background priority, so that pushing to
/// many subscribers takes only the CPU ingest leaves (a subscriber that falls behind catches
/// up from the ring, or is told what it lost).
fn fanout() -> &'static tokio::runtime::Runtime {
    static FANOUT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    FANOUT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("stream-fanout")
            .on_thread_start(fleet_process::lower_this_threads_priority)
            .enable_all()
            .build()
            .expect("starting the stream fan-out threads")
    })
}

/// What a subscriber is sent next.
enum Out {
    Events(Vec<Arc<LiveEvent>>),
    /// Events published after what it saw and gone from the feed before it could be sent them.
    Lagged(u64),
}

/// One subscriber's place in the feed.
struct Subscription {
    feed: Arc<LiveFeed>,
    rx: tokio::sync::broadcast::Receiver<super::Published>,
    filter: Filter,
    /// The last sequence looked at (sent or filtered out).
    last: u64,
    pending: VecDeque<Out>,
}

impl Subscription {
    /// Starts after `since`, or at the feed's head.
    fn start(feed: Arc<LiveFeed>, filter: Filter, since: Option<u64>) -> Self {
        // Subscribe before reading the ring, so nothing published in between is missed
        // (what both hold is skipped by sequence).
        let rx = feed.subscribe();
        let mut sub = Self {
            last: feed.head(),
            feed,
            rx,
            filter,
            pending: VecDeque::new(),
        };
        if let Some(since) = since {
            sub.last = since;
            sub.catch_up();
        }
        sub
    }

    /// Queues what the ring holds after `last`, and what it no longer holds as lagged.
    fn catch_up(&mut self) {
        let resumed = self.feed.since(self.last);
        if resumed.missed > 0 {
            self.pending.push_back(Out::Lagged(resumed.missed));
        }
        if let Some(e) = resumed.events.last() {
            self.last = e.seq;
        }
        let events: Vec<_> = resumed
            .events
            .into_iter()
            .filter(|e| self.filter.matches(e))
            .collect();
        for chunk in events.chunks(MAX_PER_MESSAGE) {
            self.pending.push_back(Out::Events(chunk.to_vec()));
        }
    }

    /// Takes one published group (and whatever else is already waiting) past `last`.
    fn take(&mut self, published: &super::Published, out: &mut Vec<Arc<LiveEvent>>) {
        for e in published.iter() {
            if e.seq > self.last {
                self.last = e.seq;
                if self.filter.matches(e) {
                    out.push(e.clone());
                }
            }
        }
    }

    /// The next thing to send; `None` once the feed is gone.
    async fn next(&mut self) -> Option<Out> {
        loop {
            if let Some(out) = self.pending.pop_front() {
                return Some(out);
            }
            let mut events = Vec::new();
            match self.rx.recv().await {
                Ok(published) => self.take(&published, &mut events),
                Err(RecvError::Lagged(_)) => {
                    self.catch_up();
                    continue;
                }
                Err(RecvError::Closed) => return None,
            }
            // Whatever else arrived meanwhile goes in the same message.
            while events.len() < MAX_PER_MESSAGE {
                match self.rx.try_recv() {
                    Ok(published) => self.take(&published, &mut events),
                    Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {
                        // What was taken goes before what the ring catches up with; an
                        // empty message is not sent.
                        if !events.is_empty() {
                            self.pending
                                .push_back(Out::Events(std::mem::take(&mut events)));
                        }
                        self.catch_up();
                        break;
                    }
                    Err(_) => break,
                }
            }
            if !events.is_empty() {
                return Some(Out::Events(events));
            }
        }
    }
}

fn events_message(events: &[Arc<LiveEvent>]) -> String {
    let mut s = String::with_capacity(32 + events.iter().map(|e| e.json.len() + 1).sum::<usize>());
    s.push_str(r#"{"kind":"events","events":["#);
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&e.json);
    }
    s.push_str("]}");
    s
}

fn lagged_message(missed: u64) -> String {
    serde_json::json!({"kind": "lagged", "missed": missed}).to_string()
}

/// A WebSocket upgrade if the request asks for one (the extractor's refusal otherwise).
pub struct MaybeUpgrade(Option<WebSocketUpgrade>);

impl<S: Send + Sync> FromRequestParts<S> for MaybeUpgrade {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let wants = parts
            .headers
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        if !wants {
            return Ok(Self(None));
        }
        Ok(Self(
            WebSocketUpgrade::from_request_parts(parts, state)
                .await
                .ok(),
        ))
    }
}

pub async fn stream(
    State(shared): State<Arc<Shared>>,
    caller: Option<Extension<Caller>>,
    upgrade: MaybeUpgrade,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let p = params(
        q,
        &[
            "topics",
            "courier",
            "task",
            "bbox",
            "severity",
            "since",
            "access_token",
        ],
    )?;
    let mut filter = Filter::parse(&p).map_err(ApiError::bad)?;
    if let Some(task) = caller.as_ref().and_then(|c| c.token.task.as_deref()) {
        follow_only(&mut filter, task)?;
    }
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let since = match p.get("since").or(last_event_id.as_ref()) {
        None => None,
        Some(v) => Some(v.parse::<u64>().map_err(|_| {
            ApiError::bad(format!(
                "since={v:?}: expected the sequence number of the last event seen"
            ))
        })?),
    };
    let feed = shared.live.clone();
    if let MaybeUpgrade(Some(ws)) = upgrade {
        let metrics = shared.metrics.clone();
        return Ok(ws.on_upgrade(move |socket| async move {
            crate::metrics::Metrics::add(&metrics.stream_subscribers, 1);
            let sub = Subscription::start(feed, filter, since);
            let _ = fanout().spawn(serve_websocket(socket, sub)).await;
            crate::metrics::Metrics::sub(&metrics.stream_subscribers, 1);
        }));
    }
    let accepts_sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if !accepts_sse {
        return Err(ApiError(
            StatusCode::NOT_ACCEPTABLE,
            "this is a stream: open it as a WebSocket, or with Accept: text/event-stream".into(),
        ));
    }
    // Filtering and formatting run on the fan-out pool; the response only forwards.
    let mut sub = Subscription::start(feed, filter, since);
    let (tx, rx) = tokio::sync::mpsc::channel::<Out>(16);
    fanout().spawn(async move {
        while let Some(out) = sub.next().await {
            if tx.send(out).await.is_err() {
                return;
            }
        }
    });
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        let out = rx.recv().await?;
        Some((futures_util::stream::iter(sse_events(out)), rx))
    })
    .flatten();
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// A customer's token follows its task: its courier's positions on it and its status.
fn follow_only(filter: &mut Filter, task: &str) -> Result<(), ApiError> {
    if filter.task.as_deref().is_some_and(|t| t != task) {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!("this token follows task {task} only"),
        ));
    }
    filter.task = Some(task.to_string());
    filter
        .topics
        .retain(|t| matches!(t, super::Topic::Positions | super::Topic::Tasks));
    if filter.topics.is_empty() {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!("this token follows task {task}: topics positions and tasks only"),
        ));
    }
    Ok(())
}

fn sse_events(out: Out) -> Vec<Result<Event, Infallible>> {
    match out {
        Out::Events(events) => events
            .iter()
            .map(|e| {
                Ok(Event::default()
                    .id(e.seq.to_string())
                    .event(e.topic.as_str())
                    .data(&e.json))
            })
            .collect(),
        Out::Lagged(missed) => vec![Ok(Event::default()
            .event("lagged")
            .data(lagged_message(missed)))],
    }
}

async fn serve_websocket(socket: WebSocket, mut sub: Subscription) {
    let (mut tx, mut rx) = socket.split();
    let hello = serde_json::json!({"kind": "hello", "head": sub.feed.head()}).to_string();
    if tx.send(Message::Text(hello.into())).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            incoming = rx.next() => match incoming {
                // A client only closes (or pings, which the library answers).
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            out = sub.next() => {
                let Some(out) = out else { return };
                let text = match out {
                    Out::Events(events) => events_message(&events),
                    Out::Lagged(missed) => lagged_message(missed),
                };
                match tokio::time::timeout(SEND_TIMEOUT, tx.send(Message::Text(text.into()))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return,
                    Err(_) => {
                        tracing::info!("a stream subscriber took over {SEND_TIMEOUT:?} to take one message; dropped");
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::live::{CHANNEL, Derived, LiveConfig};

    fn publish(feed: &LiveFeed, couriers: std::ops::Range<u32>) {
        let mut d = Derived::default();
        for c in couriers {
            d.device(&format!("dev-{c}"), true, 0);
        }
        feed.publish(d);
    }

    fn seqs(out: Option<Out>) -> Vec<u64> {
        match out {
            Some(Out::Events(e)) => e.iter().map(|e| e.seq).collect(),
            Some(Out::Lagged(n)) => panic!("lagged {n}"),
            None => panic!("closed"),
        }
    }

    fn all() -> Filter {
        Filter::parse(&HashMap::new()).unwrap()
    }

    #[tokio::test]
    async fn a_subscriber_resumes_after_the_last_event_it_saw() {
        let feed = LiveFeed::new(LiveConfig::default());
        publish(&feed, 0..5);
        // From now on: nothing old.
        let mut now = Subscription::start(feed.clone(), all(), None);
        // Resuming after 3: 4 and 5 from the ring, then what comes next.
        let mut resumed = Subscription::start(feed.clone(), all(), Some(3));
        publish(&feed, 5..7);
        assert_eq!(seqs(now.next().await), [6, 7]);
        assert_eq!(seqs(resumed.next().await), [4, 5]);
        assert_eq!(seqs(resumed.next().await), [6, 7]);
    }

    /// A subscriber that does not keep up never holds the feed back: it catches up from the
    /// ring, and is told how many events it lost when the ring no longer holds them.
    #[tokio::test]
    async fn a_slow_subscriber_is_told_what_it_lost_and_goes_on() {
        let feed = LiveFeed::new(LiveConfig {
            ring: 100,
            position_interval_ms: 0,
        });
        let mut slow = Subscription::start(feed.clone(), all(), None);
        // More group commits than the channel holds, more events than the ring.
        for i in 0..(CHANNEL as u32 + 10) {
            publish(&feed, i..i + 1);
        }
        let total = CHANNEL as u64 + 10;
        match slow.next().await {
            Some(Out::Lagged(missed)) => assert_eq!(missed, total - 100),
            _ => panic!("expected to be told it lagged"),
        }
        let caught_up = seqs(slow.next().await);
        assert_eq!(caught_up.first(), Some(&(total - 99)));
        assert_eq!(caught_up.last(), Some(&total));
        publish(&feed, 0..1);
        assert_eq!(seqs(slow.next().await), [total + 1]);
    }

    #[test]
    fn events_go_out_as_one_message() {
        let feed = LiveFeed::new(LiveConfig::default());
        publish(&feed, 0..2);
        let events = feed.since(0).events;
        let message: serde_json::Value = serde_json::from_str(&events_message(&events)).unwrap();
        assert_eq!(message["kind"], "events");
        assert_eq!(message["events"][1]["seq"], 2);
        assert_eq!(message["events"][1]["topic"], "devices");
        assert_eq!(message["events"][1]["data"]["device"], "dev-1");
    }
}
