//! Replays the committed cargo-fuzz corpus (`fuzz/corpus/protocol_events/`) on stable Rust,
//! so CI exercises the fuzz target's assertions without nightly or libFuzzer, and checks that
//! the same harness does fail when the protocol is broken.

use std::path::PathBuf;

use weir_protocol::Mutant;
use weir_protocol_model::checkpoint::CheckpointModel;
use weir_protocol_model::fuzzing;

fn corpus() -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/protocol_events");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .collect();
    files.sort();
    files.into_iter().map(|p| (p.clone(), std::fs::read(&p).expect("corpus file"))).collect()
}

#[test]
fn every_corpus_input_satisfies_every_property() {
    let corpus = corpus();
    assert!(corpus.len() >= 20, "the corpus has only {} inputs", corpus.len());
    for (path, bytes) in &corpus {
        if let Err((violated, trace)) = fuzzing::run_model(&CheckpointModel::new(fuzzing::scope()), bytes) {
            panic!("{}: property \"{violated}\" violated:\n{trace}", path.display())
        }
    }
}

/// The corpus is only worth replaying if it can fail: with each mutant switched on, some
/// corpus input must violate the property that mutant breaks.
#[test]
fn corpus_catches_every_mutant() {
    let corpus = corpus();
    let expected = [
        (Mutant::NoAlignment, "S1 local alignment"),
        (Mutant::AckBeforeDurable, "S3 completion soundness"),
        (Mutant::CommitBeforeComplete, "S5 two-phase sink commit"),
        (Mutant::ResetSeqOnRestore, "S9 idempotent channels"),
        (Mutant::NoDedup, "S7 restore correctness"),
        (Mutant::TruncateAtSnapshot, "S6 safe truncation"),
        (Mutant::NoDeterminants, "S8 deterministic replay"),
        // Needs three local failures, more than the CI model scopes allow: the corpus input
        // `regression-s7-...` (found by fuzzing) is what catches it.
        (Mutant::NoRestartGap, "S7 restore correctness"),
    ];
    for (mutant, property) in expected {
        let caught = corpus.iter().any(
            |(_, bytes)| matches!(fuzzing::run_mutant(mutant, bytes), Err((name, _)) if name == property),
        );
        assert!(caught, "no corpus input catches mutant {} (\"{property}\")", mutant.name());
    }
}
