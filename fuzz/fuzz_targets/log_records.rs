//! Arbitrary bytes as each record type of the log (snapshot, staged output, sink commit,
//! completion, settings): refused with an error naming the record, or decoded to a value
//! whose encoding is exactly those bytes; any one bit flipped in a valid encoding is refused.
//! See `weir_tests::fuzzing::log_records`.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none log_records` (from the repository root).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weir_tests::fuzzing::log_records(data));
