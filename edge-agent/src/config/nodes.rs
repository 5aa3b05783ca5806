//! One node's table (`[sources.NAME]`, `[transforms.NAME]`, `[sinks.NAME]`) read into a
//! [`Draft`]: its keys checked, its values typed, its paths made absolute. Each table is read on
//! its own; how nodes connect, and whether their fields exist, is `graph`'s business. A
//! transform's parallelism is checked here, with its table: a window without a key must run as
//! one subtask.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use weir_runtime::batch::{DataType, Field, Schema};
use weir_runtime::pipeline::spec::{
    AggregateFunction, AggregateSpec, DEFAULT_OUTPUT_MODE, FileFormat, FileSourceSpec, GeneratorSpec,
    MapSpec, MqttSinkSpec, MqttSourceSpec, NodeKind, OnFull, OutputFormat, PayloadFormat, SinkSpec,
    SourceSpec, TransformSpec, WindowKind, WindowSpec,
};

use super::doc::{Item, Located, Table, closest, one_of};
use super::{ConfigError, operator};

/// The three sections of a pipeline, in the order nodes are listed in a `PipelineSpec`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Section {
    Source,
    Transform,
    Sink,
}

/// Keys every node may have.
const NODE_KEYS: &[&str] = &["type", "inputs", "parallelism"];

/// Per section: each `type` and the keys it takes besides [`NODE_KEYS`].
const SOURCE_TYPES: &[(&str, &[&str])] = &[
    ("generator", &["shape", "records", "sensors", "rate", "batch_size"]),
    ("file", &["path", "format", "schema", "batch_size"]),
    (
        "mqtt",
        &[
            "url",
            "topics",
            "client_id",
            "format",
            "schema",
            "topic_field",
            "arrival_field",
            "dedup_key",
            "dedup_retention_ms",
            "batch_size",
            "keep_alive_s",
            "max_inflight",
            "idle_timeout_ms",
            "time_field",
        ],
    ),
];
const TRANSFORM_TYPES: &[(&str, &[&str])] = &[
    ("filter", &["condition", "standby"]),
    ("map", &["select", "drop", "rename", "compute", "standby"]),
    (
        "window",
        &[
            "key",
            "time_field",
            "kind",
            "size_ms",
            "hop_ms",
            "gap_ms",
            "max_out_of_order_ms",
            "aggregates",
            "standby",
        ],
    ),
];

/// `[transforms.NAME.standby] mode`: a standby for this transform, or none even if
/// `recovery.key_operator` would choose it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum StandbyChoice {
    /// `"hot"`.
    Hot,
    /// `"warm"`.
    Warm,
    /// `"off"`.
    Off,
}
const SINK_TYPES: &[(&str, &[&str])] = &[
    ("file", &["path", "format", "float_precision", "allow_symlink", "mode"]),
    ("stdout", &["format", "float_precision"]),
    (
        "mqtt",
        &[
            "url",
            "topic",
            "client_id",
            "qos",
            "format",
            "float_precision",
            "keep_alive_s",
            "max_inflight",
            "max_outbox_mb",
            "on_full",
            "max_packet_size",
            "progress_timeout_ms",
        ],
    ),
];

const DEFAULT_BATCH_SIZE: u64 = 4096;
const DEFAULT_SENSORS: u64 = 1000;
/// More decimals than an f64 holds significant digits would only print noise.
const MAX_FLOAT_PRECISION: u64 = 17;

impl Section {
    pub(super) const ALL: [Section; 3] = [Section::Source, Section::Transform, Section::Sink];

    /// The top-level key of the section.
    pub(super) fn key(self) -> &'static str {
        match self {
            Section::Source => "sources",
            Section::Transform => "transforms",
            Section::Sink => "sinks",
        }
    }

    fn types(self) -> &'static [(&'static str, &'static [&'static str])] {
        match self {
            Section::Source => SOURCE_TYPES,
            Section::Transform => TRANSFORM_TYPES,
            Section::Sink => SINK_TYPES,
        }
    }
}

/// A node as its own table describes it; inputs are names not yet resolved.
pub(super) struct Draft<'a> {
    pub(super) name: String,
    pub(super) section: Section,
    /// The `NAME = { ... }` entry, for the lines of keys that later checks complain about.
    pub(super) item: Item<'a>,
    pub(super) inputs: Vec<Located<String>>,
    pub(super) parallelism: usize,
    pub(super) kind: NodeKind,
    /// Its `standby.mode`, if it says one.
    pub(super) standby: Option<StandbyChoice>,
}

