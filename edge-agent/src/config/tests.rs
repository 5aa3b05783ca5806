//! Unit tests of the config layer: what a good config becomes, and the exact line each kind of
//! mistake produces.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use weir_runtime::batch::{DataType, Field, Schema};
use weir_runtime::pipeline::spec::{
    AggregateFunction, AggregateSpec, CheckpointMode, CheckpointSpec, FileFormat, FileSourceSpec,
    GeneratorSpec, MapSpec, NodeKind, NodeSpec, OutputFormat, PipelineSpec, RecoveryStrategy,
    RestartStrategy, SinkSpec, SourceSpec, SupervisionSpec, TransformSpec, WindowKind, WindowSpec,
};

use super::{load, parse};

/// The sensor-window config of DESIGN.md section 8.
const SENSOR_WINDOW: &str = include_str!("../../tests/configs/design-sensor-window.toml");

fn env(name: &str) -> Option<String> {
    match name {
        "WEIR_OUT" => Some("/srv/out".to_owned()),
        "RECORDS" => Some("500".to_owned()),
        _ => None,
    }
}

fn spec(text: &str) -> PipelineSpec {
    parse(text, Path::new("/etc/weir"), &env).unwrap_or_else(|e| panic!("{e}"))
}

/// The error line for `text`.
fn error(text: &str) -> String {
    match parse(text, Path::new("/etc/weir"), &env) {
        Ok(spec) => panic!("expected an error, got {spec:#?}"),
        Err(e) => e.to_string(),
    }
}

/// A config with one generator source `readings` and a stdout sink reading from `from`, with
/// `middle` between them.
fn with(middle: &str, from: &str) -> String {
    format!(
        "[sources.readings]\ntype = \"generator\"\nshape = \"sensors\"\nrecords = 10\n\n{middle}\n\
         [sinks.out]\ntype = \"stdout\"\ninputs = [\"{from}\"]\n"
    )
}

fn agg(function: AggregateFunction, field: &str) -> AggregateSpec {
    AggregateSpec { function, field: Some(field.to_owned()) }
}

#[test]
fn the_sensor_window_config_becomes_its_spec() {
    let want = PipelineSpec {
        data_dir: PathBuf::from("/etc/weir/data"),
        map_size: 1024 << 20,
        checkpoint: CheckpointSpec {
            interval_ms: Some(1000),
            mode: CheckpointMode::ExactlyOnce,
            timeout_ms: 60_000,
        },
        supervision: SupervisionSpec::default(),
        standby: Default::default(),
        replication: None,
        nodes: vec![
            NodeSpec {
                name: "readings".into(),
                inputs: vec![],
                parallelism: 1,
                kind: NodeKind::Source(SourceSpec::Generator(GeneratorSpec {
                    records: 2_000_000,
                    sensors: 1000,
                    rate: None,
                    batch_size: 4096,
                })),
            },
            NodeSpec {
                name: "windows".into(),
                inputs: vec!["readings".into()],
                parallelism: 1,
                kind: NodeKind::Transform(TransformSpec::Window(WindowSpec {
                    key: Some("sensor".into()),
                    time_field: "ts".into(),
                    kind: WindowKind::Tumbling { size_ms: 1000 },
                    max_out_of_order_ms: 100,
                    aggregates: vec![
                        AggregateSpec { function: AggregateFunction::Count, field: None },
                        agg(AggregateFunction::Sum, "value"),
                        agg(AggregateFunction::Min, "value"),
                        agg(AggregateFunction::Max, "value"),
                        agg(AggregateFunction::Mean, "value"),
                    ],
                })),
            },
            NodeSpec {
                name: "out".into(),
                inputs: vec!["windows".into()],
                parallelism: 1,
                kind: NodeKind::Sink(SinkSpec::File {
                    path: PathBuf::from("/etc/weir/out/windows.csv"),
                    format: OutputFormat { encoding: FileFormat::Csv, float_precision: Some(3) },
                    allow_symlink: false,
                    mode: 0o644,
                }),
            },
        ],
    };
    assert_eq!(spec(SENSOR_WINDOW), want);
}

#[test]
fn defaults_and_overrides() {
    let text = with("", "readings");
    let spec = spec(&text);
    assert_eq!(spec.data_dir, Path::new("/etc/weir/data"));
    assert_eq!(spec.map_size, 1 << 30);
    assert_eq!(
        spec.checkpoint,
        CheckpointSpec { interval_ms: Some(1000), mode: CheckpointMode::ExactlyOnce, timeout_ms: 60_000 }
    );
    assert_eq!(
        spec.nodes[1].kind,
        NodeKind::Sink(SinkSpec::Stdout {
            format: OutputFormat { encoding: FileFormat::JsonLines, float_precision: None }
        })
    );

    let text = format!(
        "data_dir = \"../state/./weir\"\nmap_size_mb = 16\n[checkpoint]\ninterval_ms = 0\n\
         mode = \"at_least_once\"\ntimeout_ms = 5\n{text}"
    );
    let spec = self::spec(&text);
    assert_eq!(spec.data_dir, Path::new("/etc/weir/../state/weir"));
    assert_eq!(spec.map_size, 16 << 20);
    assert_eq!(
        spec.checkpoint,
        CheckpointSpec { interval_ms: None, mode: CheckpointMode::AtLeastOnce, timeout_ms: 5 }
    );

    // `load` puts --data-dir in place of the config's data_dir, and still reads the key.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pipeline.toml");
    std::fs::write(&config, &text).unwrap();
    let flag = dir.path().join("state");
    assert_eq!(load(&config, Some(&flag)).unwrap().data_dir, flag);
    std::fs::write(&config, text.replace("../state/./weir", "")).unwrap();
    assert_eq!(
        load(&config, Some(&flag)).unwrap_err().to_string(),
        "config: data_dir: expected a non-empty string, found \"\" (line 1)"
    );
}

