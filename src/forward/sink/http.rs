//! The shared HTTP client, the status → outcome classifier, and the generic
//! JSON sink.
//!
//! # Classification
//!
//! | response | outcome |
//! |---|---|
//! | 2xx, body fully read | `Delivered` |
//! | 2xx, body unreadable or truncated | `Retry` (the collector may not have it) |
//! | 408, 429, 5xx | `Retry`, honouring `Retry-After` |
//! | 413 | `Split` |
//! | 401, 403, 404, 3xx (redirects are never followed for a POST) | `ConfigFault` |
//! | 400, 422, other 4xx | `Reject` (the worker bisects to find the poison) |
//! | timeout, connect/DNS/TLS error, reset | `Retry` |
//!
//! # Event ids (the generic sink)
//!
//! Every event carries its stable id (`<instance>-<seq>`, never changed by
//! retries, restarts or replays), so a collector can deduplicate the
//! redeliveries of at-least-once:
//!
//! - `id_field` (default `evspool_id`): each event that is a JSON object gets
//!   `"evspool_id":"<id>"` as its first member, unless it already has a
//!   top-level member of that name (never overwritten: an upstream spool's id
//!   or the application's own wins). Empty: no field.
//! - `envelope = true`: each event is sent as `{"id":"<id>","event":<payload>}`
//!   instead, whatever its JSON type (`id_field` is then unused).
//! - `id_header` (none by default, e.g. `Evspool-Event-Ids`): a request header
//!   listing the ids of the events in the body, in body order, comma-separated.

use super::body;
pub use super::body::valid_json;
pub use super::transport::{BuildError, HttpClient};
use super::transport::{RequestBuilder, Target};
use super::{BoxFuture, Delivery, Rejected, Sink};
use crate::Event;
use bytesize::ByteSize;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, SystemTime};

/// Defaults to 30 s per request: longer than any healthy collector takes,
/// short enough that a hung connection is retried within a minute.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Defaults to 5 s to connect: a collector that does not accept by then is down.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Installs rustls' ring crypto provider as the process default (once).
/// reqwest is built without a provider of its own; every client needs this first.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The outbound HTTP client shared by every sink.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpClientConfig {
    /// Whole-request timeout.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Connect timeout.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Idle keep-alive connections kept per host.
    pub pool_max_idle_per_host: usize,
    /// The User-Agent header.
    pub user_agent: String,
}

impl Default for HttpClientConfig {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            pool_max_idle_per_host: 32,
            user_agent: concat!("evspool/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

/// Builds the shared client: rustls, keep-alive, no redirects, timeouts
/// (see [`super::transport`]).
///
/// # Errors
///
/// The platform's certificate verifier could not be set up, or the
/// `user_agent` is not a valid header value.
pub fn build_client(cfg: &HttpClientConfig) -> Result<HttpClient, BuildError> {
    HttpClient::new(cfg)
}

/// Maps a response to an outcome. `body` is the fully read body, or the error
/// that stopped reading it.
pub fn classify(status: u16, retry_after: Option<&str>, body: Result<&[u8], String>) -> Delivery {
    let after =
        retry_after.and_then(|v| crate::forward::backoff::parse_retry_after(v, SystemTime::now()));
    let text = |b: &Result<&[u8], String>| match b {
        Ok(b) => String::from_utf8_lossy(&b[..b.len().min(300)])
            .trim()
            .to_string(),
        Err(e) => e.clone(),
    };
    match status {
        200..=299 => match body {
            Ok(_) => Delivery::Delivered,
            Err(e) => Delivery::Retry {
                after: None,
                reason: format!("http {status} with an unreadable body: {e}"),
            },
        },
        408 | 429 | 500..=599 => Delivery::Retry {
            after,
            reason: format!("http {status}: {}", text(&body)),
        },
        413 => Delivery::Split {
            reason: format!("http 413: {}", text(&body)),
        },
        300..=399 | 401 | 403 | 404 => Delivery::ConfigFault {
            status: Some(status),
            reason: format!("http {status}: {}", text(&body)),
        },
        _ => Delivery::Reject {
            reason: format!("http {status}: {}", text(&body)),
        },
    }
}

/// Whether a header name looks like it carries a credential (`Authorization`,
/// `*token*`, `*key*`, `*secret*`, ...); such values are redacted in `Debug`.
pub fn is_credential_header(name: &str) -> bool {
    crate::secret::is_sensitive_header(name)
}

/// A URL as logs may show it: without user, password, query or fragment
/// (a query is shown as `?…`, since it may hold an API key).
pub fn display_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            let query = u.query().is_some();
            u.set_query(None);
            u.set_fragment(None);
            let mut s = u.to_string();
            if query {
                s.push_str("?…");
            }
            s
        }
        Err(_) => "<not a URL>".to_string(),
    }
}

