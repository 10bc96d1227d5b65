//! The recording collector: a Segment-style `POST /v1/batch` endpoint (axum on
//! `127.0.0.1:0`) that records every event it accepts as (marker, `messageId`).
//!
//! The daemon's Segment sink sends each event's stable id as `messageId`, so a
//! redelivery shows up as the same marker with the same id. Events are recorded
//! when the request arrives, before the configured delay: a daemon killed while
//! it waits for the answer has delivered the batch without knowing it, which is
//! exactly the window that makes at-least-once produce duplicates.
//!
//! The collector can go down for real (listener closed, connections refused)
//! and come back on the same port, and it can answer slowly.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One event as the collector accepted it.
#[derive(Clone, Debug)]
pub struct Delivered {
    /// The producer's marker (`m` in the payload).
    pub marker: String,
    /// The `messageId` the sink stamped: the event's stable id.
    pub id: String,
}

#[derive(Default)]
pub struct Shared {
    up: AtomicBool,
    delay_ms: AtomicU64,
    in_flight: AtomicI64,
    requests: AtomicU64,
    deliveries: Mutex<Vec<Delivered>>,
}

/// Decrements the in-flight gauge however the handler ends (a dropped future too).
struct InFlight<'a>(&'a AtomicI64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn batch(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    s.in_flight.fetch_add(1, Ordering::SeqCst);
    let _guard = InFlight(&s.in_flight);
    s.requests.fetch_add(1, Ordering::SeqCst);
    if !s.up.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "not JSON").into_response();
    };
    let Some(items) = v.get("batch").and_then(|b| b.as_array()) else {
        return (StatusCode::BAD_REQUEST, "no batch").into_response();
    };
    let mut got = Vec::with_capacity(items.len());
    for it in items {
        let marker = it.get("m").and_then(|m| m.as_str()).unwrap_or("<none>");
        let id = it
            .get("messageId")
            .and_then(|m| m.as_str())
            .unwrap_or("<none>");
        got.push(Delivered {
            marker: marker.to_string(),
            id: id.to_string(),
        });
    }
    s.deliveries.lock().unwrap().extend(got);
    let delay = s.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    axum::Json(serde_json::json!({"success": true})).into_response()
}

/// A running (or stopped) collector with a fixed address.
pub struct Collector {
    pub shared: Arc<Shared>,
    pub addr: SocketAddr,
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

impl Collector {
    /// Starts an accepting collector on a free loopback port.
    pub async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the collector");
        let addr = listener.local_addr().unwrap();
        let c = Collector {
            shared: Arc::new(Shared::default()),
            addr,
            server: Mutex::new(None),
        };
        c.serve(listener);
        c
    }

    /// `http://127.0.0.1:PORT`, the Segment sink's `api_host`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let app = axum::Router::new()
            .route("/v1/batch", axum::routing::post(batch))
            .with_state(self.shared.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        self.shared.up.store(true, Ordering::SeqCst);
        *self.server.lock().unwrap() = Some((tx, task));
    }

    /// Closes the listener and every connection: the port refuses connections.
    pub async fn down(&self) {
        self.shared.up.store(false, Ordering::SeqCst);
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

    /// Answers every request this much later (events are recorded first).
    pub fn set_delay(&self, d: Duration) {
        self.shared
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Requests being handled right now.
    pub fn in_flight(&self) -> i64 {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Every event accepted so far, in arrival order, duplicates included.
    pub fn deliveries(&self) -> Vec<Delivered> {
        self.shared.deliveries.lock().unwrap().clone()
    }

    /// How many events were accepted so far, duplicates included.
    pub fn delivered_count(&self) -> usize {
        self.shared.deliveries.lock().unwrap().len()
    }

    /// Distinct markers accepted so far.
    pub fn distinct_markers(&self) -> std::collections::HashSet<String> {
        self.shared
            .deliveries
            .lock()
            .unwrap()
            .iter()
            .map(|d| d.marker.clone())
            .collect()
    }
}
