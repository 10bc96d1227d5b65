//! The sidecar daemon (`evspool run`): local HTTP ingest, forwarding, the admin
//! API the CLI uses while the daemon holds the store, Prometheus metrics, and
//! signal handling. Built only on the library's public API, as any embedding
//! application would be.
//!
//! # Shutdown
//!
//! SIGTERM or SIGINT: stop accepting requests (in-flight requests finish),
//! deliver what can be delivered while delivery makes progress, for at most
//! `shutdown_deadline` — a topic whose collector is unreachable, failing,
//! rate-limiting or refusing the configuration, or whose breaker is open,
//! stops at once — then release what is left (it stays on disk for the next
//! start, and the log says how many events), flush, remove the admin address
//! file and socket, exit 0. A second signal exits at once (`signals`).
//!
//! # Listeners
//!
//! TCP (`server.listen`) serves ingest, metrics and health to anyone who can
//! reach it; the admin socket in the store directory serves the admin API to
//! the store's owner. See [`crate::admin_api`] for why.

pub mod admin;
pub mod config;
pub mod ingest;
pub mod limits;
pub mod metrics;
pub mod origin;
pub mod rates;
mod recovery;
pub mod signals;
pub mod sinks;
mod socket;

use crate::admin_api::{ADMIN_FILE, AdminAddress};
use anyhow::Context as _;
use axum::Router;
use config::DaemonConfig;
use evspool::Queue;
use evspool::forward::{Forwarder, ForwarderHandle};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;

/// Everything a request handler needs.
pub struct AppState {
    /// The queue.
    pub queue: Queue,
    /// The running forwarder (for drain and stats).
    pub forwarder: ForwarderHandle,
    /// The configuration.
    pub config: DaemonConfig,
    /// The bearer token, if one is required.
    pub token: Option<Secret>,
    /// Prometheus rendering.
    pub metrics: metrics::Metrics,
    /// Per-topic event rates for `evspool top`.
    pub rates: rates::Rates,
    /// When the daemon started, ms since the epoch.
    pub started_at_ms: u64,
    /// The memory budget every request's body and decompression draw on.
    pub budget: limits::Budget,
    /// Which `Host`, `Origin` and `Sec-Fetch-Site` a TCP request may carry.
    pub allowed: origin::Allowed,
}

/// Which listener a router serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// `server.listen`: open to whoever reaches it; admin routes only with a token.
    Tcp,
    /// The owner-only admin socket in the store directory: everything, no token.
    Socket,
}

/// A secret string: never printed by `Debug` or `Display`.
pub use evspool::Secret;

/// Reads the token from the environment; unset or empty means none.
///
/// # Errors
///
/// A token of only whitespace (it would look set and protect nothing a
/// client could not guess), or one with whitespace at either end (clients
/// strip it from the header, so it could never match).
pub fn token_from_env() -> anyhow::Result<Option<Secret>> {
    let Ok(t) = std::env::var(config::TOKEN_ENV) else {
        return Ok(None);
    };
    if t.is_empty() {
        return Ok(None);
    }
    if t.trim().is_empty() {
        anyhow::bail!(
            "{} is set but holds only whitespace: set a real token, or unset it",
            config::TOKEN_ENV
        );
    }
    if t.trim() != t {
        anyhow::bail!(
            "{} has whitespace at its start or end, which clients strip from the header: remove it",
            config::TOKEN_ENV
        );
    }
    Ok(Some(Secret(t)))
}

/// Builds the router over `state` for one listener.
pub fn router(state: Arc<AppState>, transport: Transport) -> Router {
    let limits = &state.config.server;
    let max_body = limits.max_body.as_u64() as usize;
    let concurrency = limits.concurrency;
    let timeout = limits.request_timeout;
    let mut protected = Router::new().merge(ingest::routes());
    // Without a token, TCP cannot tell the store's owner from any other local
    // user: the admin API stays on the owner-only socket.
    if transport == Transport::Socket || state.token.is_some() {
        protected = protected.merge(admin::routes());
    }
    if transport == Transport::Tcp {
        protected = protected.route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admin::require_token,
        ));
    }
    // Reserved before the body is read (the outermost layer below runs first).
    let protected = protected.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        limits::reserve_body,
    ));
    let too_large: Arc<str> = Arc::from(format!(
        "request body is larger than {} (server.max_body); send fewer events per request, or gzip them",
        limits.max_body
    ));
    let mut app = Router::new()
        .merge(protected)
        .route("/metrics", axum::routing::get(metrics::render))
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route("/readyz", axum::routing::get(admin::readyz))
        .layer(axum::middleware::map_response(move |resp| {
            body_limit_message(resp, too_large.clone())
        }))
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(concurrency));
    if transport == Transport::Tcp {
        // Before anything else: a web page's request gets nothing but a 403.
        app = app.layer(axum::middleware::from_fn_with_state(
            state.clone(),
            origin::check,
        ));
    }
    app.layer(tower_http::timeout::TimeoutLayer::with_status_code(
        axum::http::StatusCode::REQUEST_TIMEOUT,
        timeout,
    ))
    .with_state(state)
}

