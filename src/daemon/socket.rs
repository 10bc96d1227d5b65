//! The admin socket (`<dir>/evspool.sock`) and serving one connection of
//! either listener.
//!
//! The socket is owner-only twice over: it lives in the store directory
//! (`0700`), and the file itself is `0600` (connecting needs write permission
//! on it). It is bound only after the store is open, so its lock is held: a
//! socket file already there is a stale one from a killed daemon, and is
//! replaced.
//!
//! A store directory whose file system cannot hold a socket (some FUSE and
//! network file systems answer `ENOSYS` or `EPERM`) gets its socket in
//! [`fallback_dir`] instead, a `0700` directory of this user, named after
//! the store's path; the address file in the store directory says where, and
//! the CLI looks there.

use crate::admin_api::{SOCKET_FILE, SocketPath, fallback_dir};
use anyhow::Context as _;
use axum::Router;
use hyper_util::rt::TokioIo;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpStream, UnixListener, UnixStream};

/// The bound admin socket.
pub struct Bound {
    /// The listener.
    pub listener: UnixListener,
    /// The path it was bound by (keeps a directory handle open for a long path).
    pub path: SocketPath,
    /// The socket file.
    pub file: std::path::PathBuf,
    /// Whether it is outside the store directory (in [`fallback_dir`]).
    pub elsewhere: bool,
}

/// Binds the admin socket of the store in `dir`, replacing a stale one.
///
/// # Errors
///
/// The socket cannot be created or made owner-only.
pub fn bind(dir: &Path) -> anyhow::Result<Bound> {
    match bind_in(dir, &dir.join(SOCKET_FILE)) {
        Ok(b) => Ok(b),
        Err(e) => {
            let other = fallback_dir();
            let name = format!(
                "{:08x}.sock",
                crc32fast::hash(
                    dir.canonicalize()
                        .unwrap_or_else(|_| dir.to_path_buf())
                        .as_os_str()
                        .as_encoded_bytes()
                )
            );
            private_dir(&other)?;
            let mut b =
                bind_in(&other, &other.join(&name)).with_context(|| format!("after: {e:#}"))?;
            b.elsewhere = true;
            tracing::warn!(
                dir = %dir.display(),
                socket = %b.file.display(),
                cause = %format!("{e:#}"),
                "The store's file system cannot hold the admin socket; it is in a private directory instead (the store's evspool.admin says where)."
            );
            Ok(b)
        }
    }
}

/// Creates `dir` `0700`, or checks that this user owns it and nobody else can enter it.
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
    }
    let meta =
        std::fs::symlink_metadata(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    let me = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX);
    if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o077 != 0 {
        anyhow::bail!(
            "{} is not a private directory of this user (owner uid {}, mode {:o}); remove it or set XDG_RUNTIME_DIR",
            dir.display(),
            meta.uid(),
            meta.mode() & 0o7777
        );
    }
    Ok(())
}

/// Binds the socket `file` in `dir`, replacing a stale one.
fn bind_in(dir: &Path, file: &Path) -> anyhow::Result<Bound> {
    let file = file.to_path_buf();
    match std::fs::remove_file(&file) {
        Ok(()) => tracing::debug!(path = %file.display(), "Stale admin socket replaced."),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("cannot remove stale {}", file.display()));
        }
    }
    let path = if file.file_name() == Some(std::ffi::OsStr::new(SOCKET_FILE)) {
        SocketPath::in_dir(dir)
            .with_context(|| format!("cannot open {} for its admin socket", dir.display()))?
    } else {
        SocketPath::at(file.clone())
    };
    let listener = UnixListener::bind(path.path())
        .with_context(|| format!("cannot create the admin socket {}", file.display()))?;
    // chmod follows links: change the mode only of the socket just bound.
    let is_socket = std::fs::symlink_metadata(&file)
        .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()));
    if !is_socket {
        anyhow::bail!(
            "{} is not the socket just bound (replaced while binding); refusing it",
            file.display()
        );
    }
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {} owner-only", file.display()))?;
    Ok(Bound {
        listener,
        path,
        file,
        elsewhere: false,
    })
}

/// Removes the admin socket (at shutdown).
pub fn remove(file: &Path) {
    let _ = std::fs::remove_file(file);
}

/// An accepted connection.
pub enum Conn {
    /// On `server.listen`.
    Tcp(TcpStream),
    /// On the admin socket.
    Unix(UnixStream),
}

/// Answers a TCP connection beyond the cap with a 503 (if the socket takes
/// it at once; the daemon never waits on such a client) and closes it.
pub fn refuse_over_cap(stream: &TcpStream, max: usize) {
    let _ = stream.try_write(super::limits::OVER_CAP_RESPONSE);
    metrics::counter!("evspool_connections_refused_total").increment(1);
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = crate::admin_api::now_ms();
    let last = LAST.load(std::sync::atomic::Ordering::Relaxed);
    if now.saturating_sub(last) >= 10_000
        && LAST
            .compare_exchange(
                last,
                now,
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
            )
            .is_ok()
    {
        tracing::warn!(
            max_connections = max,
            "Connections refused: the cap of open connections is reached (server.max_connections; counted in evspool_connections_refused_total)."
        );
    }
}

