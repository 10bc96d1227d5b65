//! A scriptable HTTP collector (axum). Every request is parsed (JSON array,
//! object, NDJSON, Mixpanel `data=` form, Segment `{"batch":[...]}`; gzip
//! honoured), offered to the test's handler, and — when the handler accepts —
//! its events are recorded.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the collector saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    /// The parsed events (empty when the body did not parse).
    pub events: Vec<serde_json::Value>,
    /// The raw (decompressed) body.
    pub body: Bytes,
    /// The request's ordinal, from 0.
    pub n: usize,
}

/// How to answer.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Sleep this long before answering.
    pub delay: Duration,
    /// Record the request's events as accepted.
    pub accept: bool,
    /// Only these indexes are recorded as accepted (None: all, when `accept`).
    pub accept_only: Option<Vec<usize>>,
}

impl Reply {
    pub fn ok() -> Self {
        Self {
            status: 200,
            headers: vec![],
            body: r#"{"status":1,"error":null}"#.into(),
            delay: Duration::ZERO,
            accept: true,
            accept_only: None,
        }
    }

    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: vec![],
            body: String::new(),
            delay: Duration::ZERO,
            accept: false,
            accept_only: None,
        }
    }

    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }

    pub fn body(mut self, b: impl Into<String>) -> Self {
        self.body = b.into();
        self
    }

    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

type Handler = dyn Fn(&Seen) -> Reply + Send + Sync;

pub struct Inner {
    handler: Mutex<Arc<Handler>>,
    pub requests: Mutex<Vec<Seen>>,
    pub accepted: Mutex<Vec<serde_json::Value>>,
}

/// A running collector.
pub struct Collector {
    pub url: String,
    pub inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn parse(body: &Bytes, form: bool, segment: bool) -> Vec<serde_json::Value> {
    let parsed = if segment {
        evspool::ingest::parse_segment_batch(body, 1_000_000)
    } else {
        evspool::ingest::parse_mixpanel(body, form, None, 1_000_000)
    };
    parsed
        .map(|v| {
            v.iter()
                .filter_map(|b| serde_json::from_slice(b).ok())
                .collect()
        })
        .unwrap_or_default()
}

async fn any(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let enc = headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok());
    let body = evspool::ingest::decode_body(body, enc, 256 << 20).unwrap_or_default();
    let form = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let events = parse(&body, form, uri.path().ends_with("/batch"));
    let seen = {
        let mut reqs = inner.requests.lock().unwrap();
        let s = Seen {
            at: Instant::now(),
            method: method.to_string(),
            path: uri.path().to_string(),
            query: uri.query().unwrap_or_default().to_string(),
            headers: headers.clone(),
            events,
            body,
            n: reqs.len(),
        };
        reqs.push(s.clone());
        s
    };
    let handler = inner.handler.lock().unwrap().clone();
    let reply = handler(&seen);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    if reply.accept {
        let mut acc = inner.accepted.lock().unwrap();
        for (i, e) in seen.events.iter().enumerate() {
            if reply
                .accept_only
                .as_ref()
                .is_none_or(|only| only.contains(&i))
            {
                acc.push(e.clone());
            }
        }
    }
    let mut resp = (StatusCode::from_u16(reply.status).unwrap(), reply.body).into_response();
    for (k, v) in reply.headers {
        resp.headers_mut().insert(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    resp
}

impl Collector {
    /// Starts a collector that accepts everything.
    pub async fn start() -> Self {
        let inner = Arc::new(Inner {
            handler: Mutex::new(Arc::new(|_: &Seen| Reply::ok())),
            requests: Mutex::new(Vec::new()),
            accepted: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new().fallback(any).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, inner, task }
    }

    /// Replaces how requests are answered.
    pub fn respond(&self, f: impl Fn(&Seen) -> Reply + Send + Sync + 'static) {
        *self.inner.handler.lock().unwrap() = Arc::new(f);
    }

    /// Every event accepted so far.
    pub fn accepted(&self) -> Vec<serde_json::Value> {
        self.inner.accepted.lock().unwrap().clone()
    }

    /// Every request seen so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.inner.requests.lock().unwrap().clone()
    }

    /// Waits (bounded) until `pred` holds on the accepted events.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&[serde_json::Value]) -> bool,
    ) -> bool {
        let until = Instant::now() + timeout;
        loop {
            if pred(&self.accepted()) {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
