//! Ingest routes: the native `POST /v1/events` and drop-in Mixpanel and
//! Segment endpoints, so existing SDKs only change their API host.
//!
//! Every route parses the whole body first (400 naming the line or field, and
//! nothing enqueued on any error), then enqueues every event and — for durable
//! topics, the default — answers only after the commit that covers them.

use super::AppState;
use super::limits::RequestBudget;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use evspool::ingest::{self, IngestError};
use evspool::{Enqueued, OverflowPolicy, QueueError};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/events", post(events))
        .route("/track", mixpanel_route("track"))
        .route("/track/", mixpanel_route("track"))
        .route("/engage", mixpanel_route("engage"))
        .route("/engage/", mixpanel_route("engage"))
        .route("/groups", mixpanel_route("groups"))
        .route("/groups/", mixpanel_route("groups"))
        .route("/import", mixpanel_route("import"))
        .route("/import/", mixpanel_route("import"))
        .route("/v1/batch", post(segment_batch))
        .route("/v1/track", post(segment_single))
        .route("/v1/identify", post(segment_single))
        .route("/v1/page", post(segment_single))
        .route("/v1/screen", post(segment_single))
        .route("/v1/group", post(segment_single))
        .route("/v1/alias", post(segment_single))
        .route("/v1/topics", get(topics))
}

/// Why a request was refused, as a status and a message.
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl From<IngestError> for Refusal {
    fn from(e: IngestError) -> Self {
        if e == IngestError::OverBudget {
            metrics::counter!("evspool_requests_refused_total", "reason" => "memory_budget")
                .increment(1);
            let mut r = Refusal::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
            r.retry_after = Some(1);
            return r;
        }
        let status = if e.is_too_large() {
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            StatusCode::BAD_REQUEST
        };
        Refusal::new(status, e.to_string())
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(json!({"error": self.message}))).into_response();
        if let Some(s) = self.retry_after
            && let Ok(v) = s.to_string().parse()
        {
            resp.headers_mut().insert("retry-after", v);
        }
        resp
    }
}

/// The body, decompressed within the request's share of the memory budget
/// (`limits.rs`): each step of output takes twice its size (the output, and
/// the copy parsing and the durable write make of it).
fn decoded(
    state: &AppState,
    headers: &HeaderMap,
    budget: &Option<Extension<RequestBudget>>,
    body: Bytes,
) -> Result<Bytes, Refusal> {
    let encoding = headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok());
    let mut grow = |n: usize| {
        budget
            .as_ref()
            .is_none_or(|Extension(b)| b.grow(2 * n as u64).is_ok())
    };
    let limit = state.config.server.max_decompressed.as_u64() as usize;
    let decode = || ingest::decode_body_within(body, encoding, limit, &mut grow);
    // Decompression is CPU work of up to `max_decompressed`: off the async
    // workers, so the accept loop and other requests keep running.
    Ok(if encoding.is_some() {
        tokio::task::block_in_place(decode)
    } else {
        decode()
    }?)
}

/// What was accepted.
pub struct Accepted {
    pub ids: Vec<String>,
    pub dropped: u64,
}

/// Enqueues every payload into `topic`; for durable topics in one durable
/// batch, returning once it is written (and synced with `fsync`).
pub async fn accept(
    state: &AppState,
    topic: &str,
    payloads: Vec<Bytes>,
) -> Result<Accepted, Refusal> {
    let q = &state.queue;
    let bytes: u64 = payloads.iter().map(|p| p.len() as u64).sum();
    let policy = q.config().ceiling.policy;
    if policy == OverflowPolicy::Reject && !q.would_fit(payloads.len() as u64, bytes) {
        let mut r = Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the spool is full (ceiling reached under the reject policy); retry later",
        );
        r.retry_after = Some(5);
        return Err(r);
    }
    let mut ids = Vec::with_capacity(payloads.len());
    let mut dropped = 0;
    if state.config.durable(topic) {
        // One append (and with fsync one group `fdatasync`) for the request:
        // answered once every event of it is written.
        let outcomes = q
            .enqueue_batch_durable(topic, payloads)
            .await
            .map_err(queue_refusal)?;
        for out in outcomes {
            match out {
                Enqueued::Accepted(id) => ids.push(id.to_string()),
                Enqueued::Dropped(_) => dropped += 1,
            }
        }
    } else {
        let enqueue_all = |ids: &mut Vec<String>, dropped: &mut u64| -> Result<(), QueueError> {
            for p in payloads {
                match q.enqueue(topic, p)? {
                    Enqueued::Accepted(id) => ids.push(id.to_string()),
                    Enqueued::Dropped(_) => *dropped += 1,
                }
            }
            Ok(())
        };
        let result = if policy == OverflowPolicy::Block {
            // `block` waits on the calling thread; keep the runtime's other tasks moving.
            tokio::task::block_in_place(|| enqueue_all(&mut ids, &mut dropped))
        } else {
            enqueue_all(&mut ids, &mut dropped)
        };
        result.map_err(queue_refusal)?;
    }
    metrics::counter!("evspool_ingested_events_total", "topic" => topic.to_string())
        .increment(ids.len() as u64);
    state.rates.ingested(topic, ids.len() as u64);
    Ok(Accepted { ids, dropped })
}

