//! The bodies of the fuzz targets in `fuzz/fuzz_targets/`: plain functions, so that libFuzzer
//! drives them in CI (`.ci/run`) and stable `cargo test` replays every committed corpus
//! through them (`tests/fuzz_corpora.rs`). Each asserts an invariant of what it reads, not
//! only that it does not crash; a broken invariant is a panic that says which.
//!
//! Adding a target: its body here and a line in [`TARGETS`], a three-line file in
//! `fuzz/fuzz_targets/` with a `[[bin]]` in `fuzz/Cargo.toml`, then
//! `cargo test -p weir-tests --test fuzz_corpora -- --ignored` writes its seeds to
//! `fuzz/corpus/<name>/`.

use std::fmt::{Debug, Write as _};

use arbitrary::Unstructured;
use serde::Serialize;
use serde::de::DeserializeOwned;
use weir_runtime::log::{self, CommitRecord, LogError, Setting, SnapshotRecord};

/// One fuzz target.
pub struct Target {
    /// The name of its file in `fuzz/fuzz_targets/` and of its corpus in `fuzz/corpus/`.
    pub name: &'static str,
    /// Its body: panics when an input breaks the invariant.
    pub run: fn(&[u8]),
    /// Inputs that reach deep on their own, written to the corpus as seeds.
    pub seeds: fn() -> Vec<Vec<u8>>,
}

/// Every fuzz target.
pub const TARGETS: &[Target] = &[
    // Its corpus was grown by the fuzzer; protocol-model's own tests also check it catches
    // every protocol mutant.
    Target { name: "protocol_events", run: weir_protocol_model::fuzzing::run, seeds: Vec::new },
    Target { name: "log_records", run: log_records, seeds: log_records_seeds },
];

/// A key of the shape `snapshots` and `staged` use: participant 1, checkpoint 2.
const CHECKPOINT_KEY: [u8; 12] = [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2];
/// A key of the shape `sinks` uses: participant 1.
const PARTICIPANT_KEY: [u8; 4] = [0, 0, 0, 1];
const KEY_COMPLETION: &[u8] = b"completion";
const KEY_PIPELINE: &[u8] = b"pipeline";

/// Bits flipped at most per valid encoding (all of them in a short one).
const MAX_FLIPS: usize = 512;

/// The log's record decoder on arbitrary bytes. The first byte picks the record type (in
/// the order of [`log_records_seeds`]); the rest is read three ways, each with its invariant:
/// - as a stored value: refused with a corrupt-record error naming the database, or decoded
///   to a value whose encoding is exactly these bytes (the format is canonical);
/// - as a payload under a valid header (version, checksum), so that postcard sees it too: the
///   same invariant;
/// - as the source of a value of the record type: that value's encoding decodes to it, and
///   with any one bit flipped is refused.
pub fn log_records(data: &[u8]) {
    let Some((&pick, bytes)) = data.split_first() else { return };
    match pick % 5 {
        0 => record_invariants(log::SNAPSHOTS, &CHECKPOINT_KEY, bytes, |u| {
            Ok(SnapshotRecord { positions: u.arbitrary()?, out_seqs: u.arbitrary()?, state: u.arbitrary()? })
        }),
        1 => record_invariants::<Vec<u8>>(log::STAGED, &CHECKPOINT_KEY, bytes, |u| u.arbitrary()),
        2 => record_invariants(log::SINKS, &PARTICIPANT_KEY, bytes, |u| {
            Ok(CommitRecord { through: u.arbitrary()?, file_len: u.arbitrary()? })
        }),
        3 => record_invariants::<u64>(log::META, KEY_COMPLETION, bytes, |u| u.arbitrary()),
        _ => record_invariants::<Vec<Setting>>(log::META, KEY_PIPELINE, bytes, |u| u.arbitrary()),
    }
}