impl Draft<'_> {
    /// Whether the node names a file in its `path`: a file source or a file sink.
    pub(super) fn has_path(&self) -> bool {
        matches!(self.kind, NodeKind::Source(SourceSpec::File(_)) | NodeKind::Sink(SinkSpec::File { .. }))
    }
}

/// Reads the node `item` (an entry of the `section` table); relative paths resolve against
/// `base_dir`, which is absolute.
pub(super) fn read_node<'a>(
    section: Section,
    item: Item<'a>,
    base_dir: &Path,
) -> Result<Draft<'a>, ConfigError> {
    let name = item.key();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(ConfigError::at(
            section.key(),
            format!("invalid name {name:?}: use letters, digits, \"_\" and \"-\""),
            item.key_line(),
        ));
    }
    let table = item.table()?;
    let ty = read_type(section, &table)?;

    let inputs = match (section, table.get("inputs")) {
        (Section::Source, Some(inputs)) => return Err(inputs.error("a source has no inputs")),
        (Section::Source, None) => Vec::new(),
        (_, None) => return Err(table.error("missing required key \"inputs\"")),
        (_, Some(inputs)) => {
            let list = inputs.str_list()?;
            if list.is_empty() {
                return Err(inputs.error("expected at least one input"));
            }
            list
        }
    };

    let parallelism = match table.get("parallelism") {
        None => 1,
        Some(item) => {
            let n = to_usize(&item, item.positive()?)?;
            // Sources split their input over their subtasks; a sink is one writer of its
            // output.
            if section == Section::Sink && n != 1 {
                return Err(
                    item.error(format!("{ty} sinks are one writer each: parallelism must be 1, found {n}"))
                );
            }
            n
        }
    };

    let kind = match (section, ty) {
        (Section::Source, "generator") => NodeKind::Source(SourceSpec::Generator(generator(&table)?)),
        (Section::Source, "mqtt") => {
            if parallelism != 1 {
                let item = table.get("parallelism").expect("set, since it is not 1");
                return Err(item.error("an mqtt source is one client: parallelism must be 1"));
            }
            NodeKind::Source(SourceSpec::Mqtt(mqtt_source(&table)?))
        }
        (Section::Source, _) => NodeKind::Source(SourceSpec::File(file_source(&table, base_dir)?)),
        (Section::Transform, "filter") => NodeKind::Transform(TransformSpec::Filter {
            condition: table.require("condition")?.non_empty_str()?.to_owned(),
        }),
        (Section::Transform, "map") => NodeKind::Transform(TransformSpec::Map(map(&table)?)),
        (Section::Transform, _) => NodeKind::Transform(TransformSpec::Window(window(&table)?)),
        (Section::Sink, "file") => NodeKind::Sink(SinkSpec::File {
            path: resolve(base_dir, table.require("path")?.non_empty_str()?),
            format: output_format(&table, true)?,
            allow_symlink: optional(&table, "allow_symlink", Item::bool)?.unwrap_or(false),
            mode: optional(&table, "mode", file_mode)?.unwrap_or(DEFAULT_OUTPUT_MODE),
        }),
        (Section::Sink, "mqtt") => NodeKind::Sink(SinkSpec::Mqtt(mqtt_sink(&table)?)),
        (Section::Sink, _) => NodeKind::Sink(SinkSpec::Stdout { format: output_format(&table, false)? }),
    };
    if let NodeKind::Transform(spec) = &kind {
        operator::check_parallelism(spec, parallelism).map_err(|problem| {
            let path = format!("{}.{}", item.path(), problem.key);
            ConfigError::at(&path, problem.message, item.line_of(&problem.key))
        })?;
    }

    let standby = match table.get("standby") {
        None => None,
        Some(standby) => {
            let standby = standby.table()?;
            standby.deny_unknown_keys(&["mode"])?;
            let choices =
                [("hot", StandbyChoice::Hot), ("warm", StandbyChoice::Warm), ("off", StandbyChoice::Off)];
            Some(standby.require("mode")?.choice(&choices)?)
        }
    };

    Ok(Draft { name: name.to_owned(), section, item, inputs, parallelism, kind, standby })
}