fn queue_refusal(e: QueueError) -> Refusal {
    match e {
        QueueError::Full { .. } => {
            let mut r = Refusal::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
            r.retry_after = Some(5);
            r
        }
        QueueError::TooLarge { .. } => Refusal::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
        QueueError::InvalidTopic { .. } => Refusal::new(StatusCode::BAD_REQUEST, e.to_string()),
        QueueError::FailedClosed { .. } => {
            let mut r = Refusal::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
            r.retry_after = Some(30);
            r
        }
        // The write of this request failed: out of descriptors (transient,
        // retry soon) or the disk (the store now fails closed, like above).
        QueueError::Storage(ref s) => {
            let retry = if s.is_transient() { 1 } else { 30 };
            let mut r = Refusal::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
            r.retry_after = Some(retry);
            r
        }
        other => Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    }
}

#[derive(Deserialize)]
struct EventsQuery {
    topic: Option<String>,
}

fn served(state: &AppState, topic: &str) -> Result<(), Refusal> {
    evspool::Topic::new(topic).map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    if state.config.topic_names().iter().any(|t| t == topic) {
        Ok(())
    } else {
        Err(Refusal::new(
            StatusCode::NOT_FOUND,
            format!("unknown topic {topic:?}: add [topics.{topic}] to the config"),
        ))
    }
}

/// `POST /v1/events?topic=T`: a JSON object, an array, or NDJSON → 202 with ids.
async fn events(
    State(state): State<Arc<AppState>>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
    budget: Option<Extension<RequestBudget>>,
    body: Bytes,
) -> Result<Response, Refusal> {
    let topic = q.topic.unwrap_or_else(|| "events".to_string());
    served(&state, &topic)?;
    let body = decoded(&state, &headers, &budget, body)?;
    let payloads = ingest::parse_events(&body, state.config.server.max_events_per_request)?;
    let a = accept(&state, &topic, payloads).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"accepted": a.ids.len(), "dropped": a.dropped, "ids": a.ids})),
    )
        .into_response())
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
}

fn has_verbose(form: &[u8]) -> bool {
    form_urlencoded::parse(form).any(|(k, v)| k == "verbose" && v == "1")
}

/// The Mixpanel-compatible routes. The answer takes the shape the caller's SDK
/// reads: `{"status":1,"error":null}` when `verbose=1` is in the query or the
/// form body (as the official SDKs send it), `1`/`0` otherwise, and for a JSON
/// body on `/import` Mixpanel's import shape.
async fn mixpanel(
    state: Arc<AppState>,
    topic: &str,
    query: Option<String>,
    headers: HeaderMap,
    budget: Option<Extension<RequestBudget>>,
    body: Bytes,
) -> Response {
    let form = is_form(&headers);
    let mut verbose = query.as_deref().is_some_and(|q| has_verbose(q.as_bytes()));
    let result = async {
        let body = decoded(&state, &headers, &budget, body)?;
        let verbose_in_body = form && has_verbose(&body);
        let payloads = ingest::parse_mixpanel(
            &body,
            form,
            query.as_deref(),
            state.config.server.max_events_per_request,
        )?;
        Ok::<_, Refusal>((accept(&state, topic, payloads).await, verbose_in_body))
    }
    .await;
    let result = match result {
        Ok((r, v)) => {
            verbose |= v;
            r
        }
        Err(r) => Err(r),
    };
    let import_shape = topic == "import" && !form && !verbose;
    match result {
        Ok(a) if import_shape => {
            axum::Json(json!({"code": 200, "num_records_imported": a.ids.len(), "status": "OK"}))
                .into_response()
        }
        Err(r) if import_shape => (
            r.status,
            axum::Json(
                json!({"code": r.status.as_u16(), "error": r.message, "status": "Bad Request"}),
            ),
        )
            .into_response(),
        Ok(_) if verbose => axum::Json(json!({"status": 1, "error": null})).into_response(),
        Ok(_) => "1".into_response(),
        Err(r) if verbose => (
            r.status,
            axum::Json(json!({"status": 0, "error": r.message})),
        )
            .into_response(),
        Err(r) => (r.status, "0").into_response(),
    }
}

/// A Mixpanel-compatible route feeding `topic` (GET carries `data` in the query).
fn mixpanel_route(topic: &'static str) -> axum::routing::MethodRouter<Arc<AppState>> {
    let handler = move |State(s): State<Arc<AppState>>,
                        RawQuery(q): RawQuery,
                        h: HeaderMap,
                        budget: Option<Extension<RequestBudget>>,
                        b: Bytes| { mixpanel(s, topic, q, h, budget, b) };
    post(handler).get(handler)
}

/// Segment `/v1/batch`.
async fn segment_batch(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    budget: Option<Extension<RequestBudget>>,
    body: Bytes,
) -> Result<Response, Refusal> {
    let body = decoded(&state, &headers, &budget, body)?;
    let payloads = ingest::parse_segment_batch(&body, state.config.server.max_events_per_request)?;
    accept(&state, "segment", payloads).await?;
    Ok(axum::Json(json!({"success": true})).into_response())
}

/// Segment's single-call endpoints (`/v1/track`, `/v1/identify`, ...): the call
/// type comes from the path when the body lacks it.
async fn segment_single(
    State(state): State<Arc<AppState>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    budget: Option<Extension<RequestBudget>>,
    body: Bytes,
) -> Result<Response, Refusal> {
    let body = decoded(&state, &headers, &budget, body)?;
    let mut payloads = ingest::parse_events(&body, 1)?;
    let kind = uri.path().trim_start_matches("/v1/");
    // Spliced, not re-serialized: numbers and every other byte stay as sent.
    payloads[0] = ingest::with_segment_type(&payloads[0], kind)?;
    accept(&state, "segment", payloads).await?;
    Ok(axum::Json(json!({"success": true})).into_response())
}

/// `GET /v1/topics`: the topics this daemon accepts.
async fn topics(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(json!({"topics": state.config.topic_names()})).into_response()
}
