//! The loopback endpoint for the handset app: `POST /v1/events` with JSON lines (one event
//! per line, bodies up to [`MAX_BODY`]). The answer comes once the accepted events are durable
//! in the journal; malformed lines are reported by line number and field and do not hold back
//! the others. `/healthz` says whether the journal can take writes; `/v1/dead-letters` lists
//! the parked events and `POST /v1/dead-letters/retry` scores them again; `/v1/release` says
//! which release runs, what the release store holds and which releases were refused, and why;
//! `/v1/courier-actions` streams what the policy meant for the courier (notifications).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fleet_journal::{Journal, StoreHealth};
use serde_json::json;

use crate::event::{Event, MAX_LINE};
use crate::registry::{ModuleRegistry, ModuleSource};

use super::sync::SyncStatus;
use super::writer::{SubmitError, WriterHandle};

/// Largest request body `POST /v1/events` takes (413 beyond).
pub const MAX_BODY: usize = 2 << 20;
/// Parked events listed per page by default, and at most.
const DEAD_LETTER_PAGE: usize = 100;
const DEAD_LETTER_PAGE_MAX: usize = 1000;

#[derive(Clone)]
struct AppState {
    writer: WriterHandle,
    status: Arc<SyncStatus>,
    registry: Arc<ModuleRegistry>,
}

pub fn router(
    writer: WriterHandle,
    status: Arc<SyncStatus>,
    registry: Arc<ModuleRegistry>,
) -> Router {
    Router::new()
        .route("/v1/events", post(events))
        .route("/healthz", get(health))
        .route("/v1/sync", get(sync_status))
        .route("/v1/release", get(release))
        .route("/v1/dead-letters", get(dead_letters))
        .route("/v1/dead-letters/retry", post(retry))
        .route("/v1/courier-actions", get(courier_actions))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(AppState {
            writer,
            status,
            registry,
        })
}

fn journal(s: &AppState) -> &Arc<Journal> {
    s.writer.journal()
}

/// `GET /v1/courier-actions?courier=`: Server-Sent Events, one per action a policy meant for a
/// courier (`notify_courier`, `reassign`), sent once its decision is durable; for the handset
/// app to show. A reader that falls behind by more than the writer keeps is told how many it
/// missed (`lagged`).
async fn courier_actions(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
    use tokio::sync::broadcast::error::RecvError;
    if let Some(refused) = unknown_param(&q, &["courier"]) {
        return refused;
    }
    let courier = q.get("courier").cloned();
    let rx = s.writer.courier_actions();
    let stream = futures_util::stream::unfold((rx, courier), |(mut rx, courier)| async move {
        loop {
            let event = match rx.recv().await {
                Ok(a) if courier.as_deref().is_some_and(|c| c != a.courier_id) => continue,
                Ok(a) => SseEvent::default()
                    .event(a.kind)
                    .data(serde_json::to_string(&*a).unwrap_or_default()),
                Err(RecvError::Lagged(n)) => SseEvent::default()
                    .event("lagged")
                    .data(json!({"missed": n}).to_string()),
                Err(RecvError::Closed) => return None,
            };
            return Some((Ok::<_, std::convert::Infallible>(event), (rx, courier)));
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn health(State(s): State<AppState>) -> Response {
    match journal(&s).store().health() {
        StoreHealth::Ok => "ok".into_response(),
        StoreHealth::Failing(reason) | StoreHealth::Broken(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "reason": reason})),
        )
            .into_response(),
    }
}

async fn sync_status(State(s): State<AppState>) -> Json<serde_json::Value> {
    use std::sync::atomic::Ordering::Relaxed;
    let journal = journal(&s);
    let stats = journal.stats();
    Json(json!({
        "journal": format!("{:016x}", journal.id()),
        "journaled": stats.last_seq,
        "thinned": stats.thinned,
        "parked": stats.parked,
        "unacked_bytes": stats.unacked_bytes,
        "connected": s.status.connected.load(Relaxed),
        "acked": s.status.acked.load(Relaxed),
        "connects": s.status.connects.load(Relaxed),
        "failures": s.status.failures.load(Relaxed),
        "rtt_micros": s.status.rtt_micros.load(Relaxed),
    }))
}

/// The release the device runs, what its store holds, and the releases it refused.
async fn release(State(s): State<AppState>) -> Json<serde_json::Value> {
    let registry = &s.registry;
    let set = registry.current();
    let mut answer = json!({
        "running": {
            "release": set.release_label(),
            "generation": set.generation,
            "modules": [set.features.label(), set.scorer.label(), set.policy.label()],
        },
    });
    if let ModuleSource::Release(source) = registry.source() {
        if let Some(store) = &source.store {
            answer["store"] = match store.state() {
                Ok(state) => json!(state),
                Err(e) => json!({ "error": e.to_string() }),
            };
        }
        answer["refused"] = json!(source.refusals.report());
    }
    Json(answer)
}

async fn dead_letters(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(refused) = unknown_param(&q, &["limit", "cursor"]) {
        return refused;
    }
    let number = |name: &str, default: usize| match q.get(name) {
        None => Ok(default),
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| format!("{name}={v:?}: expected a whole number")),
    };
    let (limit, after) = match (number("limit", DEAD_LETTER_PAGE), number("cursor", 0)) {
        (Ok(l), Ok(c)) if (1..=DEAD_LETTER_PAGE_MAX).contains(&l) => (l, c as u64),
        (Ok(l), Ok(_)) => {
            return bad(format!("limit={l}: expected 1 to {DEAD_LETTER_PAGE_MAX}"));
        }
        (Err(e), _) | (_, Err(e)) => return bad(e),
    };
    let journal = journal(&s).clone();
    let page =
        tokio::task::spawn_blocking(move || journal.parked(after, limit).map(|p| (p, journal)))
            .await;
    let (parked, journal) = match page {
        Ok(Ok(page)) => page,
        Ok(Err(e)) => return unavailable(e.to_string()),
        Err(e) => return unavailable(e.to_string()),
    };
    let next = (parked.len() == limit).then(|| parked.last().map(|p| p.id.to_string()));
    let items: Vec<serde_json::Value> = parked
        .iter()
        .map(|p| {
            json!({
                "id": p.id,
                "attempts": p.attempts,
                "event": serde_json::from_slice::<serde_json::Value>(&p.payload).unwrap_or_default(),
            })
        })
        .collect();
    Json(json!({
        "parked": journal.stats().parked,
        "items": items,
        "next_cursor": next.flatten(),
    }))
    .into_response()
}

