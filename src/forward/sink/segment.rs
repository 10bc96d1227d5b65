//! The Segment sink: `POST <api_host>/v1/batch` with `{"batch": [...]}`.
//!
//! The write key is the basic-auth username (empty password). Each event gets
//! `messageId` = its stable id and `timestamp` = its enqueue time (RFC 3339)
//! when absent, never overwritten. Segment's limits: 500 KB per batch, 32 KB per event.

use super::http::{self, Secret};
use super::{BoxFuture, Delivery, Rejected, Sink};
use crate::Event;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Segment's batch limit: 500 KB.
pub const MAX_BATCH_BYTES: u64 = 500 * 1000;
/// Segment's event limit: 32 KB.
pub const MAX_EVENT_BYTES: u64 = 32 * 1000;
/// Events per batch: well under the byte limit for typical events.
pub const MAX_BATCH_EVENTS: usize = 100;

/// The Segment sink's settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SegmentConfig {
    /// The API host.
    pub api_host: String,
    /// The write key (from the environment, never the file).
    #[serde(skip)]
    pub write_key: Secret,
    /// Gzip request bodies (level 1).
    pub gzip: bool,
}

impl Default for SegmentConfig {
    fn default() -> Self {
        Self {
            api_host: "https://api.segment.io".into(),
            write_key: Secret::default(),
            gzip: false,
        }
    }
}

/// Forwards to Segment's batch API.
#[derive(Debug)]
pub struct SegmentSink {
    client: http::HttpClient,
    cfg: SegmentConfig,
}

impl SegmentSink {
    /// A sink over the shared client.
    ///
    /// # Errors
    ///
    /// `ConfigError::Invalid` for a bad `api_host`.
    pub fn new(client: http::HttpClient, cfg: SegmentConfig) -> Result<Self, crate::ConfigError> {
        http::check_url("api_host", &cfg.api_host)?;
        Ok(Self { client, cfg })
    }

    /// The event as sent: the payload with `messageId` and `timestamp` added when absent.
    #[doc(hidden)]
    pub fn stamp(event: &Event) -> Result<Value, String> {
        let mut v: Value =
            serde_json::from_slice(&event.payload).map_err(|e| format!("invalid_json: {e}"))?;
        let Some(obj) = v.as_object_mut() else {
            return Err("invalid_json: the payload is not a JSON object".into());
        };
        // An origin id carried from another store becomes `messageId`; the
        // member itself is evspool's (`crate::origin`).
        let id = super::mixpanel::carried_id(obj).unwrap_or_else(|| event.id.to_string());
        obj.entry("messageId").or_insert_with(|| Value::String(id));
        obj.entry("timestamp").or_insert_with(|| {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(event.enqueued_at_ms);
            Value::String(humantime::format_rfc3339_millis(t).to_string())
        });
        Ok(v)
    }
}

impl Sink for SegmentSink {
    fn name(&self) -> &str {
        "segment"
    }

    fn max_batch_events(&self) -> usize {
        MAX_BATCH_EVENTS
    }

    fn max_batch_bytes(&self) -> u64 {
        // Leave room for the envelope and the stamps.
        MAX_BATCH_BYTES - 50_000
    }

    fn max_event_bytes(&self) -> u64 {
        MAX_EVENT_BYTES - 200
    }

    fn endpoint(&self) -> String {
        format!(
            "{}/v1/batch",
            http::display_url(&self.cfg.api_host).trim_end_matches('/')
        )
    }

    fn config_fault_hint(&self, status: Option<u16>, _reason: &str) -> String {
        super::config_fault_hint(status, "the Segment write key")
    }

    fn send<'a>(&'a self, batch: &'a [Event]) -> BoxFuture<'a, Delivery> {
        Box::pin(async move {
            let mut rejected = Vec::new();
            let mut sent = Vec::new();
            let mut items = Vec::new();
            for (i, e) in batch.iter().enumerate() {
                match Self::stamp(e) {
                    Ok(v) => {
                        sent.push(i);
                        items.push(v);
                    }
                    Err(reason) => rejected.push(Rejected { index: i, reason }),
                }
            }
            if items.is_empty() {
                return http::combine(&sent, Delivery::Delivered, rejected);
            }
            let body =
                serde_json::to_vec(&serde_json::json!({ "batch": items })).unwrap_or_default();
            let url = format!("{}/v1/batch", self.cfg.api_host.trim_end_matches('/'));
            let mut req = self
                .client
                .post_url(&url)
                .header("content-type", "application/json")
                .basic_auth(&self.cfg.write_key.0, Some(""));
            req = if self.cfg.gzip {
                req.header("content-encoding", "gzip")
                    .body(http::gzip(&body))
            } else {
                req.body(body)
            };
            let (outcome, _) = http::execute(req).await;
            http::combine(&sent, outcome, rejected)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventId;
    use std::sync::Arc;

    #[test]
    fn events_get_a_message_id_and_timestamp_unless_they_have_them() {
        let e = Event {
            id: EventId::new(crate::event::Instance::intern("abc"), 5),
            enqueued_at_ms: 1_700_000_000_000,
            attempts: 0,
            payload: bytes::Bytes::from_static(br#"{"type":"track","event":"x"}"#),
        };
        let v = SegmentSink::stamp(&e).unwrap();
        assert_eq!(v["messageId"], "abc-5");
        assert_eq!(v["timestamp"], "2023-11-14T22:13:20.000Z");
        let e2 = Event {
            payload: bytes::Bytes::from_static(br#"{"messageId":"m","timestamp":"t"}"#),
            ..e
        };
        let v = SegmentSink::stamp(&e2).unwrap();
        assert_eq!(
            (v["messageId"].as_str(), v["timestamp"].as_str()),
            (Some("m"), Some("t"))
        );
        // An origin id carried from another store is the messageId.
        let e3 = Event {
            payload: bytes::Bytes::from_static(br#"{"evspool_id":"0f0f0f0f0f0f-3","event":"x"}"#),
            ..e2
        };
        let v = SegmentSink::stamp(&e3).unwrap();
        assert_eq!(v["messageId"], "0f0f0f0f0f0f-3");
        assert!(v.get("evspool_id").is_none(), "{v}");
    }

    #[tokio::test]
    async fn batches_are_wrapped_and_authenticated_with_the_write_key() {
        use std::sync::Mutex;
        let seen: Arc<Mutex<Vec<(String, String, Value)>>> = Arc::default();
        let s2 = seen.clone();
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let s2 = s2.clone();
                async move {
                    let auth = headers
                        .get("authorization")
                        .map(|v| v.to_str().unwrap().to_string())
                        .unwrap_or_default();
                    s2.lock().unwrap().push((
                        uri.path().to_string(),
                        auth,
                        serde_json::from_slice(&body).unwrap(),
                    ));
                    axum::Json(serde_json::json!({"success": true}))
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let cfg = SegmentConfig {
            api_host: host,
            write_key: Secret("wk".into()),
            gzip: false,
        };
        let s = SegmentSink::new(http::build_client(&Default::default()).unwrap(), cfg).unwrap();
        let e = Event {
            id: EventId::new(crate::event::Instance::intern("abc"), 1),
            enqueued_at_ms: 0,
            attempts: 0,
            payload: bytes::Bytes::from_static(br#"{"type":"track","event":"x"}"#),
        };
        assert_eq!(s.send(std::slice::from_ref(&e)).await, Delivery::Delivered);
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen[0].0, "/v1/batch");
        // base64("wk:")
        assert_eq!(seen[0].1, "Basic d2s6");
        assert_eq!(seen[0].2["batch"][0]["messageId"], "abc-1");
    }
}
