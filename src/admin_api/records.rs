//! One event as the CLI prints it and the admin API sends it: an NDJSON line
//! of `evspool export` and `peek --json`, and a record `evspool import` reads.
//!
//! # The payload, byte for byte
//!
//! `payload` holds the event's bytes exactly, in one of three forms, so that
//! `import` enqueues what `export` read, byte for byte (never re-serialized:
//! key order, number spellings such as `1.10` or 30-digit integers, and
//! whitespace are kept):
//!
//! - the bytes themselves, when they are one JSON value on one line with no
//!   whitespace around it (the usual case: `"payload":{"event":"signup"}`);
//! - a JSON string of the bytes with `"payload_encoding":"text"`, for other
//!   UTF-8 (pretty-printed JSON, a trailing newline, text that is not JSON);
//! - base64 of the bytes with `"payload_encoding":"base64"`, for bytes that
//!   are not UTF-8.

use base64::Engine as _;
use evspool::{DeadEvent, PeekedEvent, Queue};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// How an [`EventRecord`]'s `payload` holds the event's bytes (absent: as
/// themselves; see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadEncoding {
    /// A JSON string whose characters are the bytes (UTF-8).
    Text,
    /// A JSON string of the bytes in standard base64.
    Base64,
}

/// One event as the CLI and the admin API print it (NDJSON line / table row).
#[derive(Clone, Debug, Serialize, Deserialize)]
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
    /// The payload's bytes, as `payload_encoding` says (module docs).
    pub payload: Box<RawValue>,
    /// How `payload` holds the bytes; absent when it is the bytes themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_encoding: Option<PayloadEncoding>,
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

/// The payload field and its encoding for `bytes` (see the module docs).
fn encode_payload(bytes: &[u8]) -> (Box<RawValue>, Option<PayloadEncoding>) {
    let one_line = !bytes.iter().any(|b| matches!(b, b'\n' | b'\r'));
    if one_line
        && let Ok(raw) = serde_json::from_slice::<&RawValue>(bytes)
        && raw.get().len() == bytes.len()
    {
        return (raw.to_owned(), None);
    }
    let (text, encoding) = match std::str::from_utf8(bytes) {
        Ok(text) => (text.to_string(), PayloadEncoding::Text),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(bytes),
            PayloadEncoding::Base64,
        ),
    };
    let quoted = serde_json::to_string(&text).unwrap_or_default();
    let raw = RawValue::from_string(quoted).unwrap_or_else(|_| empty_string());
    (raw, Some(encoding))
}

fn empty_string() -> Box<RawValue> {
    RawValue::from_string("\"\"".into()).expect("valid JSON")
}

impl EventRecord {
    /// A queued event as a record.
    pub fn from_peeked(topic: &str, p: &PeekedEvent) -> Self {
        let (payload, payload_encoding) = encode_payload(&p.event.payload);
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
            payload,
            payload_encoding,
        }
    }

    /// A dead letter as a record.
    pub fn from_dead(topic: &str, d: &DeadEvent) -> Self {
        let (payload, payload_encoding) = encode_payload(&d.payload);
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
            payload,
            payload_encoding,
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

    /// The event's bytes, exactly as stored.
    ///
    /// # Errors
    ///
    /// A `text` or `base64` payload that is not a JSON string, or bad base64.
    pub fn payload_bytes(&self) -> Result<Vec<u8>, String> {
        let Some(encoding) = self.payload_encoding else {
            return Ok(self.payload.get().as_bytes().to_vec());
        };
        let text: String = serde_json::from_str(self.payload.get())
            .map_err(|_| "payload_encoding is set, so payload must be a JSON string".to_string())?;
        match encoding {
            PayloadEncoding::Text => Ok(text.into_bytes()),
            PayloadEncoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| format!("payload is not valid base64: {e}")),
        }
    }

    /// The payload for a table cell: the text, or a note for binary bytes.
    pub fn payload_text(&self) -> String {
        match self.payload_bytes() {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => text,
                Err(e) => format!("({} bytes, not UTF-8)", e.as_bytes().len()),
            },
            Err(e) => format!("({e})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(bytes: &[u8]) -> (String, Vec<u8>) {
        let (payload, payload_encoding) = encode_payload(bytes);
        let rec = EventRecord {
            id: "ab12cd34ef56-1".into(),
            seq: 1,
            topic: "t".into(),
            enqueued_at: rfc3339(0),
            age_ms: 0,
            attempts: 0,
            leased: false,
            last_error: None,
            reason: None,
            dead_at: None,
            payload,
            payload_encoding,
        };
        let line = serde_json::to_string(&rec).unwrap();
        assert!(!line.contains('\n'), "one NDJSON line: {line}");
        let back: EventRecord = serde_json::from_str(&line).unwrap();
        (line, back.payload_bytes().unwrap())
    }

    #[test]
    fn every_payload_comes_back_byte_for_byte() {
        for bytes in [
            br#"{"z":1,"a":2}"#.as_slice(),
            br#"{"n":123456789012345678901234567890,"x":1.10,"e":1E+2}"#,
            br#"[1, 2 ,3]"#,
            br#""a string""#,
            b"42",
            b"{\n  \"pretty\": true\n}",
            b"{\"a\":1}\n",
            b" {\"a\":1}",
            b"not json at all",
            b"\xff\xfe\x00binary",
            b"",
        ] {
            let (line, back) = round_trip(bytes);
            assert_eq!(back, bytes, "{line}");
        }
        // The usual event is its own JSON in the record, unencoded.
        let (line, _) = round_trip(br#"{"z":1,"x":1.10}"#);
        assert!(line.contains(r#""payload":{"z":1,"x":1.10}"#), "{line}");
        assert!(!line.contains("payload_encoding"), "{line}");
        let (line, _) = round_trip(b"\xff");
        assert!(line.contains(r#""payload_encoding":"base64""#), "{line}");
    }
}
