//! What a data directory's state means: every setting that changes the meaning of the
//! state or of the output, as `(path, value)` pairs named as in the config
//! (`transforms.windows.size_ms`, `"1000"`). The log records them on first use and refuses a
//! run whose settings differ, naming the first difference, because resuming a window of
//! 1000 ms into one of 2000 ms, or a CSV file with JSON lines, gives output that is wrong
//! without any error.
//!
//! Paths are recorded relative to the data directory, so a folder holding the config, the
//! data directory and the output can be moved or copied as a whole.
//!
//! Left out on purpose, because a change is safe across a restart: rates and batch sizes
//! (where records are cut into batches), the checkpoint interval, mode and timeout,
//! supervision and recovery settings, the map size, and the data directory itself.

use std::path::{Path, PathBuf};

use crate::pipeline::spec::{
    AggregateFunction, FileFormat, NodeKind, NodeSpec, OutputFormat, PipelineSpec, SinkSpec, SourceSpec,
    TransformSpec, WindowKind,
};

/// The settings of `spec` that give its state and output their meaning, in pipeline order.
pub fn settings(spec: &PipelineSpec) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for node in &spec.nodes {
        node_settings(node, &spec.data_dir, &mut out);
    }
    out
}

/// A string value as the config would spell it, with anything unprintable escaped.
fn quoted(s: &str) -> String {
    format!("{s:?}")
}

fn list<T>(items: &[T], show: impl Fn(&T) -> String) -> String {
    format!("[{}]", items.iter().map(show).collect::<Vec<_>>().join(", "))
}

fn format_name(f: FileFormat) -> String {
    quoted(match f {
        FileFormat::JsonLines => "json",
        FileFormat::Csv => "csv",
    })
}

/// `path` as seen from `base` (both absolute): `../out/windows.csv`.
fn relative(path: &Path, base: &Path) -> String {
    let (p, b): (Vec<_>, Vec<_>) = (path.components().collect(), base.components().collect());
    let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut rel = PathBuf::new();
    for _ in common..b.len() {
        rel.push("..");
    }
    for c in &p[common..] {
        rel.push(c);
    }
    quoted(&rel.to_string_lossy())
}

fn node_settings(node: &NodeSpec, data_dir: &Path, out: &mut Vec<(String, String)>) {
    let section = match node.kind {
        NodeKind::Source(_) => "sources",
        NodeKind::Transform(_) => "transforms",
        NodeKind::Sink(_) => "sinks",
    };
    let prefix = format!("{section}.{}", node.name);
    let mut set = |key: &str, value: String| out.push((format!("{prefix}.{key}"), value));
    let (kind, rest): (&str, Vec<(&str, String)>) = match &node.kind {
        NodeKind::Source(SourceSpec::Generator(g)) => (
            "generator",
            vec![
                ("shape", quoted("sensors")),
                ("records", g.records.to_string()),
                ("sensors", g.sensors.to_string()),
            ],
        ),
        NodeKind::Source(SourceSpec::File(f)) => (
            "file",
            vec![
                ("path", relative(&f.path, data_dir)),
                ("format", format_name(f.format)),
                (
                    "schema",
                    list(f.schema.fields(), |field| format!("{} = {}", field.name, quoted(field.ty.name()))),
                ),
            ],
        ),
        NodeKind::Source(SourceSpec::Mqtt(m)) => (
            "mqtt",
            vec![
                ("topics", list(&m.topics, |t| quoted(t))),
                (
                    "format",
                    quoted(match m.format {
                        crate::pipeline::spec::PayloadFormat::Json => "json",
                        crate::pipeline::spec::PayloadFormat::Csv => "csv",
                        crate::pipeline::spec::PayloadFormat::Raw => "raw",
                    }),
                ),
                (
                    "schema",
                    list(m.schema.fields(), |field| format!("{} = {}", field.name, quoted(field.ty.name()))),
                ),
                ("dedup_key", list(&m.dedup_key, |f| quoted(f))),
            ],
        ),
        NodeKind::Transform(TransformSpec::Filter { condition }) => {
            ("filter", vec![("condition", quoted(condition))])
        }
        NodeKind::Transform(TransformSpec::Map(m)) => (
            "map",
            vec![
                ("select", m.select.as_ref().map_or("(all)".into(), |s| list(s, |f| quoted(f)))),
                ("drop", list(&m.drop, |f| quoted(f))),
                ("rename", list(&m.rename, |(a, b)| format!("{} = {}", a, quoted(b)))),
                ("compute", list(&m.compute, |(a, b)| format!("{} = {}", a, quoted(b)))),
            ],
        ),
        NodeKind::Transform(TransformSpec::Window(w)) => {
            let mut v = vec![
                ("key", w.key.as_deref().map_or("(none)".into(), quoted)),
                ("time_field", quoted(&w.time_field)),
            ];
            match w.kind {
                WindowKind::Tumbling { size_ms } => {
                    v.push(("kind", quoted("tumbling")));
                    v.push(("size_ms", size_ms.to_string()));
                }
                WindowKind::Hopping { size_ms, hop_ms } => {
                    v.push(("kind", quoted("hopping")));
                    v.push(("size_ms", size_ms.to_string()));
                    v.push(("hop_ms", hop_ms.to_string()));
                }
                WindowKind::Session { gap_ms } => {
                    v.push(("kind", quoted("session")));
                    v.push(("gap_ms", gap_ms.to_string()));
                }
            }
            v.push(("max_out_of_order_ms", w.max_out_of_order_ms.to_string()));
            v.push((
                "aggregates",
                list(&w.aggregates, |a| {
                    let f = aggregate_name(a.function);
                    quoted(&a.field.as_ref().map_or(f.to_owned(), |field| format!("{f}({field})")))
                }),
            ));
            ("window", v)
        }
        NodeKind::Sink(SinkSpec::File { path, format, .. }) => {
            let mut v = vec![("path", relative(path, data_dir))];
            v.extend(output_format(*format));
            ("file", v)
        }
        NodeKind::Sink(SinkSpec::Stdout { format }) => ("stdout", output_format(*format)),
        // The broker may move; the topic and the rows' form are what the outbox holds.
        NodeKind::Sink(SinkSpec::Mqtt(m)) => {
            let mut v = vec![("topic", quoted(&m.topic))];
            v.extend(output_format(m.format));
            ("mqtt", v)
        }
    };
    set("type", quoted(kind));
    set("inputs", list(&node.inputs, |i| quoted(i)));
    set("parallelism", node.parallelism.to_string());
    for (key, value) in rest {
        set(key, value);
    }
}

