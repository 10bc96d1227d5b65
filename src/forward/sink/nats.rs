//! The NATS JetStream sink: every event published to a per-topic subject with
//! `Nats-Msg-Id` = its stable id, every `PublishAck` awaited before the lease is
//! settled.
//!
//! # Delivery guarantee
//!
//! evspool delivers at least once and never changes an event's id, so a
//! redelivery (a lost ack, a connection cut mid-batch, a daemon killed between
//! the publish and the settle) carries the same `Nats-Msg-Id` as the first
//! copy. JetStream drops a message whose id it has seen within the stream's
//! `duplicate_window` and answers `duplicate: true`, which counts as delivered:
//! inside the window the stream holds each event exactly once. A redelivery
//! later than the window after the first copy is stored again.
//!
//! # Batches
//!
//! A lease's messages are all published before any ack is awaited (pipelined
//! on one connection); then every ack is awaited at once, each bounded by
//! `ack_timeout`. Only events whose ack arrived count as delivered.
//!
//! # Classification
//!
//! | what happened | outcome |
//! |---|---|
//! | ack, or ack with `duplicate: true` | delivered |
//! | ack timeout, connection lost, client buffer full, no connection yet, JetStream temporarily unavailable, store failures, any other JetStream error | `Retry` (those events only) |
//! | no responders while a stream captures the subject (stream not ready, leader election) | `Retry` |
//! | no responders and no stream captures the subject | `ConfigFault`: create the stream |
//! | `Permissions Violation` for the subject or the ack inbox | `ConfigFault`: fix the user's permissions |
//! | authorization violation, bad credentials, TLS setup refused | `ConfigFault`: fix the credentials |
//! | JetStream not enabled for the account | `ConfigFault` |
//! | message (headers + payload) over the server's `max_payload`, or over the stream's `max_msg_size` | that event is dead-lettered `too_large`; the rest are delivered |
//!
//! A configuration fault keeps every event (the worker pauses the topic and
//! probes every `config_fault_probe`); acked events of such a batch are sent
//! again and absorbed by the duplicate window.
//!
//! # Connections
//!
//! One [`NatsConnection`] (one TCP connection, reconnecting on its own) is
//! shared by every topic's sink with the same connection settings. It connects
//! on the first send, not at construction, so a daemon starts and keeps
//! accepting events while NATS is down. Credentials are never logged: the
//! token and password live in [`Secret`](crate::Secret)s, and the client redacts them in its
//! own trace output.

mod config;
mod connection;

pub use config::{
    DEFAULT_ACK_TIMEOUT, DEFAULT_CLIENT_NAME, DEFAULT_CONNECT_TIMEOUT, DEFAULT_DUPLICATE_WINDOW,
    DEFAULT_MAX_BATCH_BYTES, DEFAULT_MAX_BATCH_EVENTS, DEFAULT_SERVER, DEFAULT_SUBJECT,
    MAX_EVENT_BYTES, NatsAuth, NatsSinkConfig, NatsStorage, NatsStream, NatsTls,
};
pub use connection::NatsConnection;

use super::{BoxFuture, Delivery, Rejected, Sink};
use crate::config::ConfigError;
use crate::{Event, forward::TOO_LARGE};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, ErrorCode, context::PublishErrorKind};
use config::{invalid, valid_publish_subject};
use connection::{CHECK_CREDENTIALS, Failed, config_fault, error_chain, retry};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Publishes one topic's events to JetStream.
pub struct NatsSink {
    conn: NatsConnection,
    subject: String,
    /// The same subject as the client's cheaply cloned type, for publishing.
    wire_subject: async_nats::Subject,
    stream: Option<NatsStream>,
    stream_subjects: Vec<String>,
    stream_ready: AtomicBool,
    cfg: NatsSinkConfig,
    topic: Arc<str>,
}

impl std::fmt::Debug for NatsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSink")
            .field("subject", &self.subject)
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

