//! The admin's token endpoints: `GET /api/v1/tokens` (ids, roles, names, never secrets),
//! `POST /api/v1/tokens` (`{"role": "viewer", "name": "grafana"}`; the secret is in the answer,
//! only there) and `DELETE /api/v1/tokens/{id}`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::{Authority, Role};

/// The token routes, for a router gated to admins.
pub fn admin_routes(authority: Arc<Authority>) -> Router {
    Router::new()
        .route("/api/v1/tokens", get(list).post(issue))
        .route("/api/v1/tokens/{id}", delete(revoke))
        .with_state(authority)
}

fn failed(e: &anyhow::Error) -> Response {
    tracing::error!(error = %e, "token file");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({ "error": format!("token file: {e:#}") })),
    )
        .into_response()
}

async fn list(State(authority): State<Arc<Authority>>) -> Response {
    match authority.file().load() {
        Ok(tokens) => {
            let tokens: Vec<_> = tokens
                .iter()
                .map(|t| json!({"id": t.id, "role": t.role, "name": t.name, "issued_ms": t.issued_ms, "task": t.task}))
                .collect();
            Json(json!({ "tokens": tokens })).into_response()
        }
        Err(e) => failed(&e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueRequest {
    role: Role,
    name: String,
    /// A customer's token, following only this task.
    #[serde(default)]
    task: Option<String>,
}

async fn issue(
    State(authority): State<Arc<Authority>>,
    request: Result<Json<IssueRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(request) = match request {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": format!("{e}: expected {{\"role\": \"viewer|operator|admin\", \"name\": \"...\"}}") })),
            )
                .into_response();
        }
    };
    let issued = authority
        .file()
        .issue_scoped(request.role, &request.name, request.task.as_deref())
        .and_then(|issued| authority.reload().map(|()| issued));
    match issued {
        Ok((record, secret)) => (
            StatusCode::CREATED,
            Json(
                json!({"id": record.id, "role": record.role, "name": record.name, "token": secret}),
            ),
        )
            .into_response(),
        Err(e) => failed(&e),
    }
}

async fn revoke(State(authority): State<Arc<Authority>>, Path(id): Path<String>) -> Response {
    match authority
        .file()
        .revoke(&id)
        .and_then(|revoked| authority.reload().map(|()| revoked))
    {
        Ok(true) => Json(json!({ "revoked": id })).into_response(),
        Ok(false) => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("no token {id}") })),
        )
            .into_response(),
        Err(e) => failed(&e),
    }
}
