//! The properties the fuzz targets (`fuzz/fuzz_targets/`) check, shared with
//! the corpus replay test (`tests/integration/fuzz_corpus.rs`), so a
//! corpus file that once found a bug is re-checked by `cargo test` forever.
//!
//! Each function panics when a property fails and otherwise returns what the
//! input turned into, so the replay test can count outcomes.

use bytes::Bytes;
use evspool::ingest::{self, IngestError};
use evspool::record::{self, RecordError, StoredEvent};

/// What a `chunk_decode` input decoded to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// The bytes (as given, or re-framed with a valid CRC) decoded as some record.
    Decoded,
    /// Every decoder refused the bytes with an error.
    Refused,
}

/// Frames `body` as a format-1 record with a valid CRC, so the fuzzer reaches
/// the body decoders instead of stopping at the checksum.
pub fn reframe(body: &[u8]) -> Vec<u8> {
    let mut v = vec![record::FORMAT_VERSION];
    v.extend_from_slice(body);
    let crc = crc32_ieee(&v);
    v.extend_from_slice(&crc.to_le_bytes());
    v
}

/// CRC-32 (IEEE), bitwise: the fuzz crate has no crc32fast dependency and the
/// records are small.
fn crc32_ieee(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Re-encoding must give back the input, except in two documented cases,
/// where it must decode to the same value: bincode's varints accept
/// non-canonical (longer) encodings, so the re-encoding is shorter; and a
/// record of an older format (1) is re-encoded in the current one.
fn check_reencoding<T: PartialEq + std::fmt::Debug>(
    input: &[u8],
    reencoded: &[u8],
    decoded: &T,
    decode: impl Fn(&[u8]) -> Result<T, RecordError>,
) {
    assert_eq!(
        reencoded.first(),
        Some(&record::FORMAT_VERSION),
        "records are written in the current format"
    );
    if reencoded == input {
        return;
    }
    let older = input.first().is_some_and(|f| *f < record::FORMAT_VERSION);
    assert!(
        older || reencoded.len() < input.len(),
        "re-encoding is not the input, not shorter, and the input is not an older format: {} vs {} bytes",
        reencoded.len(),
        input.len()
    );
    let again = decode(reencoded).expect("a re-encoded record decodes");
    assert_eq!(
        &again, decoded,
        "a re-encoded record decodes to the same value"
    );
}

fn check_error(e: &RecordError, rec: &[u8]) {
    let msg = e.to_string();
    assert!(!msg.is_empty(), "a record error has a message");
    if rec.len() < 5 {
        assert_eq!(*e, RecordError::Truncated { len: rec.len() });
    }
}

/// Decodes `rec` as each record kind; checks round trips and errors.
fn decode_all(rec: &[u8]) -> bool {
    let mut any = false;
    match record::decode_chunk(rec) {
        Ok(events) => {
            any = true;
            assert!(!events.is_empty(), "a decoded chunk holds events");
            assert!(
                events.windows(2).all(|w| w[0].seq < w[1].seq),
                "decoded seqs increase"
            );
            let payload_bytes: usize = events.iter().map(|e| e.payload.len()).sum();
            assert!(
                payload_bytes <= rec.len(),
                "payloads borrow from the record"
            );
            let re = record::encode_chunk(&events);
            let owned = |v: &[StoredEvent<'_>]| -> Vec<(u64, u64, Vec<u8>)> {
                v.iter()
                    .map(|e| (e.seq, e.enqueued_at_ms, e.payload.to_vec()))
                    .collect()
            };
            check_reencoding(rec, &re, &owned(&events), |b| {
                record::decode_chunk(b).map(|v| owned(&v))
            });
        }
        Err(e) => check_error(&e, rec),
    }
    match record::decode_index(rec) {
        Ok(idx) => {
            any = true;
            check_reencoding(rec, &record::encode_index(&idx), &idx, record::decode_index);
        }
        Err(e) => check_error(&e, rec),
    }
    match record::decode_retry(rec) {
        Ok(r) => {
            any = true;
            check_reencoding(rec, &record::encode_retry(&r), &r, record::decode_retry);
        }
        Err(e) => check_error(&e, rec),
    }
    match record::decode_dead(rec) {
        Ok(d) => {
            any = true;
            check_reencoding(rec, &record::encode_dead(&d), &d, record::decode_dead);
        }
        Err(e) => check_error(&e, rec),
    }
    any
}

/// The `chunk_decode` target: `data` as a raw record, and `data` re-framed
/// with a valid CRC. Never panics in the library; decoded records re-encode
/// to the same bytes (or, for non-canonical varints, to the same value).
pub fn chunk_decode(data: &[u8]) -> ChunkOutcome {
    let raw = decode_all(data);
    let framed = decode_all(&reframe(data));
    if raw || framed {
        ChunkOutcome::Decoded
    } else {
        ChunkOutcome::Refused
    }
}

/// What an `ingest_body` input turned into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestOutcome {
    /// The chosen parser returned this many events.
    Events(usize),
    /// The parser refused the body with a message.
    Refused,
}

