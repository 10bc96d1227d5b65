//! One event as the CLI prints it and the admin API sends it: an NDJSON line
//! of `evspool export` and `peek --json`, and a record `evspool import` reads.

use evspool::{DeadEvent, PeekedEvent, Queue};
use serde::{Deserialize, Serialize};

/// One event as the CLI and the admin API print it (NDJSON line / table row).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EventRecord {
    /// Stable id.
    pub id: String,
    /// Sequence number.
    pub seq: u64,
    /// Topic.
    pub topic: String,
    /// Enqueue time, RFC 3339.
    pub enqueued_at: String,
    /// Age in ms when printed.
    #[serde(default)]
    pub age_ms: u64,
    /// Delivery attempts.
    #[serde(default)]
    pub attempts: u32,
    /// Whether a consumer holds it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leased: bool,
    /// Last delivery error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Dead-letter reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Dead-letter time, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_at: Option<String>,
    /// The payload: the JSON value itself when it is JSON, else a string.
    pub payload: serde_json::Value,
}

/// RFC 3339 with milliseconds, from ms since the epoch.
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn payload_value(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

impl EventRecord {
    /// A queued event as a record.
    pub fn from_peeked(topic: &str, p: &PeekedEvent) -> Self {
        Self {
            id: p.event.id.to_string(),
            seq: p.event.seq(),
            topic: topic.to_string(),
            enqueued_at: rfc3339(p.event.enqueued_at_ms),
            age_ms: now_ms().saturating_sub(p.event.enqueued_at_ms),
            attempts: p.event.attempts,
            leased: p.leased,
            last_error: p.last_error.clone(),
            reason: None,
            dead_at: None,
            payload: payload_value(&p.event.payload),
        }
    }

    /// A dead letter as a record.
    pub fn from_dead(topic: &str, d: &DeadEvent) -> Self {
        Self {
            id: d.id.to_string(),
            seq: d.id.seq(),
            topic: topic.to_string(),
            enqueued_at: rfc3339(d.enqueued_at_ms),
            age_ms: now_ms().saturating_sub(d.enqueued_at_ms),
            attempts: d.attempts,
            leased: false,
            last_error: None,
            reason: Some(d.reason.clone()),
            dead_at: Some(rfc3339(d.dead_at_ms)),
            payload: payload_value(&d.payload),
        }
    }

    /// A page of a topic's queued events (or dead letters, with `dead`) from
    /// a local queue: from seq `from`, at most `n`.
    ///
    /// # Errors
    ///
    /// The queue could not read the page.
    pub fn page(
        q: &Queue,
        topic: &str,
        dead: bool,
        from: u64,
        n: usize,
    ) -> anyhow::Result<Vec<EventRecord>> {
        Ok(if dead {
            q.dead_letters(topic, from, n)?
                .iter()
                .map(|d| EventRecord::from_dead(topic, d))
                .collect()
        } else {
            q.peek(topic, from, n)?
                .iter()
                .map(|p| EventRecord::from_peeked(topic, p))
                .collect()
        })
    }

    /// The payload bytes to enqueue again (a string payload is taken verbatim).
    pub fn payload_bytes(&self) -> Vec<u8> {
        match &self.payload {
            serde_json::Value::String(s) => s.clone().into_bytes(),
            v => serde_json::to_vec(v).unwrap_or_default(),
        }
    }
}
