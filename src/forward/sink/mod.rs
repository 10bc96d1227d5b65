//! The `Sink` trait and its outcome type.
//!
//! A sink turns one batch of events into one request (or a few) to a collector
//! (or, for `nats`, one pipelined run of JetStream publishes) and reports one
//! [`Delivery`] value. Sinks never return `Err`: every way a
//! request can end is an outcome, and the worker handles all of them in one
//! exhaustive `match` (see `forward::worker`), so delivery policy lives in one place.

use crate::Event;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// A boxed future, so `Arc<dyn Sink>` works.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One event of a batch that the collector refused for good.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// Index into the batch that was sent.
    pub index: usize,
    /// The collector's reason (field and message where it gave them).
    pub reason: String,
}

/// How one send ended. Exhaustive: the worker's `match` is the delivery policy.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Delivery {
    /// 2xx with a fully read, valid body: ack every event.
    Delivered,
    /// Transient fault (timeout, connect/TLS error, reset, 408, 429, 5xx, an
    /// unreadable 2xx body): retry the whole batch later, after at least
    /// `after` when the collector said so (`Retry-After`).
    Retry {
        /// The collector's requested delay, if any.
        after: Option<Duration>,
        /// What happened, for logs, metrics and the retry record.
        reason: String,
    },
    /// The batch is too large for the collector (413, or over the sink's byte
    /// cap): split it in halves and send each; a single event → dead letter `too_large`.
    Split {
        /// What the collector said.
        reason: String,
    },
    /// Some events were refused for good with per-record reasons; others may need
    /// a retry; all the rest were delivered.
    Partial {
        /// Events to dead-letter, with reasons.
        rejected: Vec<Rejected>,
        /// Indexes of events to retry (e.g. the half of a batch whose request failed).
        retry: Vec<usize>,
        /// Delay requested for the retried events.
        after: Option<Duration>,
        /// Why they are retried.
        reason: String,
    },
    /// The whole batch was refused as bad with no per-record detail (400 with no
    /// usable body): the worker bisects to isolate the poison events.
    Reject {
        /// What the collector said.
        reason: String,
    },
    /// Configuration fault (401, 403, 404, a 3xx redirect): pause the topic,
    /// log once at ERROR, probe slowly; keep every event.
    ConfigFault {
        /// The HTTP status, when there was one.
        status: Option<u16>,
        /// What the collector said.
        reason: String,
    },
}

impl Delivery {
    /// A short stable name for metric labels and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Retry { .. } => "retry",
            Self::Split { .. } => "split",
            Self::Partial { .. } => "partial",
            Self::Reject { .. } => "reject",
            Self::ConfigFault { .. } => "config_fault",
        }
    }
}

/// Where a topic's events go.
pub trait Sink: Send + Sync + 'static {
    /// A short name for logs and metrics (`http`, `mixpanel`, `segment`, `nats`).
    fn name(&self) -> &str;

    /// Most events in one request.
    fn max_batch_events(&self) -> usize;

    /// Most payload bytes in one request (before compression); a larger batch is
    /// split before sending.
    fn max_batch_bytes(&self) -> u64;

    /// Largest single event the collector accepts; larger ones are dead-lettered
    /// as `too_large` without being sent.
    fn max_event_bytes(&self) -> u64;

    /// Sends one batch and reports how it went. Must not panic; must bound its
    /// own time (request timeout).
    fn send<'a>(&'a self, batch: &'a [Event]) -> BoxFuture<'a, Delivery>;

    /// Where the sink sends, for log lines: a URL without credentials, query
    /// or fragment (see [`http::display_url`]). Defaults to [`Sink::name`].
    fn endpoint(&self) -> String {
        self.name().to_string()
    }

    /// What log lines call the other end, at the start of a sentence:
    /// `Collector` (the default) for HTTP sinks, `NATS` for JetStream.
    fn peer(&self) -> &str {
        "Collector"
    }

    /// What an operator should check after a [`Delivery::ConfigFault`] with
    /// `status` (an HTTP status, when there was one) and `reason` (the
    /// fault's text), in a few words (logged with the fault). Defaults to
    /// [`config_fault_hint`].
    fn config_fault_hint(&self, status: Option<u16>, reason: &str) -> String {
        let _ = reason;
        config_fault_hint(status, "the sink's credentials")
    }

    /// How long the far end drops a message whose event id it has seen, when
    /// the sink knows (a JetStream stream's `duplicate_window`); `None`
    /// otherwise. [`Forwarder::route`](crate::Forwarder::route) warns when
    /// a retry can come later than that.
    fn duplicate_window(&self) -> Option<Duration> {
        None
    }

    /// Whether a [`Delivery::ConfigFault`] is about the sink's credentials
    /// (the default: a 401 or a 403), so an application can add where it
    /// takes them from.
    fn is_credentials_fault(&self, status: Option<u16>, reason: &str) -> bool {
        let _ = reason;
        matches!(status, Some(401 | 403))
    }
}

/// What to check after a configuration fault with `status`; `credentials`
/// names what a 401 or 403 is about (e.g. "the Segment write key").
pub fn config_fault_hint(status: Option<u16>, credentials: &str) -> String {
    match status {
        Some(401) => format!("check {credentials}: the collector does not accept them"),
        Some(403) => {
            format!("check {credentials}: the collector accepts them but they may not send here")
        }
        Some(404) => "check the sink's URL: the collector has no such endpoint".to_string(),
        Some(s) if (300..400).contains(&s) => {
            "the collector redirects, which is never followed for a POST: set the sink's URL to where it points".to_string()
        }
        _ => format!("check the sink's URL and {credentials}"),
    }
}

mod body;
pub mod http;
pub mod mixpanel;
#[cfg(feature = "nats")]
pub mod nats;
pub mod segment;
pub mod transport;
