//! Replays the committed cargo-fuzz corpus (`fuzz/corpus/protocol_events/`) on stable Rust,
//! so CI exercises the fuzz target's assertions without nightly or libFuzzer, and checks that
//! the same harness does fail when the protocol is broken.

use std::path::PathBuf;

use weir_protocol_model::checkpoint::CheckpointModel;
use weir_protocol_model::fuzzing;
use weir_runtime::protocol::Mutant;

/// Corpus inputs on which the real protocol fails, because of a known bug of the core
/// (README, "Known protocol bug"): a sink restarted locally receives the coordinator's abort
/// of a checkpoint before the replay of that checkpoint's barrier, stages the output it had
/// staged under it again under a later checkpoint, and the commit of the later one makes it
/// visible twice. Each must still fail with the property named here; once the core is fixed
/// they pass, and this list must be emptied.
const KNOWN_BUG: [(&str, &str); 4] = [
    ("1f3e4f63d9c099cfd9c06aba7ca55ff713f56012", "S2 consistent cut"),
    ("25e19ae07bf683b3602dcbb8172e002cbee7833c", "S8 deterministic replay"),
    ("4b958349307b5b796d325caca5eec45ae05bb170", "S8 deterministic replay"),
    ("a9870e9fe75bf371f407701f5f2a2d1fcbdc1a1b", "S2 consistent cut"),
];

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
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let known = KNOWN_BUG.iter().find(|(file, _)| *file == name).map(|&(_, property)| property);
        match (fuzzing::run_model(&CheckpointModel::new(fuzzing::scope()), bytes), known) {
            (Ok(_), None) => {}
            (Err((violated, _)), Some(expected)) if violated == expected => {}
            (Ok(_), Some(expected)) => panic!(
                "{}: no longer violates \"{expected}\": the known bug is fixed, empty KNOWN_BUG",
                path.display()
            ),
            (Err((violated, trace)), _) => {
                panic!("{}: property \"{violated}\" violated:\n{trace}", path.display())
            }
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
    ];
    for (mutant, property) in expected {
        let caught = corpus.iter().any(
            |(_, bytes)| matches!(fuzzing::run_mutant(mutant, bytes), Err((name, _)) if name == property),
        );
        assert!(caught, "no corpus input catches mutant {} (\"{property}\")", mutant.name());
    }
}
