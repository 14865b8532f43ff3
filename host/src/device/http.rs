//! The loopback endpoint for the handset app: `POST /v1/events` with JSON lines (one event
//! per line). The answer comes once the accepted events are durable in the journal; malformed
//! lines are reported by line number and field and do not hold back the others.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use fleet_journal::Journal;

use crate::event::Event;

use super::sync::SyncStatus;
use super::writer::WriterHandle;

#[derive(Clone)]
struct AppState {
    writer: WriterHandle,
    status: Arc<SyncStatus>,
    journal: Arc<Journal>,
}

pub fn router(writer: WriterHandle, status: Arc<SyncStatus>, journal: Arc<Journal>) -> Router {
    Router::new()
        .route("/v1/events", post(events))
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/sync", get(sync_status))
        .with_state(AppState {
            writer,
            status,
            journal,
        })
}

async fn sync_status(State(s): State<AppState>) -> Json<serde_json::Value> {
    use std::sync::atomic::Ordering::Relaxed;
    let journal = s.journal.stats();
    Json(json!({
        "journaled": journal.last_seq,
        "thinned": journal.thinned,
        "unacked_bytes": journal.unacked_bytes,
        "connected": s.status.connected.load(Relaxed),
        "acked": s.status.acked.load(Relaxed),
        "connects": s.status.connects.load(Relaxed),
        "failures": s.status.failures.load(Relaxed),
        "rtt_micros": s.status.rtt_micros.load(Relaxed),
    }))
}

async fn events(State(s): State<AppState>, body: String) -> (StatusCode, Json<serde_json::Value>) {
    let mut events = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in body.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match Event::from_json(line) {
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
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"accepted": 0, "error": e, "errors": errors})),
        ),
    }
}
