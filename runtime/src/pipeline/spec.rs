//! A pipeline as the runtime builds it: validated, with every name resolved and every path
//! absolute. The `weir` binary's config layer produces a [`PipelineSpec`] from TOML (and is
//! where every user mistake is reported); the runtime trusts it.

use std::path::PathBuf;

use crate::batch::{DataType, SchemaRef};

/// A whole pipeline.
#[derive(Clone, Debug, PartialEq)]
pub struct PipelineSpec {
    /// Where the LMDB log lives.
    pub data_dir: PathBuf,
    /// LMDB map size in bytes.
    pub map_size: usize,
    /// Checkpointing.
    pub checkpoint: CheckpointSpec,
    /// Restarts after a subtask fails.
    pub supervision: SupervisionSpec,
    /// Every node, sources first, each after all of its inputs (topological order).
    pub nodes: Vec<NodeSpec>,
    /// Which transforms a standby protects, and how (SPEC §11.8).
    pub standby: StandbySpec,
    /// `[replication]`: the pipeline is owned by one agent of several at a time and its
    /// completed checkpoints are shipped to the others (SPEC §12). None: this host alone.
    pub replication: Option<ReplicationSpec>,
}

/// `[replication]`, resolved against the agent's `node.toml`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicationSpec {
    /// When a checkpoint completes, relative to the peer.
    pub mode: crate::protocol::replication::ReplicationMode,
    /// Who decides that another agent takes the pipeline over.
    pub failover: Failover,
}

/// `[replication] failover`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failover {
    /// Only a person, with `weir promote PIPELINE` (the default with two voters).
    Manual,
    /// Automatic, with two data agents and a data-less witness as the third voter.
    Witness,
    /// Automatic, among three or more data agents.
    Auto,
}

impl Failover {
    /// Whether a surviving agent takes over without a person.
    pub fn automatic(self) -> bool {
        !matches!(self, Failover::Manual)
    }

    /// As the config writes it.
    pub fn name(self) -> &'static str {
        match self {
            Failover::Manual => "manual",
            Failover::Witness => "witness",
            Failover::Auto => "auto",
        }
    }
}

/// `[recovery] key_operator`, `progress_timeout_ms`, `acceptable_lag_batches` and
/// `[transforms.NAME.standby]`, resolved: the transforms that have a standby.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StandbySpec {
    /// Transform nodes with a standby (every subtask of each has one), and its mode: named by
    /// `key_operator` or by their own `standby.mode`.
    pub nodes: Vec<(String, crate::protocol::driver::Mode)>,
    /// `key_operator = "auto"`: the transforms it may choose (those without a `standby.mode`
    /// of their own) and its first choice, which the run moves as it measures.
    pub auto: Option<AutoKeyOperator>,
    /// A primary inside one handler for longer than this is taken over by its standby.
    pub progress_timeout_ms: u64,
    /// A standby more than this many shipped entries behind does not take over a failed
    /// primary (the primary restarts locally instead).
    pub acceptable_lag_batches: u64,
}

/// `key_operator = "auto"`, resolved against the transforms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutoKeyOperator {
    /// The transforms it may give a (hot) standby.
    pub candidates: Vec<String>,
    /// The one it gives it first, by a static estimate from the config.
    pub first: String,
}

impl Default for StandbySpec {
    fn default() -> StandbySpec {
        StandbySpec { nodes: Vec::new(), auto: None, progress_timeout_ms: 1000, acceptable_lag_batches: 100 }
    }
}

impl StandbySpec {
    /// The standby mode node `name` starts with, if it has one.
    pub fn mode(&self, name: &str) -> Option<crate::protocol::driver::Mode> {
        match self.nodes.iter().find(|(n, _)| n == name) {
            Some(&(_, mode)) => Some(mode),
            None => {
                self.auto.as_ref().filter(|a| a.first == name).map(|_| crate::protocol::driver::Mode::Hot)
            }
        }
    }

    /// Whether `key_operator = "auto"` may give node `name` a standby.
    pub fn auto_candidate(&self, name: &str) -> bool {
        self.auto.as_ref().is_some_and(|a| a.candidates.iter().any(|c| c == name))
    }
}