/// The node's `type`, after checking that every key of the table belongs to it.
fn read_type(section: Section, table: &Table<'_>) -> Result<&'static str, ConfigError> {
    let types = section.types();
    let Some(type_item) = table.get("type") else {
        // A misspelt `type` is more likely than a forgotten one: name it if it is there.
        let mut known: Vec<&str> = NODE_KEYS.to_vec();
        known.extend(types.iter().flat_map(|(_, keys)| keys.iter().copied()));
        table.deny_unknown_keys(&known)?;
        return Err(table.error("missing required key \"type\""));
    };
    let options: Vec<(&str, usize)> = types.iter().enumerate().map(|(i, (name, _))| (*name, i)).collect();
    let (ty, own_keys) = types[type_item.choice(&options)?];

    for item in table.items() {
        let key = item.key();
        if NODE_KEYS.contains(&key) || own_keys.contains(&key) {
            continue;
        }
        if types.iter().any(|(_, keys)| keys.contains(&key)) {
            return Err(ConfigError::at(
                table.path(),
                format!("key {key:?} does not apply to type = \"{ty}\""),
                item.key_line(),
            ));
        }
        let known: Vec<&str> = NODE_KEYS.iter().chain(own_keys.iter()).copied().collect();
        return Err(item.unknown_key(&known));
    }
    Ok(ty)
}

fn generator(table: &Table<'_>) -> Result<GeneratorSpec, ConfigError> {
    table.require("shape")?.choice(&[("sensors", ())])?;
    Ok(GeneratorSpec {
        records: table.require("records")?.positive()?,
        sensors: optional(table, "sensors", Item::positive)?.unwrap_or(DEFAULT_SENSORS),
        rate: optional(table, "rate", Item::positive)?,
        batch_size: batch_size(table)?,
    })
}

fn file_source(table: &Table<'_>, base_dir: &Path) -> Result<FileSourceSpec, ConfigError> {
    let path = resolve(base_dir, table.require("path")?.non_empty_str()?);
    let format =
        table.require("format")?.choice(&[("json", FileFormat::JsonLines), ("csv", FileFormat::Csv)])?;
    let fields = schema_fields(table)?;
    Ok(FileSourceSpec { path, format, schema: Arc::new(Schema::new(fields)), batch_size: batch_size(table)? })
}

/// `mqtt://host[:port]` (or `tcp://`, or `host[:port]`): host and port (1883 by default).
fn broker(item: &Item<'_>) -> Result<(String, u16), ConfigError> {
    let text = item.non_empty_str()?;
    let rest = text.strip_prefix("mqtt://").or_else(|| text.strip_prefix("tcp://")).unwrap_or(text);
    if rest.contains("://") {
        return Err(item.error(format!("{text:?}: only mqtt:// (plain TCP) is supported yet")));
    }
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) => {
            let port = port.parse::<u16>().ok().filter(|&p| p > 0);
            (host, port.ok_or_else(|| item.error(format!("{text:?}: the port must be from 1 to 65535")))?)
        }
        None => (rest, 1883),
    };
    if host.is_empty() {
        return Err(item.error(format!("{text:?}: no host")));
    }
    Ok((host.to_owned(), port))
}

