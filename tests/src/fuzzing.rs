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

use std::path::Path;
use std::sync::Arc;

use arbitrary::Unstructured;
use serde::Serialize;
use serde::de::DeserializeOwned;
use weir_edge_agent::config::{self as weir_config, ConfigError};
use weir_runtime::batch::{Batch, Column, DataType, Field, Schema, SchemaRef, StrColumn, Value};
use weir_runtime::connectors::file_source::{Chunk, Decoder};
use weir_runtime::log::{self, CommitRecord, LogError, Setting, SnapshotRecord};
use weir_runtime::operators::{self, Operator};
use weir_runtime::pipeline::spec::{
    AggregateFunction, AggregateSpec, FileFormat, TransformSpec, WindowKind, WindowSpec, sensors_schema,
};

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
    Target { name: "config", run: config, seeds: config_seeds },
    Target { name: "window_snapshot", run: window_snapshot, seeds: window_snapshot_seeds },
    Target { name: "file_lines", run: file_lines, seeds: file_lines_seeds },
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

/// The variables a fuzzed config sees; any other `${NAME}` is unset.
fn config_env(name: &str) -> Option<String> {
    match name {
        "WEIR_RECORDS" => Some("1000".into()),
        "WEIR_INTERVAL_MS" => Some("250".into()),
        "EMPTY" => Some(String::new()),
        "NEWLINE" => Some("\n".into()),
        _ => None,
    }
}

fn parse_config(text: &str) -> Result<weir_runtime::pipeline::spec::PipelineSpec, ConfigError> {
    weir_config::parse(text, Path::new("/fuzz"), &config_env)
}

/// The config parser (`weir_edge_agent::config::parse`) on arbitrary UTF-8 text. It never
/// panics; a refusal starts with `config: ` and any line it names is a line of the text; and a
/// comment line put before the text changes nothing but the line numbers, one more in every
/// error (so the line named is the line parsed, and parsing is deterministic).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let first = parse_config(text);
    let shifted = parse_config(&format!("# a comment first\n{text}"));
    match (&first, &shifted) {
        (Ok(spec), Ok(again)) => assert!(spec == again, "a comment line first changed the spec"),
        (Err(error), Err(again)) => {
            let message = error.to_string();
            assert!(message.starts_with("config: "), "a config error without its prefix: {message}");
            if let Some(line) = error_line(error) {
                let lines = text.split('\n').count();
                assert!((1..=lines).contains(&line), "{message}: the text has {lines} lines");
            }
            let expected = one_line_later(error);
            assert!(again.to_string() == expected, "a comment line first: {again}, expected {expected}");
        }
        _ => panic!("a comment line first changed the result from {first:?} to {shifted:?}"),
    }
}

fn error_line(error: &ConfigError) -> Option<usize> {
    match error {
        ConfigError::Line { line, .. } | ConfigError::Key { line, .. } => Some(*line),
        _ => None,
    }
}

/// The text of `error` with its line one later.
fn one_line_later(error: &ConfigError) -> String {
    match error {
        ConfigError::Line { line, message } => {
            ConfigError::Line { line: line + 1, message: message.clone() }.to_string()
        }
        ConfigError::Key { path, message, line, hint } => ConfigError::Key {
            path: path.clone(),
            message: message.clone(),
            line: line + 1,
            hint: hint.clone(),
        }
        .to_string(),
        other => other.to_string(),
    }
}

/// Seeds for [`config`]: the example pipeline, and variations that reach each kind of node,
/// each section's errors, and interpolation.
pub fn config_seeds() -> Vec<Vec<u8>> {
    let example = include_str!("../../examples/sensor-window.toml");
    let mut seeds: Vec<String> = vec![
        example.to_owned(),
        example.replace("size_ms", "sise_ms"),
        example.replace(
            "kind = \"tumbling\"\nsize_ms = 1000",
            "kind = \"hopping\"\nsize_ms = 1000\nhop_ms = 250",
        ),
        example.replace("kind = \"tumbling\"\nsize_ms = 1000", "kind = \"session\"\ngap_ms = 300"),
        example.replace("inputs = [\"readings\"]", "inputs = [\"windows\"]"),
        example.replace("${WEIR_RECORDS:-2000000}", "${UNSET}"),
        example.replace("format = \"csv\"", "format = \"jsonl\""),
    ];
    seeds.push(
        r#"[sources.in]
type = "file"
path = "in.json"
format = "json"
schema = { id = "int", name = "string", ok = "bool", x = "float" }
[transforms.keep]
type = "filter"
inputs = ["in"]
condition = "ok && x > 1.5"
[transforms.shape]
type = "map"
inputs = ["keep"]
select = ["id", "name"]
compute = { double = "id * 2" }
[sinks.out]
type = "stdout"
inputs = ["shape"]
[supervision]
strategy = "one_for_one"
max_restarts = 3
[recovery]
strategy = "local"
buffer_mb = 8
"#
        .to_owned(),
    );
    seeds.push("data_dir = \"$$dir\"\nmap_size_mb = 1${EMPTY}\n[checkpoint]\ninterval_ms = 0\n".into());
    seeds.push("[checkpoint] # ${UNSET}\ninterval_ms = ${NEWLINE}\n".into());
    seeds.into_iter().map(String::into_bytes).collect()
}