/// Sends a prepared request and classifies the response. The body is read in
/// full before anything counts as delivered.
pub async fn execute(req: RequestBuilder) -> (Delivery, Option<(u16, Vec<u8>)>) {
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            return (
                Delivery::Retry {
                    after: None,
                    reason: e.to_string(),
                },
                None,
            );
        }
    };
    let status = resp.status;
    let header = |name: &str| resp.headers.get(name).and_then(|v| v.to_str().ok());
    let retry_after = header("retry-after");
    let location = header("location").filter(|_| (300..400).contains(&status));
    let (outcome, seen) = match &resp.body {
        Ok(body) => (
            classify(status, retry_after, Ok(body)),
            Some((status, body.to_vec())),
        ),
        Err(e) => (classify(status, retry_after, Err(e.to_string())), None),
    };
    (with_location(outcome, location), seen)
}

/// Adds where a redirect points (without credentials or query) to its
/// configuration fault, so the operator can fix the URL.
fn with_location(outcome: Delivery, location: Option<&str>) -> Delivery {
    match (outcome, location) {
        (Delivery::ConfigFault { status, reason }, Some(loc)) => Delivery::ConfigFault {
            status,
            reason: format!("{reason} (redirects to {})", display_url(loc)),
        },
        (outcome, _) => outcome,
    }
}

/// Compresses a body with gzip at level 1 (fast; JSON still shrinks 5-10x).
pub fn gzip(body: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    let _ = enc.write_all(body);
    enc.finish().unwrap_or_default()
}

pub use crate::secret::Secret;

/// Request body layout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyFormat {
    /// `[event, event, ...]`
    #[default]
    Json,
    /// One event per line.
    Ndjson,
}

/// Authentication for the generic sink. Secrets are not read from the config
/// file: the daemon fills them from the environment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpAuth {
    /// No auth header.
    #[default]
    None,
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// `Authorization: Basic` with this username and the secret as password.
    Basic {
        /// The username.
        username: String,
    },
}

/// The generic sink's settings. `Debug` redacts the secret and the values of
/// credential-like `headers` (`Authorization`, `*token*`, `*key*`, ...).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSinkConfig {
    /// Where to POST.
    pub url: String,
    /// JSON array or NDJSON.
    pub format: BodyFormat,
    /// Extra request headers.
    pub headers: BTreeMap<String, String>,
    /// Authentication.
    pub auth: HttpAuth,
    /// The bearer token or basic-auth password (from the environment, never the file).
    #[serde(skip)]
    pub secret: Secret,
    /// Gzip request bodies (level 1).
    pub gzip: bool,
    /// Most events per request.
    pub max_batch_events: usize,
    /// Most payload bytes per request.
    pub max_batch_bytes: ByteSize,
    /// Largest event the collector takes.
    pub max_event_bytes: ByteSize,
    /// The member each JSON-object event gets holding its stable id (unless it
    /// has one of that name); empty for none. See the module docs.
    pub id_field: String,
    /// Send each event as `{"id":"<id>","event":<payload>}` instead.
    pub envelope: bool,
    /// A request header listing the batch's ids in body order, comma-separated.
    pub id_header: Option<String>,
}

/// Defaults to `evspool_id`: a name no application field is likely to have,
/// so the id is added to almost every event and never collides.
pub const DEFAULT_ID_FIELD: &str = "evspool_id";

