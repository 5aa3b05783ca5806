//! Arbitrary bytes read by the file source's decoder as JSON lines or CSV: the same records
//! (or an error on the same line) however the reads are split, and no non-finite float. See
//! `weir_tests::fuzzing::file_lines`.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none file_lines` (from the repository
//! root).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weir_tests::fuzzing::file_lines(data));