/// The window operators [`window_snapshot`] restores into: every kind, with and without a
/// key (string and int), one to three inputs, and every aggregate function. Each entry: the
/// spec, its input schema, its number of inputs.
fn window_specs() -> Vec<(TransformSpec, SchemaRef, usize)> {
    use AggregateFunction::*;
    let aggregates = |list: &[(AggregateFunction, Option<&str>)]| {
        list.iter()
            .map(|&(function, field)| AggregateSpec { function, field: field.map(str::to_owned) })
            .collect::<Vec<_>>()
    };
    let window = |key: Option<&str>, kind, list: &[(AggregateFunction, Option<&str>)]| {
        TransformSpec::Window(WindowSpec {
            key: key.map(str::to_owned),
            time_field: "ts".into(),
            kind,
            max_out_of_order_ms: 100,
            aggregates: aggregates(list),
        })
    };
    let sum_min_max_mean = [
        (Count, None),
        (Sum, Some("value")),
        (Min, Some("value")),
        (Max, Some("value")),
        (Mean, Some("value")),
    ];
    let ints = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int),
        Field::new("ts", DataType::Int),
        Field::new("value", DataType::Int),
    ]));
    vec![
        (
            window(Some("sensor"), WindowKind::Tumbling { size_ms: 1000 }, &sum_min_max_mean),
            sensors_schema(),
            1,
        ),
        (
            window(
                None,
                WindowKind::Hopping { size_ms: 1000, hop_ms: 250 },
                &[(Count, None), (First, Some("value")), (Last, Some("sensor"))],
            ),
            sensors_schema(),
            2,
        ),
        (window(Some("sensor"), WindowKind::Session { gap_ms: 300 }, &sum_min_max_mean), sensors_schema(), 1),
        (
            window(
                Some("id"),
                WindowKind::Tumbling { size_ms: 100 },
                &[(Sum, Some("value")), (Min, Some("value")), (Last, Some("id"))],
            ),
            ints,
            3,
        ),
    ]
}

/// The window operator's `restore` on arbitrary bytes (the first byte picks the operator
/// from [`window_specs`]). It never panics, and refuses with an error about the snapshot, or
/// accepts a snapshot that re-encodes to the same bytes.
pub fn window_snapshot(data: &[u8]) {
    let Some((&pick, snapshot)) = data.split_first() else { return };
    let specs = window_specs();
    let (spec, schema, inputs) = &specs[usize::from(pick) % specs.len()];
    let mut operator = build_window(spec, schema, *inputs);
    match operator.restore(snapshot) {
        Ok(()) => {
            let again = operator.snapshot();
            assert!(again == snapshot, "two snapshots of one state: {} and {}", hex(snapshot), hex(&again));
            // What restore accepts must run on: more readings and the end of every input
            // (the fuzz build keeps overflow checks, so a counter that wraps is a crash).
            let mut out = Vec::new();
            for (input, batch) in window_batches(schema, *inputs, 0..20).into_iter().enumerate() {
                let _ = operator.process(input, &batch, &mut out);
            }
            for input in 0..*inputs {
                let _ = operator.on_input_end(input, &mut out);
            }
        }
        Err(e) => {
            let text = e.to_string();
            assert!(
                text.starts_with("fuzz: snapshot cannot be decoded: "),
                "a refusal that does not say so: {text}"
            );
        }
    }
}

fn build_window(spec: &TransformSpec, schema: &SchemaRef, inputs: usize) -> Box<dyn Operator> {
    operators::build("fuzz", spec, schema.clone(), inputs).expect("the fuzz target's window specs build")
}

/// Readings `range` over `schema` (the sensors schema, or three ints), out of order within
/// 50 ms, cut into one batch per input.
fn window_batches(schema: &SchemaRef, inputs: usize, range: std::ops::Range<u64>) -> Vec<Batch> {
    (0..inputs)
        .map(|input| {
            let rows: Vec<u64> = range.clone().filter(|i| *i as usize % inputs == input).collect();
            let ts: Vec<i64> = rows.iter().map(|&i| (i * 10 + (i * 37) % 50) as i64).collect();
            let columns = if schema.fields()[0].ty == DataType::Str {
                let mut sensor = StrColumn::with_capacity(rows.len(), 3);
                for &i in &rows {
                    sensor.push(&format!("s{}", i % 5));
                }
                let value = rows.iter().map(|&i| ((i * 7919 + 13) % 10007) as f64 / 100.0).collect();
                vec![Column::Str(sensor), Column::Int(ts), Column::Float(value)]
            } else {
                let id = rows.iter().map(|&i| (i % 4) as i64 - 1).collect();
                let value = rows.iter().map(|&i| (i * 7919 % 1001) as i64 - 500).collect();
                vec![Column::Int(id), Column::Int(ts), Column::Int(value)]
            };
            Batch::new(schema.clone(), columns)
        })
        .collect()
}

