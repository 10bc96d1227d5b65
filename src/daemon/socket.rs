//! The admin socket (`<dir>/evspool.sock`) and serving one connection of
//! either listener.
//!
//! The socket is owner-only twice over: it lives in the store directory
//! (`0700`), and the file itself is `0600` (connecting needs write permission
//! on it). It is bound only after the store is open, so its lock is held: a
//! socket file already there is a stale one from a killed daemon, and is
//! replaced.

use crate::admin_api::{SOCKET_FILE, SocketPath};
use anyhow::Context as _;
use axum::Router;
use hyper_util::rt::TokioIo;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;
use tokio::net::{TcpStream, UnixListener, UnixStream};

/// The bound admin socket.
pub struct Bound {
    /// The listener.
    pub listener: UnixListener,
    /// The path it was bound by (keeps a directory handle open for a long path).
    pub path: SocketPath,
}

/// Binds the admin socket of the store in `dir`, replacing a stale one.
///
/// # Errors
///
/// The socket cannot be created or made owner-only.
pub fn bind(dir: &Path) -> anyhow::Result<Bound> {
    let file = dir.join(SOCKET_FILE);
    match std::fs::remove_file(&file) {
        Ok(()) => tracing::debug!(path = %file.display(), "Stale admin socket replaced."),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("cannot remove stale {}", file.display()));
        }
    }
    let path = SocketPath::in_dir(dir)
        .with_context(|| format!("cannot open {} for its admin socket", dir.display()))?;
    let listener = UnixListener::bind(path.path())
        .with_context(|| format!("cannot create the admin socket {}", file.display()))?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {} owner-only", file.display()))?;
    Ok(Bound { listener, path })
}

/// Removes the admin socket of `dir` (at shutdown).
pub fn remove(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(SOCKET_FILE));
}

/// An accepted connection.
pub enum Conn {
    /// On `server.listen`.
    Tcp(TcpStream),
    /// On the admin socket.
    Unix(UnixStream),
}

/// Serves one connection with `app` until it closes or the server shuts down.
///
/// A connection that sends nothing within `request_timeout` is dropped here:
/// hyper's header timer starts only at the first byte.
pub async fn serve_connection(
    conn: Conn,
    app: Router,
    builder: hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    request_timeout: Duration,
) {
    match conn {
        Conn::Tcp(stream) => {
            let mut first = [0u8; 1];
            match tokio::time::timeout(request_timeout, stream.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
            serve(stream, app, builder, watcher).await;
        }
        Conn::Unix(stream) => {
            match tokio::time::timeout(request_timeout, stream.readable()).await {
                Ok(Ok(())) => {}
                _ => return,
            }
            serve(stream, app, builder, watcher).await;
        }
    }
}

async fn serve<S>(
    stream: S,
    app: Router,
    builder: hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tower::ServiceExt as _;
    let service = app.map_request(|req: axum::http::Request<hyper::body::Incoming>| {
        req.map(axum::body::Body::new)
    });
    let conn = builder.serve_connection_with_upgrades(
        TokioIo::new(stream),
        hyper_util::service::TowerToHyperService::new(service),
    );
    let _ = watcher.watch(conn.into_owned()).await;
}