/// Replaces axum's plain-text answer to a body over `max_body` ("Failed to
/// buffer the request body: length limit exceeded") with the JSON error every
/// other refusal has, naming the limit.
async fn body_limit_message(
    resp: axum::response::Response,
    message: Arc<str>,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let plain = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"));
    if resp.status() != axum::http::StatusCode::PAYLOAD_TOO_LARGE || !plain {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    if !bytes.starts_with(b"Failed to buffer the request body") {
        return axum::response::Response::from_parts(parts, axum::body::Body::from(bytes));
    }
    (
        axum::http::StatusCode::PAYLOAD_TOO_LARGE,
        axum::Json(serde_json::json!({ "error": &*message })),
    )
        .into_response()
}

/// Refuses to listen beyond loopback without a token.
pub fn check_bind(addr: &std::net::SocketAddr, token: &Option<Secret>) -> anyhow::Result<()> {
    if !addr.ip().is_loopback() && token.is_none() {
        anyhow::bail!(
            "refusing to listen on {addr} without a token: anything on the network could post or purge; set {} or listen on 127.0.0.1",
            config::TOKEN_ENV
        );
    }
    Ok(())
}

/// Opens the queue and starts the forwarder for every topic.
pub fn start(dir: &Path, cfg: &DaemonConfig) -> anyhow::Result<(Queue, ForwarderHandle)> {
    let queue = Queue::open(dir, cfg.queue.clone())?;
    let forwarder = build_forwarder(&queue, cfg)?.spawn();
    Ok((queue, forwarder))
}

/// A forwarder with a route for every served topic that has a sink.
pub fn build_forwarder(queue: &Queue, cfg: &DaemonConfig) -> anyhow::Result<Forwarder> {
    let client = sinks::client(&cfg.http)?;
    let mut f = Forwarder::new(queue.clone()).active(cfg.active);
    let mut topics = cfg.topic_names();
    for t in queue.topics() {
        if !topics.contains(&t) {
            topics.push(t);
        }
    }
    let mut unrouted = Vec::new();
    for topic in topics {
        match cfg.sink_for(&topic) {
            Some(sink_cfg) => {
                let sink = sinks::build(&topic, sink_cfg, &client)
                    .with_context(|| format!("sink for topic {topic:?}"))?;
                f = f.route(&topic, sink, cfg.forward_for(&topic))?;
            }
            None => unrouted.push(topic),
        }
    }
    if cfg.sink.is_none() && cfg.topics.values().all(|t| t.sink.is_none()) {
        tracing::warn!(
            "No sink configured: events are stored but not forwarded. Pass --sink and --sink-url, or add [sink] to the config."
        );
    } else if !unrouted.is_empty() {
        tracing::debug!(topics = ?unrouted, "Topics without a sink are stored, not forwarded.");
    }
    Ok(f)
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn serve(dir: PathBuf, cfg: DaemonConfig) -> anyhow::Result<()> {
    let token = token_from_env()?;
    check_bind(&cfg.server.listen, &token)?;
    let deadline = cfg.server.shutdown_deadline;
    let stop = signals::listen(deadline).context("installing the signal handlers")?;
    let metrics = metrics::Metrics::install();
    // Listen before the store is opened: a start that fails on a busy port
    // leaves no new store directory (and no ballast file) behind.
    let listener = TcpListener::bind(cfg.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.server.listen))?;
    let (queue, forwarder) = start(&dir, &cfg)?;
    let admin_socket = socket::bind(&dir)?;
    let socket_file = admin_socket.file.clone();
    let local = listener.local_addr()?;
    let admin_file = dir.join(ADMIN_FILE);
    let addr = AdminAddress {
        url: format!("http://{local}"),
        pid: std::process::id(),
        socket: admin_socket.elsewhere.then(|| admin_socket.file.clone()),
    };
    write_private(&dir, ADMIN_FILE, &serde_json::to_vec(&addr)?)?;
    let nofile = limits::raise_descriptor_limit();
    let cap = limits::ConnectionCap::new(
        cfg.server
            .max_connections
            .unwrap_or_else(|| limits::default_max_connections(nofile, cfg.queue.max_open_files)),
    );
    tracing::info!(
        max_connections = cap.max(),
        descriptor_limit = ?nofile,
        memory_budget = %cfg.server.memory_budget,
        "Limits set."
    );
    let state = Arc::new(AppState {
        queue: queue.clone(),
        forwarder,
        budget: limits::Budget::new(cfg.server.memory_budget.as_u64()),
        allowed: origin::Allowed::new(
            local,
            &cfg.server.allowed_hosts,
            &cfg.server.allowed_origins,
        ),
        config: cfg,
        token,
        metrics,
        rates: Default::default(),
        started_at_ms: crate::admin_api::now_ms(),
    });
    let app = router(state.clone(), Transport::Tcp);
    let admin_app = router(state.clone(), Transport::Socket);
    let sampler = tokio::spawn(rates::sample_every_second(Arc::downgrade(&state)));
    let recovery = tokio::spawn(recovery::reopen_when_room(
        Arc::downgrade(&state),
        dir.clone(),
    ));
    // Printed on stdout so scripts (and tests) can find an ephemeral port.
    println!("evspool listening on http://{local}");
    tracing::info!(listen = %local, dir = %dir.display(), "Daemon started.");
    let request_timeout = state.config.server.request_timeout;
    serve_http(
        (listener, app, cap),
        (admin_socket.listener, admin_app),
        request_timeout,
        stop.requested(),
    )
    .await;
    sampler.abort();
    let _ = sampler.await;
    recovery.abort();
    let _ = recovery.await;
    let report = state.forwarder.drain_while_progressing(deadline).await;
    for (topic, held) in &report.held {
        tracing::warn!(
            topic = %topic,
            events = held.events,
            reason = %held.reason,
            "Topic stopped without delivering everything; its events stay on disk for the next start."
        );
    }
    tracing::info!(
        delivered = report.delivered,
        took = %humantime::format_duration(std::time::Duration::from_millis(report.elapsed_ms)),
        "Drain ended."
    );
    let _ = std::fs::remove_file(&admin_file);
    socket::remove(&socket_file);
    drop(admin_socket.path);
    let state = Arc::try_unwrap(state)
        .map_err(|_| anyhow::anyhow!("request handlers still hold the state"))?;
    state
        .forwarder
        .shutdown(std::time::Duration::from_secs(1))
        .await;
    let _ = queue.sync().await;
    let left = queue.stats().total.events;
    tokio::task::spawn_blocking(move || queue.close()).await?;
    tracing::info!(
        events_on_disk = left,
        dir = %dir.display(),
        "Stopped. Events not yet delivered stay on disk for the next start."
    );
    Ok(())
}

/// Accepts connections on TCP and on the admin socket until `shutdown`
/// resolves, then lets in-flight requests finish (for at most `request_timeout`).
///
/// Unlike `axum::serve`, the connections get a timer, so a client that has not
/// sent its whole request head within `request_timeout` (a slow-loris trickling
/// headers, or a connection that never sends anything) is disconnected; the
/// router's `TimeoutLayer` bounds the body and the handler the same way, and
/// `socket::serve_connection` closes a connection that makes no request for
/// as long. TCP connections beyond the cap are answered 503 and closed
/// (`limits.rs`); a failing `accept` (out of descriptors) backs off.
async fn serve_http(
    (listener, app, cap): (TcpListener, Router, limits::ConnectionCap),
    (admin_listener, admin_app): (tokio::net::UnixListener, Router),
    request_timeout: std::time::Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioTimer};
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(request_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(request_timeout)
        .keep_alive_timeout(request_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut backoff = socket::AcceptBackoff::default();
    tokio::pin!(shutdown);
    loop {
        let conn = tokio::select! {
            accepted = listener.accept() => accepted.map(|(s, _)| socket::Conn::Tcp(s)),
            accepted = admin_listener.accept() => accepted.map(|(s, _)| socket::Conn::Unix(s)),
            () = &mut shutdown => break,
        };
        let conn = match conn {
            Ok(conn) => {
                backoff.succeeded();
                conn
            }
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                tokio::time::sleep(backoff.failed(&e)).await;
                continue;
            }
        };
        let (app, slot) = match conn {
            socket::Conn::Tcp(ref stream) => match cap.try_take() {
                Some(slot) => {
                    // Given back (and the gauge lowered) when the connection closes.
                    ::metrics::gauge!("evspool_connections_open").increment(1.0);
                    (app.clone(), Some(slot))
                }
                None => {
                    socket::refuse_over_cap(stream, cap.max());
                    continue;
                }
            },
            socket::Conn::Unix(_) => (admin_app.clone(), None),
        };
        tokio::spawn(socket::serve_connection(
            conn,
            app,
            builder.clone(),
            graceful.watcher(),
            request_timeout,
            slot,
        ));
    }
    drop(listener);
    drop(admin_listener);
    let _ = tokio::time::timeout(request_timeout, graceful.shutdown()).await;
}

/// Writes the file `name` in the store directory `dir`, readable by the
/// owner only, without following a symlink (`evspool::owned`, OW3).
fn write_private(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    evspool::owned::StoreDir::open(dir)
        .and_then(|d| d.write(name, bytes))
        .with_context(|| format!("cannot write {}", dir.join(name).display()))
}
