//! Arbitrary event sequences (emits, deliveries, interval ticks, timeouts, durable writes,
//! crashes) for the real checkpoint protocol core: the aligner, the participant tasks, the
//! coordinator and the recovery planner. Every `always` property of the checkpoint model is
//! asserted after every event; see `weir_protocol_model::fuzzing`.
//!
//! Run: `cargo +nightly fuzz run protocol_events` (from the repository root).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    weir_protocol_model::fuzzing::run(data);
});
