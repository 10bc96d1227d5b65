//! The fake collector: an HTTP server (axum on `127.0.0.1:0`) standing in for
//! Mixpanel, Segment or any HTTP endpoint a sink forwards to.
//!
//! Every request, on any path, is parsed (JSON array, object, NDJSON,
//! Mixpanel `data=` form, Segment `{"batch":[...]}` on a path ending in
//! `/batch`; gzip honoured), recorded as [`Seen`], and offered to the test's
//! handler ([`Collector::respond`]), whose [`Reply`] says how to answer and
//! whether the request's events count as accepted ([`Collector::accepted`]).
//! The default handler accepts everything with Mixpanel's `{"status":1}`.
//!
//! The collector can go down for real ([`Collector::down`]: listener closed,
//! connections refused; a request still arriving is answered 503) and come
//! back on the same port ([`Collector::up`]).
//!
//! What it keeps is chosen at start ([`Keep`]): everything
//! ([`Collector::start`]); only the accepted events, for long runs
//! ([`Keep::Events`]); or nothing but counts, for benches
//! ([`Collector::start_counting`]), where it must cost the process under
//! measurement almost nothing.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::ledger::Delivered;

/// What the collector saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    /// When it arrived.
    pub at: Instant,
    /// `POST`, ...
    pub method: String,
    /// The path, e.g. `/ingest`.
    pub path: String,
    /// The query string, without `?` (empty without one).
    pub query: String,
    /// The request's headers.
    pub headers: HeaderMap,
    /// The parsed events (empty when the body did not parse, and always when
    /// counting).
    pub events: Vec<serde_json::Value>,
    /// The raw (decompressed) body; when counting, as received.
    pub body: Bytes,
    /// The request's ordinal, from 0.
    pub n: usize,
}

/// How to answer.
#[derive(Clone, Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
    /// Sleep this long before answering, and before recording the events as
    /// accepted: a request abandoned meanwhile records nothing.
    pub delay: Duration,
    /// Sleep this long before answering, after recording the events as
    /// accepted: a client that gives up (or is killed) meanwhile has delivered
    /// them without knowing it.
    pub hold: Duration,
    /// Record the request's events as accepted.
    pub accept: bool,
    /// Only these indexes are recorded as accepted (None: all, when `accept`).
    pub accept_only: Option<Vec<usize>>,
}

impl Reply {
    /// 200 `{"status":1,"error":null}`, every event accepted.
    pub fn ok() -> Self {
        Self {
            status: 200,
            headers: vec![],
            body: r#"{"status":1,"error":null}"#.into(),
            delay: Duration::ZERO,
            hold: Duration::ZERO,
            accept: true,
            accept_only: None,
        }
    }

    /// `status` with an empty body, nothing accepted.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: vec![],
            body: String::new(),
            delay: Duration::ZERO,
            hold: Duration::ZERO,
            accept: false,
            accept_only: None,
        }
    }

    /// Adds a header.
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, b: impl Into<String>) -> Self {
        self.body = b.into();
        self
    }

    /// Sets [`Reply::delay`].
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }

    /// Sets [`Reply::hold`].
    pub fn hold(mut self, d: Duration) -> Self {
        self.hold = d;
        self
    }
}

/// What a collector keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// Every request ([`Collector::requests`]) and every accepted event.
    Requests,
    /// The accepted events only (memory bounded by them: soaks).
    Events,
    /// Nothing: bodies are neither decoded nor parsed; requests and bytes
    /// are counted, and the handler sees each raw body (no events).
    Counts,
}

type Handler = dyn Fn(&Seen) -> Reply + Send + Sync;

/// The collector's state, shared with its request handler.
struct Inner {
    keep: Keep,
    up: AtomicBool,
    handler: Mutex<Arc<Handler>>,
    requests: Mutex<Vec<Seen>>,
    accepted: Mutex<Vec<serde_json::Value>>,
    /// Requests received, answered or not (down included).
    received: AtomicU64,
    /// Bytes of request bodies as received (compressed, if they were).
    bytes: AtomicU64,
    in_flight: AtomicI64,
    first_request: OnceLock<Instant>,
}

