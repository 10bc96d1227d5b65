//! Fuzzes the ingest body parser (`evspool::ingest`): JSON object, array,
//! NDJSON, Mixpanel form/base64, Segment batch, optionally gzip-compressed.
#![no_main]

use evspool_testkit::fuzz_checks as checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = checks::ingest_body(data);
});