fn mqtt_source(table: &Table<'_>) -> Result<MqttSourceSpec, ConfigError> {
    let (host, port) = broker(&table.require("url")?)?;
    let topics_item = table.require("topics")?;
    let topics: Vec<String> = topics_item.str_list()?.into_iter().map(|t| t.value).collect();
    if topics.is_empty() {
        return Err(topics_item.error("expected at least one topic filter"));
    }
    let format = table.require("format")?.choice(&[
        ("json", PayloadFormat::Json),
        ("csv", PayloadFormat::Csv),
        ("raw", PayloadFormat::Raw),
    ])?;
    let mut fields = match format {
        PayloadFormat::Json | PayloadFormat::Csv => schema_fields(table)?,
        PayloadFormat::Raw => {
            if let Some(item) = table.get("schema") {
                return Err(item.error("a raw payload is one string field, \"payload\": no schema"));
            }
            vec![Field::new("payload", DataType::Str)]
        }
    };
    let payload_fields = fields.len();
    let mut extra = |key: &str, ty: DataType| -> Result<Option<String>, ConfigError> {
        let Some(item) = table.get(key) else { return Ok(None) };
        let name = item.non_empty_str()?.to_owned();
        if fields.iter().any(|f| f.name == name) {
            return Err(item.error(format!("field \"{name}\" is already a field of the record")));
        }
        fields.push(Field::new(name.clone(), ty));
        Ok(Some(name))
    };
    let topic_field = extra("topic_field", DataType::Str)?;
    let arrival_field = extra("arrival_field", DataType::Int)?;
    let dedup_key = match table.get("dedup_key") {
        None => Vec::new(),
        Some(item) => {
            let names: Vec<String> = match item.str() {
                Ok(name) => vec![name.to_owned()],
                Err(_) => item.str_list()?.into_iter().map(|n| n.value).collect(),
            };
            if format != PayloadFormat::Json {
                return Err(item.error("dedup_key names payload fields: it needs format = \"json\""));
            }
            if let Some(name) = names.iter().find(|n| !fields[..payload_fields].iter().any(|f| &f.name == *n))
            {
                return Err(item.error(format!("dedup_key: \"{name}\" is not a field of the schema")));
            }
            if names.is_empty() {
                return Err(item.error("expected at least one field"));
            }
            names
        }
    };
    let idle = match (table.get("idle_timeout_ms"), table.get("time_field")) {
        (None, None) => None,
        (Some(timeout), None) => {
            return Err(timeout.error("idle_timeout_ms needs time_field: the int field of the event time"));
        }
        (None, Some(field)) => return Err(field.error("time_field is for idle_timeout_ms, which is not set")),
        (Some(timeout), Some(field_item)) => {
            let ms = timeout.int_between(10, 86_400_000)?;
            let field = field_item.non_empty_str()?.to_owned();
            if format != PayloadFormat::Json {
                return Err(timeout.error(
                    "idle_timeout_ms reads the event time of JSON payloads: it needs format = \"json\"",
                ));
            }
            match fields[..payload_fields].iter().find(|f| f.name == field) {
                Some(f) if f.ty == DataType::Int => {}
                Some(_) => {
                    return Err(field_item.error(format!("time_field \"{field}\" must be an int field")));
                }
                None => {
                    return Err(
                        field_item.error(format!("time_field: \"{field}\" is not a field of the schema"))
                    );
                }
            }
            Some((ms, field))
        }
    };
    let client_id =
        optional(table, "client_id", |i| i.non_empty_str().map(str::to_owned))?.unwrap_or_default();
    Ok(MqttSourceSpec {
        host,
        port,
        topics,
        client_id,
        format,
        schema: Arc::new(Schema::new(fields)),
        payload_fields,
        topic_field,
        arrival_field,
        dedup_key,
        dedup_retention_ms: optional(table, "dedup_retention_ms", Item::positive)?.unwrap_or(600_000),
        batch_size: batch_size(table)?,
        keep_alive_s: optional(table, "keep_alive_s", |i| i.int_between(5, 3600))?.unwrap_or(10),
        max_inflight: optional(table, "max_inflight", |i| i.int_between(1, 65535))?.unwrap_or(1000) as u16,
        idle,
    })
}