impl std::fmt::Debug for HttpSinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: BTreeMap<&str, &str> = self
            .headers
            .iter()
            .map(|(k, v)| {
                let shown = if crate::secret::is_sensitive_header(k) {
                    "<redacted>"
                } else {
                    v.as_str()
                };
                (k.as_str(), shown)
            })
            .collect();
        f.debug_struct("HttpSinkConfig")
            .field("url", &self.url)
            .field("format", &self.format)
            .field("headers", &headers)
            .field("auth", &self.auth)
            .field("secret", &self.secret)
            .field("gzip", &self.gzip)
            .field("max_batch_events", &self.max_batch_events)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .field("max_event_bytes", &self.max_event_bytes)
            .field("id_field", &self.id_field)
            .field("envelope", &self.envelope)
            .field("id_header", &self.id_header)
            .finish()
    }
}

impl Default for HttpSinkConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            format: BodyFormat::Json,
            headers: BTreeMap::new(),
            auth: HttpAuth::None,
            secret: Secret::default(),
            gzip: false,
            max_batch_events: 50,
            max_batch_bytes: ByteSize::mib(5),
            max_event_bytes: ByteSize::mib(1),
            id_field: DEFAULT_ID_FIELD.to_string(),
            envelope: false,
            id_header: None,
        }
    }
}

/// POSTs batches as a JSON array or NDJSON to one URL.
#[derive(Debug)]
pub struct HttpSink {
    client: HttpClient,
    cfg: HttpSinkConfig,
    /// `cfg.url`, parsed once (not once per request).
    url: Target,
    /// Where each event's id goes in the body.
    ids: body::Ids,
    id_header: Option<reqwest::header::HeaderName>,
}

impl HttpSink {
    /// A sink over the shared client.
    ///
    /// # Errors
    ///
    /// `ConfigError::Invalid` naming `url` when it is not an http(s) URL, or
    /// `id_header` when it is not a valid header name.
    pub fn new(client: HttpClient, cfg: HttpSinkConfig) -> Result<Self, crate::ConfigError> {
        check_url("url", &cfg.url)?;
        let url = Target::parse(&cfg.url).map_err(|e| crate::ConfigError::Invalid {
            name: "url".into(),
            reason: format!("{}: {e}", display_url(&cfg.url)),
        })?;
        let id_header = match &cfg.id_header {
            None => None,
            Some(h) => Some(
                reqwest::header::HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                    crate::ConfigError::Invalid {
                        name: "id_header".into(),
                        reason: format!("{h:?} is not a valid HTTP header name"),
                    }
                })?,
            ),
        };
        let ids = body::Ids::new(&cfg.id_field, cfg.envelope);
        Ok(Self {
            client,
            cfg,
            url,
            ids,
            id_header,
        })
    }
}

/// Checks that `url` is an absolute http(s) URL.
///
/// # Errors
///
/// `ConfigError::Invalid` naming `field`.
pub fn check_url(field: &str, url: &str) -> Result<(), crate::ConfigError> {
    let ok = (url.starts_with("http://") || url.starts_with("https://"))
        && reqwest::Url::parse(url).is_ok();
    if ok {
        Ok(())
    } else {
        Err(crate::ConfigError::Invalid {
            name: field.into(),
            reason: format!("{url:?} is not an http:// or https:// URL"),
        })
    }
}

/// Folds the outcome of sending the `sent` subset (indexes into the whole batch)
/// together with events already `rejected`, into one outcome for the whole batch.
pub fn combine(sent: &[usize], outcome: Delivery, mut rejected: Vec<Rejected>) -> Delivery {
    if rejected.is_empty() {
        return outcome;
    }
    match outcome {
        Delivery::Delivered => Delivery::Partial {
            rejected,
            retry: vec![],
            after: None,
            reason: String::new(),
        },
        Delivery::Retry { after, reason } => Delivery::Partial {
            rejected,
            retry: sent.to_vec(),
            after,
            reason,
        },
        Delivery::Partial {
            rejected: more,
            retry,
            after,
            reason,
        } => {
            rejected.extend(more.into_iter().map(|r| Rejected {
                index: sent.get(r.index).copied().unwrap_or(r.index),
                reason: r.reason,
            }));
            Delivery::Partial {
                rejected,
                retry: retry
                    .into_iter()
                    .filter_map(|i| sent.get(i).copied())
                    .collect(),
                after,
                reason,
            }
        }
        // Split and Reject concern the sent subset; the worker re-sends it after
        // splitting, and the invalid events are rejected again then. A
        // configuration fault keeps every event, the invalid ones included.
        other => other,
    }
}

