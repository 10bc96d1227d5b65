//! Parsing ingest bodies into events. Pure, no I/O; fuzzed.
//!
//! Accepted shapes (all produce one event per JSON object, payload bytes kept
//! exactly as the client sent them):
//!
//! - a JSON object: one event;
//! - a JSON array of objects;
//! - NDJSON: one object per line (blank lines ignored);
//! - Mixpanel's form encoding: `data=<json or base64(json)>` (object or array),
//!   as the official SDKs send it to `/track`, `/engage`, `/groups`, `/import`;
//! - Segment's batch envelope: `{"batch":[...]}`.
//!
//! # Invariants
//!
//! - IN1: all or nothing: a body with any bad part yields an error naming the
//!   line (and, where known, the field); no event from it is returned.
//! - IN2: bounded: decompression stops at the configured limit, nesting deeper
//!   than serde_json's recursion limit (128) is an error, and at most
//!   `max_events` events are returned.
//! - IN3: never panics on any input.

use base64::Engine as _;
use bytes::Bytes;
use serde_json::value::RawValue;
use std::io::Read;

mod sendable;
use sendable::check_sendable;

/// Why a body was refused. `Display` says what and where, for the 4xx answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// Not valid JSON (or NDJSON) at the given position.
    #[error("invalid JSON at line {line}, column {column}: {message}")]
    Json {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// serde_json's message.
        message: String,
    },
    /// A value that is not a JSON object where an event was expected.
    #[error("line {line}: {what}")]
    NotAnObject {
        /// 1-based line (the element's line for arrays).
        line: usize,
        /// What was found instead.
        what: String,
    },
    /// A required field is missing or has the wrong type.
    #[error("field `{field}`: {reason}")]
    Field {
        /// The field's name.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// More events in one request than allowed.
    #[error("{count} or more events in one request; the limit is {max}")]
    TooManyEvents {
        /// Events seen before giving up.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The body decompresses to more than the limit (a gzip bomb, or simply too big).
    #[error("body decompresses to more than {limit} bytes")]
    TooLarge {
        /// The decompressed-size limit.
        limit: usize,
    },
    /// The body's encoding could not be decoded (bad gzip, bad base64, bad form).
    #[error("cannot decode body: {0}")]
    Encoding(String),
    /// No events at all.
    #[error("body holds no events")]
    Empty,
    /// The caller's memory budget could not give what decompressing the body
    /// needs ([`decode_body_within`]); nothing was decoded. Retry later.
    #[error("no memory budget left to decompress the body; retry shortly")]
    OverBudget,
    /// A string holds what no sink can send: a lone UTF-16 surrogate escape
    /// such as `"\ud800"` (it has no UTF-8 form; serde_json, and so every
    /// sink, refuses it).
    #[error("line {line}, field `{field}`: {reason}")]
    Unsendable {
        /// 1-based line of the event.
        line: usize,
        /// Where in the event, e.g. `properties.name` or `items[2]`.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

impl IngestError {
    /// Whether the right answer is 413 (too large) rather than 400.
    pub fn is_too_large(&self) -> bool {
        matches!(self, Self::TooLarge { .. } | Self::TooManyEvents { .. })
    }
}

/// Decodes `Content-Encoding` (`gzip` or identity), reading at most `limit` bytes.
///
/// # Errors
///
/// [`IngestError::TooLarge`] past the limit, [`IngestError::Encoding`] for a
/// bad stream or an unsupported encoding.
pub fn decode_body(
    body: Bytes,
    content_encoding: Option<&str>,
    limit: usize,
) -> Result<Bytes, IngestError> {
    decode_body_within(body, content_encoding, limit, &mut |_| true)
}

/// Bytes a decompression takes from the budget at a time
/// ([`decode_body_within`]).
pub const DECODE_STEP: usize = 256 * 1024;

/// As [`decode_body`], asking `grow(n)` before the output may grow by `n`
/// bytes (in steps of [`DECODE_STEP`]); the output never holds more capacity
/// than was granted.
///
/// # Errors
///
/// As [`decode_body`]; [`IngestError::OverBudget`] when `grow` says no.
pub fn decode_body_within(
    body: Bytes,
    content_encoding: Option<&str>,
    limit: usize,
    grow: &mut dyn FnMut(usize) -> bool,
) -> Result<Bytes, IngestError> {
    match content_encoding.map(|e| e.trim().to_ascii_lowercase()) {
        None => {}
        Some(e) if e.is_empty() || e == "identity" => {}
        Some(e) if e == "gzip" || e == "x-gzip" => {
            let mut out: Vec<u8> = Vec::new();
            let mut dec = flate2::read::MultiGzDecoder::new(&body[..]).take(limit as u64 + 1);
            loop {
                if out.len() == out.capacity() {
                    if !grow(DECODE_STEP) {
                        return Err(IngestError::OverBudget);
                    }
                    out.reserve_exact(DECODE_STEP);
                }
                let len = out.len();
                let room = out.capacity() - len;
                out.resize(len + room, 0);
                let n = dec
                    .read(&mut out[len..])
                    .map_err(|e| IngestError::Encoding(format!("gzip: {e}")))?;
                out.truncate(len + n);
                if n == 0 {
                    break;
                }
            }
            if out.len() > limit {
                return Err(IngestError::TooLarge { limit });
            }
            return Ok(Bytes::from(out));
        }
        Some(e) => {
            return Err(IngestError::Encoding(format!(
                "unsupported Content-Encoding {e:?} (use gzip or none)"
            )));
        }
    }
    if body.len() > limit {
        return Err(IngestError::TooLarge { limit });
    }
    Ok(body)
}

fn json_error(e: &serde_json::Error) -> IngestError {
    IngestError::Json {
        line: e.line(),
        column: e.column(),
        message: strip_position(&e.to_string()),
    }
}

/// Where an NDJSON body is broken, by line: the first line that is not a JSON
/// value on its own, with the column within it. `None` when the body is not
/// NDJSON (its first line is not a whole value, as in one pretty-printed
/// object), where the parser's own position stands.
///
/// The stream parser reads a broken line on into the next ones (`{"b":` takes
/// the next line's object as its value), so its position is where it gave up,
/// lines later, often at the end of the body.
fn ndjson_error(text: &[u8]) -> Option<IngestError> {
    let mut lines = text
        .split(|b| *b == b'\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix(b"\r").unwrap_or(l)))
        .filter(|(_, l)| l.iter().any(|b| !b.is_ascii_whitespace()));
    let (_, first) = lines.next()?;
    serde_json::from_slice::<&RawValue>(first).ok()?;
    lines.find_map(|(n, line)| {
        serde_json::from_slice::<&RawValue>(line)
            .err()
            .map(|e| IngestError::Json {
                line: n,
                column: e.column(),
                message: strip_position(&e.to_string()),
            })
    })
}

fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

fn kind_of(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'{') => "object",
        Some(b'[') => "array",
        Some(b'"') => "string",
        Some(b't' | b'f') => "boolean",
        Some(b'n') => "null",
        _ => "number",
    }
}

fn line_at(body: &[u8], offset: usize) -> usize {
    1 + body[..offset.min(body.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
}

/// Slices `raw` (which borrows from `body`) out of `body` without copying.
fn slice_of(body: &Bytes, raw: &RawValue) -> Bytes {
    body.slice_ref(raw.get().as_bytes())
}

/// Deepest nesting of objects and arrays accepted in a body.
pub const MAX_DEPTH: usize = 64;

/// Refuses bodies nested deeper than [`MAX_DEPTH`], and numbers too large for
/// an `f64` (which `serde_json` — and so every sink that parses events —
/// refuses, so they could never be delivered), with one linear scan, before
/// any parser recurses into them.
fn check_depth(text: &[u8]) -> Result<(), IngestError> {
    let (mut depth, mut in_str, mut esc, mut line) = (0usize, false, false, 1usize);
    let mut line_start = 0usize;
    let mut i = 0usize;
    while i < text.len() {
        let c = text[i];
        if c == b'\n' {
            line += 1;
            line_start = i + 1;
        }
        if in_str {
            match (esc, c) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        match c {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(IngestError::Json {
                        line,
                        column: i - line_start + 1,
                        message: format!("nested deeper than {MAX_DEPTH} levels"),
                    });
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < text.len()
                    && matches!(text[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                let token = std::str::from_utf8(&text[start..i]).unwrap_or("");
                if token.parse::<f64>().is_ok_and(f64::is_infinite) {
                    let shown: String = token.chars().take(24).collect();
                    return Err(IngestError::Json {
                        line,
                        column: start - line_start + 1,
                        message: format!(
                            "number {shown}{} is out of range",
                            if token.len() > 24 { "…" } else { "" }
                        ),
                    });
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// Refuses a body that is not UTF-8, naming the line, column and byte, before
/// any parser sees it (serde_json would say only "invalid unicode code point").
fn check_utf8(text: &[u8]) -> Result<(), IngestError> {
    let Err(e) = std::str::from_utf8(text) else {
        return Ok(());
    };
    let at = e.valid_up_to();
    let line_start = text[..at]
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    Err(IngestError::Json {
        line: line_at(text, at),
        column: at - line_start + 1,
        message: format!(
            "not valid UTF-8 (byte 0x{:02x} at offset {at})",
            text.get(at).copied().unwrap_or(0)
        ),
    })
}

/// Deserializes a JSON array into borrowed raw elements, giving up as soon as
/// there are more than `max` (so a body of millions of `{}` costs no more
/// memory than `max` of them). Sets `over` when it gave up for that reason.
struct BoundedArray<'a> {
    max: usize,
    over: &'a std::cell::Cell<bool>,
}

impl<'de> serde::de::DeserializeSeed<'de> for BoundedArray<'_> {
    type Value = Vec<&'de RawValue>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for BoundedArray<'_> {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of events")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(item) = seq.next_element::<&'de RawValue>()? {
            if out.len() == self.max {
                self.over.set(true);
                return Err(serde::de::Error::custom("too many events"));
            }
            out.push(item);
        }
        Ok(out)
    }
}

/// Parses `text` (a JSON array) into at most `max` raw elements.
fn bounded_array(text: &[u8], max: usize) -> Result<Vec<&RawValue>, IngestError> {
    use serde::de::DeserializeSeed as _;
    let over = std::cell::Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(text);
    let items = BoundedArray { max, over: &over }
        .deserialize(&mut de)
        .and_then(|items| de.end().map(|()| items))
        .map_err(|e| {
            if over.get() {
                IngestError::TooManyEvents {
                    count: max + 1,
                    max,
                }
            } else {
                json_error(&e)
            }
        })?;
    Ok(items)
}

/// Adds `fields` an event object lacks, by splicing them in before its
/// closing brace: every byte the client sent (numbers included) is kept.
fn with_defaults(event: &str, fields: &[(&str, &str)]) -> Result<Bytes, String> {
    let keys: std::collections::BTreeMap<String, &RawValue> =
        serde_json::from_str(event).map_err(|e| strip_position(&e.to_string()))?;
    let body = event.trim_end();
    let Some(open) = body.strip_suffix('}') else {
        return Err("expected an object".into());
    };
    let mut out = String::with_capacity(event.len() + 64);
    out.push_str(open);
    let mut empty = keys.is_empty();
    for (key, raw) in fields {
        if keys.contains_key(*key) {
            continue;
        }
        if !empty {
            out.push(',');
        }
        empty = false;
        out.push_str(&serde_json::to_string(key).map_err(|e| e.to_string())?);
        out.push(':');
        out.push_str(raw);
    }
    out.push('}');
    Ok(Bytes::from(out))
}

/// Adds a `type` to a Segment call that lacks one (the single-call routes
/// take it from the path), keeping every other byte as sent.
///
/// # Errors
///
/// [`IngestError::Field`] when the event is not a JSON object.
pub fn with_segment_type(event: &Bytes, kind: &str) -> Result<Bytes, IngestError> {
    let text = std::str::from_utf8(event).map_err(|e| IngestError::Encoding(e.to_string()))?;
    let kind = serde_json::to_string(kind).map_err(|e| IngestError::Encoding(e.to_string()))?;
    with_defaults(text, &[("type", &kind)]).map_err(|reason| IngestError::Field {
        field: "type".into(),
        reason,
    })
}

/// Parses a JSON object, an array of objects, or NDJSON into events.
///
/// # Errors
///
/// Any [`IngestError`] naming the line; nothing is returned on error (IN1).
pub fn parse_events(body: &Bytes, max_events: usize) -> Result<Vec<Bytes>, IngestError> {
    let text: &[u8] = body;
    check_depth(text)?;
    check_utf8(text)?;
    let first = text.iter().position(|b| !b.is_ascii_whitespace());
    let Some(first) = first else {
        return Err(IngestError::Empty);
    };
    let mut out = Vec::new();
    if text[first] == b'[' {
        let items = bounded_array(text, max_events)?;
        for (i, item) in items.into_iter().enumerate() {
            if kind_of(item) != "object" {
                let offset = item.get().as_ptr() as usize - text.as_ptr() as usize;
                return Err(IngestError::NotAnObject {
                    line: line_at(text, offset),
                    what: format!(
                        "element {i} is a {}, expected an event object",
                        kind_of(item)
                    ),
                });
            }
            let offset = item.get().as_ptr() as usize - text.as_ptr() as usize;
            check_sendable(item.get().as_bytes(), || line_at(text, offset))?;
            out.push(slice_of(body, item));
        }
    } else {
        let stream = serde_json::Deserializer::from_slice(text).into_iter::<&RawValue>();
        for item in stream {
            let item = item.map_err(|e| ndjson_error(text).unwrap_or_else(|| json_error(&e)))?;
            if kind_of(item) != "object" {
                let offset = item.get().as_ptr() as usize - text.as_ptr() as usize;
                return Err(IngestError::NotAnObject {
                    line: line_at(text, offset),
                    what: format!("found a {}, expected an event object", kind_of(item)),
                });
            }
            if out.len() >= max_events {
                return Err(IngestError::TooManyEvents {
                    count: out.len() + 1,
                    max: max_events,
                });
            }
            let offset = item.get().as_ptr() as usize - text.as_ptr() as usize;
            check_sendable(item.get().as_bytes(), || line_at(text, offset))?;
            out.push(slice_of(body, item));
        }
    }
    if out.is_empty() {
        return Err(IngestError::Empty);
    }
    Ok(out)
}

/// Parses a Mixpanel ingestion body: form-encoded `data=` (JSON or base64 JSON,
/// object or array), or a plain JSON body. `query` is the URL query string,
/// which older SDKs use for `data` on GET.
///
/// # Errors
///
/// Any [`IngestError`]; [`IngestError::Field`] names `data` when it is missing or undecodable.
pub fn parse_mixpanel(
    body: &Bytes,
    form_encoded: bool,
    query: Option<&str>,
    max_events: usize,
) -> Result<Vec<Bytes>, IngestError> {
    let form_data = |src: &[u8]| {
        form_urlencoded::parse(src)
            .find(|(k, _)| k == "data")
            .map(|(_, v)| v.into_owned())
    };
    let data = if form_encoded {
        Some(form_data(body).ok_or_else(|| IngestError::Field {
            field: "data".into(),
            reason: "missing from the form body".into(),
        })?)
    } else if body.iter().all(u8::is_ascii_whitespace) {
        query.and_then(|q| form_data(q.as_bytes()))
    } else {
        None
    };
    let Some(data) = data else {
        return parse_events(body, max_events);
    };
    let trimmed = data.trim();
    let json = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        Bytes::from(trimmed.to_string())
    } else {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(trimmed)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(trimmed))
            .map_err(|e| IngestError::Field {
                field: "data".into(),
                reason: format!("neither JSON nor base64: {e}"),
            })?;
        Bytes::from(decoded)
    };
    parse_events(&json, max_events)
}

/// Parses a Segment `/v1/batch` body: `{"batch":[{...}, ...]}`. Top-level
/// `context` and `integrations` are copied into items that lack them.
///
/// # Errors
///
/// Any [`IngestError`]; [`IngestError::Field`] names `batch` when it is missing.
pub fn parse_segment_batch(body: &Bytes, max_events: usize) -> Result<Vec<Bytes>, IngestError> {
    check_depth(body)?;
    check_utf8(body)?;
    // The envelope's values stay raw: only `batch` is split (bounded), and each
    // item is parsed on its own, so memory is bounded by `max_events` items.
    let top: std::collections::BTreeMap<String, &RawValue> =
        match body.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => serde_json::from_slice(body).map_err(|e| json_error(&e))?,
            Some(_) => {
                serde_json::from_slice::<&RawValue>(body).map_err(|e| json_error(&e))?;
                return Err(IngestError::NotAnObject {
                    line: 1,
                    what: "expected an object with a `batch` array".into(),
                });
            }
            None => return Err(IngestError::Empty),
        };
    let Some(batch) = top.get("batch").filter(|b| kind_of(b) == "array") else {
        return Err(IngestError::Field {
            field: "batch".into(),
            reason: "missing or not an array".into(),
        });
    };
    let items = bounded_array(batch.get().as_bytes(), max_events)?;
    // The shared values are spliced in as sent, like the items themselves:
    // nothing is parsed into numbers and printed back.
    let shared: Vec<(&str, &str)> = ["context", "integrations"]
        .into_iter()
        .filter_map(|k| top.get(k).map(|raw| (k, raw.get())))
        .collect();
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        if kind_of(item) != "object" {
            return Err(IngestError::Field {
                field: format!("batch[{i}]"),
                reason: "expected an object".into(),
            });
        }
        let offset = item.get().as_ptr() as usize - body.as_ptr() as usize;
        check_sendable(item.get().as_bytes(), || line_at(body, offset)).map_err(|e| match e {
            IngestError::Unsendable {
                line,
                field,
                reason,
            } => IngestError::Unsendable {
                line,
                field: format!("batch[{i}].{field}"),
                reason,
            },
            other => other,
        })?;
        let event = with_defaults(item.get(), &shared).map_err(|reason| IngestError::Field {
            field: format!("batch[{i}]"),
            reason,
        })?;
        out.push(event);
    }
    if out.is_empty() {
        return Err(IngestError::Empty);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn b(s: &str) -> Bytes {
        Bytes::from(s.to_string())
    }

    #[test]
    fn an_object_an_array_and_ndjson_each_yield_their_events_untouched() {
        let one = parse_events(&b(r#" {"event":"a", "x" : 1} "#), 10).unwrap();
        assert_eq!(one, vec![b(r#"{"event":"a", "x" : 1}"#)]);
        let arr = parse_events(&b(r#"[{"a":1},{"b":2}]"#), 10).unwrap();
        assert_eq!(arr, vec![b(r#"{"a":1}"#), b(r#"{"b":2}"#)]);
        let nd = parse_events(&b("{\"a\":1}\n\n{\"b\":2}\n"), 10).unwrap();
        assert_eq!(nd, vec![b(r#"{"a":1}"#), b(r#"{"b":2}"#)]);
    }

    #[test]
    fn a_bad_ndjson_line_is_named_and_nothing_is_accepted() {
        let err = parse_events(&b("{\"a\":1}\n{\"b\":\n"), 10).unwrap_err();
        assert!(matches!(err, IngestError::Json { line: 2, .. }), "{err}");
        // The broken line 2 of 3, not where the parser gave up (line 4, the
        // end of the body: it read `{"b":` on into line 3's object).
        let err = parse_events(&b("{\"a\":1}\n{\"b\":\n{\"c\":3}\n"), 10).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid JSON at line 2, column 5: EOF while parsing a value"
        );
        let err = parse_events(&b("{\"a\":1}\r\n{\"a\":1}\r\n{\"b\" 2}\r\n"), 10).unwrap_err();
        assert!(
            matches!(
                err,
                IngestError::Json {
                    line: 3,
                    column: 6,
                    ..
                }
            ),
            "{err}"
        );
        // One pretty-printed object is not NDJSON: the parser's position stands.
        let err = parse_events(&b("{\n  \"a\": 1,\n  \"b\": ]\n}\n"), 10).unwrap_err();
        assert!(matches!(err, IngestError::Json { line: 3, .. }), "{err}");
        let err = parse_events(&b("{\"a\":1}\n42\n"), 10).unwrap_err();
        assert_eq!(
            err,
            IngestError::NotAnObject {
                line: 2,
                what: "found a number, expected an event object".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "line 2: found a number, expected an event object"
        );
    }

    #[test]
    fn an_array_element_that_is_not_an_object_is_named() {
        let err = parse_events(&b("[{\"a\":1},\n\"x\"]"), 10).unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 2: element 1 is a string, expected an event object"
        );
    }

    #[test]
    fn limits_on_event_count_and_nesting_hold() {
        let err = parse_events(&b("{}\n{}\n{}"), 2).unwrap_err();
        assert!(err.is_too_large());
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(
            parse_events(&b(&deep), 10),
            Err(IngestError::Json { .. })
        ));
        assert_eq!(parse_events(&b("  \n "), 10), Err(IngestError::Empty));
        // Found by the ingest_body fuzzer: valid JSON syntax, but no sink can parse it.
        let err = parse_events(&b("{\"a\":1}\n{\"b\":2111111188E88888}"), 10).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid JSON at line 2, column 6: number 2111111188E88888 is out of range"
        );
        assert!(parse_segment_batch(&b(r#"{"batch":[{"n":-1e999}]}"#), 10).is_err());
        assert_eq!(
            parse_events(
                &b(r#"{"small":1e-999,"big":1e308,"i":-12345678901234567890123}"#),
                10
            )
            .unwrap()
            .len(),
            1
        );
        assert!(parse_events(&Bytes::from_static(b"{\"a\":\"\xff\"}"), 10).is_err());
    }

    #[test]
    fn gzip_is_decoded_up_to_the_limit_and_bombs_are_refused() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![b' '; 1_000_000]).unwrap();
        let bomb = Bytes::from(enc.finish().unwrap());
        assert!(bomb.len() < 10_000);
        assert_eq!(
            decode_body(bomb.clone(), Some("gzip"), 100_000),
            Err(IngestError::TooLarge { limit: 100_000 })
        );
        assert_eq!(
            decode_body(bomb, Some("gzip"), 2_000_000).unwrap().len(),
            1_000_000
        );
        assert!(matches!(
            decode_body(b("not gzip"), Some("gzip"), 100),
            Err(IngestError::Encoding(_))
        ));
        assert!(matches!(
            decode_body(b("x"), Some("br"), 100),
            Err(IngestError::Encoding(_))
        ));
        assert_eq!(
            decode_body(b("12345"), None, 4),
            Err(IngestError::TooLarge { limit: 4 })
        );
    }

    #[test]
    fn mixpanel_form_bodies_decode_as_the_sdks_send_them() {
        let json = r#"[{"event":"signup","properties":{"token":"t","distinct_id":"u1"}}]"#;
        // The Ruby/Python SDKs: data=<json>, form-urlencoded.
        let form: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("data", json)
            .append_pair("verbose", "1")
            .finish();
        let ev = parse_mixpanel(&b(&form), true, None, 10).unwrap();
        assert_eq!(ev.len(), 1);
        assert!(std::str::from_utf8(&ev[0]).unwrap().contains("signup"));
        // Older SDKs: data=<base64(json)>.
        let b64 = base64::engine::general_purpose::STANDARD.encode(json);
        let form: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("data", &b64)
            .finish();
        assert_eq!(parse_mixpanel(&b(&form), true, None, 10).unwrap().len(), 1);
        // GET /track?data=...
        assert_eq!(
            parse_mixpanel(&b(""), false, Some(&form), 10)
                .unwrap()
                .len(),
            1
        );
        // A JSON body.
        assert_eq!(parse_mixpanel(&b(json), false, None, 10).unwrap().len(), 1);
        let err = parse_mixpanel(&b("verbose=1"), true, None, 10).unwrap_err();
        assert_eq!(err.to_string(), "field `data`: missing from the form body");
    }

    #[test]
    fn segment_batches_split_into_items_carrying_the_shared_context() {
        let body = b(
            r#"{"batch":[{"type":"track","event":"a"},{"type":"identify","context":{"x":1}}],"context":{"lib":"ruby"}}"#,
        );
        let ev = parse_segment_batch(&body, 10).unwrap();
        assert_eq!(ev.len(), 2);
        let first: serde_json::Value = serde_json::from_slice(&ev[0]).unwrap();
        assert_eq!(first["context"]["lib"], "ruby");
        let second: serde_json::Value = serde_json::from_slice(&ev[1]).unwrap();
        assert_eq!(second["context"]["x"], 1);
        let err = parse_segment_batch(&b(r#"{"events":[]}"#), 10).unwrap_err();
        assert_eq!(err.to_string(), "field `batch`: missing or not an array");
    }

    #[test]
    fn a_lone_surrogate_is_refused_naming_the_field_and_pairs_pass() {
        let err = parse_events(&b("{\"a\":1}\n{\"p\":{\"n\":[1,\"\\ud800\"]}}"), 10).unwrap_err();
        assert!(
            matches!(&err, IngestError::Unsendable { line: 2, field, .. } if field == "p.n[1]"),
            "{err}"
        );
        assert!(parse_events(&b(r#"{"a":"\udc00x"}"#), 10).is_err());
        assert!(parse_events(&b(r#"{"a":"\ud83d\ude00","b":"\\ud800"}"#), 10).is_ok());
        let err = parse_segment_batch(&b(r#"{"batch":[{},{"x":"\uDBFF"}]}"#), 10).unwrap_err();
        assert!(err.to_string().contains("batch[1].x"), "{err}");
    }

    #[test]
    fn an_events_line_is_counted_only_when_it_is_refused() {
        // Counting lines for every event made a request's parse quadratic
        // in its size (a quarter of the sidecar's CPU at 50 events a request).
        for ok in [&br#"{"a":1}"#[..], br#"{"a":"\ud83d\ude00"}"#] {
            assert!(sendable::check_sendable(ok, || panic!("counted")).is_ok());
        }
        let err = sendable::check_sendable(br#"{"a":"\ud800"}"#, || 7).unwrap_err();
        assert!(
            matches!(err, IngestError::Unsendable { line: 7, .. }),
            "{err}"
        );
    }

    #[test]
    fn segment_events_keep_every_byte_and_get_what_they_lack_spliced_in() {
        let body =
            b(r#"{"batch":[{"n":12345678901234567890123,"f":1.10},{ }],"context":{"c":1.50}}"#);
        let ev = parse_segment_batch(&body, 10).unwrap();
        assert_eq!(
            ev[0],
            b(r#"{"n":12345678901234567890123,"f":1.10,"context":{"c":1.50}}"#)
        );
        assert_eq!(ev[1], b(r#"{ "context":{"c":1.50}}"#));
        assert_eq!(
            with_segment_type(&b(r#"{"type":"x","g":-0.0}"#), "track").unwrap(),
            b(r#"{"type":"x","g":-0.0}"#)
        );
        assert_eq!(
            with_segment_type(&b(r#"{"g":1e5}"#), "track").unwrap(),
            b(r#"{"g":1e5,"type":"track"}"#)
        );
    }

    proptest::proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let body = Bytes::from(data);
            let _ = parse_events(&body, 100);
            let _ = parse_mixpanel(&body, true, None, 100);
            let _ = parse_mixpanel(&body, false, Some("data=e30"), 100);
            let _ = parse_segment_batch(&body, 100);
            let _ = decode_body(body, Some("gzip"), 1000);
        }
    }
}
