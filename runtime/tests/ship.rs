//! Shipping the log to a replica (SPEC §12.2), in one process: a run ships every committed
//! batch (after a compacted seed) to a replica that applies it to its own data directory;
//! the owner "dies" after a few checkpoints (its tap refuses everything from then on, as a
//! dead box ships nothing); the pipeline is then adopted and run from the replica with its
//! own output file. The two output files together hold exactly the failure-free output: every
//! row of it, nothing else, and a row in both files only where the old owner's last commit
//! and the takeover's first overlap, identical in both.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use weir_runtime::log::ship::{self, Tap};
use weir_runtime::log::{Log, WriteOp};
use weir_runtime::pipeline::run::{Observe, StopRequest, adopt, run};
use weir_runtime::pipeline::spec::{
    AggregateFunction, AggregateSpec, CheckpointMode, CheckpointSpec, DEFAULT_OUTPUT_MODE, FileFormat,
    GeneratorSpec, NodeKind, NodeSpec, OutputFormat, PipelineSpec, SinkSpec, SourceSpec, SupervisionSpec,
    TransformSpec, WindowKind, WindowSpec,
};

const RECORDS: u64 = 120_000;

fn pipeline(data_dir: PathBuf, out: PathBuf) -> PipelineSpec {
    let node = |name: &str, inputs: &[&str], kind: NodeKind| NodeSpec {
        name: name.to_owned(),
        inputs: inputs.iter().map(|i| (*i).to_owned()).collect(),
        parallelism: 1,
        kind,
    };
    // The generator's event time advances 1 ms per 100 readings: 1.2 s of event time in 60
    // windows of 20 ms, over three seconds at 40,000 readings a second, a checkpoint every
    // 100 ms.
    let readings = SourceSpec::Generator(GeneratorSpec {
        records: RECORDS,
        sensors: 100,
        rate: Some(40_000),
        batch_size: 256,
    });
    let aggregates = [
        (AggregateFunction::Count, None),
        (AggregateFunction::Min, Some("value")),
        (AggregateFunction::Max, Some("value")),
    ];
    let window = TransformSpec::Window(WindowSpec {
        key: Some("sensor".into()),
        time_field: "ts".into(),
        kind: WindowKind::Tumbling { size_ms: 20 },
        max_out_of_order_ms: 0,
        aggregates: aggregates
            .iter()
            .map(|(function, field)| AggregateSpec { function: *function, field: field.map(str::to_owned) })
            .collect(),
    });
    let out = SinkSpec::File {
        path: out,
        format: OutputFormat { encoding: FileFormat::Csv, float_precision: None },
        allow_symlink: false,
        mode: DEFAULT_OUTPUT_MODE,
    };
    PipelineSpec {
        data_dir,
        map_size: 64 << 20,
        checkpoint: CheckpointSpec {
            interval_ms: Some(100),
            mode: CheckpointMode::ExactlyOnce,
            timeout_ms: 60_000,
        },
        supervision: SupervisionSpec::default(),
        standby: Default::default(),
        replication: None,
        nodes: vec![
            node("readings", &[], NodeKind::Source(readings)),
            node("windows", &["readings"], NodeKind::Transform(window)),
            node("out", &["windows"], NodeKind::Sink(out)),
        ],
    }
}

enum Shipped {
    Seed(Vec<u8>),
    Batch(Vec<u8>),
}

/// Ships to a channel: a seed at the first batch, then every batch, until `dies_after`
/// completions; from then on it refuses everything (the box is gone).
struct ChannelTap {
    to: Mutex<Option<mpsc::Sender<Shipped>>>,
    seed: PathBuf,
    seeded: Mutex<bool>,
    completions: AtomicU64,
    dies_after: u64,
}

impl Tap for ChannelTap {
    fn committed(&self, log: &Log, ops: &[Vec<WriteOp>]) -> Result<(), String> {
        if self.completions.load(Ordering::SeqCst) >= self.dies_after {
            return Err("dead".into());
        }
        let to = self.to.lock().unwrap().clone().ok_or("dead")?;
        let mut seeded = self.seeded.lock().unwrap();
        if !*seeded {
            log.copy_compacted(&self.seed).map_err(|e| e.to_string())?;
            to.send(Shipped::Seed(std::fs::read(&self.seed).unwrap())).unwrap();
            *seeded = true;
        } else {
            let mut bytes = Vec::new();
            ship::encode_batch(ops, &mut bytes);
            to.send(Shipped::Batch(bytes)).unwrap();
        }
        let completed = ship::completions(ops.iter().flatten()).count() as u64;
        if self.completions.fetch_add(completed, Ordering::SeqCst) + completed >= self.dies_after {
            // The batch that reaches the limit is shipped, and the owner dies before it hears
            // that it is durable: its sinks never commit it.
            *self.to.lock().unwrap() = None;
            return Err("dead".into());
        }
        Ok(())
    }

