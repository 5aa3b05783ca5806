//! Replays every committed fuzz corpus (`fuzz/corpus/<target>/`) through its target's body
//! on stable Rust, so `cargo test` checks what the fuzzer once found without libFuzzer, and
//! checks that the fuzz targets, their corpora and `weir_tests::fuzzing::TARGETS` agree: a
//! target without a body here, or a body without a corpus, would be fuzzed or replayed by
//! nobody.

use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use weir_tests::fuzzing::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn corpus(name: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = fuzz_dir().join("corpus").join(name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .collect();
    files.sort();
    files.into_iter().map(|p| (p.clone(), std::fs::read(&p).expect("corpus file"))).collect()
}

fn names_in(dir: &Path, suffix: &str) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|e| e.expect("dir entry").file_name().to_str()?.strip_suffix(suffix).map(str::to_owned))
        .collect()
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic without a message".into())
}

#[test]
fn every_committed_corpus_input_keeps_its_targets_invariant() {
    for target in TARGETS {
        let corpus = corpus(target.name);
        assert!(!corpus.is_empty(), "fuzz/corpus/{} is empty", target.name);
        for (path, bytes) in &corpus {
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| (target.run)(bytes))) {
                panic!("{}: {}", path.display(), panic_text(payload));
            }
        }
    }
}

#[test]
fn every_fuzz_target_has_a_body_and_a_corpus() {
    let bodies: BTreeSet<String> = TARGETS.iter().map(|t| t.name.to_owned()).collect();
    assert_eq!(
        names_in(&fuzz_dir().join("fuzz_targets"), ".rs"),
        bodies,
        "fuzz/fuzz_targets/ against TARGETS"
    );
    assert_eq!(names_in(&fuzz_dir().join("corpus"), ""), bodies, "fuzz/corpus/ against TARGETS");
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for name in &bodies {
        assert!(manifest.contains(&format!("name = \"{name}\"")), "fuzz/Cargo.toml has no [[bin]] {name}");
    }
}

/// Writes each target's seeds into its corpus (`seed-` and a hash; rerunning rewrites the
/// same files): `cargo test -p weir-tests --test fuzz_corpora -- --ignored`.
#[test]
#[ignore = "writes into fuzz/corpus/"]
fn write_seed_corpora() {
    for target in TARGETS {
        let dir = fuzz_dir().join("corpus").join(target.name);
        std::fs::create_dir_all(&dir).expect("creating the corpus directory");
        for seed in (target.seeds)() {
            let hash: String = Sha256::digest(&seed).iter().take(10).map(|b| format!("{b:02x}")).collect();
            std::fs::write(dir.join(format!("seed-{hash}")), &seed).expect("writing a seed");
        }
    }
}
