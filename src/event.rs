//! Events as the queue hands them out, and their stable ids.
//!
//! An event is the producer's payload bytes (normally one JSON object), untouched,
//! plus what evspool learned when it accepted it: a sequence number, the time it
//! was enqueued, and how many delivery attempts it has seen.
//!
//! # Stable ids
//!
//! Every event's id is `<instance>-<seq>`: the store's instance id (12 lowercase
//! hex digits, generated once when the store is created and kept in `meta`) and
//! the event's sequence number in decimal. That is at most 33 characters of
//! `[0-9a-f-]`, well inside Mixpanel's 36-character `$insert_id` limit. The id
//! never changes across retries, restarts or replays, so sinks that deduplicate
//! on it turn at-least-once delivery into effectively-once.

use bytes::Bytes;
use std::fmt;

/// The id of one event: the store's instance id and the event's sequence number.
///
/// `Display` renders it as `<instance>-<seq>`, e.g. `3f9a0c12be45-1042`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId {
    instance: std::sync::Arc<str>,
    seq: u64,
}

impl EventId {
    pub(crate) fn new(instance: std::sync::Arc<str>, seq: u64) -> Self {
        Self { instance, seq }
    }

    /// The sequence number, unique within the store and increasing in enqueue order.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The store's instance id part.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Appends the id as `Display` renders it (`<instance>-<seq>`), without
    /// going through `fmt`: the http sink writes one per event it sends.
    pub(crate) fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.instance.as_bytes());
        out.push(b'-');
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut n = self.seq;
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        out.extend_from_slice(&digits[at..]);
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.instance, self.seq)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({self})")
    }
}

/// One event handed out by a lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The stable id; see the module docs.
    pub id: EventId,
    /// Milliseconds since the Unix epoch when the event was enqueued.
    pub enqueued_at_ms: u64,
    /// Delivery attempts this event's chunk has already seen (0 on first lease).
    pub attempts: u32,
    /// The producer's bytes, exactly as enqueued.
    pub payload: Bytes,
}

impl Event {
    /// Shorthand for `self.id.seq()`.
    pub fn seq(&self) -> u64 {
        self.id.seq()
    }
}

/// Milliseconds since the Unix epoch, from the system clock.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
