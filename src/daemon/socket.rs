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
