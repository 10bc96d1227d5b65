//! Origin ids: the id an event keeps when it moves to another store.
//!
//! An event's id is its store's instance id and its sequence number there, so
//! an event that moves to another store (`evspool export` on one host,
//! `evspool import` on another; or one evspool forwarding into another's
//! sidecar) is enqueued there under a new id. The collector deduplicates on the
//! id it sees, so without more the moved backlog would be delivered as new
//! events, and a copy the first store had already delivered would be counted
//! twice.
//!
//! So the first id travels in the payload: a JSON object event carries it as
//! its top-level member `"evspool_id"` ([`ORIGIN_ID_FIELD`]), placed first.
//! `import` adds it to every exported event that lacks one, and the generic
//! `http` sink adds it to every event it sends, so an evspool downstream of
//! another receives it too. Every sink then sends the carried id as the id the
//! collector deduplicates on ([`Event::delivery_id`]): the `http` sink's id
//! member, envelope and id header, Mixpanel's `$insert_id`, Segment's
//! `messageId`, NATS's `Nats-Msg-Id`. A carried id must look like one of
//! evspool's (1 to 36 characters of `[A-Za-z0-9-]`, Mixpanel's `$insert_id`
//! limit); anything else under that name is the application's and is ignored.
//!
//! Events that are not JSON objects cannot carry an id: `import` says how
//! many of them get new ids.
//!
//! The Mixpanel and Segment sinks take the member out of the event they send
//! (its value is in `$insert_id` or `messageId`); the `http` and NATS sinks
//! send the payload as stored.

use crate::Event;
use std::fmt;

/// The top-level member of a JSON object event that carries its origin id.
pub const ORIGIN_ID_FIELD: &str = "evspool_id";

/// The member's name as JSON, for a substring scan before any parse.
const QUOTED: &[u8] = b"\"evspool_id\"";

/// The scanner for [`QUOTED`], built once: building a `memmem` searcher costs
/// more than scanning a typical event with it (a new one per event was the
/// largest single cost of the http sink's request bodies).
static QUOTED_FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(QUOTED));

/// Whether `payload` contains the text `"evspool_id"` anywhere: when it does
/// not, it carries no origin id (and the scan is all it costs).
pub(crate) fn mentions_origin_field(payload: &[u8]) -> bool {
    QUOTED_FINDER.find(payload).is_some()
}

/// Whether `id` can be carried: 1 to 36 characters of `[A-Za-z0-9-]`.
pub fn is_valid_origin_id(id: &str) -> bool {
    (1..=36).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The origin id `payload` carries, if it is a JSON object whose top-level
/// `evspool_id` member is a valid id.
///
/// Costs one substring scan for payloads that do not mention the member; only
/// those that do are parsed.
pub fn origin_id(payload: &[u8]) -> Option<&str> {
    if !mentions_origin_field(payload) {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct Carrier<'a> {
        #[serde(borrow, default)]
        evspool_id: Option<&'a str>,
    }
    let c: Carrier<'_> = serde_json::from_slice(payload).ok()?;
    c.evspool_id.filter(|id| is_valid_origin_id(id))
}

/// The id the collector sees for an event: the origin id its payload
/// carries, else its own id. `Display` writes it without allocating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryId<'a> {
    /// The event's own id.
    Own(&'a crate::EventId),
    /// The id carried in the payload from the store the event came from.
    Carried(&'a str),
}

impl fmt::Display for DeliveryId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Own(id) => fmt::Display::fmt(id, f),
            Self::Carried(id) => f.write_str(id),
        }
    }
}

impl Event {
    /// The id the collector deduplicates on: the origin id the payload
    /// carries (see [`ORIGIN_ID_FIELD`]), else [`Event::id`].
    pub fn delivery_id(&self) -> DeliveryId<'_> {
        match origin_id(&self.payload) {
            Some(id) => DeliveryId::Carried(id),
            None => DeliveryId::Own(&self.id),
        }
    }
}

/// What [`carry_origin_id`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Carried {
    /// The payload with `"evspool_id":"<id>"` added as its first member; the
    /// rest of its bytes unchanged.
    Added(Vec<u8>),
    /// The payload already carries a valid origin id (an earlier store's):
    /// keep it as it is.
    Already,
    /// The payload is not a JSON object: it cannot carry an id.
    NotAnObject,
}

