//! Decoding a chunk record's body in one pass, by hand.
//!
//! # Format
//!
//! The bytes bincode 2.0.1's standard config writes for a chunk body (see
//! `record.rs`), with bincode's varints (a byte below 251 is the value; 251,
//! 252 and 253 are followed by the value as a `u16`, `u32` or `u64`, little
//! endian; 254 and 255 are refused):
//!
//! ```text
//! body  := count varint, count × event
//! event := seq varint, enqueued_at_ms varint, len varint, len payload bytes
//! ```
//!
//! # Why by hand
//!
//! Every lease decodes the chunks it hands out. bincode's generic reader
//! (a limit counter, a peek and a consume per integer, a `Vec` of borrowed
//! events that the caller then maps again) took two thirds of the decode,
//! about a sixth of a drain's time on its thread (docs/performance.md,
//! 2026-12-07). This walks the slice once and maps each event as it goes.
//!
//! # Invariants
//!
//! - C1: same outcome as bincode on any input: the same events where bincode
//!   decodes, an error where it refuses, including its allocation limit
//!   ([`MAX_RECORD_BYTES`], counted as bincode counts: 8 bytes per integer,
//!   `count × size_of::<StoredEvent>()` for the vector, each event's share
//!   given back as it is read, and the payloads). Tested against bincode on random bodies, on
//!   encoded chunks with flipped and cut bytes, and on the fuzz corpus.
//! - C2: never panics and never reserves more than the body could hold
//!   (every event takes at least 3 bytes).

use super::{MAX_RECORD_BYTES, RecordError, StoredEvent};

/// Decodes a chunk body, handing each event to `f` in order; the events of
/// a chunk are at least one and their seqs rise, else it is an error.
pub(super) fn decode_body<'a, T>(
    body: &'a [u8],
    mut f: impl FnMut(StoredEvent<'a>) -> T,
) -> Result<Vec<T>, RecordError> {
    const EVENT: usize = std::mem::size_of::<StoredEvent<'static>>();
    let mut r = Reader { rest: body };
    // bincode's allocation limit, claimed as bincode claims it: 8 bytes per
    // integer read, the whole vector of events before the first, one
    // event's share given back before each event, then its payload.
    let mut claimed = Claimed(0);
    claimed.claim(8)?;
    let count = r.varint("event count")?;
    let count = usize::try_from(count).map_err(|_| body_err("event count out of range"))?;
    claimed.claim(count.saturating_mul(EVENT))?;
    let mut out = Vec::with_capacity(count.min(body.len() / 3));
    let mut last: Option<u64> = None;
    for _ in 0..count {
        claimed.0 -= EVENT;
        claimed.claim(8)?;
        let seq = r.varint("seq")?;
        claimed.claim(8)?;
        let enqueued_at_ms = r.varint("enqueued_at_ms")?;
        claimed.claim(8)?;
        let len = r.varint("payload length")?;
        let len = usize::try_from(len).map_err(|_| body_err("payload length out of range"))?;
        claimed.claim(len)?;
        let payload = r.take(len)?;
        if last.is_some_and(|l| l >= seq) {
            return Err(body_err("chunk seqs are not increasing"));
        }
        last = Some(seq);
        out.push(f(StoredEvent {
            seq,
            enqueued_at_ms,
            payload,
        }));
    }
    if !r.rest.is_empty() {
        return Err(RecordError::Body(format!(
            "{} trailing bytes",
            r.rest.len()
        )));
    }
    if out.is_empty() {
        return Err(body_err("chunk holds no events"));
    }
    Ok(out)
}

/// Bytes claimed against bincode's limit ([`MAX_RECORD_BYTES`]).
struct Claimed(usize);

impl Claimed {
    fn claim(&mut self, n: usize) -> Result<(), RecordError> {
        self.0 = self
            .0
            .checked_add(n)
            .filter(|c| *c <= MAX_RECORD_BYTES)
            .ok_or_else(|| body_err("over the record size limit"))?;
        Ok(())
    }
}