/// How one event's publish ended.
#[derive(Debug, PartialEq, Eq)]
enum One {
    Acked { duplicate: bool },
    Retry(String),
    TooLarge(String),
    NoStream,
    Config(String),
}

fn classify_publish_error(e: &async_nats::jetstream::context::PublishError) -> One {
    let text = error_chain(e);
    match e.kind() {
        PublishErrorKind::MaxPayloadExceeded => One::TooLarge(format!(
            "{TOO_LARGE}: over the server's max_payload ({text})"
        )),
        PublishErrorKind::StreamNotFound => One::NoStream,
        PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::MaxAckPending
        | PublishErrorKind::WrongLastMessageId
        | PublishErrorKind::WrongLastSequence => One::Retry(format!("nats: {text}")),
        _ => {
            let js = std::error::Error::source(e)
                .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>());
            match js.map(|j| j.error_code()) {
                Some(ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM)
                | Some(ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM) => One::TooLarge(format!(
                    "{TOO_LARGE}: over the stream's max_msg_size ({text})"
                )),
                Some(ErrorCode::STREAM_NOT_FOUND) => One::NoStream,
                Some(ErrorCode::JETSTREAM_NOT_ENABLED)
                | Some(ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT) => One::Config(format!(
                    "nats: JetStream is not enabled for this account ({text}): run the server with JetStream (-js) and give the account JetStream limits"
                )),
                _ => One::Retry(format!("nats: {text}")),
            }
        }
    }
}