/// Seeds for [`window_snapshot`]: real snapshots of every operator of [`window_specs`], empty
/// and after processing readings (with some windows fired and some late records).
pub fn window_snapshot_seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for (pick, (spec, schema, inputs)) in window_specs().iter().enumerate() {
        let mut operator = build_window(spec, schema, *inputs);
        let mut out = Vec::new();
        seeds.push([&[pick as u8][..], &operator.snapshot()].concat());
        for range in [0..40, 40..100, 5..20] {
            for (input, batch) in window_batches(schema, *inputs, range).into_iter().enumerate() {
                operator.process(input, &batch, &mut out).expect("seed readings process");
            }
            seeds.push([&[pick as u8][..], &operator.snapshot()].concat());
        }
    }
    seeds
}

/// The schema [`file_lines`] decodes into: one field of each type.
fn file_lines_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("s", DataType::Str),
        Field::new("n", DataType::Int),
        Field::new("v", DataType::Float),
        Field::new("b", DataType::Bool),
    ]))
}

/// Decode `bytes` as a whole file, handing the decoder the bytes in two reads split at
/// `split` (the first read does not end the file). Returns the records, or the line of the
/// first error.
fn decode_file(format: FileFormat, bytes: &[u8], split: usize) -> Result<Vec<Vec<Value>>, u64> {
    let schema = file_lines_schema();
    let mut decoder = Decoder::new(format);
    let mut batch = Batch::with_capacity(schema, 64);
    let (mut offset, mut line) = (0usize, 1u64);
    for (end, ends_file) in [(split.min(bytes.len()), false), (bytes.len(), true)] {
        loop {
            let chunk =
                Chunk { bytes: &bytes[offset..end], first_line: line, starts_file: offset == 0, ends_file };
            let decoded = decoder.decode(chunk, 7, &mut batch).map_err(|e| e.line)?;
            offset += decoded.bytes;
            line += decoded.lines;
            if decoded.records == 0 && decoded.bytes == 0 {
                break;
            }
        }
    }
    assert_eq!(offset, bytes.len(), "the end of the file was not decoded, and no error said so");
    Ok((0..batch.len()).map(|r| batch.row(r)).collect())
}

/// The file source's decoder on arbitrary bytes. The first byte picks JSON or CSV and where
/// the bytes are split between two reads. Invariants: no panic; the same records (or an
/// error on the same line) however the bytes are split, as when the source reads a large
/// file in pieces; every float decoded is finite (a non-finite number is an error).
pub fn file_lines(data: &[u8]) {
    let Some((&pick, bytes)) = data.split_first() else { return };
    let format = if pick % 2 == 0 { FileFormat::JsonLines } else { FileFormat::Csv };
    let whole = decode_file(format, bytes, bytes.len());
    let split = decode_file(format, bytes, usize::from(pick / 2) % (bytes.len() + 1));
    assert_eq!(whole, split, "the records depend on where the reads were split");
    for row in whole.iter().flatten() {
        for value in row {
            if let Value::Float(f) = value {
                assert!(f.is_finite(), "a non-finite float was decoded: {f}");
            }
        }
    }
}

/// Seeds for [`file_lines`]: JSON lines and CSV, quoted fields, a last line without a line
/// end, CRLF, a byte order mark, and a few errors.
pub fn file_lines_seeds() -> Vec<Vec<u8>> {
    let json = [
        "{\"s\":\"a\",\"n\":1,\"v\":1.5,\"b\":true}\n{\"s\":\"b\\\"q\",\"n\":-2,\"v\":2,\"b\":false}\n",
        "{\"s\":\"a\",\"n\":1,\"v\":1.5,\"b\":true}",
        "\u{feff}{\"s\":\"\",\"n\":0,\"v\":0.0,\"b\":false}\r\n\r\n",
        "{\"s\":\"a\",\"n\":1,\"v\":1e400,\"b\":true}\n",
        "{\"s\":\"a\",\"n\":9223372036854775808,\"v\":1,\"b\":true}\n",
    ];
    let csv = [
        "a,1,1.5,true\nb,-2,2,false\n",
        "\"a,b\",1,1.5,true\n\"say \"\"hi\"\"\",2,2.5,false",
        "\u{feff}x,3,0.25,true\r\n\r\n\"multi\nline\",4,1,false\r\n",
        "a,1,NaN,true\n",
        "a,1,1.5\n",
        "\"open,1,1.5,true\n",
    ];
    let mut seeds = Vec::new();
    for (i, text) in json.iter().enumerate() {
        seeds.push([&[(2 * (i * 7 + 3)) as u8][..], text.as_bytes()].concat());
    }
    for (i, text) in csv.iter().enumerate() {
        seeds.push([&[(2 * (i * 5 + 2) + 1) as u8][..], text.as_bytes()].concat());
    }
    seeds
}
