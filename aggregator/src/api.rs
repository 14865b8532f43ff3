//! The HTTP JSON API (loopback by default), behind bearer tokens with roles ([`crate::auth`]).
//! Bad queries get a 400 with a JSON error naming
//! the parameter (unknown, repeated or malformed); unknown things get a 404. Every list is
//! paged: `limit` (default [`DEFAULT_PAGE`], at most [`MAX_PAGE`]) and `cursor` (the
//! `next_cursor` of the previous page; absent on the last). Queries run on the blocking pool,
//! never on the threads that serve ingest.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router, middleware};
use serde_json::json;

use crate::auth::{self, Authority, Gate, Role};
use crate::history::{
    AlertFilter, AlertState, DeadLetterFilter, DeadLetterState, DeviceStatus, History,
    HistoryError, PageRequest,
};
use crate::{Shared, releases};

/// Items per page when `limit` is not given.
pub const DEFAULT_PAGE: usize = 1000;
/// Most items per page.
pub const MAX_PAGE: usize = 10_000;

/// The API. Every endpoint but `/healthz` needs a token (see [`crate::auth`]): the queries and
/// `/metrics` a viewer's, the token endpoints an admin's.
pub fn router(
    shared: Arc<Shared>,
    authority: Arc<Authority>,
    release_keys: std::path::PathBuf,
) -> Router {
    let gate = |role| {
        middleware::from_fn_with_state(
            Gate {
                authority: authority.clone(),
                role,
            },
            auth::require,
        )
    };
    let viewer = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/devices", get(devices))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/alerts/{id}", get(alert))
        .route("/api/v1/predictions/{id}", get(prediction))
        .route("/api/v1/drift", get(drift))
        .route(auth::STREAM_PATH, get(crate::live::endpoint::stream))
        .route("/api/v1/dead-letters", get(dead_letters))
        .route("/api/v1/tasks/{id}", get(task))
        .route("/api/v1/couriers", get(couriers_within))
        .route("/api/v1/couriers/nearby", get(couriers_nearby))
        .route("/api/v1/couriers/{id}", get(courier))
        .route("/api/v1/couriers/{id}/route", get(route))
        .with_state(shared.clone())
        .merge(releases::viewer_routes(shared.releases.clone()))
        .route_layer(gate(Role::Viewer));
    let operator = releases::operator_routes(shared.releases.clone(), release_keys)
        .route_layer(gate(Role::Operator));
    let admin = auth::admin_routes(authority.clone()).route_layer(gate(Role::Admin));
    let authenticated = viewer
        .merge(operator)
        .merge(admin)
        .fallback(|| async { ApiError::not_found("no such endpoint; see /api/v1/{stats,devices,alerts,alerts/ID,predictions/ID,drift,stream,dead-letters,tasks/ID,couriers?bbox=,couriers/nearby,couriers/ID,couriers/ID/route,releases,deployments,tokens}") })
        .layer(middleware::from_fn_with_state(authority, auth::authenticate));
    Router::new()
        .route("/healthz", get(health))
        .with_state(shared)
        .merge(crate::dashboard::routes())
        .merge(authenticated)
}

/// A JSON error response.
pub struct ApiError(pub(crate) StatusCode, pub(crate) String);

impl ApiError {
    pub(crate) fn bad(message: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, message.into())
    }
    fn not_found(message: impl Into<String>) -> Self {
        Self(StatusCode::NOT_FOUND, message.into())
    }
}

impl From<HistoryError> for ApiError {
    fn from(e: HistoryError) -> Self {
        if let HistoryError::BadCursor(_) = e {
            return Self::bad(e.to_string());
        }
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

/// Runs a query on the blocking pool.
async fn query<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&dyn History) -> Result<T, HistoryError> + Send + 'static,
) -> Result<T, ApiError> {
    let history = shared.history.clone();
    tokio::task::spawn_blocking(move || f(&*history))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(ApiError::from)
}

/// Parses a query string, refusing parameters the endpoint does not know, and repeats.
pub(crate) fn params(
    raw: Option<String>,
    known: &[&str],
) -> Result<HashMap<String, String>, ApiError> {
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
            return Err(ApiError::bad(if known.is_empty() {
                format!("unknown query parameter {k:?}; this endpoint takes none")
            } else {
                format!("unknown query parameter {k:?}; this endpoint takes {known:?}")
            }));
        }
        if out.insert(k.clone(), v).is_some() {
            return Err(ApiError::bad(format!(
                "query parameter {k:?} is given more than once"
            )));
        }
    }
    Ok(out)
}

