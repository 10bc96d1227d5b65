//! One HTTP/1.1 connection, driven by the task that sends on it.

use super::error::{Error, ErrorKind, chain};
use super::request::Response;
use super::target::Origin;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

pub(super) type ConnFuture = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

/// One HTTP/1.1 connection: its sender and the future that drives it,
/// polled only by the task using the connection.
pub(super) struct Conn {
    pub(super) origin: Origin,
    pub(super) send: http1::SendRequest<Full<Bytes>>,
    pub(super) conn: ConnFuture,
    /// The driving future has finished: the connection is gone.
    pub(super) closed: bool,
    pub(super) idle_since: Instant,
}

/// Polls `fut` to its end, and the connection alongside while it is open
/// (the request's bytes and the response's go through it).
async fn drive<T>(conn: &mut ConnFuture, closed: &mut bool, fut: impl Future<Output = T>) -> T {
    let mut fut = std::pin::pin!(fut);
    if !*closed {
        tokio::select! {
            biased;
            out = &mut fut => return out,
            ended = conn.as_mut() => {
                *closed = true;
                if let Err(e) = ended {
                    tracing::debug!(error = %chain(&e), "collector connection closed");
                }
            }
        }
    }
    // The connection is gone: hyper has resolved or dropped whatever `fut`
    // waits on, so this ends.
    fut.await
}

/// Why an exchange failed, and whether the collector can have seen any of
/// the response.
pub(super) struct Failure {
    pub(super) error: Error,
    pub(super) before_response: bool,
}

impl Conn {
    /// Waits until the connection takes a request; false if it is closed.
    pub(super) async fn ready(&mut self) -> bool {
        let ok = drive(&mut self.conn, &mut self.closed, self.send.ready()).await;
        ok.is_ok() && !self.closed
    }

    /// Sends `req` and reads the response in full.
    pub(super) async fn exchange(
        &mut self,
        req: http::Request<Full<Bytes>>,
    ) -> Result<Response, Failure> {
        let resp = drive(
            &mut self.conn,
            &mut self.closed,
            self.send.send_request(req),
        )
        .await
        .map_err(|e| Failure {
            error: Error::new(ErrorKind::Request, chain(&e)),
            before_response: true,
        })?;
        let (parts, body) = resp.into_parts();
        let body = drive(&mut self.conn, &mut self.closed, body.collect())
            .await
            .map(http_body_util::Collected::to_bytes)
            .map_err(|e| Error::new(ErrorKind::Body, chain(&e)));
        Ok(Response {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }
}
