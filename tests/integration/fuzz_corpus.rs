//! Replays the checked-in fuzz corpora (`fuzz/corpus/<target>/`, minimized
//! with `cargo fuzz cmin`) and the hand-written seeds (`fuzz/seeds/<target>/`)
//! through the same checks the fuzz targets run (the test kit's
//! `fuzz_checks`), so every input that ever mattered to the fuzzer is re-checked
//! by a plain `cargo test`, without nightly or cargo-fuzz.

use evspool_testkit::fuzz_checks as checks;

use checks::{ChunkOutcome, IngestOutcome};
use std::path::{Path, PathBuf};

fn files(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for kind in ["corpus", "seeds"] {
        let dir = root.join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_file() {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn seed(target: &str, name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target)
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn every_chunk_decode_corpus_file_decodes_without_panic_and_round_trips() {
    let files = files("chunk_decode");
    assert!(
        files.len() >= 16,
        "seeds and corpus present: {}",
        files.len()
    );
    let (mut decoded, mut refused) = (0, 0);
    for f in &files {
        let Ok(data) = std::fs::read(f) else { continue };
        let outcome = std::panic::catch_unwind(|| checks::chunk_decode(&data))
            .unwrap_or_else(|_| panic!("{} broke a property", f.display()));
        match outcome {
            ChunkOutcome::Decoded => decoded += 1,
            ChunkOutcome::Refused => refused += 1,
        }
    }
    assert!(
        decoded > 0 && refused > 0,
        "{decoded} decoded, {refused} refused"
    );
    // The hand-written seeds pin specific outcomes.
    let two = seed("chunk_decode", "chunk_two_events");
    let events = evspool::record::decode_chunk(&two).unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].payload, br#"{"event":"a"}"#);
    // Seeds are format 1 (0.1.0 stores); they re-encode in the current format.
    assert_eq!(two[0], 1);
    let re = evspool::record::encode_chunk(&events);
    assert_eq!(re[0], evspool::record::FORMAT_VERSION);
    assert_eq!(evspool::record::decode_chunk(&re).unwrap(), events);
    // Format 2 and 3 chunk records share their body: re-encoding a format-2
    // record changes only its format byte (and so its CRC).
    let v2 = seed("chunk_decode", "v2_chunk_two_events");
    assert_eq!(v2[0], 2);
    let re = evspool::record::encode_chunk(&evspool::record::decode_chunk(&v2).unwrap());
    assert_eq!(re[0], evspool::record::FORMAT_VERSION);
    assert_eq!(re[1..re.len() - 4], v2[1..v2.len() - 4]);
    for (name, needle) in [
        ("chunk_bad_crc", "checksum mismatch"),
        ("chunk_newer_format", "format 9 is not supported"),
        ("chunk_format_zero", "format 0 is not supported"),
        ("chunk_truncated", "truncated: 3 bytes"),
        ("chunk_empty_events", "holds no events"),
        ("chunk_seq_not_increasing", "not increasing"),
        ("chunk_trailing", "1 trailing bytes"),
        ("chunk_huge_len", "malformed"),
    ] {
        let err = evspool::record::decode_chunk(&seed("chunk_decode", name)).unwrap_err();
        assert!(err.to_string().contains(needle), "{name}: {err}");
    }
    // A non-canonical varint decodes, and re-encodes shorter to the same value.
    let nc = seed("chunk_decode", "chunk_noncanonical_varint");
    let ev = evspool::record::decode_chunk(&nc).unwrap();
    assert!(evspool::record::encode_chunk(&ev).len() < nc.len());
}

#[test]
fn every_ingest_body_corpus_file_yields_events_or_an_error_with_a_message() {
    let files = files("ingest_body");
    assert!(
        files.len() >= 26,
        "seeds and corpus present: {}",
        files.len()
    );
    let (mut ok, mut events, mut refused) = (0, 0, 0);
    for f in &files {
        // A running fuzzer may remove a file between the listing and the read.
        let Ok(data) = std::fs::read(f) else { continue };
        let outcome = std::panic::catch_unwind(|| checks::ingest_body(&data))
            .unwrap_or_else(|_| panic!("{} broke a property", f.display()));
        match outcome {
            IngestOutcome::Events(n) => {
                ok += 1;
                events += n;
            }
            IngestOutcome::Refused => refused += 1,
        }
    }
    assert!(
        ok > 0 && refused > 0,
        "{ok} parsed ({events} events), {refused} refused"
    );
    for (name, expect) in [
        ("events_array", IngestOutcome::Events(3)),
        ("events_ndjson", IngestOutcome::Events(3)),
        ("events_gzip_multi", IngestOutcome::Events(2)),
        ("mixpanel_form_b64", IngestOutcome::Events(1)),
        ("mixpanel_form_b64url", IngestOutcome::Events(1)),
        ("mixpanel_query", IngestOutcome::Events(1)),
        ("segment_batch", IngestOutcome::Events(2)),
        ("events_gzip_bomb", IngestOutcome::Refused),
        ("events_deep", IngestOutcome::Refused),
        ("events_bad_utf8", IngestOutcome::Refused),
        ("events_too_many", IngestOutcome::Refused),
        // Found by the fuzzer: a number no sink can parse was accepted (fixed).
        ("regression_number_out_of_range", IngestOutcome::Refused),
    ] {
        assert_eq!(
            checks::ingest_body(&seed("ingest_body", name)),
            expect,
            "{name}"
        );
    }
}
