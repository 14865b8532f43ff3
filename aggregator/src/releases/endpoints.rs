//! The operator's release API. Viewers read: `GET /api/v1/releases` (published releases),
//! `GET /api/v1/releases/{id}` (one release and, per targeted device, where its install
//! stands), `GET /api/v1/deployments`, `GET /api/v1/models` (the model registry). Operators change: `POST /api/v1/releases` (the body is
//! a release file; verified against the aggregator's `release-keys/` before it is stored) and
//! `POST /api/v1/deployments` (`{"release": ID or LABEL, "target": "all" | {"devices": [..]} |
//! {"labels": {..}}}`).

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::{FleetReleases, MAX_PUBLISH, PublishError, Target};
use crate::auth::Caller;

#[derive(Clone)]
struct ApiState {
    releases: Arc<FleetReleases>,
    /// The release keys publishing checks against.
    keys: PathBuf,
}

/// Routes for a router gated to viewers.
pub fn viewer_routes(releases: Arc<FleetReleases>) -> Router {
    Router::new()
        .route("/api/v1/releases", get(list))
        .route("/api/v1/releases/{id}", get(show))
        .route("/api/v1/deployments", get(deployments))
        .route("/api/v1/models", get(models))
        .with_state(releases)
}

/// Routes for a router gated to operators.
pub fn operator_routes(releases: Arc<FleetReleases>, keys: PathBuf) -> Router {
    Router::new()
        .route("/api/v1/releases", post(publish))
        .route("/api/v1/deployments", post(deploy))
        .layer(DefaultBodyLimit::max(MAX_PUBLISH as usize))
        .with_state(ApiState { releases, keys })
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": message.to_string() }))).into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "release API");
    error(StatusCode::INTERNAL_SERVER_ERROR, e)
}

async fn list(State(releases): State<Arc<FleetReleases>>) -> Response {
    Json(json!({ "releases": releases.list() })).into_response()
}

async fn show(State(releases): State<Arc<FleetReleases>>, Path(id): Path<String>) -> Response {
    match releases.find(&id) {
        Ok(Some(release)) => {
            let status = releases.status(&release);
            Json(json!({ "release": release, "status": status })).into_response()
        }
        Ok(None) => error(StatusCode::NOT_FOUND, "no such release"),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

async fn models(State(releases): State<Arc<FleetReleases>>) -> Response {
    Json(json!({ "models": releases.models() })).into_response()
}

async fn deployments(State(releases): State<Arc<FleetReleases>>) -> Response {
    Json(json!({ "deployments": releases.deployments() })).into_response()
}

async fn publish(State(api): State<ApiState>, body: Bytes) -> Response {
    if body.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "the body must be a release file (fleetctl release build)",
        );
    }
    let published =
        tokio::task::spawn_blocking(move || api.releases.publish(&body, &api.keys)).await;
    match published {
        Ok(Ok(release)) => {
            (StatusCode::CREATED, Json(json!({ "release": release }))).into_response()
        }
        Ok(Err(e @ PublishError::Refused(_))) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "error": e.to_string(), "reason": e.reason() })),
        )
            .into_response(),
        Ok(Err(e @ PublishError::NoKeys(_))) => error(StatusCode::CONFLICT, e),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployRequest {
    release: String,
    target: Target,
}

async fn deploy(
    State(api): State<ApiState>,
    Extension(caller): Extension<Caller>,
    request: Result<Json<DeployRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(request) = match request {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "{e}: expected {{\"release\": ID or LABEL, \"target\": \"all\" | {{\"devices\": [..]}} | {{\"labels\": {{..}}}}}}"
                ),
            );
        }
    };
    let empty = match &request.target {
        Target::All => false,
        Target::Devices(ids) => ids.is_empty(),
        Target::Labels(labels) => labels.is_empty(),
    };
    if empty {
        return error(
            StatusCode::BAD_REQUEST,
            "an empty target: name devices or labels, or deploy to all",
        );
    }
    let releases = api.releases.clone();
    let by = caller.token.id.clone();
    let done = tokio::task::spawn_blocking(move || {
        let Some(release) = releases
            .find(&request.release)
            .map_err(anyhow::Error::msg)?
        else {
            return Ok(None);
        };
        releases
            .deploy(&release, request.target, &by)
            .map(|d| Some((d, release)))
    })
    .await;
    match done {
        Ok(Ok(Some((deployment, release)))) => (
            StatusCode::CREATED,
            Json(json!({ "deployment": deployment, "release": release })),
        )
            .into_response(),
        Ok(Ok(None)) => error(
            StatusCode::NOT_FOUND,
            "no such release: publish it first (fleetctl release publish)",
        ),
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, format!("{e:#}")),
        Err(e) => internal(e),
    }
}
