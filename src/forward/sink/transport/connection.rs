//! One connection (HTTP/1.1, or HTTP/2 where ALPN chose it), driven by the
//! task that sends on it.

use super::error::{Error, ErrorKind, chain};
use super::request::Response;
use super::target::Origin;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

pub(super) type ConnFuture = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

type Request = http::Request<Full<Bytes>>;

/// The sending half of an HTTP/1.1 or HTTP/2 connection (ALPN chose).
pub(super) enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<hyper::Result<()>> {
        match self {
            Self::H1(s) => s.poll_ready(cx),
            Self::H2(s) => s.poll_ready(cx),
        }
    }

    pub(super) fn is_closed(&self) -> bool {
        match self {
            Self::H1(s) => s.is_closed(),
            Self::H2(s) => s.is_closed(),
        }
    }

    async fn send(
        &mut self,
        req: Request,
    ) -> Result<http::Response<Incoming>, TrySendError<Request>> {
        match self {
            Self::H1(s) => s.try_send_request(req).await,
            Self::H2(s) => s.try_send_request(req).await,
        }
    }
}

/// One connection: its sender and the future that drives it, polled only by
/// the task using the connection.
pub(super) struct Conn {
    pub(super) origin: Origin,
    pub(super) send: Sender,
    /// The driving future; `None` once it has ended, dropped at once so that
    /// hyper cancels (and hands back) whatever was queued on it.
    pub(super) conn: Option<ConnFuture>,
    pub(super) idle_since: Instant,
}

/// Polls `fut` to its end, and the connection alongside while it is open
/// (the request's bytes and the response's go through it).
async fn drive<T>(conn: &mut Option<ConnFuture>, fut: impl Future<Output = T>) -> T {
    let mut fut = std::pin::pin!(fut);
    if let Some(driving) = conn.as_mut() {
        tokio::select! {
            biased;
            out = &mut fut => return out,
            ended = driving.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(error = %chain(&e), "collector connection closed");
                }
            }
        }
    }
    // The connection has ended: dropping its state makes hyper answer or
    // cancel whatever `fut` waits on (a clean close leaves a queued request
    // waiting inside the finished dispatcher until then).
    *conn = None;
    fut.await
}

/// Why an exchange failed, and the request when hyper gave it back unsent.
pub(super) struct Failure {
    pub(super) error: Error,
    pub(super) unsent: Option<Request>,
    /// An HTTP/2 collector said it did not process the request (RFC 9113
    /// §8.7): it refused the stream, or its GOAWAY did not cover it.
    pub(super) unprocessed: bool,
}

/// Whether `e` is an HTTP/2 collector saying the request was not processed:
/// `REFUSED_STREAM`, or a graceful `GOAWAY` (`NO_ERROR`) whose last stream
/// came before this one (h2 fails only those streams with it).
fn unprocessed(e: &hyper::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(h) = s.downcast_ref::<h2::Error>() {
            return h.is_remote()
                && (h.reason() == Some(h2::Reason::REFUSED_STREAM)
                    || h.is_go_away() && h.reason() == Some(h2::Reason::NO_ERROR));
        }
        src = s.source();
    }
    false
}

impl Conn {
    /// The connection has ended.
    pub(super) fn closed(&self) -> bool {
        self.conn.is_none() || self.send.is_closed()
    }

    /// Waits until the connection takes a request; false if it has ended.
    pub(super) async fn ready(&mut self) -> bool {
        let send = &mut self.send;
        let ok = drive(
            &mut self.conn,
            std::future::poll_fn(|cx| send.poll_ready(cx)),
        )
        .await;
        ok.is_ok() && !self.closed()
    }

    /// Whether the connection takes a request now, without waiting: one poll
    /// of the connection (it may finish writing a request or reading a
    /// response) and of the sender. A connection still writing a request
    /// body the collector stopped reading is not.
    pub(super) fn ready_now(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if let Some(driving) = self.conn.as_mut()
            && driving.as_mut().poll(&mut cx).is_ready()
        {
            self.conn = None;
        }
        !self.closed() && matches!(self.send.poll_ready(&mut cx), Poll::Ready(Ok(())))
    }

    /// Sends `req` and reads the response in full.
    pub(super) async fn exchange(&mut self, req: Request) -> Result<Response, Failure> {
        let resp = drive(&mut self.conn, self.send.send(req))
            .await
            .map_err(|mut e| Failure {
                unsent: e.take_message(),
                unprocessed: unprocessed(e.error()),
                error: Error::new(ErrorKind::Request, chain(e.error())),
            })?;
        let (parts, body) = resp.into_parts();
        let body = drive(&mut self.conn, body.collect())
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
