//! The HTTP sinks' client: keep-alive connections (HTTP/1.1, or HTTP/2 where
//! an HTTPS collector prefers it), each request driving its own connection
//! in the task that sends it.
//!
//! # Why not reqwest
//!
//! A plain reqwest loop posting 50-event bodies to a loopback collector moves
//! about 1.6M events/s on two cores; the same loop over hyper's own
//! connections, each polled by the task that sends on it, about 2.8M
//! (docs/performance.md, 2026-12-07). reqwest's layers (URL parsing twice per
//! request, the redirect, decompression and retry layers, the pool's
//! connection task and the channel hops to it) cost more than everything the
//! queue does per batch. The forwarder sends one request at a time per worker,
//! so it needs none of them.
//!
//! # How a request goes
//!
//! 1. **Proxy.** If the environment names a proxy for the URL
//!    (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`, and `NO_PROXY`, upper or
//!    lower case, read once when the client is built, as curl and reqwest
//!    read them), the request goes through reqwest, which forwards it or
//!    tunnels it (`CONNECT`) as before.
//! 2. **Connection.** Otherwise the newest idle connection to the same scheme,
//!    host and port is taken from the pool; one idle for longer than
//!    [`IDLE_TIMEOUT`], or that the collector closed, is dropped and the next
//!    tried. With none left, a new one is dialled within `connect_timeout`:
//!    each of the host's addresses in turn with an equal share of it (as
//!    hyper's connector does), `TCP_NODELAY`, then for `https` TLS (rustls,
//!    the platform's certificate verifier, ALPN `h2` then `http/1.1`, as
//!    reqwest offered).
//! 3. **Exchange.** The request is written and the response read in full
//!    while the caller's task polls the connection itself: no connection
//!    task, no channel between tasks. One request at a time per connection,
//!    HTTP/2 included.
//! 4. **Return.** A connection goes back to the pool (at most
//!    `pool_max_idle_per_host` per origin) only if its response was read in
//!    full, did not say `Connection: close`, and it takes a request at once
//!    (not one still writing a body the collector stopped reading). A
//!    timeout, an error or a caller that drops the request closes it.
//!
//! # Invariants
//!
//! - The whole request (checkout, dial, TLS, write, response, body) takes at
//!   most `timeout`; then it fails as `timeout`.
//! - A connection whose driving future has ended is dropped at once, so
//!   hyper answers or cancels whatever was queued on it: nothing waits on a
//!   dead connection.
//! - A request is sent again by the client only when, on a reused
//!   connection, hyper hands it back unsent (the collector had closed the
//!   connection while idle) or an HTTP/2 collector says it did not process
//!   it (`REFUSED_STREAM`, or a graceful `GOAWAY` that did not cover it, RFC
//!   9113 §8.7, as reqwest resent them); then once, on a new connection. A
//!   request the collector may have processed (even one it never answered)
//!   is the caller's failure, a `Delivery::Retry` with backoff, as any other.
//! - Redirects are never followed and responses never decompressed.
//! - Error text starts with the kind (`timeout`, `connect error`,
//!   `request error`, `body error`) and never holds the URL
//!   (`forward::health` classifies by the kind).

mod connection;
mod error;
mod request;
mod target;

pub use error::{Error, ErrorKind};
pub use request::{RequestBuilder, Response};
pub use target::Target;

use super::http::HttpClientConfig;
use bytes::Bytes;
use connection::{Conn, ConnFuture, Failure, Sender};
use error::chain;
use http::Request;
use http::header::{self, HeaderMap, HeaderValue};
use http_body_util::Full;
use hyper::client::conn::{http1, http2};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use target::Origin;

/// How long an idle connection is kept (reqwest's and hyper's default).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The environment variables that can name a proxy.
const PROXY_VARS: [&str; 6] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
];

struct Proxied {
    matcher: Matcher,
    client: reqwest::Client,
}

struct Inner {
    timeout: Duration,
    connect_timeout: Duration,
    max_idle: usize,
    user_agent: HeaderValue,
    tls: tokio_rustls::TlsConnector,
    idle: Mutex<Vec<Conn>>,
    proxied: Option<Proxied>,
}

/// The HTTP sinks' client (see the module doc). Cheap to clone: clones share
/// the pool.
#[derive(Clone)]
pub struct HttpClient(Arc<Inner>);

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("timeout", &self.0.timeout)
            .field("connect_timeout", &self.0.connect_timeout)
            .field("proxied", &self.0.proxied.is_some())
            .finish_non_exhaustive()
    }
}

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The platform's certificate verifier or rustls refused.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The proxy client (reqwest) could not be built.
    #[error("proxy client: {0}")]
    Proxy(String),
    /// `user_agent` is not a valid header value.
    #[error("user_agent {0:?} is not a valid header value")]
    UserAgent(String),
}

