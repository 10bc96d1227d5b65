//! What no sink could send, found at ingest: a string with a lone UTF-16
//! surrogate escape (`"\ud800"`) has no UTF-8 form, so serde_json — and so
//! every sink that reads an event — refuses it. Refused with the line and the
//! field, before anything is enqueued.

use super::{IngestError, strip_position};

/// Whether `text` holds a `\uD800`–`\uDFFF` escape (a surrogate half), the
/// cheap test before [`check_sendable`] looks closer.
fn has_surrogate_escape(text: &[u8]) -> bool {
    memchr::memmem::find_iter(text, b"\\u").any(|i| {
        matches!(text.get(i + 2), Some(b'd' | b'D'))
            && matches!(
                text.get(i + 3),
                Some(b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F')
            )
    })
}

/// Refuses an event no sink could send: a string with a lone surrogate escape
/// (`"\ud800"`), which has no UTF-8 form, so serde_json (and every sink that
/// reads events) refuses it. Names the field (`properties.name`, `items[2]`).
/// Well-formed pairs (`"\ud83d\ude00"`) pass. `line` (where the event
/// starts) is called only for a refusal: counting lines for every event
/// made a request's parse quadratic in its size.
pub(super) fn check_sendable(
    event: &[u8],
    line: impl FnOnce() -> usize,
) -> Result<(), IngestError> {
    use serde::de::DeserializeSeed as _;
    if !has_surrogate_escape(event) {
        return Ok(());
    }
    let path = std::cell::RefCell::new(Vec::new());
    let mut de = serde_json::Deserializer::from_slice(event);
    match (PathSeed { path: &path }).deserialize(&mut de) {
        Ok(()) => Ok(()),
        Err(e) => {
            let mut field = String::new();
            for part in path.borrow().iter() {
                match part {
                    PathPart::Key(k) if field.is_empty() => field.push_str(k),
                    PathPart::Key(k) => {
                        field.push('.');
                        field.push_str(k);
                    }
                    PathPart::Index(i) => field.push_str(&format!("[{i}]")),
                }
            }
            if field.is_empty() {
                field.push_str("(a key)");
            }
            Err(IngestError::Unsendable {
                line: line(),
                field,
                reason: format!(
                    "{}; no sink can send it (a UTF-16 surrogate escape must be one of a pair)",
                    strip_position(&e.to_string())
                ),
            })
        }
    }
}

enum PathPart {
    Key(String),
    Index(usize),
}

/// Walks a JSON value, keeping the path to where it is (for the error of
/// [`check_sendable`]: on an error the path is left as it was there).
struct PathSeed<'p> {
    path: &'p std::cell::RefCell<Vec<PathPart>>,
}

impl<'de> serde::de::DeserializeSeed<'de> for PathSeed<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for PathSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        loop {
            self.path.borrow_mut().push(PathPart::Index(i));
            if seq
                .next_element_seed(PathSeed { path: self.path })?
                .is_none()
            {
                self.path.borrow_mut().pop();
                return Ok(());
            }
            self.path.borrow_mut().pop();
            i += 1;
        }
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            self.path.borrow_mut().push(PathPart::Key(key));
            map.next_value_seed(PathSeed { path: self.path })?;
            self.path.borrow_mut().pop();
        }
        Ok(())
    }
}