/// How long the accept loop sleeps after a failed `accept` (out of
/// descriptors, say): 10 ms, doubling to 1 s while it keeps failing, back to
/// nothing at the first success. Logged once per 10 s with a count, not once
/// per failure.
#[derive(Default)]
pub struct AcceptBackoff {
    delay: Duration,
    failures: u64,
    logged_at: Option<std::time::Instant>,
}

impl AcceptBackoff {
    /// Records a success.
    pub fn succeeded(&mut self) {
        self.delay = Duration::ZERO;
    }

    /// Records a failure; returns how long to wait before the next `accept`.
    pub fn failed(&mut self, e: &std::io::Error) -> Duration {
        self.delay = (self.delay * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
        self.failures += 1;
        metrics::counter!("evspool_accept_errors_total").increment(1);
        if self
            .logged_at
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            tracing::warn!(
                error = %e,
                failures = self.failures,
                backoff_ms = self.delay.as_millis() as u64,
                "Accepting connections fails; backing off (out of descriptors? see server.max_connections and LimitNOFILE)."
            );
            self.logged_at = Some(std::time::Instant::now());
            self.failures = 0;
        }
        self.delay
    }
}

/// Serves one connection with `app` until it closes or the server shuts down.
///
/// A connection that sends nothing within `request_timeout` is dropped here
/// (hyper's header timer starts only at the first byte), and so is one that
/// has no request in flight for `request_timeout` (a lone `P` of the HTTP/2
/// preface, an HTTP/2 connection that answers pings but opens no stream, an
/// idle keep-alive). `slot` is the connection's place under the cap, given
/// back when it closes.
pub async fn serve_connection(
    conn: Conn,
    app: Router,
    builder: hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    request_timeout: Duration,
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    let _slot = Slot(slot);
    match conn {
        Conn::Tcp(stream) => {
            let mut first = [0u8; 1];
            match tokio::time::timeout(request_timeout, stream.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
            serve(stream, app, builder, watcher, request_timeout).await;
        }
        Conn::Unix(stream) => {
            match tokio::time::timeout(request_timeout, stream.readable()).await {
                Ok(Ok(())) => {}
                _ => return,
            }
            serve(stream, app, builder, watcher, request_timeout).await;
        }
    }
}

/// A TCP connection's place under the cap; its drop gives the place back
/// and lowers `evspool_connections_open`, however the connection ends.
struct Slot(Option<tokio::sync::OwnedSemaphorePermit>);

impl Drop for Slot {
    fn drop(&mut self) {
        if self.0.take().is_some() {
            metrics::gauge!("evspool_connections_open").decrement(1.0);
        }
    }
}

/// Requests in flight on one connection, and when the last one ended.
struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    /// When the connection last went idle (or opened), as ms since `start`.
    idle_since_ms: std::sync::atomic::AtomicU64,
    start: tokio::time::Instant,
}

/// One request in flight; its drop marks the connection idle from now.
struct InFlight(Arc<Activity>);

impl Activity {
    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// When the connection is to be closed if nothing happens before;
    /// `None` while a request is in flight.
    fn deadline(&self, idle: Duration) -> Option<tokio::time::Instant> {
        if self.in_flight.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            return None;
        }
        let since = self.idle_since_ms.load(std::sync::atomic::Ordering::SeqCst);
        Some(self.start + Duration::from_millis(since) + idle)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let ms = self.0.start.elapsed().as_millis() as u64;
        self.0
            .idle_since_ms
            .store(ms, std::sync::atomic::Ordering::SeqCst);
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn serve<S>(
    stream: S,
    app: Router,
    builder: hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    idle: Duration,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tower::ServiceExt as _;
    let activity = Arc::new(Activity {
        in_flight: Default::default(),
        idle_since_ms: Default::default(),
        start: tokio::time::Instant::now(),
    });
    let act = activity.clone();
    let service = tower::service_fn(move |req: axum::http::Request<hyper::body::Incoming>| {
        let guard = act.begin();
        let app = app.clone();
        async move {
            let resp = app.oneshot(req.map(axum::body::Body::new)).await;
            drop(guard);
            resp
        }
    });
    let conn = builder.serve_connection_with_upgrades(
        TokioIo::new(stream),
        hyper_util::service::TowerToHyperService::new(service),
    );
    let conn = watcher.watch(conn.into_owned());
    tokio::pin!(conn);
    loop {
        let wake = activity
            .deadline(idle)
            .unwrap_or_else(|| tokio::time::Instant::now() + idle);
        tokio::select! {
            _ = &mut conn => return,
            () = tokio::time::sleep_until(wake) => {
                if activity
                    .deadline(idle)
                    .is_some_and(|d| d <= tokio::time::Instant::now())
                {
                    // Nothing useful for `idle`: dropping the connection closes it.
                    metrics::counter!("evspool_connections_idle_closed_total").increment(1);
                    return;
                }
            }
        }
    }
}
