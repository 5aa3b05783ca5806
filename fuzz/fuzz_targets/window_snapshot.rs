//! Arbitrary bytes restored into window operators of every kind: refused, or accepted only in
//! the one encoding the operator writes, and a restored operator runs on without panicking.
//! See `weir_tests::fuzzing::window_snapshot`.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none window_snapshot` (from the
//! repository root).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weir_tests::fuzzing::window_snapshot(data));
