//! What the daemon holds against any client (DESIGN guarantee 8): a cap on
//! open connections, and one memory budget for request bodies and their
//! decompression across all requests.
//!
//! # Connections
//!
//! Every accepted TCP connection takes a slot of [`ConnectionCap`]; beyond
//! the cap a connection is answered `503` with `Retry-After` and closed at
//! once, so the daemon never runs out of descriptors for its store, its
//! sinks and new clients (`accept` failing with `EMFILE` stopped every new
//! request in the field). The default cap is derived from the descriptor
//! limit ([`default_max_connections`]), which the daemon first raises to its
//! hard limit ([`raise_descriptor_limit`]). A connection that sends nothing
//! useful (no request within `request_timeout`: a lone `P` of the HTTP/2
//! preface, an HTTP/2 connection that answers pings but opens no stream, an
//! idle keep-alive) is closed by the watchdog in `socket.rs`.
//!
//! # Memory
//!
//! [`Budget`] holds `server.memory_budget` bytes. Before its body is read, a
//! request reserves twice its announced size (the body, and the copy that
//! parsing and the durable write make of it); without a size it reserves
//! twice `max_body`. It waits for that at most [`BUDGET_WAIT`], else it is
//! answered `503` with `Retry-After: 1`. Decompression takes more in steps as
//! its output grows, without waiting (a request never waits while holding
//! budget, so requests cannot starve each other); a step the budget cannot
//! give ends the request with the same `503`. Everything is given back when
//! the request's handler returns.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Descriptors kept back from the connection cap: the store's body files
/// (`queue.max_open_files`) plus this many for sled, the sinks' outbound
/// connections, the admin socket, the log and the refusals themselves.
pub const RESERVED_DESCRIPTORS: u64 = 256;

/// The fewest connections a derived cap allows, even under a tiny limit.
const MIN_CONNECTIONS: usize = 16;

/// Raises the soft descriptor limit to the hard one (as Go's runtime does), so
/// that the cap derived from it is as large as the system allows. Returns
/// the soft limit in force afterwards (`None`: unlimited or unknown).
pub fn raise_descriptor_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    if let (Some(cur), Some(max)) = (lim.current, lim.maximum)
        && max > cur
    {
        let raised = Rlimit {
            current: Some(max),
            maximum: Some(max),
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return Some(max);
        }
    }
    lim.current
}

/// The connection cap when `server.max_connections` is not set: the soft
/// descriptor limit less the body files' budget and [`RESERVED_DESCRIPTORS`],
/// at least [`MIN_CONNECTIONS`]; 65,536 when the limit is unknown or unlimited.
pub fn default_max_connections(nofile: Option<u64>, max_open_files: usize) -> usize {
    match nofile {
        Some(n) => {
            let reserve = max_open_files as u64 + RESERVED_DESCRIPTORS;
            (n.saturating_sub(reserve) as usize).clamp(MIN_CONNECTIONS, 1 << 20)
        }
        None => 1 << 16,
    }
}

/// The slots of open TCP connections.
#[derive(Clone)]
pub struct ConnectionCap {
    slots: Arc<Semaphore>,
    max: usize,
}