#[test]
fn file_sources_keep_the_declared_field_order() {
    let text = r#"
[sources.lines]
type = "file"
path = "in/readings.jsonl"
format = "json"
schema = { zeta = "string", alpha = "int", mid = "float", flag = "bool" }
batch_size = 100

[sources.more]
type = "file"
path = "/data/more.csv"
format = "csv"
[sources.more.schema]
zeta = "string"
alpha = "int"
mid = "float"
flag = "bool"

[sinks.out]
type = "stdout"
inputs = ["lines", "more"]
format = "csv"
"#;
    let spec = spec(text);
    let schema = Arc::new(Schema::new(vec![
        Field::new("zeta", DataType::Str),
        Field::new("alpha", DataType::Int),
        Field::new("mid", DataType::Float),
        Field::new("flag", DataType::Bool),
    ]));
    assert_eq!(
        spec.nodes[0].kind,
        NodeKind::Source(SourceSpec::File(FileSourceSpec {
            path: PathBuf::from("/etc/weir/in/readings.jsonl"),
            format: FileFormat::JsonLines,
            schema: schema.clone(),
            batch_size: 100,
        }))
    );
    assert_eq!(
        spec.nodes[1].kind,
        NodeKind::Source(SourceSpec::File(FileSourceSpec {
            path: PathBuf::from("/data/more.csv"),
            format: FileFormat::Csv,
            schema,
            batch_size: 4096,
        }))
    );
}

#[test]
fn map_and_filter_keep_their_order() {
    let text = with(
        r#"[transforms.shaped]
type = "map"
inputs = ["hot"]
select = ["sensor", "ts", "value"]
drop = ["ts"]
rename = { value = "v", sensor = "s" }
compute = { zz = "v * 2.0", aa = "v + 1.0" }

[transforms.hot]
type = "filter"
inputs = ["readings"]
condition = "value > 50.0 && sensor != \"s0001\""
"#,
        "shaped",
    );
    let spec = spec(&text);
    let names: Vec<&str> = spec.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["readings", "hot", "shaped", "out"]);
    assert_eq!(
        spec.nodes[1].kind,
        NodeKind::Transform(TransformSpec::Filter {
            condition: "value > 50.0 && sensor != \"s0001\"".into()
        })
    );
    assert_eq!(
        spec.nodes[2].kind,
        NodeKind::Transform(TransformSpec::Map(MapSpec {
            select: Some(vec!["sensor".into(), "ts".into(), "value".into()]),
            drop: vec!["ts".into()],
            rename: vec![("value".into(), "v".into()), ("sensor".into(), "s".into())],
            compute: vec![("zz".into(), "v * 2.0".into()), ("aa".into(), "v + 1.0".into())],
        }))
    );
}

#[test]
fn nodes_come_in_topological_order() {
    // Written sinks first and against the flow; ordered sources, transforms, sinks, each after
    // its inputs, ties in file order.
    let text = r#"
[sinks.z_out]
type = "stdout"
inputs = ["c", "b"]
[sinks.a_out]
type = "stdout"
inputs = ["s2"]
[transforms.c]
type = "filter"
inputs = ["b"]
condition = "true"
[transforms.b]
type = "filter"
inputs = ["s1"]
condition = "true"
[sources.s2]
type = "generator"
shape = "sensors"
records = 1
[sources.s1]
type = "generator"
shape = "sensors"
records = 1
parallelism = 1
"#;
    let spec = spec(text);
    let names: Vec<&str> = spec.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["s2", "s1", "b", "c", "z_out", "a_out"]);
    assert_eq!(spec.nodes[4].inputs, ["c", "b"]);
}