impl HttpClient {
    /// Builds a client: the platform's trusted roots, proxies from the
    /// environment.
    ///
    /// # Errors
    ///
    /// [`BuildError`].
    pub fn new(cfg: &HttpClientConfig) -> Result<Self, BuildError> {
        let matcher = PROXY_VARS
            .iter()
            .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
            .then(Matcher::from_env);
        // reqwest reads the same variables itself.
        Self::with(cfg, Vec::new(), matcher.map(|m| (m, None)))
    }

    /// [`Self::new`] trusting `roots` besides the platform's, with `proxies`
    /// instead of the environment's: which URLs go through a proxy, and the
    /// proxy reqwest is to use for them (`None`: reqwest reads the
    /// environment).
    pub(crate) fn with(
        cfg: &HttpClientConfig,
        roots: Vec<rustls::pki_types::CertificateDer<'static>>,
        proxies: Option<(Matcher, Option<reqwest::Proxy>)>,
    ) -> Result<Self, BuildError> {
        super::http::install_crypto_provider();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = if roots.is_empty() {
            rustls_platform_verifier::Verifier::new(provider.clone())
        } else {
            rustls_platform_verifier::Verifier::new_with_extra_roots(roots, provider.clone())
        }
        .map_err(|e| BuildError::Tls(e.to_string()))?;
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| BuildError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        // As reqwest offered: HTTP/2 where the collector prefers it.
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let proxied = match proxies {
            None => None,
            Some((matcher, proxy)) => {
                let client = reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .timeout(cfg.timeout)
                    .connect_timeout(cfg.connect_timeout)
                    .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
                    .user_agent(cfg.user_agent.clone())
                    .no_gzip();
                let client = match proxy {
                    Some(p) => client.proxy(p),
                    None => client,
                };
                Some(Proxied {
                    matcher,
                    client: client.build().map_err(|e| BuildError::Proxy(chain(&e)))?,
                })
            }
        };
        Ok(Self(Arc::new(Inner {
            timeout: cfg.timeout,
            connect_timeout: cfg.connect_timeout,
            max_idle: cfg.pool_max_idle_per_host,
            user_agent: HeaderValue::from_str(&cfg.user_agent)
                .map_err(|_| BuildError::UserAgent(cfg.user_agent.clone()))?,
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            idle: Mutex::new(Vec::new()),
            proxied,
        })))
    }

    /// A POST to `target`.
    pub fn post(&self, target: &Target) -> RequestBuilder {
        self.request(Ok(target.clone()))
    }

    /// A POST to `url`, parsed now (a bad URL fails the request as a
    /// `request error`).
    pub fn post_url(&self, url: &str) -> RequestBuilder {
        self.request(Target::parse(url))
    }

    fn request(&self, target: Result<Target, String>) -> RequestBuilder {
        RequestBuilder {
            client: self.clone(),
            target,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            error: None,
        }
    }