fn body_err(why: &str) -> RecordError {
    RecordError::Body(why.to_string())
}

/// What is left of a body.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if n > self.rest.len() {
            return Err(RecordError::Body(format!(
                "body ends {} bytes short",
                n - self.rest.len()
            )));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn varint(&mut self, what: &str) -> Result<u64, RecordError> {
        let Some((&tag, _)) = self.rest.split_first() else {
            return Err(RecordError::Body(format!("body ends before the {what}")));
        };
        let wide = |r: &mut Self, n: usize| -> Result<u64, RecordError> {
            let b = r
                .rest
                .get(1..1 + n)
                .ok_or_else(|| RecordError::Body(format!("body ends inside the {what}")))?;
            let mut v = [0u8; 8];
            v[..n].copy_from_slice(b);
            r.rest = &r.rest[1 + n..];
            Ok(u64::from_le_bytes(v))
        };
        match tag {
            0..=250 => {
                self.rest = &self.rest[1..];
                Ok(tag.into())
            }
            251 => wide(self, 2),
            252 => wide(self, 4),
            253 => wide(self, 8),
            _ => Err(RecordError::Body(format!(
                "the {what} has an invalid varint tag {tag}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::MAX_RECORD_BYTES;
    use super::super::{CONFIG, ChunkBody, StoredEvent, encode_chunk};
    use super::decode_body;
    use proptest::prelude::*;

    /// What bincode makes of a body: the oracle (C1).
    fn bincode_decode(body: &[u8]) -> Option<Vec<StoredEvent<'_>>> {
        let (chunk, used): (ChunkBody<'_>, usize) =
            bincode::borrow_decode_from_slice(body, CONFIG).ok()?;
        let events = chunk.events;
        (used == body.len() && !events.is_empty() && events.windows(2).all(|w| w[0].seq < w[1].seq))
            .then_some(events)
    }

    fn agree(body: &[u8]) -> Result<(), TestCaseError> {
        let fast = decode_body(body, |e| e).ok();
        prop_assert_eq!(&fast, &bincode_decode(body), "body {:?}", body);
        Ok(())
    }

    /// A body of a chunk record (without format byte and CRC).
    fn body_of(events: &[StoredEvent<'_>]) -> Vec<u8> {
        let rec = encode_chunk(events);
        rec[1..rec.len() - 4].to_vec()
    }

    /// Bytes a bincode varint may hold: small values, each wide tag with the
    /// values at its edges, and the refused tags.
    fn varint_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            (0u8..=250).prop_map(|b| vec![b]),
            any::<u16>().prop_map(|v| [&[251u8][..], &v.to_le_bytes()].concat()),
            any::<u32>().prop_map(|v| [&[252u8][..], &v.to_le_bytes()].concat()),
            any::<u64>().prop_map(|v| [&[253u8][..], &v.to_le_bytes()].concat()),
            (254u8..=255, proptest::collection::vec(any::<u8>(), 0..17)).prop_map(|(t, rest)| [
                &[t][..],
                &rest
            ]
            .concat()),
            // A wide tag cut short.
            (251u8..=253, proptest::collection::vec(any::<u8>(), 0..3)).prop_map(|(t, rest)| [
                &[t][..],
                &rest
            ]
            .concat()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn random_bodies_decode_as_bincode_decodes_them(
            body in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            agree(&body)?;
        }

        #[test]
        fn bodies_made_of_varints_decode_as_bincode_decodes_them(
            parts in proptest::collection::vec(varint_bytes(), 0..24),
        ) {
            agree(&parts.concat())?;
        }

        #[test]
        fn encoded_chunks_decode_as_bincode_decodes_them_whole_cut_and_flipped(
            events in proptest::collection::vec(
                (any::<u64>(), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..300)),
                1..12,
            ),
            at in any::<proptest::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut seqs: Vec<u64> = events.iter().map(|e| e.0).collect();
            seqs.sort_unstable();
            seqs.dedup();
            let stored: Vec<StoredEvent<'_>> = seqs
                .iter()
                .zip(&events)
                .map(|(seq, (_, at_ms, p))| StoredEvent { seq: *seq, enqueued_at_ms: *at_ms, payload: p })
                .collect();
            let body = body_of(&stored);
            prop_assert_eq!(decode_body(&body, |e| e).ok(), Some(stored.clone()));
            agree(&body)?;
            let i = at.index(body.len());
            agree(&body[..i])?;
            let mut flipped = body.clone();
            flipped[i] = byte;
            agree(&flipped)?;
            let mut grown = body.clone();
            grown.insert(i, byte);
            agree(&grown)?;
        }
    }

    /// A body of `count` events with rising seqs and empty payloads, but
    /// for the first, whose payload is `first_len` bytes.
    fn many_events(count: u64, first_len: usize) -> Vec<u8> {
        let mut body = vec![252u8];
        body.extend_from_slice(&(count as u32).to_le_bytes());
        let w = |v: u64, body: &mut Vec<u8>| {
            if v <= 250 {
                body.push(v as u8);
            } else {
                body.push(253);
                body.extend_from_slice(&v.to_le_bytes());
            }
        };
        for seq in 0..count {
            w(seq, &mut body);
            w(0, &mut body);
            let len = if seq == 0 { first_len } else { 0 };
            w(len as u64, &mut body);
            body.resize(body.len() + len, b'x');
        }
        body
    }

    #[test]
    fn bincodes_allocation_limit_refuses_the_same_bodies() {
        // bincode claims 8 bytes for the count and 32 per event, within
        // 256 MiB: at most 8,388,607 events, leaving 24 bytes. The first
        // event gives back its 32, claims 24 for its three integers and then
        // its payload: 32 bytes fit, 33 do not.
        let at_limit = 8_388_607;
        assert_eq!(
            (MAX_RECORD_BYTES - 8) / std::mem::size_of::<StoredEvent<'static>>(),
            at_limit as usize
        );
        for (count, first_len, ok) in [
            (at_limit, 32, true),
            (at_limit, 33, false),
            (at_limit + 1, 0, false),
        ] {
            let body = many_events(count, first_len);
            let fast = decode_body(&body, |e| e.seq).map(|v| v.len());
            let oracle = bincode_decode(&body).map(|v| v.len());
            assert_eq!(
                fast.is_ok(),
                ok,
                "count {count}, first payload {first_len}: {fast:?}"
            );
            assert_eq!(
                fast.ok(),
                oracle,
                "count {count}, first payload {first_len}"
            );
        }
    }

    #[test]
    fn each_event_is_mapped_once_in_order_and_none_on_an_error() {
        let stored = [
            StoredEvent {
                seq: 4,
                enqueued_at_ms: 1,
                payload: b"a",
            },
            StoredEvent {
                seq: 9,
                enqueued_at_ms: 2,
                payload: b"bb",
            },
        ];
        let body = body_of(&stored);
        let seen = decode_body(&body, |e| (e.seq, e.payload.len())).unwrap();
        assert_eq!(seen, vec![(4, 1), (9, 2)]);
        let err = decode_body(&body[..body.len() - 1], |e| e.seq).unwrap_err();
        assert!(err.to_string().contains("1 bytes short"), "{err}");
        let mut trailing = body.clone();
        trailing.push(0);
        let err = decode_body(&trailing, |e| e.seq).unwrap_err();
        assert!(err.to_string().contains("1 trailing bytes"), "{err}");
    }

    #[test]
    fn every_fuzz_corpus_chunk_decodes_as_bincode_decodes_it() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut seen = 0;
        for kind in ["corpus", "seeds"] {
            let Ok(entries) = std::fs::read_dir(root.join(kind).join("chunk_decode")) else {
                continue;
            };
            for e in entries.flatten() {
                // A running fuzzer may remove a file between the listing and the read.
                let Ok(record) = std::fs::read(e.path()) else {
                    continue;
                };
                seen += 1;
                if record.len() < 5 {
                    continue;
                }
                let body = &record[1..record.len() - 4];
                let fast = decode_body(body, |e| e).ok();
                assert_eq!(fast, bincode_decode(body), "{}", e.path().display());
            }
        }
        assert!(seen >= 10, "the corpus is there: {seen} files");
    }

    /// A reviewer's test: structured bodies built from varints at
    /// every width (canonical or not), counts and lengths far past the body
    /// and near the allocation limit, equal and falling seqs, cut and grown
    /// tails; the hand decoder must agree with bincode on each.
    #[test]
    fn structured_bodies_at_every_varint_width_and_limit_decode_as_bincode_decodes_them() {
        fn varint(r: &mut fastrand::Rng, v: u64, out: &mut Vec<u8>) {
            // Any width that holds v, and sometimes a refused tag.
            match r.u32(0..20) {
                0 => out.push(254),
                1 => out.push(255),
                _ => {}
            }
            let mut w = r.u32(0..4);
            if v > u32::MAX as u64 {
                w = 3;
            } else if v > u16::MAX as u64 {
                w = w.max(2);
            } else if v > 250 {
                w = w.max(1);
            }
            match w {
                0 => out.push(v as u8),
                1 => {
                    out.push(251);
                    out.extend_from_slice(&(v as u16).to_le_bytes());
                }
                2 => {
                    out.push(252);
                    out.extend_from_slice(&(v as u32).to_le_bytes());
                }
                _ => {
                    out.push(253);
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
        let mut r = fastrand::Rng::with_seed(0xb3);
        let edges = [
            0u64,
            1,
            250,
            251,
            255,
            65_535,
            65_536,
            (MAX_RECORD_BYTES as u64) / 32,
            (MAX_RECORD_BYTES as u64) / 32 - 1,
            (MAX_RECORD_BYTES as u64) - 8,
            (MAX_RECORD_BYTES as u64) - 32,
            MAX_RECORD_BYTES as u64,
            MAX_RECORD_BYTES as u64 + 1,
            u32::MAX as u64,
            u64::MAX / 32,
            u64::MAX / 32 + 1,
            u64::MAX - 1,
            u64::MAX,
        ];
        let pick = |r: &mut fastrand::Rng| -> u64 {
            if r.bool() {
                edges[r.usize(0..edges.len())]
            } else {
                r.u64(0..300)
            }
        };
        let mut disagree = Vec::new();
        let mut oks = 0;
        for _ in 0..200_000 {
            let mut body = Vec::new();
            let count = if r.u32(0..4) == 0 {
                pick(&mut r)
            } else {
                r.u64(0..6)
            };
            varint(&mut r, count, &mut body);
            let mut seq = r.u64(0..5);
            for _ in 0..count.min(6) {
                seq = match r.u32(0..8) {
                    0 => seq,
                    1 => seq.saturating_sub(1),
                    2 => pick(&mut r),
                    _ => seq.saturating_add(r.u64(1..1000)),
                };
                varint(&mut r, seq, &mut body);
                let at_ms = pick(&mut r);
                varint(&mut r, at_ms, &mut body);
                let len = if r.u32(0..5) == 0 {
                    pick(&mut r)
                } else {
                    r.u64(0..40)
                };
                varint(&mut r, len, &mut body);
                let n = (len.min(64) as usize).saturating_sub(r.usize(0..2));
                body.extend((0..n).map(|_| r.u8(..)));
            }
            match r.u32(0..6) {
                0 => body.truncate(r.usize(0..=body.len())),
                1 => body.push(r.u8(..)),
                _ => {}
            }
            let fast = decode_body(&body, |e| e).ok();
            oks += usize::from(fast.is_some());
            if fast != bincode_decode(&body) {
                disagree.push(body);
            }
        }
        assert!(
            disagree.is_empty(),
            "{} bodies, first {:?}",
            disagree.len(),
            disagree.first()
        );
        assert!(oks > 5_000, "only {oks} bodies decode");
    }
}