fn mqtt_sink(table: &Table<'_>) -> Result<MqttSinkSpec, ConfigError> {
    let (host, port) = broker(&table.require("url")?)?;
    let topic_item = table.require("topic")?;
    let topic = topic_item.non_empty_str()?.to_owned();
    if topic.contains(['#', '+', '\0']) {
        return Err(topic_item.error(format!("{topic:?}: a topic to publish to has no wildcards (# or +)")));
    }
    if let Some(item) = table.get("qos")
        && item.int_between(1, 1).is_err()
    {
        return Err(item.error(format!(
            "expected 1, found {}: the mqtt sink publishes with QoS 1 (consumers de-duplicate by its user properties)",
            item.found()
        )));
    }
    if let Some(item) = table.get("format") {
        item.choice(&[("json", ())])?;
    }
    let format = output_format(table, false)?;
    let client_id =
        optional(table, "client_id", |i| i.non_empty_str().map(str::to_owned))?.unwrap_or_default();
    let max_packet_item = table.get("max_packet_size");
    let max_packet_size = match &max_packet_item {
        Some(item) => item.int_between(1024, 268_435_455)? as u32,
        None => 1 << 20,
    };
    // The property `pipeline` carries the client id, derived when not set (at most ~60 bytes).
    let room = max_packet_size as usize
        - weir_runtime::connectors::mqtt_sink::PUBLISH_OVERHEAD
        - topic.len()
        - client_id.len().max(64);
    if room < 256 {
        let problem = format!(
            "max_packet_size = {max_packet_size} leaves {room} bytes for a row after the topic and the user properties; \
             allow at least 256"
        );
        return Err(match max_packet_item {
            Some(item) => item.error(problem),
            None => topic_item.error(problem),
        });
    }
    let on_full = match table.get("on_full") {
        Some(item) => item.choice(&[
            ("backpressure", OnFull::Backpressure),
            ("drop_oldest", OnFull::DropOldest),
            ("reject_new", OnFull::RejectNew),
        ])?,
        None => OnFull::Backpressure,
    };
    Ok(MqttSinkSpec {
        host,
        port,
        topic,
        client_id,
        stream: String::new(),
        format,
        keep_alive_s: optional(table, "keep_alive_s", |i| i.int_between(5, 3600))?.unwrap_or(10),
        max_inflight: optional(table, "max_inflight", |i| i.int_between(1, 65535))?.unwrap_or(100) as u16,
        max_outbox_bytes: optional(table, "max_outbox_mb", |i| i.int_between(1, 1 << 20))?.unwrap_or(64)
            << 20,
        on_full,
        max_packet_size,
        progress_timeout_ms: optional(table, "progress_timeout_ms", |i| i.int_between(100, 3_600_000))?
            .unwrap_or(10_000),
    })
}

/// A source's `schema = { field = "type", ... }`, in declaration order.
fn schema_fields(table: &Table<'_>) -> Result<Vec<Field>, ConfigError> {
    let schema_item = table.require("schema")?;
    let schema_table = schema_item.table()?;
    let types = [
        ("bool", DataType::Bool),
        ("int", DataType::Int),
        ("float", DataType::Float),
        ("string", DataType::Str),
    ];
    let mut fields = Vec::new();
    for field in schema_table.items() {
        if field.key().is_empty() {
            return Err(ConfigError::at(schema_table.path(), "invalid field name \"\"", field.key_line()));
        }
        fields.push(Field::new(field.key(), field.choice(&types)?));
    }
    if fields.is_empty() {
        return Err(schema_item.error("expected at least one field"));
    }
    Ok(fields)
}

fn batch_size(table: &Table<'_>) -> Result<usize, ConfigError> {
    match table.get("batch_size") {
        Some(item) => to_usize(&item, item.positive()?),
        None => Ok(DEFAULT_BATCH_SIZE as usize),
    }
}

fn map(table: &Table<'_>) -> Result<MapSpec, ConfigError> {
    let select = match table.get("select") {
        Some(item) => {
            let fields = item.str_list()?;
            if fields.is_empty() {
                return Err(item.error("expected at least one field"));
            }
            Some(fields.into_iter().map(|f| f.value).collect())
        }
        None => None,
    };
    let drop = match table.get("drop") {
        Some(item) => item.str_list()?.into_iter().map(|f| f.value).collect(),
        None => Vec::new(),
    };
    Ok(MapSpec {
        select,
        drop,
        rename: string_pairs(table, "rename")?,
        compute: string_pairs(table, "compute")?,
    })
}

/// A `key = { a = "x", b = "y" }` table as `(a, x), (b, y)` in the order written.
fn string_pairs(table: &Table<'_>, key: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let Some(item) = table.get(key) else { return Ok(Vec::new()) };
    item.table()?
        .items()
        .into_iter()
        .map(|entry| Ok((entry.key().to_owned(), entry.non_empty_str()?.to_owned())))
        .collect()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tumbling,
    Hopping,
    Session,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Tumbling => "tumbling",
            Kind::Hopping => "hopping",
            Kind::Session => "session",
        }
    }

    fn takes(self, key: &str) -> bool {
        match key {
            "size_ms" => self != Kind::Session,
            "hop_ms" => self == Kind::Hopping,
            "gap_ms" => self == Kind::Session,
            _ => true,
        }
    }
}