#[test]
fn windows_of_every_kind() {
    let window = |kind: &str| {
        let text = with(
            &format!(
                "[transforms.w]\ntype = \"window\"\ninputs = [\"readings\"]\nkey = \"sensor\"\n\
                 time_field = \"ts\"\n{kind}\naggregates = [\"last(value)\", \"first(sensor)\"]\nparallelism = 3\n"
            ),
            "w",
        );
        let spec = spec(&text);
        assert_eq!(spec.nodes[1].parallelism, 3);
        match &spec.nodes[1].kind {
            NodeKind::Transform(TransformSpec::Window(w)) => {
                assert_eq!(w.key.as_deref(), Some("sensor"));
                assert_eq!(w.max_out_of_order_ms, 0);
                assert_eq!(
                    w.aggregates,
                    [agg(AggregateFunction::Last, "value"), agg(AggregateFunction::First, "sensor")]
                );
                w.kind
            }
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(window("kind = \"tumbling\"\nsize_ms = 10"), WindowKind::Tumbling { size_ms: 10 });
    assert_eq!(
        window("kind = \"hopping\"\nsize_ms = 10\nhop_ms = 5"),
        WindowKind::Hopping { size_ms: 10, hop_ms: 5 }
    );
    assert_eq!(window("kind = \"session\"\ngap_ms = 7"), WindowKind::Session { gap_ms: 7 });
}

// Each subtask of a window without a key would see only part of the records and emit its own
// partial row for the same window: wrong output, so the config is refused.
#[test]
fn a_window_without_a_key_must_run_as_one_subtask() {
    assert_eq!(
        error(&SENSOR_WINDOW.replace("key = \"sensor\"", "parallelism = 2")),
        "config: transforms.windows.parallelism: a window without a key must have parallelism = 1 \
         (each subtask would emit a partial window), found 2: add key = \"FIELD\" to window per key, \
         or set parallelism = 1 (line 15)"
    );
    let keyless = spec(&SENSOR_WINDOW.replace("key = \"sensor\"", "parallelism = 1"));
    assert_eq!(keyless.nodes[1].parallelism, 1);
    let keyed = spec(&SENSOR_WINDOW.replace("key = \"sensor\"", "key = \"sensor\"\nparallelism = 2"));
    assert_eq!(keyed.nodes[1].parallelism, 2);
}

#[test]
fn generator_options() {
    let text = "[sources.g]\ntype = \"generator\"\nshape = \"sensors\"\nrecords = ${RECORDS}\n\
                sensors = ${SENSORS:-10}\nrate = 100\nbatch_size = 64\n\
                [sinks.out]\ntype = \"file\"\ninputs = [\"g\"]\npath = \"${WEIR_OUT}/x.json\"\nformat = \"json\"\n";
    let spec = spec(text);
    assert_eq!(
        spec.nodes[0].kind,
        NodeKind::Source(SourceSpec::Generator(GeneratorSpec {
            records: 500,
            sensors: 10,
            rate: Some(100),
            batch_size: 64
        }))
    );
    assert_eq!(
        spec.nodes[1].kind,
        NodeKind::Sink(SinkSpec::File {
            path: PathBuf::from("/srv/out/x.json"),
            format: OutputFormat { encoding: FileFormat::JsonLines, float_precision: None },
            allow_symlink: false,
            mode: 0o644,
        })
    );
}

// ---- Mistakes: one exact line each. ----

#[test]
fn unknown_keys_name_the_key_and_line() {
    let text = SENSOR_WINDOW.replace("size_ms = 1000", "sise_ms = 1000");
    assert_eq!(
        error(&text),
        "config: transforms.windows: unknown key \"sise_ms\" (line 18), did you mean \"size_ms\"?"
    );
    assert_eq!(
        error(&format!("data_dri = \"x\"\n{SENSOR_WINDOW}")),
        "config: unknown key \"data_dri\" (line 1), did you mean \"data_dir\"?"
    );
    assert_eq!(
        error(&SENSOR_WINDOW.replace("mode = ", "colour = ")),
        "config: checkpoint: unknown key \"colour\" (line 5)"
    );
    assert_eq!(
        error(&SENSOR_WINDOW.replace("type = \"generator\"", "typ = \"generator\"")),
        "config: sources.readings: unknown key \"typ\" (line 8), did you mean \"type\"?"
    );
    assert_eq!(
        error(&SENSOR_WINDOW.replace("records = 2000000", "records = 2000000\npath = \"x\"")),
        "config: sources.readings: key \"path\" does not apply to type = \"generator\" (line 11)"
    );
    assert_eq!(
        error(&SENSOR_WINDOW.replace("size_ms = 1000", "size_ms = 1000\ngap_ms = 5")),
        "config: transforms.windows: key \"gap_ms\" does not apply to kind = \"tumbling\" (line 19)"
    );
}

#[test]
fn missing_keys_cite_the_table() {
    assert_eq!(
        error(&SENSOR_WINDOW.replace("records = 2000000", "")),
        "config: sources.readings: missing required key \"records\" (line 7)"
    );
    assert_eq!(
        error(&SENSOR_WINDOW.replace("type = \"generator\"", "")),
        "config: sources.readings: missing required key \"type\" (line 7)"
    );
    assert_eq!(
        error(&SENSOR_WINDOW.replace("inputs = [\"readings\"]", "")),
        "config: transforms.windows: missing required key \"inputs\" (line 12)"
    );
    assert_eq!(
        error(&SENSOR_WINDOW.replace("path = \"out/windows.csv\"", "")),
        "config: sinks.out: missing required key \"path\" (line 22)"
    );
    assert_eq!(
        error(&SENSOR_WINDOW.replace("size_ms = 1000", "")),
        "config: transforms.windows: missing required key \"size_ms\" (line 12)"
    );
    assert_eq!(
        error("[sources.a]\ntype = \"file\"\npath = \"x\"\nformat = \"csv\"\n"),
        "config: sources.a: missing required key \"schema\" (line 1)"
    );
}

#[test]
fn wrong_value_types() {
    assert_eq!(
        error(&SENSOR_WINDOW.replace("records = 2000000", "records = \"abc\"")),
        "config: sources.readings.records: expected a positive integer, found \"abc\" (line 10)"
    );
    assert_eq!(
        error(&SENSOR_WINDOW.replace("records = 2000000", "records = 0")),
        "config: sources.readings.records: expected a positive integer, found 0 (line 10)"
    );
    assert_eq!(
        error(&SENSOR_WINDOW.replace("size_ms = 1000", "size_ms = 1.5")),
        "config: transforms.windows.size_ms: expected a positive integer, found 1.5 (line 18)"
    );
    assert_eq!(
        error(&SENSOR_WINDOW.replace("max_out_of_order_ms = 100", "max_out_of_order_ms = -1")),
        "config: transforms.windows.max_out_of_order_ms: expected a non-negative integer, found -1 (line 19)"
    );
    assert_eq!(
        error(&SENSOR_WINDOW.replace("records = 2000000", "records = 99999999999999999999")),
        "config: sources.readings.records: expected a positive integer, found 99999999999999999999 (out of range) \
         (line 10)"
    );
    assert_eq!(
        error(&SENSOR_WINDOW.replace("float_precision = 3", "float_precision = 40")),
        "config: sinks.out.float_precision: expected an integer from 0 to 17, found 40 (line 27)"
    );
    assert_eq!(
        error(&SENSOR_WINDOW.replace("inputs = [\"readings\"]", "inputs = \"readings\"")),
        "config: transforms.windows.inputs: expected an array of strings, found \"readings\" (line 14)"
    );
    assert_eq!(
        error(&SENSOR_WINDOW.replace("inputs = [\"readings\"]", "inputs = [\n  \"readings\",\n  3,\n]")),
        "config: transforms.windows.inputs: expected a non-empty string, found 3 (line 16)"
    );
    assert_eq!(
        error(&SENSOR_WINDOW.replace("inputs = [\"readings\"]", "inputs = []")),
        "config: transforms.windows.inputs: expected at least one input (line 14)"
    );
    assert_eq!(
        error(&SENSOR_WINDOW.replace("data_dir = \"data\"", "data_dir = 5")),
        "config: data_dir: expected a non-empty string, found 5 (line 1)"
    );
    assert_eq!(
        error(&SENSOR_WINDOW.replace("[checkpoint]", "checkpoint = true\n[other]")),
        "config: unknown key \"other\" (line 4)"
    );
    assert_eq!(
        error(&format!("checkpoint = true\n{}", with("", "readings"))),
        "config: checkpoint: expected a table, found true (line 1)"
    );
    assert_eq!(
        error(&SENSOR_WINDOW.replace("float_precision = 3", "parallelism = 2")),
        "config: sinks.out.parallelism: file sinks are one writer each: parallelism must be 1, found 2 (line 27)"
    );
    let parallel = spec(&SENSOR_WINDOW.replace("[sources.readings]", "[sources.readings]\nparallelism = 2"));
    assert_eq!(parallel.nodes[0].parallelism, 2, "sources split their input");
    assert_eq!(
        error(&SENSOR_WINDOW.replace("aggregates = [", "aggregates = [\"sum(value)\", ")),
        "config: transforms.windows.aggregates: \"sum(value)\" is listed twice (line 20)"
    );
    assert_eq!(
        error(&SENSOR_WINDOW.replace("\"count\"", "\"median(value)\"")),
        "config: transforms.windows.aggregates: unknown aggregate function \"median\", expected count, sum, min, \
         max, mean, first or last (line 20), did you mean \"mean\"?"
    );
    assert_eq!(
        error("[sources.a]\ntype = \"file\"\npath = \"x\"\nformat = \"csv\"\nschema = {}\n"),
        "config: sources.a.schema: expected at least one field (line 5)"
    );
    assert_eq!(
        error(
            "[sources.a]\ntype = \"file\"\npath = \"x\"\nformat = \"csv\"\n[sources.a.schema]\nx = \"integer\"\n"
        ),
        "config: sources.a.schema.x: expected \"bool\", \"int\", \"float\" or \"string\", found \"integer\" (line 6)"
    );
}

#[test]
fn bad_enum_strings_and_types() {
    assert_eq!(
        error(&SENSOR_WINDOW.replace("kind = \"tumbling\"", "kind = \"tumbeling\"")),
        "config: transforms.windows.kind: expected \"tumbling\", \"hopping\" or \"session\", found \"tumbeling\" \
         (line 17)"
    );
    assert_eq!(
        error(&SENSOR_WINDOW.replace("exactly_once\"", "exactly-once\"")),
        "config: checkpoint.mode: expected \"exactly_once\" or \"at_least_once\", found \"exactly-once\" (line 5)"
    );
    assert_eq!(
        error(&SENSOR_WINDOW.replace("type = \"generator\"", "type = \"generater\"")),
        "config: sources.readings.type: expected \"generator\", \"file\" or \"mqtt\", found \"generater\" (line 8)"
    );
    assert_eq!(
        error(&SENSOR_WINDOW.replace("type = \"window\"", "type = \"windows\"")),
        "config: transforms.windows.type: expected \"filter\", \"map\" or \"window\", found \"windows\" (line 13)"
    );
    assert_eq!(
        error(&SENSOR_WINDOW.replace("format = \"csv\"", "format = \"tsv\"")),
        "config: sinks.out.format: expected \"csv\" or \"json\", found \"tsv\" (line 26)"
    );
    assert_eq!(
        error(&SENSOR_WINDOW.replace("shape = \"sensors\"", "shape = \"meters\"")),
        "config: sources.readings.shape: expected \"sensors\", found \"meters\" (line 9)"
    );
}

#[test]
fn wiring_mistakes() {
    assert_eq!(
        error(&SENSOR_WINDOW.replace("inputs = [\"windows\"]", "inputs = [\"windowz\"]")),
        "config: sinks.out: unknown input \"windowz\" (line 24), did you mean \"windows\"?"
    );
    assert_eq!(
        error(&SENSOR_WINDOW.replace("inputs = [\"windows\"]", "inputs = [\"nothing\"]")),
        "config: sinks.out: unknown input \"nothing\" (line 24)"
    );
    assert_eq!(
        error(&SENSOR_WINDOW.replace("inputs = [\"readings\"]", "inputs = [\"out\"]")),
        "config: transforms.windows: input \"out\" is a sink, which has no output (line 14)"
    );
    assert_eq!(
        error(&SENSOR_WINDOW.replace("inputs = [\"readings\"]", "inputs = [\"readings\", \"readings\"]")),
        "config: transforms.windows: input \"readings\" is listed twice (line 14)"
    );
    assert_eq!(
        error(&SENSOR_WINDOW.replace("records = 2000000", "records = 1\ninputs = [\"x\"]")),
        "config: sources.readings.inputs: a source has no inputs (line 11)"
    );
    assert_eq!(
        error(&SENSOR_WINDOW.replace("[sinks.out]", "[transforms.readings]\ntype = \"filter\"\n[sinks.out]")),
        "config: transforms.readings: the name \"readings\" is already used by sources.readings (line 22)"
    );
    assert_eq!(
        error(&SENSOR_WINDOW.replace("[sinks.out]", "[sinks.\"my sink\"]")),
        "config: sinks: invalid name \"my sink\": use letters, digits, \"_\" and \"-\" (line 22)"
    );
    assert_eq!(
        error("[sinks.out]\ntype = \"stdout\"\ninputs = [\"x\"]\n"),
        "config: no sources: add at least one [sources.NAME] table"
    );
    assert_eq!(error(""), "config: no sources: add at least one [sources.NAME] table");
    assert_eq!(
        error("[sources.a]\ntype = \"generator\"\nshape = \"sensors\"\nrecords = 1\n"),
        "config: no sinks: add at least one [sinks.NAME] table"
    );
}

#[test]
fn cycles_are_named_in_the_direction_of_flow() {
    let text = with(
        "[transforms.a]\ntype = \"filter\"\ninputs = [\"c\"]\ncondition = \"true\"\n\
         [transforms.b]\ntype = \"filter\"\ninputs = [\"a\"]\ncondition = \"true\"\n\
         [transforms.c]\ntype = \"filter\"\ninputs = [\"readings\", \"b\"]\ncondition = \"true\"\n",
        "c",
    );
    assert_eq!(error(&text), "config: cycle: a -> b -> c -> a");
    let text = with("[transforms.a]\ntype = \"filter\"\ninputs = [\"a\"]\ncondition = \"true\"\n", "a");
    assert_eq!(error(&text), "config: cycle: a -> a");
}

#[test]
fn inputs_with_different_schemas() {
    let text = "[sources.g]\ntype = \"generator\"\nshape = \"sensors\"\nrecords = 1\n\
                [sources.f]\ntype = \"file\"\npath = \"x\"\nformat = \"csv\"\nschema = { sensor = \"string\" }\n\
                [sinks.out]\ntype = \"stdout\"\ninputs = [\n  \"g\",\n  \"f\",\n]\n";
    assert_eq!(
        error(text),
        "config: sinks.out: input \"f\" has fields (sensor: string) but input \"g\" has \
         (sensor: string, ts: int, value: float) (line 14)"
    );
}

#[test]
fn toml_and_interpolation_mistakes_name_the_line() {
    assert_eq!(
        error("a = 1\n\nb = \n"),
        "config: line 3: invalid TOML: string values must be quoted, expected literal string"
    );
    assert_eq!(error("[s]\nx = 1\nx = 2\n"), "config: line 3: invalid TOML: duplicate key");
    assert_eq!(
        error(&SENSOR_WINDOW.replace("out/windows.csv", "${OUT_DIR}/windows.csv")),
        "config: line 25: environment variable \"OUT_DIR\" is not set"
    );
    // A commented-out line may name an unset variable.
    let spec = spec(
        &SENSOR_WINDOW
            .replace("data_dir = \"data\"", "# data_dir = \"${UNSET}\"\ndata_dir = \"${UNSET:-d}\""),
    );
    assert_eq!(spec.data_dir, Path::new("/etc/weir/d"));
}

#[test]
fn operator_errors_cite_the_key_they_are_about() {
    // The message is the operator builder's; the path and line are this layer's.
    assert_eq!(
        error(&SENSOR_WINDOW.replace("\"count\", ", "\"count\",\n  \"sum(sensor)\", ")),
        "config: transforms.windows.aggregates: sum(sensor) is not defined for a string field (line 20)"
    );
    assert_eq!(
        error(&SENSOR_WINDOW.replace("key = \"sensor\"", "key = \"value\"")),
        "config: transforms.windows.key: key field \"value\" is a float, it must be a string, int or bool (line 15)"
    );
    assert_eq!(
        error(
            &SENSOR_WINDOW.replace(
                "kind = \"tumbling\"\nsize_ms = 1000",
                "kind = \"hopping\"\nsize_ms = 10\nhop_ms = 20"
            )
        ),
        "config: transforms.windows.hop_ms: hop_ms (20) must not exceed size_ms (10): records would fall between \
         windows (line 19)"
    );
    let text = with(
        "[transforms.shaped]\ntype = \"map\"\ninputs = [\"readings\"]\n\
         compute = {\n  x = \"1\",\n  doubled = \"sensor * 2.0\",\n}\n",
        "shaped",
    );
    assert_eq!(
        error(&text),
        "config: transforms.shaped.compute.doubled: \"*\" needs numbers, found string and float (line 11)"
    );
    let text = with(
        "[transforms.hot]\ntype = \"filter\"\ninputs = [\"readings\"]\ncondition = \"valeu > 1.0\"\n",
        "hot",
    );
    assert_eq!(
        error(&text),
        "config: transforms.hot.condition: unknown field \"valeu\" (fields: sensor, ts, value) (line 9)"
    );
}

#[test]
fn schemas_flow_through_transforms() {
    // The window's output (sensor, window_start, count, sum_value) feeds a map, which can only
    // use those fields.
    let text = SENSOR_WINDOW.replace("inputs = [\"windows\"]", "inputs = [\"shaped\"]").replace(
        "[sinks.out]",
        "[transforms.shaped]\ntype = \"map\"\ninputs = [\"windows\"]\nselect = [\"sensor\", \"value\"]\n[sinks.out]",
    );
    assert_eq!(
        error(&text),
        "config: transforms.shaped.select: unknown field \"value\" (fields: sensor, window_start, count, \
         sum_value, min_value, max_value, mean_value) (line 25)"
    );
    let spec = spec(&text.replace("\"value\"]", "\"mean_value\"]"));
    let names: Vec<&str> = spec.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["readings", "windows", "shaped", "out"]);
}

/// Every config one edit away from a good one is either accepted or refused with one line that
/// names a line (or the cycle, or the missing section): nothing panics, nothing spans lines.
#[test]
fn every_small_edit_gives_one_line() {
    let rich = r#"data_dir = "${DATA:-data}"
map_size_mb = 64
[checkpoint]
interval_ms = 0
[sources.lines]
type = "file"
path = "in.jsonl"
format = "json"
schema = { sensor = "string", ts = "int", value = "float" }
[transforms.hot]
type = "filter"
inputs = ["lines"]
condition = "value > 50.0"
[transforms.shaped]
type = "map"
inputs = ["hot"]
rename = { value = "v" }
compute = { doubled = "v * 2.0" }
[transforms.w]
type = "window"
inputs = ["shaped"]
key = "sensor"
time_field = "ts"
kind = "session"
gap_ms = 10
aggregates = ["count", "max(doubled)"]
parallelism = 2
[sinks.out]
type = "stdout"
inputs = ["w"]
"#;
    for config in [SENSOR_WINDOW, rich] {
        spec(config);
        let lines: Vec<&str> = config.lines().collect();
        let mut variants: Vec<String> = (0..lines.len())
            .map(|skip| {
                let kept: Vec<&str> =
                    lines.iter().enumerate().filter(|(i, _)| *i != skip).map(|(_, l)| *l).collect();
                kept.join("\n")
            })
            .collect();
        variants.extend((0..config.len()).map(|i| format!("{}{}", &config[..i], &config[i + 1..])));
        variants.extend((0..config.len()).map(|i| format!("{}\"{}", &config[..i], &config[i..])));
        for text in variants {
            if let Err(e) = parse(&text, Path::new("/etc/weir"), &env) {
                let line = e.to_string();
                assert!(line.starts_with("config: ") && !line.contains('\n'), "{line}\nfor:\n{text}");
                let located = line.contains("(line ")
                    || line.starts_with("config: line ")
                    || line.starts_with("config: cycle: ")
                    || line.starts_with("config: no ");
                assert!(located, "{line}\nfor:\n{text}");
            }
        }
    }
}

#[test]
fn supervision_table_overrides_defaults_and_rejects_unknown_keys() {
    let text = format!("{SENSOR_WINDOW}\n[supervision]\nmax_restarts = 1\nwithin_ms = 5000\n");
    let got = spec(&text).supervision;
    assert_eq!(got, SupervisionSpec { max_restarts: 1, within_ms: 5000, ..SupervisionSpec::default() });
    let bad = format!("{SENSOR_WINDOW}\n[supervision]\nmax_restart = 1\n");
    let err = parse(&bad, Path::new("/cfg"), &env).unwrap_err().to_string();
    assert!(err.starts_with("config: supervision: unknown key \"max_restart\" (line "), "{err}");
    assert!(err.ends_with("did you mean \"max_restarts\"?"), "{err}");
}

#[test]
fn restart_and_recovery_strategies_are_read_and_bad_ones_named() {
    let text = format!(
        "{SENSOR_WINDOW}\n[supervision]\nstrategy = \"rest_for_one\"\n[recovery]\nstrategy = \"global\"\nbuffer_mb = 8\n"
    );
    let got = spec(&text).supervision;
    assert_eq!(
        (got.strategy, got.recovery, got.buffer_bytes),
        (RestartStrategy::RestForOne, RecoveryStrategy::Global, 8 << 20)
    );
    assert_eq!(spec(SENSOR_WINDOW).supervision.recovery, RecoveryStrategy::Local, "local by default");
    let bad = format!("{SENSOR_WINDOW}\n[recovery]\nstrategy = \"partial\"\n");
    let err = parse(&bad, Path::new("/cfg"), &env).unwrap_err().to_string();
    assert!(
        err.starts_with(
            "config: recovery.strategy: expected \"local\" or \"global\", found \"partial\" (line "
        ),
        "{err}"
    );
}

#[test]
fn hopping_windows_are_capped_per_record() {
    let window = |size: u64, hop: u64| {
        with(
            &format!(
                "[transforms.w]\ntype = \"window\"\ninputs = [\"readings\"]\ntime_field = \"ts\"\n\
                 kind = \"hopping\"\nsize_ms = {size}\nhop_ms = {hop}\naggregates = [\"count\"]\n"
            ),
            "w",
        )
    };
    spec(&window(1000, 1));
    spec(&window(200_000, 200));
    assert_eq!(
        error(&window(1001, 1)),
        "config: transforms.w.hop_ms: size_ms = 1001 and hop_ms = 1 put each record in 1001 windows, more \
         than the 1000 allowed; raise hop_ms to at least 2 (line 12)"
    );
    // Rounded up: a record can fall in one more window than size_ms / hop_ms.
    assert!(error(&window(200_001, 200)).contains("put each record in 1001 windows"));
}

#[test]
fn file_sinks_take_allow_symlink_and_an_octal_mode() {
    let sink = |extra: &str| {
        format!(
            "[sources.readings]\ntype = \"generator\"\nshape = \"sensors\"\nrecords = 10\n\
             [sinks.out]\ntype = \"file\"\ninputs = [\"readings\"]\npath = \"o.csv\"\nformat = \"csv\"\n{extra}"
        )
    };
    let file = |text: &str| match &spec(text).nodes[1].kind {
        NodeKind::Sink(SinkSpec::File { allow_symlink, mode, .. }) => (*allow_symlink, *mode),
        other => panic!("{other:?}"),
    };
    assert_eq!(file(&sink("")), (false, 0o644));
    assert_eq!(file(&sink("allow_symlink = true\nmode = \"0640\"")), (true, 0o640));
    assert_eq!(file(&sink("mode = \"600\"")), (false, 0o600));
    assert_eq!(
        error(&sink("mode = \"0999\"")),
        "config: sinks.out.mode: expected an octal mode such as \"0640\", found \"0999\" (line 10)"
    );
    for bad in ["\"4755\"", "\"64\"", "\"0o640\"", "\"\"", "640"] {
        let line = error(&sink(&format!("mode = {bad}")));
        assert!(line.starts_with("config: sinks.out.mode: expected an octal mode such as"), "{line}");
    }
    assert_eq!(
        error(&sink("mode = \"0440\"")),
        "config: sinks.out.mode: mode \"0440\" does not let the owner read and write the file, which weir \
         reopens after a restart (line 10)"
    );
    assert_eq!(
        error(&sink("allow_symlink = \"yes\"")),
        "config: sinks.out.allow_symlink: expected true or false, found \"yes\" (line 10)"
    );
    assert_eq!(
        error(&sink("alow_symlink = true")),
        "config: sinks.out: unknown key \"alow_symlink\" (line 10), did you mean \"allow_symlink\"?"
    );
    assert_eq!(
        error(&with("", "readings").replace("type = \"stdout\"", "type = \"stdout\"\nmode = \"0640\"")),
        "config: sinks.out: key \"mode\" does not apply to type = \"stdout\" (line 9)"
    );
}

// Reference: issue 11, "[recovery] key_operator = "auto" | "NODE" | "none" (default "none")
// ... [transforms.NAME.standby] mode = "hot" | "warm" | "off" overrides per node".
#[test]
fn the_key_operator_and_standby_modes_choose_which_transforms_have_a_standby() {
    use weir_runtime::protocol::driver::Mode;
    let windows = |text: &str| {
        let standby = spec(text).standby;
        let first = standby.auto.map(|a| (a.first, Mode::Hot));
        standby.nodes.into_iter().chain(first).collect::<Vec<_>>()
    };
    assert_eq!(windows(SENSOR_WINDOW), [], "none by default");
    let named = format!(
        "{SENSOR_WINDOW}\n[recovery]\nkey_operator = \"windows\"\nprogress_timeout_ms = 250\nacceptable_lag_batches = 7\n"
    );
    let got = spec(&named).standby;
    assert_eq!(got.nodes, [("windows".to_owned(), Mode::Hot)]);
    assert_eq!((got.progress_timeout_ms, got.acceptable_lag_batches), (250, 7));
    let auto = format!("{SENSOR_WINDOW}\n[recovery]\nkey_operator = \"auto\"\n");
    assert_eq!(windows(&auto), [("windows".to_owned(), Mode::Hot)], "the only stateful transform");
    let warm = format!("{SENSOR_WINDOW}\n[transforms.windows.standby]\nmode = \"warm\"\n");
    assert_eq!(windows(&warm), [("windows".to_owned(), Mode::Warm)]);
    let off = format!(
        "{SENSOR_WINDOW}\n[transforms.windows.standby]\nmode = \"off\"\n[recovery]\nkey_operator = \"windows\"\n"
    );
    assert_eq!(windows(&off), [], "off overrides the key operator");
    // A filter keeps no state: auto chooses the window, not the filter before it.
    let filtered = with(
        "[transforms.hot]\ntype = \"filter\"\ninputs = [\"readings\"]\ncondition = \"value > 1.0\"\n\
         [transforms.w]\ntype = \"window\"\ninputs = [\"hot\"]\nkey = \"sensor\"\ntime_field = \"ts\"\n\
         kind = \"tumbling\"\nsize_ms = 10\naggregates = [\"count\"]\n[recovery]\nkey_operator = \"auto\"\n",
        "w",
    );
    assert_eq!(windows(&filtered), [("w".to_owned(), Mode::Hot)]);
}

#[test]
fn a_bad_key_operator_or_standby_mode_is_one_line_naming_the_key() {
    let unknown = format!("{SENSOR_WINDOW}\n[recovery]\nkey_operator = \"window\"\n");
    let err = error(&unknown);
    assert!(
        err.starts_with(
            "config: recovery.key_operator: \"window\" is not a transform (did you mean \"windows\"?)"
        ),
        "{err}"
    );
    let source = format!("{SENSOR_WINDOW}\n[recovery]\nkey_operator = \"readings\"\n");
    assert!(error(&source).contains("\"readings\" is not a transform"), "{}", error(&source));
    let mode = format!("{SENSOR_WINDOW}\n[transforms.windows.standby]\nmode = \"lukewarm\"\n");
    let err = error(&mode);
    assert!(err.starts_with("config: transforms.windows.standby.mode: "), "{err}");
    assert!(err.contains("\"lukewarm\""), "{err}");
    let key = format!("{SENSOR_WINDOW}\n[transforms.windows.standby]\nmod = \"hot\"\n");
    assert!(error(&key).contains("unknown key \"mod\""), "{}", error(&key));
    let timeout = format!("{SENSOR_WINDOW}\n[recovery]\nprogress_timeout_ms = 0\n");
    assert!(error(&timeout).starts_with("config: recovery.progress_timeout_ms: "), "{}", error(&timeout));
}

/// An MQTT source feeding a stdout sink, with `extra` lines in the source's table.
fn mqtt(extra: &str) -> String {
    format!(
        "[sources.m]\ntype = \"mqtt\"\nurl = \"mqtt://broker.local:1884\"\ntopics = [\"weir/in/#\"]\n\
         format = \"json\"\nschema = {{ sensor = \"string\", ts = \"int\" }}\n{extra}\n\
         [sinks.out]\ntype = \"stdout\"\ninputs = [\"m\"]\n"
    )
}

#[test]
fn an_mqtt_source_is_read_with_its_extra_fields_and_dedup_key() {
    let read =
        spec(&mqtt("topic_field = \"topic\"\narrival_field = \"at\"\ndedup_key = [\"sensor\", \"ts\"]"));
    let NodeKind::Source(SourceSpec::Mqtt(m)) = &read.nodes[0].kind else { panic!("{:?}", read.nodes[0]) };
    assert_eq!((m.host.as_str(), m.port), ("broker.local", 1884));
    assert_eq!(m.topics, ["weir/in/#"]);
    let fields: Vec<(&str, DataType)> = m.schema.fields().iter().map(|f| (f.name.as_str(), f.ty)).collect();
    assert_eq!(
        fields,
        [("sensor", DataType::Str), ("ts", DataType::Int), ("topic", DataType::Str), ("at", DataType::Int)]
    );
    assert_eq!(m.payload_fields, 2);
    assert_eq!(m.dedup_key, ["sensor", "ts"]);
    assert_eq!((m.dedup_retention_ms, m.keep_alive_s, m.max_inflight), (600_000, 10, 1000));
    assert_eq!(m.idle, None);
    let idle = spec(&mqtt("idle_timeout_ms = 500\ntime_field = \"ts\""));
    let NodeKind::Source(SourceSpec::Mqtt(m)) = &idle.nodes[0].kind else { panic!() };
    assert_eq!(m.idle, Some((500, "ts".to_owned())));
}

#[test]
fn mqtt_source_mistakes_are_one_line_each() {
    let cases = [
        ("dedup_key = \"missing\"", "dedup_key: \"missing\" is not a field of the schema"),
        ("topic_field = \"ts\"", "field \"ts\" is already a field of the record"),
        ("parallelism = 2", "an mqtt source is one client: parallelism must be 1"),
        ("keep_alive_s = 1", "expected an integer from 5 to 3600"),
        ("idle_timeout_ms = 500", "idle_timeout_ms needs time_field"),
        ("time_field = \"ts\"", "time_field is for idle_timeout_ms, which is not set"),
        ("idle_timeout_ms = 500\ntime_field = \"sensor\"", "time_field \"sensor\" must be an int field"),
        ("idle_timeout_ms = 500\ntime_field = \"nope\"", "time_field: \"nope\" is not a field of the schema"),
    ];
    for (extra, expected) in cases {
        let e = error(&mqtt(extra));
        assert!(e.contains(expected), "{extra}: {e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
    let e = error(&mqtt("").replace("mqtt://broker.local:1884", "mqtts://broker.local"));
    assert!(e.contains("only mqtt:// (plain TCP) is supported yet"), "{e}");
    let e = error(&mqtt("").replace("mqtt://broker.local:1884", "mqtt://broker.local:99999"));
    assert!(e.contains("the port must be from 1 to 65535"), "{e}");
    let e = error(&mqtt("").replace("format = \"json\"", "format = \"raw\""));
    assert!(e.contains("a raw payload is one string field"), "{e}");
    let csv = spec(&mqtt("").replace("format = \"json\"", "format = \"csv\""));
    let NodeKind::Source(SourceSpec::Mqtt(m)) = &csv.nodes[0].kind else { panic!() };
    assert_eq!((m.format, m.payload_fields), (weir_runtime::pipeline::spec::PayloadFormat::Csv, 2));
    let e = error(&mqtt("dedup_key = \"ts\"").replace("format = \"json\"", "format = \"csv\""));
    assert!(e.contains("it needs format = \"json\""), "{e}");
}

/// An MQTT source feeding an MQTT sink, with `extra` lines in the sink's table.
fn mqtt_sink(extra: &str) -> String {
    mqtt("").replace(
        "[sinks.out]\ntype = \"stdout\"\ninputs = [\"m\"]\n",
        &format!("[sinks.out]\ntype = \"mqtt\"\ninputs = [\"m\"]\nurl = \"mqtt://b:1885\"\ntopic = \"weir/out\"\n{extra}\n"),
    )
}

#[test]
fn an_mqtt_sink_is_read_with_its_defaults() {
    use weir_runtime::pipeline::spec::OnFull;
    let set = spec(&mqtt_sink("on_full = \"drop_oldest\"\nmax_outbox_mb = 2\nqos = 1"));
    let NodeKind::Sink(SinkSpec::Mqtt(m)) = &set.nodes[1].kind else { panic!("{:?}", set.nodes[1]) };
    assert_eq!((m.host.as_str(), m.port, m.topic.as_str()), ("b", 1885, "weir/out"));
    assert_eq!((m.on_full, m.max_outbox_bytes), (OnFull::DropOldest, 2 << 20));
    assert_eq!((m.max_inflight, m.max_packet_size, m.progress_timeout_ms), (100, 1 << 20, 10_000));
    let default = spec(&mqtt_sink(""));
    let NodeKind::Sink(SinkSpec::Mqtt(m)) = &default.nodes[1].kind else { panic!() };
    assert_eq!(m.on_full, OnFull::Backpressure);
}

#[test]
fn mqtt_sink_mistakes_are_one_line_each() {
    let cases = [
        ("qos = 2", "expected 1, found 2: the mqtt sink publishes with QoS 1"),
        ("qos = 0", "expected 1, found 0"),
        ("format = \"csv\"", "expected \"json\", found \"csv\""),
        ("on_full = \"block\"", "expected \"backpressure\", \"drop_oldest\" or \"reject_new\""),
        ("max_packet_size = 300", "expected an integer from 1024"),
        ("topics = [\"x\"]", "unknown key \"topics\""),
        ("max_outbox_mb = 0", "expected an integer from 1"),
    ];
    for (extra, expected) in cases {
        let e = error(&mqtt_sink(extra));
        assert!(e.contains(expected), "{extra}: {e}");
        assert!(e.starts_with("config: sinks.out"), "{extra}: {e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
    let e = error(&mqtt_sink("").replace("topic = \"weir/out\"", "topic = \"weir/#\""));
    assert!(e.contains("a topic to publish to has no wildcards"), "{e}");
    let long = format!("topic = \"{}\"", "t".repeat(700));
    let e = error(&mqtt_sink("max_packet_size = 1024").replace("topic = \"weir/out\"", &long));
    assert!(
        e.contains("max_packet_size = 1024 leaves") && e.starts_with("config: sinks.out.max_packet_size"),
        "{e}"
    );
}