impl ConnectionCap {
    /// A cap of `max` connections.
    pub fn new(max: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// A slot for a new connection, held until it closes; `None` at the cap.
    pub fn try_take(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }
}

/// What a connection beyond the cap is told before it is closed.
pub const OVER_CAP_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 70\r\n\r\n{\"error\":\"too many open connections (server.max_connections); retry\"}\n";

/// The longest a request waits for its first reservation.
pub const BUDGET_WAIT: Duration = Duration::from_secs(2);

/// Budget is counted in units of this many bytes (a semaphore's permits).
const UNIT: u64 = 1024;

/// The memory budget shared by every request.
#[derive(Clone)]
pub struct Budget {
    sem: Arc<Semaphore>,
    total_units: u32,
}

/// Budget held by one request; given back on drop.
pub struct Held {
    permit: Option<OwnedSemaphorePermit>,
    budget: Budget,
}

/// Why a request got no budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget;

impl Budget {
    /// A budget of `bytes`.
    pub fn new(bytes: u64) -> Self {
        let units = (bytes / UNIT).clamp(1, u32::MAX as u64) as u32;
        Self {
            sem: Arc::new(Semaphore::new(units as usize)),
            total_units: units,
        }
    }

    fn units(bytes: u64) -> u32 {
        bytes.div_ceil(UNIT).min(u32::MAX as u64) as u32
    }

    /// Waits at most `wait` for `bytes` (capped at the whole budget).
    pub async fn reserve(&self, bytes: u64, wait: Duration) -> Result<Held, OverBudget> {
        let n = Self::units(bytes).min(self.total_units);
        let permit = if n == 0 {
            None
        } else {
            match tokio::time::timeout(wait, self.sem.clone().acquire_many_owned(n)).await {
                Ok(Ok(p)) => Some(p),
                _ => return Err(OverBudget),
            }
        };
        Ok(Held {
            permit,
            budget: self.clone(),
        })
    }

    /// Bytes not held by any request now.
    #[cfg(test)]
    pub fn available(&self) -> u64 {
        self.sem.available_permits() as u64 * UNIT
    }
}

impl Held {
    /// Takes `bytes` more without waiting.
    pub fn grow(&mut self, bytes: u64) -> Result<(), OverBudget> {
        let n = Budget::units(bytes);
        if n == 0 {
            return Ok(());
        }
        let more = self
            .budget
            .sem
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| OverBudget)?;
        match &mut self.permit {
            Some(p) => p.merge(more),
            None => self.permit = Some(more),
        }
        Ok(())
    }
}

/// The request's budget, for handlers that grow it (decompression).
#[derive(Clone)]
pub struct RequestBudget(pub Arc<std::sync::Mutex<Held>>);

impl RequestBudget {
    /// Takes `bytes` more for this request without waiting.
    pub fn grow(&self, bytes: u64) -> Result<(), OverBudget> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).grow(bytes)
    }
}

/// The answer when the budget is spent: `503` with `Retry-After: 1`.
pub fn over_budget() -> Response {
    metrics::counter!("evspool_requests_refused_total", "reason" => "memory_budget").increment(1);
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [("retry-after", "1")],
        axum::Json(serde_json::json!({
            "error": "the daemon's memory budget for request bodies is in use (server.memory_budget); retry shortly"
        })),
    )
        .into_response()
}

/// Middleware: reserves twice the body's announced size (or twice
/// `max_body`) before the body is read; the reservation lives in the
/// request's extensions until the handler returns.
pub async fn reserve_body(
    State(state): State<Arc<super::AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    use axum::body::HttpBody as _;
    let max_body = state.config.server.max_body.as_u64();
    let announced = req.body().size_hint().exact().unwrap_or(max_body);
    let want = 2 * announced.min(max_body);
    let wait = BUDGET_WAIT.min(state.config.server.request_timeout);
    let held = match state.budget.reserve(want, wait).await {
        Ok(h) => h,
        Err(OverBudget) => return over_budget(),
    };
    let held = RequestBudget(Arc::new(std::sync::Mutex::new(held)));
    req.extensions_mut().insert(held.clone());
    let resp = next.run(req).await;
    drop(held);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_leaves_room_for_the_store_and_is_never_tiny() {
        assert_eq!(default_max_connections(Some(1024), 128), 640);
        assert_eq!(default_max_connections(Some(100), 128), MIN_CONNECTIONS);
        assert_eq!(default_max_connections(None, 128), 1 << 16);
    }

    #[tokio::test]
    async fn the_budget_is_shared_and_given_back_and_growth_never_waits() {
        let b = Budget::new(10 * 1024);
        let mut a = b
            .reserve(6 * 1024, Duration::from_millis(10))
            .await
            .unwrap();
        assert!(
            b.reserve(6 * 1024, Duration::from_millis(10))
                .await
                .is_err()
        );
        assert_eq!(a.grow(5 * 1024), Err(OverBudget));
        a.grow(4 * 1024).unwrap();
        assert_eq!(b.available(), 0);
        drop(a);
        assert_eq!(b.available(), 10 * 1024);
        // More than the whole budget waits for the whole budget, not forever.
        assert!(b.reserve(1 << 40, Duration::from_millis(10)).await.is_ok());
    }

    #[test]
    fn the_over_cap_answer_is_well_formed() {
        let text = std::str::from_utf8(OVER_CAP_RESPONSE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{text}"
        );
        assert!(serde_json::from_str::<serde_json::Value>(body).is_ok());
    }
}