fn window(table: &Table<'_>) -> Result<WindowSpec, ConfigError> {
    let key = optional(table, "key", |item| item.non_empty_str().map(str::to_owned))?;
    let time_field = table.require("time_field")?.non_empty_str()?.to_owned();
    let kind = table.require("kind")?.choice(&[
        ("tumbling", Kind::Tumbling),
        ("hopping", Kind::Hopping),
        ("session", Kind::Session),
    ])?;
    if let Some(item) = table.items().into_iter().find(|item| !kind.takes(item.key())) {
        return Err(ConfigError::at(
            table.path(),
            format!("key {:?} does not apply to kind = \"{}\"", item.key(), kind.name()),
            item.key_line(),
        ));
    }
    let millis = |key: &str| -> Result<i64, ConfigError> { Ok(table.require(key)?.positive()? as i64) };
    let kind = match kind {
        Kind::Tumbling => WindowKind::Tumbling { size_ms: millis("size_ms")? },
        Kind::Hopping => hopping(table)?,
        Kind::Session => WindowKind::Session { gap_ms: millis("gap_ms")? },
    };
    let max_out_of_order_ms = optional(table, "max_out_of_order_ms", Item::non_negative)?.unwrap_or(0) as i64;

    let list = table.require("aggregates")?;
    let mut aggregates: Vec<AggregateSpec> = Vec::new();
    for item in list.array("strings")? {
        let text = item.non_empty_str()?;
        let aggregate = aggregate(text).map_err(|(message, hint)| {
            let error = item.error(message);
            match hint {
                Some(hint) => error.with_hint(hint),
                None => error,
            }
        })?;
        if aggregates.contains(&aggregate) {
            return Err(item.error(format!("{text:?} is listed twice")));
        }
        aggregates.push(aggregate);
    }
    if aggregates.is_empty() {
        return Err(list.error("expected at least one aggregate"));
    }
    Ok(WindowSpec { key, time_field, kind, max_out_of_order_ms, aggregates })
}

/// `size_ms` and `hop_ms` of a hopping window. Each record lands in `size_ms / hop_ms` windows
/// (rounded up), each of which the operator updates per record and snapshots at every
/// checkpoint; past this many, one record's work and a snapshot's size grow without warning
/// until checkpoints time out.
const MAX_WINDOWS_PER_RECORD: u64 = 1000;

fn hopping(table: &Table<'_>) -> Result<WindowKind, ConfigError> {
    let size_ms = table.require("size_ms")?.positive()?;
    let hop_item = table.require("hop_ms")?;
    let hop_ms = hop_item.positive()?;
    // A hop longer than the size is the operator's to refuse (with its own message).
    let windows = size_ms.div_ceil(hop_ms);
    if windows > MAX_WINDOWS_PER_RECORD {
        return Err(hop_item.error(format!(
            "size_ms = {size_ms} and hop_ms = {hop_ms} put each record in {windows} windows, more than the \
             {MAX_WINDOWS_PER_RECORD} allowed; raise hop_ms to at least {}",
            size_ms.div_ceil(MAX_WINDOWS_PER_RECORD)
        )));
    }
    Ok(WindowKind::Hopping { size_ms: size_ms as i64, hop_ms: hop_ms as i64 })
}

const AGGREGATES: [(&str, AggregateFunction); 7] = [
    ("count", AggregateFunction::Count),
    ("sum", AggregateFunction::Sum),
    ("min", AggregateFunction::Min),
    ("max", AggregateFunction::Max),
    ("mean", AggregateFunction::Mean),
    ("first", AggregateFunction::First),
    ("last", AggregateFunction::Last),
];

/// `"count"` or `"function(field)"`; the error is a message and a suggested function.
fn aggregate(text: &str) -> Result<AggregateSpec, (String, Option<&'static str>)> {
    let text = text.trim();
    let (name, field) = match text.split_once('(') {
        None => (text, None),
        Some((name, rest)) => match rest.strip_suffix(')') {
            Some(field) if !field.contains(['(', ')']) => (name.trim_end(), Some(field.trim())),
            _ => {
                return Err((
                    format!("expected an aggregate such as \"count\" or \"sum(value)\", found {text:?}"),
                    None,
                ));
            }
        },
    };
    let Some(&(_, function)) = AGGREGATES.iter().find(|(n, _)| *n == name) else {
        let names: Vec<&str> = AGGREGATES.iter().map(|(n, _)| *n).collect();
        let message =
            format!("unknown aggregate function {name:?}, expected {}", one_of(&names).replace('"', ""));
        return Err((message, closest(name, names)));
    };
    let field = match (function, field) {
        (AggregateFunction::Count, None | Some("")) => None,
        (AggregateFunction::Count, Some(_)) => {
            return Err((format!("\"count\" takes no field, found {text:?}"), None));
        }
        (_, None | Some("")) => {
            return Err((format!("\"{name}\" needs a field, as in \"{name}(value)\""), None));
        }
        (_, Some(field)) => Some(field.to_owned()),
    };
    Ok(AggregateSpec { function, field })
}