/// `[checkpoint]`.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointSpec {
    /// Milliseconds between checkpoints; `None` disables periodic checkpoints (the final
    /// checkpoint at end of input still commits the output).
    pub interval_ms: Option<u64>,
    /// Exactly-once (aligned) or at-least-once.
    pub mode: CheckpointMode,
    /// A checkpoint not complete after this many milliseconds is aborted.
    pub timeout_ms: u64,
}

/// `[supervision]` (which subtasks restart, how often) and `[recovery]` (how a restarted
/// subtask gets its state back).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SupervisionSpec {
    /// `supervision.strategy`: which subtasks restart when one fails.
    pub strategy: RestartStrategy,
    /// `recovery.strategy`: local recovery (restore the restarted subtasks alone, replay
    /// from upstream buffer queues) or a global rollback of the whole pipeline.
    pub recovery: RecoveryStrategy,
    /// `recovery.buffer_mb`: bytes each subtask's buffer queues may hold; past it, until
    /// the next checkpoint completes, a failure downstream is healed globally.
    pub buffer_bytes: usize,
    /// At most this many restarts within `within_ms`; one more escalates (the run stops
    /// with an error). Restarts older than `within_ms` no longer count: a healthy period
    /// resets the count.
    pub max_restarts: u32,
    /// The intensity window.
    pub within_ms: u64,
    /// First backoff before a restart; doubled for each restart in the window, with jitter.
    pub backoff_initial_ms: u64,
    /// Largest backoff.
    pub backoff_max_ms: u64,
}

impl Default for SupervisionSpec {
    fn default() -> SupervisionSpec {
        SupervisionSpec {
            strategy: RestartStrategy::OneForOne,
            recovery: RecoveryStrategy::Local,
            buffer_bytes: 64 << 20,
            max_restarts: 3,
            within_ms: 60_000,
            backoff_initial_ms: 100,
            backoff_max_ms: 10_000,
        }
    }
}

/// `supervision.strategy` (OTP's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartStrategy {
    /// `"one_for_one"`: only the failed subtask.
    OneForOne,
    /// `"rest_for_one"`: the failed subtask and every subtask downstream of it.
    RestForOne,
    /// `"one_for_all"`: every subtask (a global rollback).
    OneForAll,
}

/// `recovery.strategy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryStrategy {
    /// `"local"`: restarted subtasks restore their own snapshots; upstream replays.
    Local,
    /// `"global"`: every failure rolls the whole pipeline back.
    Global,
}

/// `checkpoint.mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointMode {
    /// `"exactly_once"`.
    ExactlyOnce,
    /// `"at_least_once"`.
    AtLeastOnce,
}

/// One node of the pipeline.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSpec {
    /// Its name (the key under `sources`, `transforms` or `sinks`).
    pub name: String,
    /// Names of the nodes it reads from (empty for sources).
    pub inputs: Vec<String>,
    /// Number of parallel subtasks.
    pub parallelism: usize,
    /// What it is.
    pub kind: NodeKind,
}

/// What a node is.
#[derive(Clone, Debug, PartialEq)]
pub enum NodeKind {
    /// A source.
    Source(SourceSpec),
    /// A transform.
    Transform(TransformSpec),
    /// A sink.
    Sink(SinkSpec),
}

/// `sources.NAME`.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceSpec {
    /// `type = "generator"`.
    Generator(GeneratorSpec),
    /// `type = "file"`.
    File(FileSourceSpec),
    /// `type = "mqtt"`.
    Mqtt(MqttSourceSpec),
}

/// `type = "mqtt"` source: topic filters on a broker, QoS 1, a persistent session, each
/// message durable in the source's write-ahead log before the broker is told.
#[derive(Clone, Debug, PartialEq)]
pub struct MqttSourceSpec {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Topic filters (`weir/in/#`).
    pub topics: Vec<String>,
    /// The client id (the session); per subtask, `-S` is appended.
    pub client_id: String,
    /// How a payload becomes a record.
    pub format: PayloadFormat,
    /// The record's fields: the payload's, then `topic_field`, then `arrival_field`.
    pub schema: SchemaRef,
    /// The payload's fields (a prefix of `schema`).
    pub payload_fields: usize,
    /// A string field for the message's topic.
    pub topic_field: Option<String>,
    /// An int field for its arrival time (milliseconds since the Unix epoch).
    pub arrival_field: Option<String>,
    /// Payload fields whose values identify a message: a redelivered one is recognised.
    pub dedup_key: Vec<String>,
    /// How long a dedup key is remembered, in milliseconds.
    pub dedup_retention_ms: u64,
    /// Records per batch.
    pub batch_size: usize,
    /// The broker's keep-alive, in seconds.
    pub keep_alive_s: u64,
    /// Messages the broker may send before we acknowledge (ask the broker for as many:
    /// mosquitto's `max_inflight_messages`).
    pub max_inflight: u16,
    /// `idle_timeout_ms` and `time_field`: after this long without a message, event time
    /// advances with the clock from the largest `time_field` seen (an idle tick in the WAL),
    /// so that windows downstream close although the topic is silent.
    pub idle: Option<(u64, String)>,
}

