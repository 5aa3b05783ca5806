//! Arbitrary text through the config parser: refused with one `config: ` error naming a line
//! of the text, or parsed; a comment line put first changes only the line numbers. See
//! `weir_tests::fuzzing::config`.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none config` (from the repository root).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weir_tests::fuzzing::config(data));
