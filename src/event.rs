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
    instance: Instance,
    seq: u64,
}

impl EventId {
    pub(crate) fn new(instance: Instance, seq: u64) -> Self {
        Self { instance, seq }
    }

    /// The sequence number, unique within the store and increasing in enqueue order.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The store's instance id part.
    pub fn instance(&self) -> &str {
        self.instance.as_str()
    }

    /// Appends the id as `Display` renders it (`<instance>-<seq>`), without
    /// going through `fmt`: the http sink writes one per event it sends.
    pub(crate) fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.instance.as_str().as_bytes());
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

/// A store's instance id, interned: every event id names it, and a lease
/// hands out thousands of ids a second, so an id copies a reference instead
/// of counting one (an `Arc<str>` clone and drop per event cost a drain about
/// 5 %, docs/performance.md, 2026-12-07).
///
/// Each distinct id is kept once for the life of the process: a store's id
/// is at most 16 bytes, and a process opens few stores (a test that opens
/// thousands keeps a few tens of KiB).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Instance(&'static str);

impl Instance {
    /// The interned copy of `id`.
    pub(crate) fn intern(id: &str) -> Instance {
        static IDS: std::sync::Mutex<std::collections::BTreeSet<&'static str>> =
            std::sync::Mutex::new(std::collections::BTreeSet::new());
        let mut ids = IDS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(kept) = ids.get(id) {
            return Instance(kept);
        }
        let kept: &'static str = Box::leak(id.into());
        ids.insert(kept);
        Instance(kept)
    }

    /// The id.
    pub(crate) fn as_str(self) -> &'static str {
        self.0
    }
}

impl fmt::Debug for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0, f)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.instance.as_str(), self.seq)
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

#[cfg(test)]
mod tests {
    use super::{EventId, Instance};

    #[test]
    fn an_instance_is_kept_once_however_often_it_is_interned() {
        let a = Instance::intern("3f9a0c12be45");
        let b = Instance::intern(&String::from("3f9a0c12be45"));
        assert!(std::ptr::eq(a.as_str(), b.as_str()));
        let other = Instance::intern("3f9a0c12be46");
        assert_ne!(a, other);
        assert_eq!(EventId::new(a, 1042).to_string(), "3f9a0c12be45-1042");
        assert!(EventId::new(a, 9) < EventId::new(other, 1));
        let mut out = Vec::new();
        EventId::new(other, 7).write_to(&mut out);
        assert_eq!(out, b"3f9a0c12be46-7");
    }
}