/// How an MQTT payload becomes a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadFormat {
    /// One JSON object.
    Json,
    /// One CSV record, its fields in schema order.
    Csv,
    /// The payload as a UTF-8 string field `payload`.
    Raw,
}

/// `type = "generator"`, `shape = "sensors"`: the formula of the sensor-window workload.
#[derive(Clone, Debug, PartialEq)]
pub struct GeneratorSpec {
    /// Readings to generate.
    pub records: u64,
    /// Distinct sensors (default 1000).
    pub sensors: u64,
    /// Optional rate limit in readings per second.
    pub rate: Option<u64>,
    /// Readings per batch.
    pub batch_size: usize,
}

/// `type = "file"` source.
#[derive(Clone, Debug, PartialEq)]
pub struct FileSourceSpec {
    /// Absolute path.
    pub path: PathBuf,
    /// `format`.
    pub format: FileFormat,
    /// Declared fields (`schema = { name = "type", ... }`), in declaration order.
    pub schema: SchemaRef,
    /// Records per batch.
    pub batch_size: usize,
}

/// A file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileFormat {
    /// `"json"`: one JSON object per line.
    JsonLines,
    /// `"csv"`: comma-separated, no header, fields in schema order.
    Csv,
}

/// `transforms.NAME`.
#[derive(Clone, Debug, PartialEq)]
pub enum TransformSpec {
    /// `type = "filter"`, `condition = "..."`.
    Filter {
        /// The expression.
        condition: String,
    },
    /// `type = "map"`.
    Map(MapSpec),
    /// `type = "window"`.
    Window(WindowSpec),
}

/// `type = "map"`: applied in this order: `select` (if given, keep only these), `drop`,
/// `rename`, then `compute` (new or replaced fields from expressions over the input record).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct MapSpec {
    /// Fields to keep, in this order; `None` keeps all.
    pub select: Option<Vec<String>>,
    /// Fields to drop.
    pub drop: Vec<String>,
    /// `(old, new)` names.
    pub rename: Vec<(String, String)>,
    /// `(name, expression)`, in declaration order.
    pub compute: Vec<(String, String)>,
}

/// `type = "window"`.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowSpec {
    /// Key field (`key`); `None` means one global key.
    pub key: Option<String>,
    /// Event-time field (`time_field`), an int of milliseconds.
    pub time_field: String,
    /// Window kind and sizes.
    pub kind: WindowKind,
    /// Bounded out-of-orderness (`max_out_of_order_ms`).
    pub max_out_of_order_ms: i64,
    /// Aggregates, in output order.
    pub aggregates: Vec<AggregateSpec>,
}

/// `kind` with its sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowKind {
    /// `kind = "tumbling"`, `size_ms`.
    Tumbling {
        /// Window length.
        size_ms: i64,
    },
    /// `kind = "hopping"`, `size_ms`, `hop_ms`.
    Hopping {
        /// Window length.
        size_ms: i64,
        /// Distance between window starts.
        hop_ms: i64,
    },
    /// `kind = "session"`, `gap_ms`.
    Session {
        /// A gap longer than this closes the session.
        gap_ms: i64,
    },
}

/// One aggregate, e.g. `"sum(value)"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AggregateSpec {
    /// The function.
    pub function: AggregateFunction,
    /// The field it reads (`None` for `count`).
    pub field: Option<String>,
}

/// An aggregate function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AggregateFunction {
    /// `count`: records in the window (int).
    Count,
    /// `sum(f)`: float for float fields, int for int fields.
    Sum,
    /// `min(f)`.
    Min,
    /// `max(f)`.
    Max,
    /// `mean(f)`: float.
    Mean,
    /// `first(f)`: the value of the first record in arrival order.
    First,
    /// `last(f)`: the value of the last record in arrival order.
    Last,
}