pub(crate) fn percent_decode(s: &str) -> Option<String> {
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

/// `state`: one of `states` by name, or `all` (or absent) for any.
fn state_param<T: Copy>(
    params: &HashMap<String, String>,
    states: &[(&str, T)],
) -> Result<Option<T>, ApiError> {
    let Some(v) = params.get("state").filter(|v| *v != "all") else {
        return Ok(None);
    };
    match states.iter().find(|(name, _)| name == v) {
        Some(&(_, state)) => Ok(Some(state)),
        None => {
            let names: Vec<&str> = states.iter().map(|(n, _)| *n).collect();
            Err(ApiError::bad(format!(
                "state={v:?}: expected {} or all",
                names.join(", ")
            )))
        }
    }
}

/// `limit` and `cursor`.
fn page_param(params: &HashMap<String, String>) -> Result<PageRequest, ApiError> {
    let limit = match params.get("limit") {
        None => DEFAULT_PAGE,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            Ok(n) if n > MAX_PAGE => {
                return Err(ApiError::bad(format!(
                    "limit={n}: at most {MAX_PAGE} per page; follow next_cursor for more"
                )));
            }
            _ => {
                return Err(ApiError::bad(format!(
                    "limit={v:?}: expected a whole number from 1 to {MAX_PAGE}"
                )));
            }
        },
    };
    Ok(PageRequest {
        limit,
        after: params.get("cursor").cloned(),
    })
}

async fn health(State(s): State<Arc<Shared>>) -> Response {
    match s.storage_problem() {
        None => "ok".into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "reason": reason})),
        )
            .into_response(),
    }
}

/// Every device, page by page.
pub fn all_devices(history: &dyn History, now_ms: i64) -> Result<Vec<DeviceStatus>, HistoryError> {
    let mut all = Vec::new();
    let mut page = PageRequest {
        limit: MAX_PAGE,
        after: None,
    };
    loop {
        let p = history.devices(now_ms, &page)?;
        all.extend(p.items);
        match p.next {
            Some(next) => page.after = Some(next),
            None => return Ok(all),
        }
    }
}

async fn metrics(State(s): State<Arc<Shared>>, RawQuery(q): RawQuery) -> ApiResult {
    params(q, &[])?;
    let now = crate::now_ms();
    let (devices, dead) = query(&s, move |h| {
        let summary = PageRequest {
            limit: 0,
            after: None,
        };
        Ok((
            all_devices(h, now)?,
            h.dead_letters(&DeadLetterFilter::default(), &summary)?,
        ))
    })
    .await?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(&devices, &dead)
            + &s.releases.render_metrics()
            + &s.drift.render_metrics(),
    )
        .into_response())
}

async fn stats(State(s): State<Arc<Shared>>, RawQuery(q): RawQuery) -> ApiResult {
    params(q, &[])?;
    Ok(Json(query(&s, |h| h.stats()).await?).into_response())
}

async fn devices(State(s): State<Arc<Shared>>, RawQuery(q): RawQuery) -> ApiResult {
    let p = params(q, &["limit", "cursor"])?;
    let page = page_param(&p)?;
    let now = crate::now_ms();
    let devices = query(&s, move |h| h.devices(now, &page)).await?;
    // Each device with what it last reported of its releases and labels.
    let reports = s.releases.devices();
    let items: Vec<serde_json::Value> = devices
        .items
        .iter()
        .map(|d| {
            let mut item = serde_json::to_value(d).unwrap_or_default();
            if let Some(report) = reports.get(&d.device) {
                item["release"] = json!(report);
            }
            item
        })
        .collect();
    Ok(Json(json!({"devices": items, "next_cursor": devices.next})).into_response())
}

async fn alerts(State(s): State<Arc<Shared>>, RawQuery(q): RawQuery) -> ApiResult {
    let p = params(
        q,
        &[
            "since", "severity", "state", "task", "courier", "device", "model", "limit", "cursor",
        ],
    )?;
    let min = crate::live::severity_param(&p).map_err(ApiError::bad)?;
    let state = state_param(
        &p,
        &[
            ("open", AlertState::Open),
            ("resolved", AlertState::Resolved),
        ],
    )?;
    let filter = AlertFilter {
        since_ms: p
            .contains_key("since")
            .then(|| time_param(&p, "since", 0))
            .transpose()?,
        min,
        state,
        task: p.get("task").cloned(),
        courier: p.get("courier").cloned(),
        device: p.get("device").cloned(),
        model: p.get("model").cloned(),
    };
    let page = page_param(&p)?;
    let alerts = query(&s, move |h| h.alerts(&filter, &page)).await?;
    Ok(Json(json!({"alerts": alerts.items, "next_cursor": alerts.next})).into_response())
}