    /// Idle connections held now (tests).
    #[cfg(test)]
    pub(crate) fn idle(&self) -> usize {
        self.0.idle.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// The newest usable idle connection to `origin`, if any.
    async fn checkout(&self, origin: &Origin) -> Option<Conn> {
        loop {
            let mut c = {
                let mut idle = self.0.idle.lock().ok()?;
                idle.retain(|c| c.idle_since.elapsed() < IDLE_TIMEOUT);
                let at = idle.iter().rposition(|c| &c.origin == origin)?;
                idle.swap_remove(at)
            };
            if c.ready().await {
                return Some(c);
            }
        }
    }

    /// Puts a connection whose exchange ended cleanly back in the pool, if
    /// it takes a request now (not one still writing a body the collector
    /// stopped reading: the next request would wait for it).
    fn checkin(&self, mut c: Conn) {
        if !c.ready_now() {
            return;
        }
        c.idle_since = Instant::now();
        if let Ok(mut idle) = self.0.idle.lock()
            && idle.iter().filter(|i| i.origin == c.origin).count() < self.0.max_idle
        {
            idle.push(c);
        }
    }

    /// A new connection to `origin`, within `connect_timeout`: each of the
    /// host's addresses in turn, with an equal share of the time (as hyper's
    /// connector does), so a dead first address leaves time for the next.
    async fn dial(&self, origin: &Origin) -> Result<Conn, Error> {
        let connect_error = |detail: String| Error::new(ErrorKind::Connect, detail);
        let connect = async {
            let addrs: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((origin.host.as_str(), origin.port))
                    .await
                    .map_err(|e| connect_error(format!("dns error: {e}")))?
                    .collect();
            let share = self.0.connect_timeout / u32::try_from(addrs.len().max(1)).unwrap_or(1);
            let mut tcp = Err(connect_error("dns error: no addresses".into()));
            for addr in addrs {
                tcp = match tokio::time::timeout(share, tokio::net::TcpStream::connect(addr)).await
                {
                    Ok(Ok(s)) => Ok(s),
                    Ok(Err(e)) => Err(connect_error(format!("tcp connect error: {e}"))),
                    Err(_) => Err(connect_error(format!(
                        "tcp connect error: no connection within {}",
                        humantime::format_duration(share)
                    ))),
                };
                if tcp.is_ok() {
                    break;
                }
            }
            let tcp = tcp?;
            let _ = tcp.set_nodelay(true);
            let handshake = |e: hyper::Error| connect_error(chain(&e));
            let (send, conn): (Sender, ConnFuture) = if origin.tls {
                let name = rustls::pki_types::ServerName::try_from(origin.host.clone())
                    .map_err(|e| connect_error(format!("tls: {e}")))?;
                let tls = self
                    .0
                    .tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| connect_error(format!("tls handshake: {}", chain(&e))))?;
                if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                    let (send, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                        .await
                        .map_err(handshake)?;
                    (Sender::H2(send), Box::pin(conn))
                } else {
                    let (send, conn) = http1::handshake(TokioIo::new(tls))
                        .await
                        .map_err(handshake)?;
                    (Sender::H1(send), Box::pin(conn))
                }
            } else {
                let (send, conn) = http1::handshake(TokioIo::new(tcp))
                    .await
                    .map_err(handshake)?;
                (Sender::H1(send), Box::pin(conn))
            };
            Ok(Conn {
                origin: origin.clone(),
                send,
                conn: Some(conn),
                idle_since: Instant::now(),
            })
        };
        tokio::time::timeout(self.0.connect_timeout, connect)
            .await
            .unwrap_or_else(|_| {
                Err(connect_error(format!(
                    "no connection within {}",
                    humantime::format_duration(self.0.connect_timeout)
                )))
            })
    }

    /// Sends on a pooled or new connection; once more on a new one if hyper
    /// hands the request back unsent from a reused connection (the collector
    /// closed it while idle, or as the request was queued).
    async fn round_trip(
        &self,
        target: &Target,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response, Error> {
        let origin = &target.0.origin;
        let mut req = http::Request::new(Full::new(body));
        *req.method_mut() = http::Method::POST;
        *req.headers_mut() = headers;
        if let Some(mut c) = self.checkout(origin).await {
            // HTTP/2 may refuse a stream it has taken: keep a copy (cheap:
            // the body is shared) to send again.
            let spare = matches!(c.send, Sender::H2(_)).then(|| copy(&req));
            match c.exchange(for_connection(req, &c, target)).await {
                Ok(resp) => return Ok(self.finish(c, resp)),
                Err(Failure {
                    unsent: Some(back),
                    error,
                    ..
                }) => {
                    tracing::debug!(%error, "a kept-alive collector connection had closed; sending on a new one");
                    req = back;
                }
                Err(Failure {
                    unprocessed: true,
                    error,
                    ..
                }) if spare.is_some() => {
                    tracing::debug!(%error, "the collector did not process the request; sending on a new connection");
                    req = spare.unwrap_or_default();
                }
                Err(f) => return Err(f.error),
            }
        }
        let mut c = self.dial(origin).await?;
        match c.exchange(for_connection(req, &c, target)).await {
            Ok(resp) => Ok(self.finish(c, resp)),
            Err(f) => Err(f.error),
        }
    }

    /// Returns the connection to the pool if the exchange left it reusable.
    fn finish(&self, c: Conn, resp: Response) -> Response {
        let close = resp
            .headers
            .get(header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
        if resp.body.is_ok() && !close {
            self.checkin(c);
        }
        resp
    }
}

/// A copy of a request about to be sent: method, headers and (shared) body.
fn copy(req: &Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let mut c = Request::new(req.body().clone());
    *c.method_mut() = req.method().clone();
    *c.headers_mut() = req.headers().clone();
    c
}

/// The request as `c`'s protocol wants it: HTTP/1.1 in origin form with a
/// `Host` header, HTTP/2 with the absolute URI (its `:authority`) instead.
fn for_connection(
    mut req: Request<Full<Bytes>>,
    c: &Conn,
    target: &Target,
) -> Request<Full<Bytes>> {
    match c.send {
        Sender::H1(_) => {
            *req.uri_mut() = target.0.path.clone();
            req.headers_mut()
                .insert(header::HOST, target.0.host.clone());
        }
        Sender::H2(_) => {
            *req.uri_mut() = target.0.uri.clone();
            req.headers_mut().remove(header::HOST);
        }
    }
    req
}

#[cfg(test)]
mod tests;