impl NatsSink {
    /// A sink for `topic` over `conn` (which may serve other topics too).
    ///
    /// # Errors
    ///
    /// `ConfigError::Invalid` naming `subject` when the topic makes an invalid
    /// subject, or the field of `cfg` that is wrong.
    pub fn new(
        conn: NatsConnection,
        topic: &str,
        cfg: &NatsSinkConfig,
    ) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let subject = cfg.subject_for(topic);
        if !valid_publish_subject(&subject) {
            return Err(invalid(
                "subject",
                format!("topic {topic:?} makes {subject:?}, which is not a valid NATS subject"),
            ));
        }
        Ok(Self {
            conn,
            wire_subject: async_nats::Subject::from(subject.as_str()),
            subject,
            stream: cfg.stream.clone(),
            stream_subjects: cfg.stream_subjects(),
            stream_ready: AtomicBool::new(false),
            cfg: cfg.clone(),
            topic: Arc::from(topic),
        })
    }

    /// A sink for `topic` with a connection of its own.
    ///
    /// # Errors
    ///
    /// As [`NatsSink::new`].
    pub fn standalone(topic: &str, cfg: &NatsSinkConfig) -> Result<Self, ConfigError> {
        Self::new(NatsConnection::new(cfg)?, topic, cfg)
    }

    /// The subject this sink publishes to.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Creates the configured stream when it does not exist (once per sink).
    async fn ensure_stream(&self, js: &jetstream::Context) -> Result<(), Failed> {
        let Some(st) = &self.stream else {
            return Ok(());
        };
        if self.stream_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let config = jetstream::stream::Config {
            name: st.name.clone(),
            subjects: self.stream_subjects.clone(),
            storage: match st.storage {
                NatsStorage::File => jetstream::stream::StorageType::File,
                NatsStorage::Memory => jetstream::stream::StorageType::Memory,
            },
            duplicate_window: st.duplicate_window,
            num_replicas: st.replicas,
            ..Default::default()
        };
        match js.get_or_create_stream(config).await {
            Ok(stream) => {
                let have = stream.cached_info().config.duplicate_window;
                if have < st.duplicate_window {
                    tracing::warn!(
                        stream = %st.name,
                        have_s = have.as_secs(),
                        configured_s = st.duplicate_window.as_secs(),
                        "The existing stream's duplicate window is shorter than configured; evspool does not change existing streams. Redeliveries after the shorter window are stored twice."
                    );
                }
                self.stream_ready.store(true, Ordering::Release);
                Ok(())
            }
            Err(e) => {
                use async_nats::jetstream::context::CreateStreamErrorKind as K;
                let text = error_chain(&e);
                Err(match e.kind() {
                    K::TimedOut => retry(format!("nats: creating stream {}: {text}", st.name)),
                    K::JetStreamUnavailable => config_fault(format!(
                        "nats: creating stream {}: JetStream is not available ({text}): run the server with JetStream (-js)",
                        st.name
                    )),
                    K::JetStream(j) if j.error_code() == ErrorCode::CLUSTER_NOT_AVAILABLE => {
                        retry(format!("nats: creating stream {}: {text}", st.name))
                    }
                    _ => config_fault(format!(
                        "nats: cannot create stream {} ({text}): check [sink.stream] (name, subjects overlapping another stream) and the user's permission on $JS.API.>",
                        st.name
                    )),
                })
            }
        }
    }

    /// No responders for a publish: is there a stream for the subject at all?
    async fn no_stream_outcome(&self, js: &jetstream::Context) -> Delivery {
        #[derive(Serialize)]
        struct Req<'a> {
            subject: &'a str,
        }
        #[derive(Deserialize)]
        struct Names {
            #[serde(default)]
            streams: Option<Vec<String>>,
        }
        let r: Result<jetstream::response::Response<Names>, _> = js
            .request(
                "STREAM.NAMES",
                &Req {
                    subject: &self.subject,
                },
            )
            .await;
        use async_nats::jetstream::context::RequestErrorKind as K;
        use jetstream::response::Response;
        match r {
            Ok(Response::Ok(n)) if n.streams.as_ref().is_some_and(|s| !s.is_empty()) => {
                retry(format!(
                    "nats: no responders for {}: stream {} is not ready",
                    self.subject,
                    n.streams.unwrap_or_default().join(",")
                ))
            }
            Ok(Response::Ok(_)) => {
                self.stream_ready.store(false, Ordering::Release);
                config_fault(format!(
                    "nats: no JetStream stream captures subject {:?}: create a stream whose subjects include it, or configure [sink.stream] so evspool creates one",
                    self.subject
                ))
            }
            Ok(Response::Err { error })
                if error.error_code() == ErrorCode::CLUSTER_NOT_AVAILABLE =>
            {
                retry(format!("nats: JetStream temporarily unavailable: {error}"))
            }
            Ok(Response::Err { error }) => config_fault(format!(
                "nats: no stream for {:?}, and listing streams failed ({error}): check the user may use $JS.API.>",
                self.subject
            )),
            Err(e) if e.kind() == K::NoResponders => config_fault(format!(
                "nats: JetStream does not answer on this server for subject {:?} (no responders on $JS.API): run the server with JetStream (-js) and give the account JetStream",
                self.subject
            )),
            Err(e) => retry(format!(
                "nats: no responders for {}, and listing streams failed: {}",
                self.subject,
                error_chain(&e)
            )),
        }
    }

    /// The permissions or authorization violation recorded since `seen`, if it concerns this sink.
    fn fault_since(&self, seen: u64) -> Option<String> {
        let shared = &self.conn.shared;
        if *shared.fault_seq.borrow() == seen {
            return None;
        }
        let text = shared
            .faults
            .last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        let lower = text.to_ascii_lowercase();
        if lower.contains("authorization violation") {
            return Some(format!(
                "nats: authorization violation: {CHECK_CREDENTIALS}"
            ));
        }
        let ours = text.contains(&format!("\"{}\"", self.subject))
            || lower.contains("subscription")
            || lower.contains("$js.api");
        ours.then(|| {
            format!(
                "nats: {text}: allow the user to publish to {:?} and to subscribe to its inbox (_INBOX.>) in the server's authorization settings",
                self.subject
            )
        })
    }

    async fn send_batch(&self, batch: &[Event]) -> Delivery {
        if self.conn.shared.faults.auth_failed.load(Ordering::Acquire) {
            return config_fault(format!(
                "nats: the server refuses our credentials (authorization violation): {CHECK_CREDENTIALS}"
            ));
        }
        let conn = match self.conn.connected().await {
            Ok(c) => c,
            Err(d) => return d,
        };
        if let Err(d) = self.ensure_stream(&conn.js).await {
            return d;
        }
        let mut faults = self.conn.shared.fault_seq.subscribe();
        let seen = *faults.borrow_and_update();
        let mut outcomes: Vec<Option<One>> = (0..batch.len()).map(|_| None).collect();
        let mut pending = Vec::with_capacity(batch.len());
        let mut stalled: Option<String> = None;
        for (i, e) in batch.iter().enumerate() {
            if let Some(reason) = &stalled {
                // The client could not take a message: do not wait again for each of the rest.
                outcomes[i] = Some(One::Retry(reason.clone()));
                continue;
            }
            let msg = PublishMessage::build()
                .payload(e.payload.clone())
                .message_id(e.delivery_id().to_string());
            match conn.js.send_publish(self.wire_subject.clone(), msg).await {
                Ok(ack) => pending.push((i, std::future::IntoFuture::into_future(ack))),
                Err(err) => {
                    let one = classify_publish_error(&err);
                    if let One::Retry(r) = &one {
                        stalled = Some(r.clone());
                    }
                    outcomes[i] = Some(one);
                }
            }
        }
        let (idx, futs): (Vec<usize>, Vec<_>) = pending.into_iter().unzip();
        let all = futures_util::future::join_all(futs);
        tokio::pin!(all);
        let acks = loop {
            tokio::select! {
                acks = &mut all => break acks,
                changed = faults.changed() => {
                    if changed.is_ok() && let Some(reason) = self.fault_since(seen) {
                        return config_fault(reason);
                    }
                    if changed.is_err() {
                        // The connection is gone for good; the acks time out on their own.
                        break (&mut all).await;
                    }
                }
            }
        };
        for (i, r) in idx.into_iter().zip(acks) {
            outcomes[i] = Some(match r {
                Ok(ack) => One::Acked {
                    duplicate: ack.duplicate,
                },
                Err(e) => classify_publish_error(&e),
            });
        }
        // A fault reported while the last acks came in still pauses the topic.
        if let Some(reason) = self.fault_since(seen) {
            return config_fault(reason);
        }
        self.fold(&conn.js, outcomes).await
    }

    /// Folds the per-event results into one outcome for the batch.
    async fn fold(&self, js: &jetstream::Context, outcomes: Vec<Option<One>>) -> Delivery {
        let mut rejected = Vec::new();
        let mut retry_idx = Vec::new();
        let mut reason = String::new();
        let mut duplicates = 0u64;
        let mut no_stream = false;
        let n = outcomes.len();
        for (i, o) in outcomes.into_iter().enumerate() {
            match o.unwrap_or_else(|| One::Retry("nats: no outcome".into())) {
                One::Acked { duplicate } => duplicates += u64::from(duplicate),
                One::TooLarge(r) => rejected.push(Rejected {
                    index: i,
                    reason: r,
                }),
                One::Retry(r) => {
                    if reason.is_empty() {
                        reason = r;
                    }
                    retry_idx.push(i);
                }
                One::NoStream => {
                    no_stream = true;
                    retry_idx.push(i);
                }
                One::Config(r) => return config_fault(r),
            }
        }
        if duplicates > 0 {
            metrics::counter!("evspool_nats_duplicate_acks_total", "topic" => self.topic.to_string())
                .increment(duplicates);
            tracing::debug!(topic = %self.topic, duplicates, "JetStream dropped redelivered events as duplicates.");
        }
        if no_stream {
            match self.no_stream_outcome(js).await {
                Delivery::Retry { reason: r, .. } => {
                    if reason.is_empty() {
                        reason = r;
                    }
                }
                other => return other,
            }
        }
        if rejected.is_empty() && retry_idx.is_empty() {
            return Delivery::Delivered;
        }
        if rejected.is_empty() && retry_idx.len() == n {
            return retry(reason);
        }
        Delivery::Partial {
            rejected,
            retry: retry_idx,
            after: None,
            reason,
        }
    }
}

