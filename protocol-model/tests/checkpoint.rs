//! Model checks of the checkpoint protocol (README: "What is checked").
//!
//! `default_scope_*` is exhaustive: it asserts that the checker visited every reachable state
//! (no depth, time or state bound) and pins the number of unique states, so a change to the
//! protocol or the model that changes the state space is noticed and reviewed.

use weir_protocol_model::checkpoint::{CheckpointModel, Scope};
use weir_protocol_model::{Search, check};
use weir_runtime::protocol::Mutant;

/// Unique states of the default scope. A change here is a change to the protocol or the
/// model: review the diff, then update the number.
const DEFAULT_SCOPE_UNIQUE_STATES: usize = 2_703_283;

#[test]
fn default_scope_is_exhaustive_and_every_property_holds() {
    let report = check(CheckpointModel::new(Scope::default()), Search::Exhaustive { threads: 2 });
    assert!(report.all_hold(), "{report}");
    assert!(report.exhaustive, "{report}");
    assert_eq!(report.unique_states, DEFAULT_SCOPE_UNIQUE_STATES, "{report}");
}

/// The larger scope (a second interval checkpoint): tens of millions of states, minutes on
/// two cores, so it runs only when asked: `WEIR_NIGHTLY=1 bash .ci/run`, or
/// `cargo test --profile model -p weir-protocol-model -- --ignored`.
#[test]
#[ignore = "nightly: minutes on two cores"]
fn nightly_scope_is_exhaustive_and_every_property_holds() {
    let report = check(CheckpointModel::new(Scope::nightly()), Search::Exhaustive { threads: 2 });
    assert!(report.all_hold(), "{report}");
    assert!(report.exhaustive, "{report}");
}

fn assert_caught(mutant: Mutant, property: &str) {
    let model = CheckpointModel::new(Scope::default()).with_mutant(mutant);
    let report = check(model, Search::FirstViolation);
    assert!(
        report.violated().contains(&property),
        "mutant {} was not caught by \"{property}\":\n{report}",
        mutant.name()
    );
    let trace = report.outcomes.iter().find(|o| o.name == property).and_then(|o| o.trace.as_deref());
    assert!(trace.is_some_and(|t| t.contains("  1. ")), "no readable trace:\n{report}");
}

#[test]
fn mutant_no_alignment_violates_s1_local_alignment() {
    assert_caught(Mutant::NoAlignment, "S1 local alignment");
}

#[test]
fn mutant_ack_before_durable_violates_s3_completion_soundness() {
    assert_caught(Mutant::AckBeforeDurable, "S3 completion soundness");
}

#[test]
fn mutant_commit_before_complete_violates_s5_two_phase_sink_commit() {
    assert_caught(Mutant::CommitBeforeComplete, "S5 two-phase sink commit");
}

#[test]
fn mutant_reset_seq_on_restore_violates_s9_idempotent_channels() {
    assert_caught(Mutant::ResetSeqOnRestore, "S9 idempotent channels");
}