/// Seeds for [`log_records`]: for each record type, real encodings of a few values, and the
/// same values' payloads alone (which the target puts under a valid header).
pub fn log_records_seeds() -> Vec<Vec<u8>> {
    let snapshots = [
        SnapshotRecord::default(),
        SnapshotRecord { positions: vec![3, 9], out_seqs: vec![2], state: vec![1, 2, 3, 200] },
        SnapshotRecord {
            positions: vec![u64::MAX, 128],
            out_seqs: vec![0, 300, 1 << 40],
            state: vec![0; 40],
        },
    ];
    let settings: Vec<Setting> = vec![
        ("sources.readings.type".into(), "\"generator\"".into()),
        ("transforms.windows.size_ms".into(), "1000".into()),
        ("sinks.out.path".into(), "\"out/windows.csv\"".into()),
    ];
    let mut seeds = Vec::new();
    let mut add = |pick: u8, encoded: Vec<u8>| {
        seeds.push([&[pick][..], &encoded].concat());
        seeds.push([&[pick][..], &encoded[5..]].concat());
    };
    for record in &snapshots {
        add(0, log::encode(&CHECKPOINT_KEY, record));
    }
    for staged in [vec![], b"s0001,0,3,1.000\n".to_vec(), vec![0xff; 200]] {
        add(1, log::encode(&CHECKPOINT_KEY, &staged));
    }
    for (through, file_len) in [(0, 0), (7, 4096), (u64::MAX, 1 << 33)] {
        add(2, log::encode(&PARTICIPANT_KEY, &CommitRecord { through, file_len }));
    }
    for completion in [0u64, 1, 127, 128, 1 << 35, u64::MAX] {
        add(3, log::encode(KEY_COMPLETION, &completion));
    }
    add(4, log::encode(KEY_PIPELINE, &Vec::<Setting>::new()));
    add(4, log::encode(KEY_PIPELINE, &settings));
    seeds
}

fn record_invariants<T>(
    db: &'static str,
    key: &[u8],
    bytes: &[u8],
    build: fn(&mut Unstructured) -> arbitrary::Result<T>,
) where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    // Refused or not, the invariant is checked inside.
    let _ = decoded_only_if_canonical::<T>(db, key, bytes);
    // Random bytes almost never carry a right checksum; under a computed one they reach
    // postcard. If this header is wrong the target fuzzes nothing past the checksum: say so.
    let sealed = seal(key, bytes);
    if let Err(e) = decoded_only_if_canonical::<T>(db, key, &sealed) {
        assert!(!e.contains("checksum mismatch"), "the fuzz target's header does not match the log's: {e}");
    }
    let Ok(value) = build(&mut Unstructured::new(bytes)) else { return };
    let good = log::encode(key, &value);
    match log::decode::<T>(db, key, &good) {
        Ok(back) => {
            assert!(back == value, "{db}: {value:?} encodes as {}, which decodes as {back:?}", hex(&good))
        }
        Err(e) => panic!("{db}: {value:?} encodes as {}, which is refused: {e}", hex(&good)),
    }
    let bits = good.len() * 8;
    let chosen = bytes.iter().fold(0usize, |acc, &b| acc.wrapping_mul(31).wrapping_add(b.into())) % bits;
    for bit in (0..bits).step_by(bits.div_ceil(MAX_FLIPS)).chain([chosen]) {
        let mut flipped = good.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        match log::decode::<T>(db, key, &flipped) {
            Ok(other) => panic!(
                "{db}: bit {bit} flipped in {} went unnoticed: {value:?} read as {other:?}",
                hex(&good)
            ),
            Err(e) => assert_names_the_record(db, &e),
        }
    }
}

/// Decodes `bytes` as a `T` stored under `key`: either refused with an error that names the
/// record (returned as text), or decoded to a value that encodes to exactly `bytes`.
fn decoded_only_if_canonical<T>(db: &'static str, key: &[u8], bytes: &[u8]) -> Result<T, String>
where
    T: Serialize + DeserializeOwned + Debug,
{
    match log::decode::<T>(db, key, bytes) {
        Ok(value) => {
            let canonical = log::encode(key, &value);
            assert!(
                canonical == bytes,
                "{db}: two encodings of {value:?} are accepted: {} and {}",
                hex(bytes),
                hex(&canonical)
            );
            Ok(value)
        }
        Err(e) => {
            assert_names_the_record(db, &e);
            Err(e.to_string())
        }
    }
}

fn assert_names_the_record(db: &str, e: &LogError) {
    let text = e.to_string();
    assert!(
        matches!(e, LogError::Corrupt { .. }) && text.starts_with(&format!("log: corrupt record {db}/")),
        "a bad {db} record is refused with an error that does not name it: {text}"
    );
}

/// `payload` under a version byte and the checksum the log computes (CRC-32C over key and
/// payload, little-endian).
fn seal(key: &[u8], payload: &[u8]) -> Vec<u8> {
    let crc = crc32c::crc32c_append(crc32c::crc32c(key), payload);
    [&[log::FORMAT_VERSION][..], &crc.to_le_bytes(), payload].concat()
}

/// Bytes as hex, cut after 64 (for messages).
fn hex(bytes: &[u8]) -> String {
    let mut out = String::new();
    for b in bytes.iter().take(64) {
        let _ = write!(out, "{b:02x}");
    }
    if bytes.len() > 64 {
        let _ = write!(out, "... ({} bytes)", bytes.len());
    }
    out
}