fn output_format(format: OutputFormat) -> Vec<(&'static str, String)> {
    vec![
        ("format", format_name(format.encoding)),
        ("float_precision", format.float_precision.map_or("(shortest)".into(), |p| p.to_string())),
    ]
}

fn aggregate_name(f: AggregateFunction) -> &'static str {
    match f {
        AggregateFunction::Count => "count",
        AggregateFunction::Sum => "sum",
        AggregateFunction::Min => "min",
        AggregateFunction::Max => "max",
        AggregateFunction::Mean => "mean",
        AggregateFunction::First => "first",
        AggregateFunction::Last => "last",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::spec::{
        AggregateSpec, CheckpointMode, CheckpointSpec, GeneratorSpec, SupervisionSpec, WindowSpec,
    };

    fn spec(size_ms: i64, records: u64, rate: Option<u64>, interval: Option<u64>) -> PipelineSpec {
        let node = |name: &str, inputs: &[&str], kind| NodeSpec {
            name: name.into(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            parallelism: 1,
            kind,
        };
        PipelineSpec {
            data_dir: "/d".into(),
            map_size: 1 << 20,
            checkpoint: CheckpointSpec {
                interval_ms: interval,
                mode: CheckpointMode::ExactlyOnce,
                timeout_ms: 1,
            },
            supervision: SupervisionSpec::default(),
            standby: Default::default(),
            replication: None,
            nodes: vec![
                node(
                    "readings",
                    &[],
                    NodeKind::Source(SourceSpec::Generator(GeneratorSpec {
                        records,
                        sensors: 10,
                        rate,
                        batch_size: 7,
                    })),
                ),
                node(
                    "windows",
                    &["readings"],
                    NodeKind::Transform(TransformSpec::Window(WindowSpec {
                        key: Some("sensor".into()),
                        time_field: "ts".into(),
                        kind: WindowKind::Tumbling { size_ms },
                        max_out_of_order_ms: 100,
                        aggregates: vec![AggregateSpec {
                            function: AggregateFunction::Sum,
                            field: Some("value".into()),
                        }],
                    })),
                ),
            ],
        }
    }

    #[test]
    fn settings_that_change_the_meaning_are_recorded_and_safe_ones_are_not() {
        let base = settings(&spec(1000, 20, None, Some(1000)));
        let get =
            |s: &[(String, String)], k: &str| s.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        assert_eq!(get(&base, "transforms.windows.size_ms").as_deref(), Some("1000"));
        assert_eq!(get(&base, "transforms.windows.aggregates").as_deref(), Some("[\"sum(value)\"]"));
        assert_eq!(get(&base, "sources.readings.records").as_deref(), Some("20"));
        assert_eq!(relative(Path::new("/x/out/w.csv"), Path::new("/x/data")), "\"../out/w.csv\"");
        assert_eq!(relative(Path::new("/x/data/w.csv"), Path::new("/x/data")), "\"w.csv\"");
        assert_ne!(settings(&spec(2000, 20, None, Some(1000))), base);
        assert_ne!(settings(&spec(1000, 2, None, Some(1000))), base);
        // A rate limit and the checkpoint interval are safe to change.
        assert_eq!(settings(&spec(1000, 20, Some(5), None)), base);
    }
}
