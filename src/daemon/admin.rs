//! The admin API under `/admin/`, used by the CLI while the daemon holds the
//! store, plus the bearer-token check and `/readyz`.

use super::AppState;
use crate::cli::access::{self, Selection};
use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/admin/stats", get(stats))
        .route("/admin/forward", get(forward_stats))
        .route("/admin/events", get(events))
        .route("/admin/replay", post(replay))
        .route("/admin/purge", post(purge))
        .route("/admin/verify", post(verify))
        .route("/admin/drain", post(drain))
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

fn internal(e: impl std::fmt::Display) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(json!({"error": e.to_string()})),
    )
        .into_response()
}

#[derive(Deserialize)]
struct EventsQuery {
    topic: String,
    #[serde(default)]
    dead: bool,
    #[serde(default)]
    from: u64,
    #[serde(default = "default_n")]
    n: usize,
}

fn default_n() -> usize {
    10
}

async fn events(State(state): State<Arc<AppState>>, Query(q): Query<EventsQuery>) -> Response {
    match access::events_local(&state.queue, &q.topic, q.dead, q.from, q.n.min(10_000)) {
        Ok(records) => axum::Json(records).into_response(),
        Err(e) => internal(e),
    }
}

async fn replay(
    State(state): State<Arc<AppState>>,
    axum::Json(sel): axum::Json<Selection>,
) -> Response {
    match access::replay_local(&state.queue, &sel) {
        Ok(c) => axum::Json(c).into_response(),
        Err(e) => internal(e),
    }
}

async fn purge(
    State(state): State<Arc<AppState>>,
    axum::Json(sel): axum::Json<Selection>,
) -> Response {
    match access::purge_local(&state.queue, &sel) {
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

#[derive(Deserialize)]
struct DrainQuery {
    timeout_ms: Option<u64>,
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
