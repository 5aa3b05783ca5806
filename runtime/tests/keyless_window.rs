//! A `PipelineSpec` built in code, not read from a config, with a window that has no key and
//! two subtasks: the runtime refuses to run it, as the config layer refuses such a table,
//! rather than have each subtask emit a partial row for the same window.

use std::sync::Arc;

use weir_runtime::pipeline::run::{Observe, RunError, StopRequest, run};
use weir_runtime::pipeline::spec::{
    AggregateFunction, AggregateSpec, CheckpointMode, CheckpointSpec, DEFAULT_OUTPUT_MODE, FileFormat,
    GeneratorSpec, NodeKind, NodeSpec, OutputFormat, PipelineSpec, SinkSpec, SourceSpec, SupervisionSpec,
    TransformSpec, WindowKind, WindowSpec,
};

fn pipeline(dir: &std::path::Path, key: Option<&str>, parallelism: usize) -> PipelineSpec {
    let node = |name: &str, inputs: &[&str], parallelism: usize, kind: NodeKind| NodeSpec {
        name: name.to_owned(),
        inputs: inputs.iter().map(|i| (*i).to_owned()).collect(),
        parallelism,
        kind,
    };
    let readings =
        SourceSpec::Generator(GeneratorSpec { records: 1000, sensors: 10, rate: None, batch_size: 64 });
    let window = TransformSpec::Window(WindowSpec {
        key: key.map(str::to_owned),
        time_field: "ts".into(),
        kind: WindowKind::Tumbling { size_ms: 1000 },
        max_out_of_order_ms: 0,
        aggregates: vec![AggregateSpec { function: AggregateFunction::Count, field: None }],
    });
    let out = SinkSpec::File {
        path: dir.join("out.csv"),
        format: OutputFormat { encoding: FileFormat::Csv, float_precision: None },
        allow_symlink: false,
        mode: DEFAULT_OUTPUT_MODE,
    };
    PipelineSpec {
        data_dir: dir.join("data"),
        map_size: 64 << 20,
        checkpoint: CheckpointSpec {
            interval_ms: None,
            mode: CheckpointMode::ExactlyOnce,
            timeout_ms: 60_000,
        },
        supervision: SupervisionSpec::default(),
        standby: Default::default(),
        replication: None,
        nodes: vec![
            node("readings", &[], 1, NodeKind::Source(readings)),
            node("windows", &["readings"], parallelism, NodeKind::Transform(window)),
            node("out", &["windows"], 1, NodeKind::Sink(out)),
        ],
    }
}

#[test]
fn a_window_without_a_key_and_two_subtasks_does_not_run() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let spec = pipeline(dir.path(), None, 2);
    match run(&spec, &Observe::default(), &[], &Arc::new(StopRequest::default()), false) {
        Err(RunError::Build(message)) => assert_eq!(
            message,
            "windows: a window without a key must have parallelism = 1 (each subtask would emit a \
             partial window), found 2: add key = \"FIELD\" to window per key, or set parallelism = 1"
        ),
        other => panic!("expected a build error, got {other:?}"),
    }
    assert!(!dir.path().join("out.csv").exists(), "no output is written");
}

// The same pipeline with a key, or with one subtask, runs: the check refuses nothing else.
#[test]
fn a_keyed_window_with_two_subtasks_and_a_keyless_one_with_one_run() {
    for (key, parallelism) in [(Some("sensor"), 2), (None, 1)] {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let spec = pipeline(dir.path(), key, parallelism);
        let report = run(&spec, &Observe::default(), &[], &Arc::new(StopRequest::default()), false)
            .unwrap_or_else(|e| panic!("{key:?}, parallelism {parallelism}: {e}"));
        assert_eq!(report.nodes[0].records_out, 1000);
        let rows = std::fs::read_to_string(dir.path().join("out.csv")).expect("the output");
        let counted: u64 =
            rows.lines().map(|row| row.rsplit(',').next().unwrap().parse::<u64>().unwrap()).sum();
        assert_eq!(counted, 1000, "{key:?}, parallelism {parallelism}: every reading is counted once");
    }
}