/// `sinks.NAME`.
#[derive(Clone, Debug, PartialEq)]
pub enum SinkSpec {
    /// `type = "file"`: committed output only, exactly once.
    File {
        /// Absolute path.
        path: PathBuf,
        /// Line format.
        format: OutputFormat,
        /// `allow_symlink`: whether `path` may be a symbolic link (its last component; the
        /// folders above it may always be links). Off by default, so that a link planted at the
        /// output path cannot redirect the output onto another file.
        allow_symlink: bool,
        /// `mode`: the permission bits the file is created with, exactly (the umask does not
        /// apply); an existing file keeps its own. [`DEFAULT_OUTPUT_MODE`] unless set.
        mode: u32,
    },
    /// `type = "stdout"`.
    Stdout {
        /// Line format.
        format: OutputFormat,
    },
    /// `type = "mqtt"`: committed output through an LMDB outbox to a broker, QoS 1.
    Mqtt(MqttSinkSpec),
}

/// `type = "mqtt"` sink: each committed row one message (a JSON object) on `topic`, QoS 1,
/// from the sink's outbox, with the de-duplication key as MQTT 5 user properties.
#[derive(Clone, Debug, PartialEq)]
pub struct MqttSinkSpec {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// The topic every message goes to.
    pub topic: String,
    /// The client id; empty: derived from the node and the data directory.
    pub client_id: String,
    /// The `pipeline` user property of every message, the subtask's index appended; empty:
    /// the client id. A replicated pipeline's agents each connect with a client id of their
    /// own and set the same stream here (`PIPELINE/NODE`), so that a consumer's
    /// de-duplication key is the same whichever agent published a message.
    pub stream: String,
    /// How a row is written (JSON).
    pub format: OutputFormat,
    /// The broker's keep-alive, in seconds.
    pub keep_alive_s: u64,
    /// Messages sent and not yet acknowledged, at most.
    pub max_inflight: u16,
    /// The outbox's size limit in bytes of messages.
    pub max_outbox_bytes: u64,
    /// What a commit does when the outbox is at its limit.
    pub on_full: OnFull,
    /// The largest message (packet) the broker takes, in bytes.
    pub max_packet_size: u32,
    /// With messages in flight and no acknowledgement for this long, reconnect.
    pub progress_timeout_ms: u64,
}

/// `on_full`: what an MQTT sink does while its outbox is at `max_outbox_mb`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFull {
    /// The sources stop reading until the outbox drains: the pipeline slows, nothing is lost.
    Backpressure,
    /// The oldest committed output is dropped (and counted) to make room.
    DropOldest,
    /// The new committed output is dropped (and counted).
    RejectNew,
}

/// The permission bits of a file sink's output unless its `mode` says otherwise: `rw-r--r--`.
pub const DEFAULT_OUTPUT_MODE: u32 = 0o644;

/// How a sink writes records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputFormat {
    /// CSV (fields in schema order, no header) or JSON lines.
    pub encoding: FileFormat,
    /// Decimals for floats (`float_precision`); `None` writes the shortest exact form.
    pub float_precision: Option<usize>,
}

/// The type of `data_type`'s values after an aggregate; used by the config layer's checks.
pub fn aggregate_output_type(function: AggregateFunction, input: Option<DataType>) -> Option<DataType> {
    use AggregateFunction::*;
    match (function, input) {
        (Count, _) => Some(DataType::Int),
        (Mean, Some(DataType::Int | DataType::Float)) => Some(DataType::Float),
        (Sum, Some(t @ (DataType::Int | DataType::Float))) => Some(t),
        (Min | Max, Some(t @ (DataType::Int | DataType::Float | DataType::Str))) => Some(t),
        (First | Last, Some(t)) => Some(t),
        _ => None,
    }
}

/// The schema of the `generator` source with `shape = "sensors"`: `sensor` (string), `ts`
/// (int, event time in ms), `value` (float).
pub fn sensors_schema() -> SchemaRef {
    use crate::batch::{Field, Schema};
    std::sync::Arc::new(Schema::new(vec![
        Field::new("sensor", DataType::Str),
        Field::new("ts", DataType::Int),
        Field::new("value", DataType::Float),
    ]))
}
