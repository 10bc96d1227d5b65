//! Fuzzes the record codec (`evspool::record`): every decoder on raw bytes and
//! on the bytes re-framed with a valid CRC; decoded records must re-encode.
#![no_main]

use evspool_testkit::fuzz_checks as checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = checks::chunk_decode(data);
});