/// Makes `payload` carry `id` as its origin id, unless it carries one already.
///
/// Only the member is inserted, after the opening `{`: every other byte of
/// the payload (whitespace, key order, number spellings) is kept. A payload
/// with an `evspool_id` member that is not a valid id gets no second one
/// (JSON objects must not repeat a member): it is reported as
/// [`Carried::Already`] and delivered under that member as the application
/// wrote it.
///
/// # Panics
///
/// When `id` is not a valid origin id ([`is_valid_origin_id`]).
pub fn carry_origin_id(payload: &[u8], id: &str) -> Carried {
    assert!(is_valid_origin_id(id), "not an event id: {id:?}");
    let Some(open) = payload.iter().position(|b| !b.is_ascii_whitespace()) else {
        return Carried::NotAnObject;
    };
    if payload[open] != b'{' || serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_err() {
        return Carried::NotAnObject;
    }
    if has_top_level_member(payload) {
        return Carried::Already;
    }
    let rest = &payload[open + 1..];
    let empty = rest.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'}');
    let mut out = Vec::with_capacity(payload.len() + id.len() + 16);
    out.extend_from_slice(&payload[..=open]);
    out.extend_from_slice(QUOTED);
    out.extend_from_slice(b":\"");
    out.extend_from_slice(id.as_bytes());
    out.push(b'"');
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    Carried::Added(out)
}

/// Whether the JSON object `payload` has a top-level `evspool_id` member.
fn has_top_level_member(payload: &[u8]) -> bool {
    if !mentions_origin_field(payload) {
        return false;
    }
    serde_json::from_slice::<std::collections::BTreeMap<String, serde::de::IgnoredAny>>(payload)
        .is_ok_and(|m| m.contains_key(ORIGIN_ID_FIELD))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(payload: &str) -> Event {
        Event {
            id: crate::event::EventId::new(crate::event::Instance::intern("ab12cd34ef56"), 7),
            enqueued_at_ms: 0,
            attempts: 0,
            payload: bytes::Bytes::from(payload.to_string()),
        }
    }

    #[test]
    fn the_delivery_id_is_the_carried_one_when_valid_else_the_events_own() {
        for (payload, expected) in [
            (r#"{"a":1}"#, "ab12cd34ef56-7"),
            (
                r#"{"evspool_id":"0f0f0f0f0f0f-42","a":1}"#,
                "0f0f0f0f0f0f-42",
            ),
            (r#"{"a":1, "evspool_id" : "up-1"}"#, "up-1"),
            // Only a top-level string that looks like an id counts.
            (r#"{"a":{"evspool_id":"nested-1"}}"#, "ab12cd34ef56-7"),
            (r#"{"evspool_id":42}"#, "ab12cd34ef56-7"),
            (r#"{"evspool_id":"has space"}"#, "ab12cd34ef56-7"),
            (
                &format!(r#"{{"evspool_id":"{}"}}"#, "x".repeat(37)),
                "ab12cd34ef56-7",
            ),
            (r#"["evspool_id"]"#, "ab12cd34ef56-7"),
            (r#"not json "evspool_id""#, "ab12cd34ef56-7"),
        ] {
            assert_eq!(
                event(payload).delivery_id().to_string(),
                expected,
                "{payload}"
            );
        }
    }

    #[test]
    fn carrying_an_id_inserts_one_member_and_keeps_every_other_byte() {
        let added = |p: &str| match carry_origin_id(p.as_bytes(), "ab-1") {
            Carried::Added(v) => String::from_utf8(v).unwrap(),
            other => panic!("{p}: {other:?}"),
        };
        assert_eq!(
            added(r#"{"n":123456789012345678901234567890,"x":1.10,"b":0,"a":0}"#),
            r#"{"evspool_id":"ab-1","n":123456789012345678901234567890,"x":1.10,"b":0,"a":0}"#
        );
        assert_eq!(added("{}"), r#"{"evspool_id":"ab-1"}"#);
        assert_eq!(added(" { }\n"), " {\"evspool_id\":\"ab-1\" }\n");
        assert_eq!(
            added("{\n  \"a\": 1\n}"),
            "{\"evspool_id\":\"ab-1\",\n  \"a\": 1\n}"
        );
        assert_eq!(
            carry_origin_id(br#"{"evspool_id":"first-1","a":1}"#, "ab-1"),
            Carried::Already
        );
        assert_eq!(carry_origin_id(b"[1,2]", "ab-1"), Carried::NotAnObject);
        assert_eq!(carry_origin_id(b"{broken", "ab-1"), Carried::NotAnObject);
        assert_eq!(carry_origin_id(b"\xff\xfe", "ab-1"), Carried::NotAnObject);
        // What was added is what a sink reads back.
        let e = event(&added(r#"{"a":1}"#));
        assert_eq!(e.delivery_id(), DeliveryId::Carried("ab-1"));
    }
}
