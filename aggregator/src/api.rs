//! The HTTP JSON API (loopback by default). Bad queries get a 400 with a JSON error naming
//! the parameter; unknown things get a 404.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use fleet_proto::record::Severity;
use serde_json::json;

use crate::Shared;
use crate::history::HistoryError;

const DEFAULT_LIMIT: usize = 10_000;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/devices", get(devices))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/tasks/{id}", get(task))
        .route("/api/v1/couriers/{id}", get(courier))
        .route("/api/v1/couriers/{id}/route", get(route))
        .fallback(|| async { ApiError::not_found("no such endpoint; see /api/v1/{stats,devices,alerts,tasks/ID,couriers/ID,couriers/ID/route}") })
        .with_state(shared)
}

/// A JSON error response.
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn bad(message: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, message.into())
    }
    fn not_found(message: impl Into<String>) -> Self {
        Self(StatusCode::NOT_FOUND, message.into())
    }
}

impl From<HistoryError> for ApiError {
    fn from(e: HistoryError) -> Self {
        tracing::error!(error = %e, "history query failed");
        Self(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

/// Parses a query string, refusing parameters the endpoint does not know.
fn params(raw: Option<String>, known: &[&str]) -> Result<HashMap<String, String>, ApiError> {
    let mut out = HashMap::new();
    for pair in raw.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            let s = s.replace('+', " ");
            percent_decode(&s).ok_or_else(|| {
                ApiError::bad(format!(
                    "query parameter {k:?} is not valid percent-encoding"
                ))
            })
        };
        let (k, v) = (decode(k)?, decode(v)?);
        if !known.contains(&k.as_str()) {
            return Err(ApiError::bad(format!(
                "unknown query parameter {k:?}; this endpoint takes {known:?}"
            )));
        }
        out.insert(k, v);
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A time parameter: RFC 3339, or milliseconds since the Unix epoch.
fn time_param(params: &HashMap<String, String>, name: &str, default: i64) -> Result<i64, ApiError> {
    let Some(v) = params.get(name) else {
        return Ok(default);
    };
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(v)
        .map(|t| t.timestamp_millis())
        .map_err(|e| {
            ApiError::bad(format!(
                "{name}={v:?}: expected RFC 3339 (2026-11-22T10:00:00Z) or epoch milliseconds ({e})"
            ))
        })
}

fn limit_param(params: &HashMap<String, String>) -> Result<usize, ApiError> {
    match params.get("limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| ApiError::bad(format!("limit={v:?}: expected a positive integer"))),
    }
}

async fn metrics(State(s): State<Arc<Shared>>) -> ApiResult {
    let devices = s.history.devices()?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(&devices),
    )
        .into_response())
}

async fn stats(State(s): State<Arc<Shared>>) -> ApiResult {
    Ok(Json(s.history.stats()?).into_response())
}

async fn devices(State(s): State<Arc<Shared>>) -> ApiResult {
    Ok(Json(s.history.devices()?).into_response())
}

async fn alerts(State(s): State<Arc<Shared>>, RawQuery(q): RawQuery) -> ApiResult {
    let p = params(q, &["since", "severity", "limit"])?;
    let since = time_param(&p, "since", i64::MIN)?;
    let min = match p.get("severity") {
        None => Severity::Warning,
        Some(v) => Severity::parse(v).ok_or_else(|| {
            ApiError::bad(format!(
                "severity={v:?}: expected info, warning or critical"
            ))
        })?,
    };
    Ok(Json(s.history.alerts(since, min, limit_param(&p)?)?).into_response())
}

async fn task(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let p = params(q, &["limit"])?;
    match s.history.task(&id, limit_param(&p)?)? {
        Some(t) => Ok(Json(t).into_response()),
        None => Err(ApiError::not_found(format!("no history for task {id:?}"))),
    }
}

async fn courier(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> ApiResult {
    match s.history.latest_courier(&id)? {
        Some(l) => Ok(Json(json!({ "courier_id": id, "latest": l })).into_response()),
        None => Err(ApiError::not_found(format!(
            "no history for courier {id:?}"
        ))),
    }
}

async fn route(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let p = params(q, &["from", "to", "limit"])?;
    let from = time_param(&p, "from", i64::MIN)?;
    let to = time_param(&p, "to", i64::MAX)?;
    if from > to {
        return Err(ApiError::bad("from is after to"));
    }
    let points = s.history.route(&id, from, to, limit_param(&p)?)?;
    Ok(Json(json!({ "courier_id": id, "points": points })).into_response())
}