/// What to check after a NATS configuration fault, from its reason (the
/// HTTP sinks' hints are about URLs and status codes, which NATS has not).
fn config_hint(reason: &str, subject: &str) -> String {
    let lower = reason.to_ascii_lowercase();
    if lower.contains("authorization") {
        CHECK_CREDENTIALS.to_string()
    } else if lower.contains("permissions violation") {
        format!(
            "allow the user to publish to {subject:?} and to subscribe to _INBOX.> (and to use $JS.API.> for [sink.stream])"
        )
    } else if lower.contains("no jetstream stream captures") {
        format!(
            "create a stream whose subjects include {subject:?}, or configure [sink.stream] so evspool creates one"
        )
    } else if lower.contains("jetstream is not") || lower.contains("jetstream does not answer") {
        "run the server with JetStream (-js) and give the account JetStream limits".to_string()
    } else if lower.contains("stream") {
        "check [sink.stream]: its name, and subjects that overlap another stream's; and the user's permission on $JS.API.>".to_string()
    } else if lower.contains("tls") {
        "check [sink.tls] (ca_file, cert_file, key_file) and the server's certificate".to_string()
    } else {
        "check the sink's servers, auth and stream settings against the NATS server's configuration"
            .to_string()
    }
}

impl Sink for NatsSink {
    fn name(&self) -> &str {
        "nats"
    }