impl Sink for HttpSink {
    fn name(&self) -> &str {
        "http"
    }

    fn max_batch_events(&self) -> usize {
        self.cfg.max_batch_events.max(1)
    }

    fn max_batch_bytes(&self) -> u64 {
        self.cfg.max_batch_bytes.as_u64()
    }

    fn max_event_bytes(&self) -> u64 {
        self.cfg.max_event_bytes.as_u64()
    }

    fn endpoint(&self) -> String {
        display_url(&self.cfg.url)
    }

    fn config_fault_hint(&self, status: Option<u16>, _reason: &str) -> String {
        let credentials = match &self.cfg.auth {
            HttpAuth::None if self.cfg.headers.keys().any(|k| is_credential_header(k)) => {
                "the credential headers in the sink's `headers`"
            }
            HttpAuth::None => {
                "the sink's auth (none is set: the collector may want a bearer token, basic auth or a key header)"
            }
            HttpAuth::Bearer => "the sink's bearer token",
            HttpAuth::Basic { .. } => "the sink's basic-auth username and password",
        };
        super::config_fault_hint(status, credentials)
    }

    fn send<'a>(&'a self, batch: &'a [Event]) -> BoxFuture<'a, Delivery> {
        Box::pin(async move {
            let (ok, rejected) = valid_json(batch);
            if ok.is_empty() {
                return combine(&ok, Delivery::Delivered, rejected);
            }
            // Sized once for the ids too (growing it mid-batch copied the body again).
            let grow = self.ids.growth_per_event() + 1;
            let mut body =
                Vec::with_capacity(batch.iter().map(|e| e.payload.len() + grow).sum::<usize>() + 2);
            let (sep, open, close, ctype): (&[u8], &[u8], &[u8], &str) = match self.cfg.format {
                BodyFormat::Json => (b",", b"[", b"]", "application/json"),
                BodyFormat::Ndjson => (b"\n", b"", b"\n", "application/x-ndjson"),
            };
            body.extend_from_slice(open);
            for (n, &i) in ok.iter().enumerate() {
                if n > 0 {
                    body.extend_from_slice(sep);
                }
                self.ids.write(&mut body, &batch[i]);
            }
            body.extend_from_slice(close);
            let mut req = self.client.post(&self.url).header("content-type", ctype);
            if let Some(h) = &self.id_header {
                let mut ids = String::with_capacity(ok.len() * 34);
                for (n, &i) in ok.iter().enumerate() {
                    if n > 0 {
                        ids.push(',');
                    }
                    let _ = std::fmt::Write::write_fmt(
                        &mut ids,
                        format_args!("{}", batch[i].delivery_id()),
                    );
                }
                req = req.header(h.clone(), ids);
            }
            for (k, v) in &self.cfg.headers {
                req = req.header(k, v);
            }
            req = match &self.cfg.auth {
                HttpAuth::None => req,
                HttpAuth::Bearer => req.bearer_auth(&self.cfg.secret.0),
                HttpAuth::Basic { username } => req.basic_auth(username, Some(&self.cfg.secret.0)),
            };
            if self.cfg.gzip {
                req = req.header("content-encoding", "gzip").body(gzip(&body));
            } else {
                req = req.body(body);
            }
            let (outcome, _) = execute(req).await;
            combine(&ok, outcome, rejected)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(status: u16, retry_after: Option<&str>, body: Result<&[u8], String>, expected: &str) {
        let got = classify(status, retry_after, body);
        let name = got.label();
        assert_eq!(name, expected, "status {status}: {got:?}");
    }

    #[test]
    fn statuses_map_to_outcomes() {
        let ok: Result<&[u8], String> = Ok(b"{}");
        for (status, expected) in [
            (200, "delivered"),
            (202, "delivered"),
            (204, "delivered"),
            (301, "config_fault"),
            (302, "config_fault"),
            (307, "config_fault"),
            (400, "reject"),
            (401, "config_fault"),
            (403, "config_fault"),
            (404, "config_fault"),
            (408, "retry"),
            (413, "split"),
            (422, "reject"),
            (429, "retry"),
            (500, "retry"),
            (502, "retry"),
            (503, "retry"),
            (504, "retry"),
        ] {
            check(status, None, ok.clone(), expected);
        }
        check(200, None, Err("connection reset".into()), "retry");
    }

    #[test]
    fn retry_after_is_carried_on_retries() {
        match classify(429, Some("7"), Ok(b"")) {
            Delivery::Retry { after, .. } => assert_eq!(after, Some(Duration::from_secs(7))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let cfg = HttpSinkConfig {
            secret: Secret("hunter2".into()),
            ..HttpSinkConfig::default()
        };
        assert!(!format!("{cfg:?}").contains("hunter2"));
        let mut cfg = HttpSinkConfig::default();
        cfg.headers
            .insert("Authorization".into(), "Bearer hunter3".into());
        cfg.headers.insert("X-Api-Key".into(), "hunter4".into());
        cfg.headers.insert("X-Team".into(), "blue".into());
        let text = format!("{cfg:?}");
        assert!(
            !text.contains("hunter3") && !text.contains("hunter4"),
            "{text}"
        );
        assert!(text.contains("blue"), "{text}");
    }

    #[test]
    fn invalid_json_events_are_rejected_and_the_rest_kept() {
        let id = |s| crate::event::EventId::new(crate::event::Instance::intern("a"), s);
        let ev = |s, p: &'static [u8]| Event {
            id: id(s),
            enqueued_at_ms: 0,
            attempts: 0,
            payload: bytes::Bytes::from_static(p),
        };
        let batch = [ev(1, b"{}"), ev(2, b"{oops"), ev(3, b" [1]\n")];
        let (ok, bad) = valid_json(&batch);
        assert_eq!(ok, vec![0, 2]);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].index, 1);
        match combine(&ok, Delivery::Delivered, bad.clone()) {
            Delivery::Partial {
                rejected, retry, ..
            } => {
                assert_eq!(rejected.len(), 1);
                assert!(retry.is_empty());
            }
            other => panic!("{other:?}"),
        }
        match combine(
            &ok,
            Delivery::Retry {
                after: None,
                reason: "503".into(),
            },
            bad,
        ) {
            Delivery::Partial { retry, .. } => assert_eq!(retry, vec![0, 2]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_bad_id_header_name_is_refused_naming_the_setting() {
        let client = build_client(&HttpClientConfig::default()).unwrap();
        let cfg = HttpSinkConfig {
            url: "http://127.0.0.1:1/x".into(),
            id_header: Some("bad header".into()),
            ..HttpSinkConfig::default()
        };
        let err = HttpSink::new(client, cfg).unwrap_err();
        assert!(err.to_string().contains("id_header"), "{err}");
    }

    #[test]
    fn urls_in_logs_lose_credentials_and_queries() {
        assert_eq!(
            display_url("https://user:pw@collector.example.com/ingest?api_key=k#f"),
            "https://collector.example.com/ingest?…"
        );
        assert_eq!(display_url("http://127.0.0.1:9/x"), "http://127.0.0.1:9/x");
        assert_eq!(display_url("nope"), "<not a URL>");
    }

    #[test]
    fn a_redirect_says_where_it_points() {
        match with_location(
            classify(301, None, Ok(b"")),
            Some("https://u:p@new.example.com/v2?k=1"),
        ) {
            Delivery::ConfigFault { status, reason } => {
                assert_eq!(status, Some(301));
                assert!(
                    reason.ends_with("(redirects to https://new.example.com/v2?…)"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn urls_must_be_http() {
        assert!(check_url("url", "http://127.0.0.1:1/x").is_ok());
        assert!(
            check_url("url", "ftp://x")
                .unwrap_err()
                .to_string()
                .contains("url")
        );
    }
}
