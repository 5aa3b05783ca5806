//! The checkpoint model driven by arbitrary bytes: each byte picks the next environment step
//! among those possible, so a byte string is an event sequence (emits, deliveries, ticks,
//! timeouts, durable writes, crashes, local failures, replays) for the real protocol core.
//! Every `always` property is asserted after every step. When the bytes run out the run
//! continues with the first possible step until nothing is left, so terminal-state
//! properties are asserted too.
//!
//! The scope is larger than the exhaustive checks': more batches, checkpoints, timeouts,
//! crashes and local failures than the model checker can enumerate.
//! `fuzz/fuzz_targets/protocol_events.rs` calls [`run`]; `tests/fuzz_corpus.rs` replays the
//! committed corpus on stable Rust.

use stateright::{Expectation, Model};
use weir_protocol::Mutant;

use crate::checkpoint::{Action, CheckpointModel, Log, Scope};
use crate::trace;

/// The scope the fuzzer explores.
pub fn scope() -> Scope {
    Scope { batches_per_source: 4, ticks: 6, timeouts: 3, crashes: 3, local_crashes: 3, ..Scope::default() }
}

/// Drive the real protocol with the event sequence `bytes` encodes. Returns the name of the
/// first violated property and the counterexample, or `Ok(steps taken)`.
pub fn run_model(model: &CheckpointModel, bytes: &[u8]) -> Result<usize, (&'static str, String)> {
    let properties = model.properties();
    let mut state = model.init_states().remove(0);
    let mut path: Vec<(crate::checkpoint::State, Option<Action>)> = Vec::new();
    let mut choices = bytes.iter().copied();
    let mut actions = Vec::new();
    loop {
        for p in properties.iter().filter(|p| p.expectation == Expectation::Always) {
            if !(p.condition)(model, &state) {
                return Err((p.name, trace(model, path)));
            }
        }
        actions.clear();
        model.actions(&state, &mut actions);
        if actions.is_empty() {
            return Ok(path.len());
        }
        let pick = choices.next().map_or(0, |b| b as usize % actions.len());
        let action = actions.swap_remove(pick);
        let mut next = state.clone();
        model.step(&mut next, &action, &mut Log::off());
        path.push((state, Some(action)));
        state = next;
    }
}

/// The fuzz entry point: the real protocol must satisfy every property for any bytes.
pub fn run(bytes: &[u8]) {
    let model = CheckpointModel::new(scope());
    if let Err((name, trace)) = run_model(&model, bytes) {
        panic!("property \"{name}\" violated:\n{trace}");
    }
}

/// For tests: the same run with `mutant` switched on.
pub fn run_mutant(mutant: Mutant, bytes: &[u8]) -> Result<usize, (&'static str, String)> {
    run_model(&CheckpointModel::new(scope()).with_mutant(mutant), bytes)
}