/// Each model's drift against its training baseline: over `since`..`until` (event time), or
/// over the last day of decisions the model has.
async fn drift(State(s): State<Arc<Shared>>, RawQuery(q): RawQuery) -> ApiResult {
    let p = params(q, &["model", "since", "until"])?;
    let time = |name: &str| {
        p.contains_key(name)
            .then(|| time_param(&p, name, 0))
            .transpose()
    };
    let (from, to) = (time("since")?, time("until")?);
    let model = p.get("model").cloned();
    if let Some(m) = &model
        && s.drift.baselines.get(m).is_none()
    {
        return Err(ApiError::not_found(format!(
            "no training baseline for model {m:?} (known: {})",
            s.drift
                .baselines
                .all()
                .iter()
                .map(|k| k.baseline.model.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let baselines = s.drift.baselines.clone();
    let models = query(&s, move |h| {
        crate::drift::reports(h, &baselines, model.as_deref(), from, to)
    })
    .await?;
    Ok(Json(json!({
        "window_ms": crate::drift::WINDOW_MS,
        "alert_psi": crate::drift::ALERT_PSI,
        "min_decisions": crate::drift::MIN_DECISIONS,
        "models": models,
    }))
    .into_response())
}

/// One item by its id, taking no parameters; 404 saying `what` when history has none.
async fn by_id<T: serde::Serialize + Send + 'static>(
    s: &Arc<Shared>,
    q: Option<String>,
    id: String,
    what: &str,
    get: fn(&dyn History, &str) -> Result<Option<T>, HistoryError>,
) -> ApiResult {
    params(q, &[])?;
    let wanted = id.clone();
    match query(s, move |h| get(h, &wanted)).await? {
        Some(item) => Ok(Json(item).into_response()),
        None => Err(ApiError::not_found(format!("no {what} {id:?}"))),
    }
}

async fn prediction(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    by_id(&s, q, id, "decision with prediction id", |h, id| {
        h.prediction(id)
    })
    .await
}

async fn alert(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    by_id(&s, q, id, "alert", |h, id| h.alert(id)).await
}

async fn dead_letters(State(s): State<Arc<Shared>>, RawQuery(q): RawQuery) -> ApiResult {
    let p = params(q, &["state", "device", "limit", "cursor"])?;
    let state = state_param(
        &p,
        &[
            ("open", DeadLetterState::Open),
            ("rescored", DeadLetterState::Rescored),
        ],
    )?;
    let filter = DeadLetterFilter {
        state,
        device: p.get("device").cloned(),
    };
    let page = page_param(&p)?;
    Ok(Json(query(&s, move |h| h.dead_letters(&filter, &page)).await?).into_response())
}

async fn task(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let p = params(q, &["limit", "cursor"])?;
    let page = page_param(&p)?;
    let task = id.clone();
    match query(&s, move |h| h.task(&task, &page)).await? {
        Some(t) => Ok(Json(t).into_response()),
        None => Err(ApiError::not_found(format!("no history for task {id:?}"))),
    }
}

/// A number parameter within `range`; `default` when absent (`None`: required).
fn number_param(
    p: &HashMap<String, String>,
    name: &str,
    range: std::ops::RangeInclusive<f64>,
    default: Option<f64>,
) -> Result<f64, ApiError> {
    match (p.get(name), default) {
        (None, Some(d)) => Ok(d),
        (None, None) => Err(ApiError::bad(format!("{name} is required"))),
        (Some(v), _) => match v.parse::<f64>() {
            Ok(x) if range.contains(&x) => Ok(x),
            _ => Err(ApiError::bad(format!(
                "{name}={v:?}: expected a number from {} to {}",
                range.start(),
                range.end()
            ))),
        },
    }
}

/// Most couriers a "nearby" or area query answers with.
const MAX_COURIERS: usize = 10_000;

async fn couriers_nearby(State(s): State<Arc<Shared>>, RawQuery(q): RawQuery) -> ApiResult {
    let p = params(q, &["lat", "lon", "radius_km", "limit"])?;
    let lat = number_param(&p, "lat", -90.0..=90.0, None)?;
    let lon = number_param(&p, "lon", -180.0..=180.0, None)?;
    let radius = number_param(&p, "radius_km", 0.0..=500.0, Some(5.0))?;
    let limit = number_param(&p, "limit", 1.0..=MAX_COURIERS as f64, Some(50.0))? as usize;
    let found = s.nearby.near(lat, lon, radius, limit);
    Ok(Json(json!({"couriers": found})).into_response())
}

async fn couriers_within(State(s): State<Arc<Shared>>, RawQuery(q): RawQuery) -> ApiResult {
    let p = params(q, &["bbox", "limit"])?;
    let Some((a, b, c, d)) = crate::live::bbox_param(&p).map_err(ApiError::bad)? else {
        return Err(ApiError::bad(
            "bbox=min_lat,min_lon,max_lat,max_lon is required (or see /api/v1/couriers/nearby)",
        ));
    };
    let limit = number_param(&p, "limit", 1.0..=MAX_COURIERS as f64, Some(1000.0))? as usize;
    let found = s.nearby.within((a, b), (c, d), limit);
    Ok(Json(json!({"couriers": found})).into_response())
}

async fn courier(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    params(q, &[])?;
    let courier = id.clone();
    match query(&s, move |h| h.latest_courier(&courier)).await? {
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
    let p = params(q, &["from", "to", "limit", "cursor"])?;
    let from = time_param(&p, "from", i64::MIN)?;
    let to = time_param(&p, "to", i64::MAX)?;
    if from > to {
        return Err(ApiError::bad("from is after to"));
    }
    let page = page_param(&p)?;
    let courier = id.clone();
    let points = query(&s, move |h| h.route(&courier, from, to, &page)).await?;
    Ok(
        Json(json!({ "courier_id": id, "points": points.items, "next_cursor": points.next }))
            .into_response(),
    )
}