/// Decrements the in-flight gauge however the handler ends (a dropped future too).
struct InFlight<'a>(&'a AtomicI64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running (or stopped) collector with a fixed address.
pub struct Collector {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// `127.0.0.1:PORT`.
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    server: Mutex<
        Option<(
            tokio::sync::oneshot::Sender<()>,
            tokio::task::JoinHandle<()>,
        )>,
    >,
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some((_, task)) = self.server.lock().unwrap().take() {
            task.abort();
        }
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
    let now = Instant::now();
    let _ = inner.first_request.set(now);
    inner.in_flight.fetch_add(1, Ordering::SeqCst);
    let _guard = InFlight(&inner.in_flight);
    inner.received.fetch_add(1, Ordering::SeqCst);
    inner.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
    if !inner.up.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
    }
    let (body, events) = if inner.keep != Keep::Counts {
        let enc = headers
            .get("content-encoding")
            .and_then(|v| v.to_str().ok());
        let body = evspool::ingest::decode_body(body, enc, 256 << 20).unwrap_or_default();
        let form = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        let events = parse(&body, form, uri.path().ends_with("/batch"));
        (body, events)
    } else {
        (body, Vec::new())
    };
    let mut seen = Seen {
        at: now,
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or_default().to_string(),
        headers,
        events,
        body,
        n: 0,
    };
    if inner.keep == Keep::Requests {
        let mut reqs = inner.requests.lock().unwrap();
        seen.n = reqs.len();
        reqs.push(seen.clone());
    } else {
        seen.n = inner.received.load(Ordering::SeqCst) as usize - 1;
    }
    let handler = inner.handler.lock().unwrap().clone();
    let reply = handler(&seen);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    if reply.accept && inner.keep != Keep::Counts {
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
    if !reply.hold.is_zero() {
        tokio::time::sleep(reply.hold).await;
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
    /// Starts a collector on a free loopback port that keeps everything
    /// ([`Keep::Requests`]) and accepts everything ([`Reply::ok`]).
    pub async fn start() -> Self {
        Self::start_keeping(Keep::Requests).await
    }

    /// Starts a collector that decodes, parses and keeps nothing
    /// ([`Keep::Counts`]): it counts requests ([`Collector::request_count`])
    /// and their bytes ([`Collector::bytes`]), and its handler sees each raw
    /// body. For benches, where the collector shares the machine with what
    /// is measured.
    pub async fn start_counting() -> Self {
        Self::start_keeping(Keep::Counts).await
    }

    /// Starts a collector on a free loopback port keeping `keep`.
    pub async fn start_keeping(keep: Keep) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the collector");
        let addr = listener.local_addr().unwrap();
        let c = Collector {
            url: format!("http://{addr}"),
            addr,
            inner: Arc::new(Inner {
                keep,
                up: AtomicBool::new(false),
                handler: Mutex::new(Arc::new(|_: &Seen| Reply::ok())),
                requests: Mutex::new(Vec::new()),
                accepted: Mutex::new(Vec::new()),
                received: AtomicU64::new(0),
                bytes: AtomicU64::new(0),
                in_flight: AtomicI64::new(0),
                first_request: OnceLock::new(),
            }),
            server: Mutex::new(None),
        };
        c.serve(listener);
        c
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let app = axum::Router::new()
            .fallback(any)
            .with_state(self.inner.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        self.inner.up.store(true, Ordering::SeqCst);
        *self.server.lock().unwrap() = Some((tx, task));
    }

    /// Closes the listener and every connection: the port refuses
    /// connections (a request still arriving is answered 503 `down`).
    pub async fn down(&self) {
        self.inner.up.store(false, Ordering::SeqCst);
        let server = self.server.lock().unwrap().take();
        if let Some((tx, mut task)) = server {
            let _ = tx.send(());
            if tokio::time::timeout(Duration::from_secs(3), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }

    /// Listens again on the same port (bounded retries if the port lingers).
    pub async fn up(&self) {
        let mut last = None;
        for _ in 0..100 {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => {
                    self.serve(l);
                    return;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the collector cannot listen on {} again: {last:?}",
            self.addr
        );
    }

    /// Replaces how requests are answered.
    pub fn respond(&self, f: impl Fn(&Seen) -> Reply + Send + Sync + 'static) {
        *self.inner.handler.lock().unwrap() = Arc::new(f);
    }

    /// Every event accepted so far, in arrival order, duplicates included.
    pub fn accepted(&self) -> Vec<serde_json::Value> {
        self.inner.accepted.lock().unwrap().clone()
    }

    /// How many events were accepted so far, duplicates included.
    pub fn accepted_count(&self) -> usize {
        self.inner.accepted.lock().unwrap().len()
    }

    /// Every request seen so far while up (with [`Keep::Requests`]).
    pub fn requests(&self) -> Vec<Seen> {
        self.inner.requests.lock().unwrap().clone()
    }

    /// Requests received so far, answered or not.
    pub fn request_count(&self) -> u64 {
        self.inner.received.load(Ordering::SeqCst)
    }

    /// Bytes of request bodies received so far, as sent (compressed, if they were).
    pub fn bytes(&self) -> u64 {
        self.inner.bytes.load(Ordering::Relaxed)
    }

    /// Requests being handled right now.
    pub fn in_flight(&self) -> i64 {
        self.inner.in_flight.load(Ordering::SeqCst)
    }

    /// When the first request arrived.
    pub fn first_request(&self) -> Option<Instant> {
        self.inner.first_request.get().copied()
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

    /// Every accepted event as the ledger counts it (its marker `m` and its
    /// `messageId`), in arrival order, duplicates included.
    pub fn deliveries(&self) -> Vec<Delivered> {
        self.inner
            .accepted
            .lock()
            .unwrap()
            .iter()
            .map(Delivered::of)
            .collect()
    }

    /// Distinct markers (`m`) accepted so far.
    pub fn distinct_markers(&self) -> HashSet<String> {
        self.inner
            .accepted
            .lock()
            .unwrap()
            .iter()
            .map(|e| Delivered::of(e).marker)
            .collect()
    }
}
