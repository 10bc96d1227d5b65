//! The admin API under `/admin/` (routes and wire types in
//! [`crate::admin_api`]), used by the CLI while the daemon holds the store,
//! plus the bearer-token check and `/readyz`.
//!
//! The admin socket serves these routes to the store's owner; TCP serves them
//! only with a token set, and only to requests presenting it (see
//! [`super::router`]).

use super::AppState;
use crate::admin_api::{self as api, DrainQuery, EventRecord, EventsQuery, Overview, Selection};
use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(api::STATS, get(stats))
        .route(api::FORWARD, get(forward_stats))
        .route(api::OVERVIEW, get(overview))
        .route(api::EVENTS, get(events))
        .route(api::REPLAY, post(replay))
        .route(api::PURGE, post(purge))
        .route(api::VERIFY, post(verify))
        .route(api::DRAIN, post(drain))
}

/// Compares a presented token with the configured one in constant time.
pub fn token_matches(expected: &str, presented: &str) -> bool {
    expected.as_bytes().ct_eq(presented.as_bytes()).into()
}

fn presented_token(req: &Request) -> Option<String> {
    let h = req.headers().get("authorization")?.to_str().ok()?;
    if let Some(t) = h.strip_prefix("Bearer ") {
        return Some(t.trim().to_string());
    }
    // Basic auth: SDKs that only speak basic auth put the token in the username
    // (Segment) or the password (Mixpanel's service-account form).
    let b = h.strip_prefix("Basic ")?;
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, pass) = text.split_once(':').unwrap_or((&text, ""));
    Some(if pass.is_empty() { user } else { pass }.to_string())
}

/// Middleware: with a token configured, every ingest and admin request must present it.
pub async fn require_token(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(expected) = &state.token {
        let ok = presented_token(&req).is_some_and(|t| token_matches(&expected.0, &t));
        if !ok {
            metrics::counter!("evspool_unauthorized_requests_total").increment(1);
            return (
                StatusCode::UNAUTHORIZED,
                [("www-authenticate", "Bearer")],
                axum::Json(
                    json!({"error": "missing or wrong token (Authorization: Bearer <token>)"}),
                ),
            )
                .into_response();
        }
    }
    next.run(req).await
}

/// `GET /readyz`: 503 while the store refuses writes.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.queue.stats().failed_closed {
        None => "ready\n".into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

async fn stats(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(state.queue.stats()).into_response()
}

async fn forward_stats(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(state.forwarder.stats()).into_response()
}

async fn overview(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(Overview {
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        started_at_ms: state.started_at_ms,
        at_ms: crate::admin_api::now_ms(),
        active: state.config.active,
        stats: state.queue.stats(),
        forward: state.forwarder.stats(),
        rates: state.rates.history(),
    })
    .into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(json!({"error": e.to_string()})),
    )
        .into_response()
}

async fn events(State(state): State<Arc<AppState>>, Query(q): Query<EventsQuery>) -> Response {
    match EventRecord::page(&state.queue, &q.topic, q.dead, q.from, q.n.min(10_000)) {
        Ok(records) => axum::Json(records).into_response(),
        Err(e) => internal(e),
    }
}

async fn replay(
    State(state): State<Arc<AppState>>,
    axum::Json(sel): axum::Json<Selection>,
) -> Response {
    match sel.replay(&state.queue) {
        Ok(c) => axum::Json(c).into_response(),
        Err(e) => internal(e),
    }
}

async fn purge(
    State(state): State<Arc<AppState>>,
    axum::Json(sel): axum::Json<Selection>,
) -> Response {
    match sel.purge(&state.queue) {
        Ok(c) => axum::Json(c).into_response(),
        Err(e) => internal(e),
    }
}

async fn verify(State(state): State<Arc<AppState>>) -> Response {
    match state.queue.verify() {
        Ok(r) => axum::Json(r).into_response(),
        Err(e) => internal(e),
    }
}

async fn drain(State(state): State<Arc<AppState>>, Query(q): Query<DrainQuery>) -> Response {
    let timeout = Duration::from_millis(q.timeout_ms.unwrap_or(30_000).min(3_600_000));
    axum::Json(state.forwarder.drain(timeout).await).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_exactly() {
        assert!(token_matches("s3cret", "s3cret"));
        assert!(!token_matches("s3cret", "s3cre"));
        assert!(!token_matches("s3cret", "s3cret "));
        assert!(!token_matches("s3cret", ""));
    }
}