async fn retry(State(s): State<AppState>) -> Response {
    match s.writer.retry().await {
        Ok(r) => Json(r).into_response(),
        Err(e) => submit_error(&e),
    }
}

async fn events(State(s): State<AppState>, body: String) -> (StatusCode, Json<serde_json::Value>) {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut events = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in body.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if line.len() > MAX_LINE {
            errors.push(json!({"line": i + 1, "field": ".", "message": format!("{} bytes, longer than the {MAX_LINE}-byte limit for a line", line.len())}));
            continue;
        }
        match Event::from_json(line).and_then(|e| e.check_clock(now_ms).map(|()| e)) {
            Ok(e) => events.push(e),
            Err(e) => errors.push(json!({"line": i + 1, "field": e.field, "message": e.message})),
        }
    }
    if events.is_empty() {
        let status = if errors.is_empty() {
            StatusCode::OK
        } else {
            StatusCode::BAD_REQUEST
        };
        return (status, Json(json!({"accepted": 0, "errors": errors})));
    }
    match s.writer.submit(events).await {
        Ok(a) => (
            StatusCode::OK,
            Json(json!({
                "accepted": a.events,
                "duplicates": a.duplicates,
                "thinned": a.thinned,
                "dead_lettered": a.dead_letters.len(),
                "decisions": a.decisions,
                "errors": errors,
            })),
        ),
        Err(e) => (
            status_of(&e),
            Json(json!({"accepted": 0, "error": e.to_string(), "errors": errors})),
        ),
    }
}

fn status_of(e: &SubmitError) -> StatusCode {
    match e {
        SubmitError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

fn submit_error(e: &SubmitError) -> Response {
    (status_of(e), Json(json!({"error": e.to_string()}))).into_response()
}

/// A 400 naming the first query parameter that is not `known`, if there is one.
fn unknown_param(q: &HashMap<String, String>, known: &[&str]) -> Option<Response> {
    let unknown = q.keys().find(|k| !known.contains(&k.as_str()))?;
    Some(bad(format!(
        "unknown query parameter {unknown:?}; this endpoint takes {}",
        known.join(" and ")
    )))
}

fn bad(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": message}))).into_response()
}

fn unavailable(message: String) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": message})),
    )
        .into_response()
}
