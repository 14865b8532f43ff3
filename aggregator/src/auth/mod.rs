//! Who may call the HTTP API: bearer tokens with a role ([`tokens`]), checked on every
//! endpoint but `/healthz`. No token, or one the aggregator does not know: 401, whatever the
//! path (an unauthenticated caller learns nothing about what exists). A known token whose role
//! is too weak for the endpoint: 403. Each token has its own rate limit: past it, 429 with
//! `Retry-After`.

mod endpoints;
pub mod tokens;

pub use endpoints::admin_routes;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::metrics::Metrics;
pub use tokens::{Role, TokenFile, TokenRecord};

/// Requests per second each token may make, by default.
pub const DEFAULT_RATE: u32 = 200;

/// The caller of a request that passed authentication.
#[derive(Clone, Debug)]
pub struct Caller {
    pub token: Arc<TokenRecord>,
}

/// The tokens the API accepts and their rate limits.
pub struct Authority {
    file: TokenFile,
    /// By the sha256 of the secret.
    tokens: ArcSwap<HashMap<String, Arc<TokenRecord>>>,
    limiters: Mutex<HashMap<String, Arc<DefaultDirectRateLimiter>>>,
    quota: Quota,
    metrics: Arc<Metrics>,
}

impl Authority {
    /// Reads the token file; `rate` requests per second per token (bursts of twice that).
    pub fn load(file: TokenFile, rate: u32, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let rate = NonZeroU32::new(rate.max(1)).expect("at least 1");
        let burst = rate.saturating_mul(NonZeroU32::new(2).expect("2"));
        let authority = Self {
            file,
            tokens: ArcSwap::from_pointee(HashMap::new()),
            limiters: Mutex::new(HashMap::new()),
            quota: Quota::per_second(rate).allow_burst(burst),
            metrics,
        };
        authority.reload()?;
        Ok(authority)
    }

    /// Reads the token file again (issued and revoked tokens take effect).
    pub fn reload(&self) -> anyhow::Result<()> {
        let tokens = self.file.load()?;
        let by_hash = tokens
            .into_iter()
            .map(|t| (t.sha256.clone(), Arc::new(t)))
            .collect::<HashMap<_, _>>();
        tracing::info!(tokens = by_hash.len(), "API tokens loaded");
        self.tokens.store(Arc::new(by_hash));
        Ok(())
    }

    pub fn file(&self) -> &TokenFile {
        &self.file
    }

    /// The caller a request names, or why it is refused: the bearer token in its headers, or
    /// for the live stream (which browsers open without headers) its `access_token` parameter.
    fn authenticate(&self, request: &Request) -> Result<Caller, Refusal> {
        let secret = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .map(str::to_string)
            .or_else(|| stream_token(request));
        let secret = secret.as_deref();
        let token = secret.and_then(|s| self.tokens.load().get(&tokens::secret_hash(s)).cloned());
        let Some(token) = token else {
            Metrics::add(&self.metrics.api_unauthorized, 1);
            return Err(Refusal::Unauthorized {
                token_given: secret.is_some(),
            });
        };
        let limiter = {
            let mut limiters = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
            limiters
                .entry(token.id.clone())
                .or_insert_with(|| Arc::new(RateLimiter::direct(self.quota)))
                .clone()
        };
        if let Err(not_until) = limiter.check() {
            Metrics::add(&self.metrics.api_rate_limited, 1);
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Err(Refusal::RateLimited {
                token: token.id.clone(),
                retry_after_s: (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1),
            });
        }
        Ok(Caller { token })
    }
}

/// Why a request did not pass authentication.
enum Refusal {
    /// No token, or one this aggregator does not know: 401.
    Unauthorized { token_given: bool },
    /// Over the token's rate limit: 429.
    RateLimited { token: String, retry_after_s: u64 },
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Self::Unauthorized { token_given } => {
                let message = if token_given {
                    "this token is not valid here (revoked, or of another aggregator)"
                } else {
                    "a bearer token is needed: Authorization: Bearer <token> \
                     (aggregator tokens issue --role viewer)"
                };
                let mut response = error(StatusCode::UNAUTHORIZED, message);
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                response
            }
            Self::RateLimited {
                token,
                retry_after_s,
            } => {
                let mut response = error(
                    StatusCode::TOO_MANY_REQUESTS,
                    &format!("token {token} is over its rate limit; retry later"),
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
                response
            }
        }
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

/// Middleware for every authenticated route (and the fallback): 401 or 429, else the
/// request goes on with its [`Caller`].
pub async fn authenticate(
    State(authority): State<Arc<Authority>>,
    mut request: Request,
    next: Next,
) -> Response {
    match authority.authenticate(&request) {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(refused) => refused.into_response(),
    }
}

/// The `access_token` query parameter of a request to the live stream.
fn stream_token(request: &Request) -> Option<String> {
    if request.uri().path() != STREAM_PATH {
        return None;
    }
    request.uri().query()?.split('&').find_map(|pair| {
        let value = pair.strip_prefix("access_token=")?;
        Some(crate::api::percent_decode(value)?.trim().to_string())
    })
}

/// The one path that takes its token as a query parameter.
pub const STREAM_PATH: &str = "/api/v1/stream";

/// What a group of routes requires: a role, checked against the caller's.
#[derive(Clone)]
pub struct Gate {
    pub authority: Arc<Authority>,
    pub role: Role,
}

/// Route middleware: 403 unless the caller's role is at least the gate's.
pub async fn require(State(gate): State<Gate>, request: Request, next: Next) -> Response {
    let caller = request.extensions().get::<Caller>();
    if let Some(task) = caller.and_then(|c| c.token.task.as_deref())
        && request.uri().path() != STREAM_PATH
    {
        Metrics::add(&gate.authority.metrics.api_forbidden, 1);
        return error(
            StatusCode::FORBIDDEN,
            &format!("this token follows task {task}: it reads {STREAM_PATH}?task={task} only"),
        );
    }
    let allowed = caller.is_some_and(|c| c.token.role >= gate.role);
    if allowed {
        next.run(request).await
    } else {
        Metrics::add(&gate.authority.metrics.api_forbidden, 1);
        error(
            StatusCode::FORBIDDEN,
            &format!("this needs a token with the {} role", gate.role),
        )
    }
}