    fn may_release(&self) -> Result<(), String> {
        if self.completions.load(Ordering::SeqCst) >= self.dies_after { Err("dead".into()) } else { Ok(()) }
    }
}

/// Applies what arrives to the replica's data directory until the channel closes.
fn replica(dir: PathBuf, from: mpsc::Receiver<Shipped>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut log: Option<Log> = None;
        let mut batches = 0;
        for shipped in from {
            match shipped {
                Shipped::Seed(bytes) => {
                    drop(log.take());
                    ship::install_seed(&dir, &bytes).unwrap();
                    log = Some(Log::open(&dir, 64 << 20).unwrap());
                }
                Shipped::Batch(bytes) => {
                    let ops = ship::decode_batch(&bytes).unwrap();
                    log.as_ref().expect("seeded first").apply_shipped(&ops).unwrap();
                    batches += 1;
                }
            }
        }
        batches
    })
}

/// (sensor, window start) -> the rest of the row, for every row of `file`; panics on a row
/// that is there twice.
fn rows(file: &Path) -> BTreeMap<(String, String), String> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut rows = BTreeMap::new();
    for line in text.lines() {
        let mut fields = line.splitn(3, ',');
        let key = (fields.next().unwrap().to_owned(), fields.next().unwrap().to_owned());
        let rest = fields.next().unwrap_or_default().to_owned();
        assert!(rows.insert(key.clone(), rest).is_none(), "{} has {key:?} twice", file.display());
    }
    rows
}

#[test]
fn a_run_taken_over_from_its_replica_completes_the_output_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let expected = {
        let spec = pipeline(dir.path().join("reference/data"), dir.path().join("reference/out.csv"));
        run(&spec, &Observe::default(), &[], &Arc::new(StopRequest::default()), false).unwrap();
        rows(&dir.path().join("reference/out.csv"))
    };
    assert!(expected.len() > 100, "{} rows", expected.len());

    // The owner, a: ships to b's replica and dies after 8 completions.
    let (tx, rx) = mpsc::channel();
    // Each agent's folder has the same layout (the same config), as on two boxes.
    let b_data = dir.path().join("b/data");
    let applier = replica(b_data.clone(), rx);
    let tap = Arc::new(ChannelTap {
        to: Mutex::new(Some(tx)),
        seed: dir.path().join("seed.mdb"),
        seeded: Mutex::new(false),
        completions: AtomicU64::new(0),
        dies_after: 8,
    });
    let a = pipeline(dir.path().join("a/data"), dir.path().join("a/out.csv"));
    let observe = Observe { tap: Some(tap.clone()), ..Observe::default() };
    let outcome = run(&a, &observe, &[], &Arc::new(StopRequest::default()), false);
    assert!(outcome.is_err(), "the owner's run fails once its tap refuses: {outcome:?}");
    drop(observe);
    drop(tap);
    let batches = applier.join().unwrap();
    assert!(batches > 8, "{batches} batches shipped");

    // b adopts the replica and runs to the end, into its own file.
    let b = pipeline(b_data, dir.path().join("b/out.csv"));
    assert_eq!(adopt(&b).unwrap(), 1, "one file sink rebased");
    let report = run(&b, &Observe::default(), &[], &Arc::new(StopRequest::default()), false).unwrap();
    assert!(report.restored_from.is_some(), "b restored a shipped checkpoint");

    let (a_rows, b_rows) = (rows(&dir.path().join("a/out.csv")), rows(&dir.path().join("b/out.csv")));
    eprintln!("expected {}, a wrote {}, b wrote {}", expected.len(), a_rows.len(), b_rows.len());
    assert!(!a_rows.is_empty() && !b_rows.is_empty(), "a wrote {}, b wrote {}", a_rows.len(), b_rows.len());
    let mut union = a_rows.clone();
    for (key, rest) in &b_rows {
        if let Some(before) = union.insert(key.clone(), rest.clone()) {
            assert_eq!(&before, rest, "{key:?} differs between a's and b's output");
        }
    }
    assert_eq!(union, expected, "a's and b's output together are the failure-free output");
}