    fn max_batch_events(&self) -> usize {
        self.cfg.max_batch_events.max(1)
    }

    fn max_batch_bytes(&self) -> u64 {
        self.cfg.max_batch_bytes.as_u64()
    }

    fn max_event_bytes(&self) -> u64 {
        MAX_EVENT_BYTES.as_u64()
    }

    fn endpoint(&self) -> String {
        format!("{} {}", self.cfg.servers.join(","), self.subject)
    }

    fn peer(&self) -> &str {
        "NATS"
    }

    fn config_fault_hint(&self, _status: Option<u16>, reason: &str) -> String {
        config_hint(reason, &self.subject)
    }

    fn is_credentials_fault(&self, _status: Option<u16>, reason: &str) -> bool {
        reason.to_ascii_lowercase().contains("authorization")
    }

    fn duplicate_window(&self) -> Option<std::time::Duration> {
        self.stream.as_ref().map(|s| s.duplicate_window)
    }

    fn send<'a>(&'a self, batch: &'a [Event]) -> BoxFuture<'a, Delivery> {
        Box::pin(async move {
            // Bounds the whole send: connecting, creating the stream, and the acks.
            let bound = self.cfg.connect_timeout * (self.cfg.servers.len() as u32 + 1)
                + self.cfg.ack_timeout * 3;
            match tokio::time::timeout(bound, self.send_batch(batch)).await {
                Ok(d) => d,
                Err(_) => retry(format!("nats: no outcome within {} ms", bound.as_millis())),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Secret;
    use std::time::Duration;

    fn cfg(f: impl FnOnce(&mut NatsSinkConfig)) -> Result<(), String> {
        let mut c = NatsSinkConfig::default();
        f(&mut c);
        c.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn invalid_settings_are_named_and_urls_with_passwords_are_not_echoed() {
        assert!(cfg(|_| {}).is_ok());
        for (f, field) in [
            (
                Box::new(|c: &mut NatsSinkConfig| c.servers.clear())
                    as Box<dyn FnOnce(&mut NatsSinkConfig)>,
                "servers",
            ),
            (
                Box::new(|c| c.servers = vec!["http://x:4222".into()]),
                "servers[0]",
            ),
            (Box::new(|c| c.subject = "a.*.{topic}".into()), "subject"),
            (Box::new(|c| c.subject = "a..{topic}".into()), "subject"),
            (Box::new(|c| c.ack_timeout = Duration::ZERO), "ack_timeout"),
            (
                Box::new(|c| {
                    c.stream = Some(NatsStream {
                        name: "a.b".into(),
                        ..NatsStream::default()
                    })
                }),
                "stream.name",
            ),
            (
                Box::new(|c| {
                    c.stream = Some(NatsStream {
                        duplicate_window: Duration::ZERO,
                        ..NatsStream::default()
                    })
                }),
                "stream.duplicate_window",
            ),
        ] {
            let err = cfg(f).unwrap_err();
            assert!(err.contains(field), "{field}: {err}");
        }
        let err = cfg(|c| c.servers = vec!["nats://bob:pw-Secret-77@h:4222".into()]).unwrap_err();
        assert!(
            err.contains("servers[0]") && !err.contains("pw-Secret-77"),
            "{err}"
        );
    }

    #[test]
    fn subjects_and_stream_subjects_follow_the_template() {
        let c = NatsSinkConfig::default();
        assert_eq!(c.subject_for("track"), "evspool.track");
        assert_eq!(c.stream_subjects(), vec!["evspool.>".to_string()]);
        let c = NatsSinkConfig {
            subject: "{topic}.events".into(),
            ..NatsSinkConfig::default()
        };
        assert_eq!(c.subject_for("a"), "a.events");
        assert_eq!(c.stream_subjects(), vec!["*.events".to_string()]);
        assert!(NatsSink::standalone("bad..topic", &NatsSinkConfig::default()).is_err());
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let c = NatsSinkConfig {
            auth: NatsAuth::UserPassword { user: "u".into() },
            secret: Secret::new("nats-pw-4411"),
            ..NatsSinkConfig::default()
        };
        let conn = NatsConnection::new(&c).unwrap();
        let sink = NatsSink::new(conn.clone(), "track", &c).unwrap();
        for text in [format!("{c:?}"), format!("{conn:?}"), format!("{sink:?}")] {
            assert!(!text.contains("nats-pw-4411"), "{text}");
        }
        assert!(conn.serves(&c));
        let other = NatsSinkConfig {
            servers: vec!["nats://127.0.0.1:1".into()],
            ..c.clone()
        };
        assert!(!conn.serves(&other));
    }

    #[test]
    fn publish_errors_map_to_outcomes() {
        use async_nats::jetstream::context::PublishError;
        let check = |kind, expected: &str| {
            let one = classify_publish_error(&PublishError::new(kind));
            let got = match one {
                One::Acked { .. } => "acked",
                One::Retry(_) => "retry",
                One::TooLarge(_) => "too_large",
                One::NoStream => "no_stream",
                One::Config(_) => "config",
            };
            assert_eq!(got, expected, "{one:?}");
        };
        check(PublishErrorKind::TimedOut, "retry");
        check(PublishErrorKind::BrokenPipe, "retry");
        check(PublishErrorKind::MaxAckPending, "retry");
        check(PublishErrorKind::MaxPayloadExceeded, "too_large");
        check(PublishErrorKind::StreamNotFound, "no_stream");
        check(PublishErrorKind::Other, "retry");
        let js_error = |code: u64| -> One {
            let e: async_nats::jetstream::Error = serde_json::from_str(&format!(
                r#"{{"code":400,"err_code":{code},"description":"x"}}"#
            ))
            .unwrap();
            classify_publish_error(&PublishError::with_source(PublishErrorKind::Other, e))
        };
        assert!(matches!(js_error(10054), One::TooLarge(_)), "max_msg_size");
        assert!(matches!(js_error(10097), One::TooLarge(_)), "header size");
        assert!(matches!(js_error(10059), One::NoStream), "stream not found");
        assert!(
            matches!(js_error(10039), One::Config(_)),
            "no JetStream for account"
        );
        assert!(matches!(js_error(10077), One::Retry(_)), "store failed");
        assert!(
            matches!(js_error(10008), One::Retry(_)),
            "cluster unavailable"
        );
        match classify_publish_error(&PublishError::new(PublishErrorKind::MaxPayloadExceeded)) {
            One::TooLarge(r) => assert!(r.starts_with("too_large:"), "{r}"),
            other => panic!("{other:?}"),
        }
    }
}