/// The route an ingest input is fed to, from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `POST /v1/events`: `parse_events`.
    Events,
    /// Mixpanel with a form body.
    MixpanelForm,
    /// Mixpanel with a JSON body (or `data` in the query when the body is blank).
    MixpanelJson,
    /// Segment `/v1/batch`.
    SegmentBatch,
}

/// Largest decompressed body the target allows (small, so bombs are cheap).
pub const FUZZ_DECOMPRESSED_LIMIT: usize = 1 << 20;

/// Splits an `ingest_body` input: byte 0 selects the route (bits 0-1), gzip
/// (bit 2) and a small event limit (bit 3); the rest is the body.
pub fn split_ingest(data: &[u8]) -> (Route, bool, usize, &[u8]) {
    let Some((&sel, body)) = data.split_first() else {
        return (Route::Events, false, 100, data);
    };
    let route = match sel & 3 {
        0 => Route::Events,
        1 => Route::MixpanelForm,
        2 => Route::MixpanelJson,
        _ => Route::SegmentBatch,
    };
    let max_events = if sel & 8 != 0 { 3 } else { 1000 };
    (route, sel & 4 != 0, max_events, body)
}

fn check_ingest_error(e: &IngestError) {
    let msg = e.to_string();
    assert!(!msg.is_empty(), "an ingest error has a message");
    assert!(
        msg.len() < 4096,
        "an ingest error message is bounded: {msg}"
    );
}

/// Every returned event is one JSON object; re-sending the events as NDJSON
/// yields the same events.
fn check_events(events: &[Bytes], max_events: usize, raw_slices: bool) {
    assert!(!events.is_empty(), "Ok means at least one event");
    assert!(events.len() <= max_events, "at most max_events events");
    for ev in events {
        let v: serde_json::Value = serde_json::from_slice(ev).unwrap_or_else(|e| {
            panic!("event is not JSON ({e}): {:?}", String::from_utf8_lossy(ev))
        });
        assert!(v.is_object(), "every event is an object");
        if raw_slices {
            assert_eq!(ev.first(), Some(&b'{'));
            assert_eq!(ev.last(), Some(&b'}'));
        }
    }
    let mut nd = Vec::new();
    for ev in events {
        nd.extend_from_slice(ev);
        nd.push(b'\n');
    }
    let again = ingest::parse_events(&Bytes::from(nd), max_events)
        .expect("the events, sent again as NDJSON, parse");
    assert_eq!(again, events, "NDJSON of the events round-trips");
}

/// The `ingest_body` target: decode (gzip or identity) then parse by route.
/// Never panics; yields events that are each one JSON object, or an error
/// with a message; a gzip body never decompresses past the limit.
pub fn ingest_body(data: &[u8]) -> IngestOutcome {
    let (route, gzip, max_events, body) = split_ingest(data);
    let decoded = match ingest::decode_body(
        Bytes::copy_from_slice(body),
        gzip.then_some("gzip"),
        FUZZ_DECOMPRESSED_LIMIT,
    ) {
        Ok(b) => {
            assert!(
                b.len() <= FUZZ_DECOMPRESSED_LIMIT,
                "decompression is bounded"
            );
            b
        }
        Err(e) => {
            check_ingest_error(&e);
            return IngestOutcome::Refused;
        }
    };
    let result = match route {
        Route::Events => ingest::parse_events(&decoded, max_events),
        Route::MixpanelForm => ingest::parse_mixpanel(&decoded, true, None, max_events),
        Route::MixpanelJson => {
            ingest::parse_mixpanel(&decoded, false, Some("data=e30%3D&verbose=1"), max_events)
        }
        Route::SegmentBatch => ingest::parse_segment_batch(&decoded, max_events),
    };
    match result {
        Ok(events) => {
            check_events(&events, max_events, route != Route::SegmentBatch);
            if route == Route::Events {
                // All or nothing (G1) and raw payloads: each event is a slice of the body.
                let range = decoded.as_ptr_range();
                for ev in &events {
                    let r = ev.as_ptr_range();
                    assert!(
                        range.start <= r.start && r.end <= range.end,
                        "a parsed event is a slice of the body"
                    );
                }
            }
            IngestOutcome::Events(events.len())
        }
        Err(e) => {
            check_ingest_error(&e);
            IngestOutcome::Refused
        }
    }
}