/// `format` and `float_precision` of a sink; stdout defaults to JSON lines, a file must say.
fn output_format(table: &Table<'_>, format_required: bool) -> Result<OutputFormat, ConfigError> {
    let formats = [("csv", FileFormat::Csv), ("json", FileFormat::JsonLines)];
    let encoding = match table.get("format") {
        Some(item) => item.choice(&formats)?,
        None if format_required => return Err(table.error("missing required key \"format\"")),
        None => FileFormat::JsonLines,
    };
    let float_precision = match table.get("float_precision") {
        Some(item) => Some(item.int_between(0, MAX_FLOAT_PRECISION)? as usize),
        None => None,
    };
    Ok(OutputFormat { encoding, float_precision })
}

/// A file sink's `mode`: permission bits as an octal string, `"0640"` or `"640"`. The owner
/// must be able to read and write, since the sink reopens the file after a restart; setuid,
/// setgid and sticky bits have no business on an output file.
fn file_mode(item: &Item<'_>) -> Result<u32, ConfigError> {
    let bad = || item.error(format!("expected an octal mode such as \"0640\", found {}", item.found()));
    let text = item.str().map_err(|_| bad())?;
    let digits = if text.len() == 4 { text.strip_prefix('0').ok_or_else(bad)? } else { text };
    if digits.len() != 3 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(bad());
    }
    let mode = u32::from_str_radix(digits, 8).map_err(|_| bad())?;
    if mode & 0o600 != 0o600 {
        return Err(item.error(format!(
            "mode {text:?} does not let the owner read and write the file, which weir reopens after a restart"
        )));
    }
    Ok(mode)
}

/// Reads `key` with `read` if it is there.
fn optional<'a, T>(
    table: &Table<'a>,
    key: &str,
    read: impl FnOnce(&Item<'a>) -> Result<T, ConfigError>,
) -> Result<Option<T>, ConfigError> {
    table.get(key).map(|item| read(&item)).transpose()
}

fn to_usize(item: &Item<'_>, n: u64) -> Result<usize, ConfigError> {
    usize::try_from(n).map_err(|_| item.error(format!("{n} is too large for this machine")))
}

/// `path` made absolute against `base_dir` (absolute itself), without `.` components. `..` is
/// kept: removing it lexically would be wrong across symbolic links.
pub(super) fn resolve(base_dir: &Path, path: &str) -> PathBuf {
    let joined = base_dir.join(path);
    joined.components().filter(|c| *c != Component::CurDir).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregates_parse() {
        let sum = aggregate(" sum( value ) ").unwrap();
        assert_eq!(sum, AggregateSpec { function: AggregateFunction::Sum, field: Some("value".into()) });
        assert_eq!(
            aggregate("count").unwrap(),
            AggregateSpec { function: AggregateFunction::Count, field: None }
        );
        assert_eq!(aggregate("count()").unwrap().field, None);
        assert_eq!(
            aggregate("avg(value)").unwrap_err(),
            (
                "unknown aggregate function \"avg\", expected count, sum, min, max, mean, first or last"
                    .into(),
                None
            )
        );
        assert_eq!(aggregate("maxx(value)").unwrap_err().1, Some("max"));
        assert_eq!(aggregate("sum").unwrap_err().0, "\"sum\" needs a field, as in \"sum(value)\"");
        assert_eq!(aggregate("count(x)").unwrap_err().0, "\"count\" takes no field, found \"count(x)\"");
        assert_eq!(
            aggregate("sum(value").unwrap_err().0,
            "expected an aggregate such as \"count\" or \"sum(value)\", found \"sum(value\""
        );
    }

    #[test]
    fn paths_resolve_against_the_base() {
        let base = Path::new("/etc/weir");
        assert_eq!(resolve(base, "out/./x.csv"), Path::new("/etc/weir/out/x.csv"));
        assert_eq!(resolve(base, "/var/x"), Path::new("/var/x"));
        assert_eq!(resolve(base, "../x"), Path::new("/etc/weir/../x"));
    }
}
