//! The pipeline configuration: TOML in, a validated [`PipelineSpec`] out.
//!
//! [`parse`] turns config text into a spec in four steps, each in its own module; it is pure
//! (the environment comes as a lookup function) so that it can be fuzzed and embedded:
//!
//! 1. `interpolate`: `${VAR}`, `${VAR:-default}` and `$$` are replaced from the environment,
//!    line by line, so line numbers stay those of the file.
//! 2. `doc`: the text is parsed into toml's spanned tree, and read through typed accessors
//!    that know each key's path and line.
//! 3. `nodes`: every `[sources.*]`, `[transforms.*]` and `[sinks.*]` table is read on its own,
//!    in file order (this file reads the top-level settings and `[checkpoint]`).
//! 4. `graph`: inputs are resolved, cycles refused, nodes ordered, and schemas carried from
//!    the sources through each transform's operator (`operator`, the one call into
//!    `weir_runtime::operators`).
//!
//! [`load`], what `weir validate` and `weir run` call, reads the file, parses it, and then
//! (`host`) checks what can be checked on this machine without running: input files are
//! readable, the data directory is or can be made a writable directory, the log's map fits in
//! the address space, output files are not unexpected symbolic links. It creates nothing.
//!
//! Every user mistake is one [`ConfigError`], displayed as one line that names the key and its
//! line: `config: transforms.windows: unknown key "sise_ms" (line 14), did you mean "size_ms"?`.
//! Only the first mistake found is reported: tables are read in file order, and within a table
//! unknown keys come before missing or mistyped values (a misspelt key usually explains both);
//! wiring, cycles and schemas are checked once every table has been read, and the machine last.

mod doc;
mod graph;
mod host;
mod interpolate;
pub mod node;
mod nodes;
mod operator;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};

use weir_runtime::pipeline::spec::{
    AutoKeyOperator, CheckpointMode, CheckpointSpec, Failover, NodeKind, PipelineSpec, RecoveryStrategy,
    ReplicationSpec, RestartStrategy, StandbySpec, SupervisionSpec, TransformSpec, WindowKind,
};
use weir_runtime::protocol::driver::Mode;
use weir_runtime::protocol::replication::ReplicationMode;

use self::doc::{Doc, Item, Table};
use self::nodes::Section;

const DEFAULT_DATA_DIR: &str = "data";
const DEFAULT_MAP_SIZE_MB: u64 = 1024;
const DEFAULT_CHECKPOINT_INTERVAL_MS: u64 = 1000;
const DEFAULT_CHECKPOINT_TIMEOUT_MS: u64 = 60_000;
const TOP_LEVEL_KEYS: &[&str] = &[
    "data_dir",
    "map_size_mb",
    "checkpoint",
    "supervision",
    "recovery",
    "replication",
    "sources",
    "transforms",
    "sinks",
];
const REPLICATION_KEYS: &[&str] = &["mode", "max_lag", "failover"];
/// `[replication] max_lag` unless set: checkpoints an `async` peer may lack.
const DEFAULT_MAX_LAG: u64 = 10;
const CHECKPOINT_KEYS: &[&str] = &["interval_ms", "mode", "timeout_ms"];
const SUPERVISION_KEYS: &[&str] =
    &["strategy", "max_restarts", "within_ms", "backoff_initial_ms", "backoff_max_ms"];
const RECOVERY_KEYS: &[&str] =
    &["strategy", "buffer_mb", "key_operator", "progress_timeout_ms", "acceptable_lag_batches"];

/// A mistake in a config, or a setting this machine cannot honour; its `Display` is one line
/// starting with `config: ` (or with the flag it is about).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config: cannot read {}: {}", path.display(), io_reason(source))]
    Read { path: PathBuf, source: std::io::Error },
    /// A problem with a line as text: invalid TOML or a bad `${...}`.
    #[error("config: line {line}: {message}")]
    Line { line: usize, message: String },
    /// A problem with a key: `config: PATH: MESSAGE (line N)[, did you mean "HINT"?]`.
    #[error("config: {}", Keyed { path, message, line: *line, hint: hint.as_deref() })]
    Key { path: String, message: String, line: usize, hint: Option<String> },
    /// The nodes named form a cycle (the first one is repeated at the end). The mistake is in
    /// several lines at once, so the names are the location.
    #[error("config: cycle: {}", nodes.join(" -> "))]
    Cycle { nodes: Vec<String> },
    /// A problem with the pipeline as a whole, which no single line holds.
    #[error("config: {message}")]
    Pipeline { message: String },
    /// A problem with a value given by a command-line flag, such as `--data-dir`.
    #[error("{flag}: {message}")]
    Flag { flag: &'static str, message: String },
    /// A problem in another file than the one being read (the agent's `node.toml`).
    #[error("config: {}: {}", path.display(), error.to_string().trim_start_matches("config: "))]
    InFile { path: PathBuf, error: Box<ConfigError> },
}

impl ConfigError {
    /// A problem with the key at dotted `path` (empty for the document root), on `line`.
    fn at(path: &str, message: impl Into<String>, line: usize) -> ConfigError {
        ConfigError::Key { path: path.to_owned(), message: message.into(), line, hint: None }
    }

    /// `error`, found in the file at `path`.
    fn in_file(path: &Path, error: ConfigError) -> ConfigError {
        ConfigError::InFile { path: path.to_owned(), error: Box::new(error) }
    }

    /// Adds `did you mean "hint"?` to a [`ConfigError::Key`].
    fn with_hint(mut self, new: &str) -> ConfigError {
        if let ConfigError::Key { hint, .. } = &mut self {
            *hint = Some(new.to_owned());
        }
        self
    }
}

/// The text of a [`ConfigError::Key`].
struct Keyed<'e> {
    path: &'e str,
    message: &'e str,
    line: usize,
    hint: Option<&'e str>,
}

impl fmt::Display for Keyed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{} (line {})", self.message, self.line)?;
        if let Some(hint) = self.hint {
            write!(f, ", did you mean \"{hint}\"?")?;
        }
        Ok(())
    }
}

/// `No such file or directory`, without the ` (os error 2)` that `io::Error` appends.
fn io_reason(error: &std::io::Error) -> String {
    let text = error.to_string();
    match text.find(" (os error ") {
        Some(end) => text[..end].to_owned(),
        None => text,
    }
}

/// Reads and validates the pipeline config at `path`, then checks it against this machine
/// (`host`). Relative paths in it resolve against the file's folder; `data_dir_override` (from
/// `--data-dir` or `WEIR_DATA_DIR`) replaces `data_dir`. Variables come from the process
/// environment.
pub fn load(path: &Path, data_dir_override: Option<&Path>) -> Result<PipelineSpec, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    let base_dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let base_dir = absolute(base_dir)?;
    let (mut spec, mut sites) = read(&text, &base_dir, &|name| {
        std::env::var_os(name).map(|value| value.to_string_lossy().into_owned())
    })?;
    if let Some(dir) = data_dir_override {
        spec.data_dir = absolute(dir)?;
        sites.data_dir = DataDirFrom::Flag;
    }
    host::check(&spec, &sites)?;
    if let Some(sites) = &sites.replication {
        let node = node::load(&base_dir)?;
        spec.replication =
            Some(replication_against(spec.replication.take(), sites, node.as_ref(), &base_dir)?);
    }
    Ok(spec)
}

/// `[replication]` checked against the agent's `node.toml` beside the pipeline: there are
/// peers to replicate to, and automatic failover has a majority to decide with (two voters
/// cannot tell a dead peer from a cut link, so each would take over: split brain). An unset
/// `failover` is automatic when it can be (`"witness"` with a witness, `"auto"` with three or
/// more data agents), else `"manual"`.
fn replication_against(
    parsed: Option<ReplicationSpec>,
    sites: &ReplicationSites,
    node: Option<&node::NodeConfig>,
    dir: &Path,
) -> Result<ReplicationSpec, ConfigError> {
    let mut spec = parsed.expect("a [replication] table was read");
    let Some(node) = node else {
        return Err(ConfigError::at(
            "replication",
            format!(
                "needs the agent's settings in {} (name, listen, cert, key and [peers.NAME])",
                dir.join(node::FILE).display()
            ),
            sites.table,
        ));
    };
    let voters = node.voters();
    let count = voters.len();
    if node.data_peers().next().is_none() {
        let message = format!("node.toml names no data peer to replicate to (voters: {})", voters.join(", "));
        return Err(ConfigError::at("replication", message, sites.table));
    }
    let majority = count >= 3;
    match sites.failover {
        None => {
            spec.failover = match (majority, node.has_witness()) {
                (true, true) => Failover::Witness,
                (true, false) => Failover::Auto,
                (false, _) => Failover::Manual,
            }
        }
        Some(line) if spec.failover.automatic() && !majority => {
            let name = if spec.failover == Failover::Witness { "witness" } else { "auto" };
            return Err(ConfigError::at(
                "replication.failover",
                format!(
                    "failover = \"{name}\" needs three voters, node.toml has {count} ({}): two agents cannot tell a dead peer from a cut link and both would take over; add a witness ([peers.NAME] role = \"witness\", run by `weir witness`) or use failover = \"manual\"",
                    voters.join(", ")
                ),
                line,
            ));
        }
        Some(line) if spec.failover == Failover::Witness && !node.has_witness() => {
            return Err(ConfigError::at(
                "replication.failover",
                "failover = \"witness\" but node.toml has no peer with role = \"witness\" (use \"auto\" among three or more data agents)",
                line,
            ));
        }
        Some(_) => {}
    }
    Ok(spec)
}

/// Where `[replication]` and its `failover` were written.
#[derive(Debug)]
struct ReplicationSites {
    table: usize,
    failover: Option<usize>,
}

/// `[replication]`, before `node.toml` is read: `failover` is `Manual` unless set.
fn replication(table: &Table<'_>) -> Result<(ReplicationSpec, ReplicationSites), ConfigError> {
    table.deny_unknown_keys(REPLICATION_KEYS)?;
    #[derive(Clone, Copy, PartialEq)]
    enum Kind {
        Async,
        Received,
        Sync,
    }
    let kind = match table.get("mode") {
        Some(item) => {
            item.choice(&[("async", Kind::Async), ("received", Kind::Received), ("sync", Kind::Sync)])?
        }
        None => Kind::Sync,
    };
    let max_lag = match table.get("max_lag") {
        Some(item) if kind != Kind::Async => {
            return Err(item.error("max_lag applies to mode = \"async\" only (received and sync never lag)"));
        }
        Some(item) => item.int_between(1, 1_000_000)?,
        None => DEFAULT_MAX_LAG,
    };
    let mode = match kind {
        Kind::Async => ReplicationMode::Async { max_lag },
        Kind::Received => ReplicationMode::Received,
        Kind::Sync => ReplicationMode::Sync,
    };
    let failover_item = table.get("failover");
    let failover = match &failover_item {
        Some(item) => item.choice(&[
            ("manual", Failover::Manual),
            ("witness", Failover::Witness),
            ("auto", Failover::Auto),
        ])?,
        None => Failover::Manual,
    };
    let sites = ReplicationSites { table: table.line(), failover: failover_item.map(|i| i.line()) };
    Ok((ReplicationSpec { mode, failover }, sites))
}

/// Validates config `text` as if read from a file in `base_dir`, looking variables up with
/// `env`. Pure: no file, environment or clock is read, so it can be fuzzed and embedded.
/// Paths in the config resolve against `base_dir`, which should be absolute (a relative one
/// leaves them relative).
pub fn parse(
    text: &str,
    base_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<PipelineSpec, ConfigError> {
    read(text, base_dir, env).map(|(spec, _)| spec)
}

/// Where `data_dir` came from, which is where a problem with it is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DataDirFrom {
    /// Not set: `data` next to the config.
    Default,
    /// The `data_dir` key, on this line.
    Config(usize),
    /// `--data-dir` or `WEIR_DATA_DIR`.
    Flag,
}

/// Where the values that `host` checks were written, so that its errors name a key and a line.
#[derive(Debug)]
struct Sites {
    data_dir: DataDirFrom,
    /// The line of `map_size_mb`, if set.
    map_size_mb: Option<usize>,
    /// For each file source and file sink: its name, the dotted path of its `path` key and the
    /// line of the value.
    paths: Vec<(String, String, usize)>,
    /// `[replication]`, if the pipeline has it.
    replication: Option<ReplicationSites>,
}

/// [`parse`], also returning where the values [`host::check`] looks at were written.
fn read(
    text: &str,
    base_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(PipelineSpec, Sites), ConfigError> {
    let text = interpolate::interpolate(text, env)?;
    let doc = Doc::new(&text);
    let parsed = doc.parse(&text)?;
    let root = Table::root(&doc, parsed.get_ref());
    root.deny_unknown_keys(TOP_LEVEL_KEYS)?;

    let (data_dir, data_dir_from) = match root.get("data_dir") {
        Some(item) => (nodes::resolve(base_dir, item.non_empty_str()?), DataDirFrom::Config(item.line())),
        None => (nodes::resolve(base_dir, DEFAULT_DATA_DIR), DataDirFrom::Default),
    };
    let map_size_item = root.get("map_size_mb");
    let map_size = match &map_size_item {
        Some(item) => {
            let mb = item.positive()?;
            mb.checked_mul(1 << 20)
                .and_then(|bytes| usize::try_from(bytes).ok())
                .ok_or_else(|| item.error(format!("{mb} MiB is too large for this machine")))?
        }
        None => (DEFAULT_MAP_SIZE_MB << 20) as usize,
    };
    let checkpoint = match root.get("checkpoint") {
        Some(item) => checkpoint(&item.table()?)?,
        None => checkpoint_defaults(),
    };
    let mut supervision = match root.get("supervision") {
        Some(item) => supervision(&item.table()?)?,
        None => SupervisionSpec::default(),
    };
    let (replication, replication_sites) = match root.get("replication") {
        Some(item) => {
            let (spec, sites) = replication(&item.table()?)?;
            (Some(spec), Some(sites))
        }
        None => (None, None),
    };
    let mut standby = StandbySpec::default();
    let mut key_operator = None;
    if let Some(item) = root.get("recovery") {
        key_operator = recovery(&item.table()?, &mut supervision, &mut standby)?;
    }

    // Every node of the three sections, in file order, so the first mistake reported is the
    // first one in the file.
    let mut entries = Vec::new();
    for section in Section::ALL {
        if let Some(item) = root.get(section.key()) {
            entries.extend(item.table()?.items().into_iter().map(|node| (section, node)));
        }
    }
    entries.sort_by_key(|(_, node)| node.key_line());
    let mut drafts: Vec<nodes::Draft<'_>> = Vec::with_capacity(entries.len());
    for (section, item) in entries {
        if let Some(other) = drafts.iter().find(|d| d.name == item.key()) {
            return Err(ConfigError::at(
                &item.path(),
                format!("the name {:?} is already used by {}", item.key(), other.item.path()),
                item.key_line(),
            ));
        }
        drafts.push(nodes::read_node(section, item, base_dir)?);
    }
    for section in [Section::Source, Section::Sink] {
        if !drafts.iter().any(|d| d.section == section) {
            let message = format!("no {}: add at least one [{}.NAME] table", section.key(), section.key());
            return Err(ConfigError::Pipeline { message });
        }
    }
    let paths = drafts
        .iter()
        .filter(|d| d.has_path())
        .map(|d| (d.name.clone(), format!("{}.path", d.item.path()), d.item.line_of("path")))
        .collect();
    let sites = Sites {
        data_dir: data_dir_from,
        map_size_mb: map_size_item.map(|i| i.line()),
        paths,
        replication: replication_sites,
    };

    (standby.nodes, standby.auto) = standbys(key_operator, &drafts)?;
    let nodes = graph::assemble(drafts)?;
    Ok((PipelineSpec { data_dir, map_size, checkpoint, supervision, nodes, standby, replication }, sites))
}

/// `[supervision]`.
fn supervision(table: &Table<'_>) -> Result<SupervisionSpec, ConfigError> {
    table.deny_unknown_keys(SUPERVISION_KEYS)?;
    let defaults = SupervisionSpec::default();
    let max_restarts = match table.get("max_restarts") {
        Some(item) => item.int_between(0, 1000)? as u32,
        None => defaults.max_restarts,
    };
    let ms = |key: &str, default: u64| match table.get(key) {
        Some(item) => item.positive(),
        None => Ok(default),
    };
    let backoff_initial_ms = ms("backoff_initial_ms", defaults.backoff_initial_ms)?;
    let strategy = match table.get("strategy") {
        Some(item) => item.choice(&[
            ("one_for_one", RestartStrategy::OneForOne),
            ("rest_for_one", RestartStrategy::RestForOne),
            ("one_for_all", RestartStrategy::OneForAll),
        ])?,
        None => defaults.strategy,
    };
    Ok(SupervisionSpec {
        strategy,
        max_restarts,
        within_ms: ms("within_ms", defaults.within_ms)?,
        backoff_initial_ms,
        backoff_max_ms: ms("backoff_max_ms", defaults.backoff_max_ms.max(backoff_initial_ms))?,
        ..defaults
    })
}

/// `[recovery]`; returns its `key_operator`, resolved once the nodes are read.
fn recovery<'a>(
    table: &Table<'a>,
    spec: &mut SupervisionSpec,
    standby: &mut StandbySpec,
) -> Result<Option<Item<'a>>, ConfigError> {
    table.deny_unknown_keys(RECOVERY_KEYS)?;
    if let Some(item) = table.get("progress_timeout_ms") {
        standby.progress_timeout_ms = item.int_between(10, 3_600_000)?;
    }
    if let Some(item) = table.get("acceptable_lag_batches") {
        standby.acceptable_lag_batches = item.non_negative()?;
    }
    if let Some(item) = table.get("strategy") {
        spec.recovery =
            item.choice(&[("local", RecoveryStrategy::Local), ("global", RecoveryStrategy::Global)])?;
    }
    if let Some(item) = table.get("buffer_mb") {
        spec.buffer_bytes = (item.int_between(1, 1 << 20)? as usize) << 20;
    }
    Ok(table.get("key_operator"))
}

/// The transforms with a fixed standby, and `key_operator = "auto"`'s choice.
type Standbys = (Vec<(String, Mode)>, Option<AutoKeyOperator>);

/// The transforms with a standby (SPEC §11.8): `recovery.key_operator` names one, or `"auto"`
/// picks one (and the run may move it), or `"none"` (the default: a standby costs a core's
/// worth of work, so the person asks for it); each transform's `standby.mode` overrides
/// (`"off"`: none). Returns the fixed ones and `auto`'s choice.
fn standbys(key_operator: Option<Item<'_>>, drafts: &[nodes::Draft<'_>]) -> Result<Standbys, ConfigError> {
    let transforms: Vec<&nodes::Draft<'_>> =
        drafts.iter().filter(|d| d.section == Section::Transform).collect();
    let mut auto = None;
    let key = match &key_operator {
        None => None,
        Some(item) => match item.non_empty_str()? {
            "none" => None,
            "auto" => {
                let candidates: Vec<&nodes::Draft<'_>> =
                    transforms.iter().copied().filter(|d| d.standby.is_none()).collect();
                auto = auto_key_operator(&candidates).map(|first| AutoKeyOperator {
                    candidates: candidates.iter().map(|d| d.name.clone()).collect(),
                    first,
                });
                None
            }
            name => match transforms.iter().find(|d| d.name == name) {
                Some(d) => Some(d.name.clone()),
                None => {
                    let names = transforms.iter().map(|d| d.name.as_str());
                    let hint = match doc::closest(name, names) {
                        Some(near) => format!(" (did you mean {near:?}?)"),
                        None => " (\"auto\", \"none\" or the name of a transform)".to_owned(),
                    };
                    return Err(item.error(format!("{name:?} is not a transform{hint}")));
                }
            },
        },
    };
    let fixed = transforms
        .iter()
        .filter_map(|d| {
            let mode = match d.standby {
                Some(nodes::StandbyChoice::Hot) => Mode::Hot,
                Some(nodes::StandbyChoice::Warm) => Mode::Warm,
                Some(nodes::StandbyChoice::Off) => return None,
                None if key.as_deref() == Some(d.name.as_str()) => Mode::Hot,
                None => return None,
            };
            Some((d.name.clone(), mode))
        })
        .collect();
    Ok((fixed, auto))
}

/// `key_operator = "auto"`: the transform whose local restart would take longest, by the
/// state it keeps. Built so far: a static estimate from the config ([`state_weight`]); the
/// run does not yet re-evaluate it from measured restore and processing rates.
fn auto_key_operator(transforms: &[&nodes::Draft<'_>]) -> Option<String> {
    // The first of equals: `max_by_key` keeps the last, so walk backwards.
    transforms
        .iter()
        .rev()
        .filter_map(|d| match &d.kind {
            NodeKind::Transform(spec) => state_weight(spec).map(|w| (w, d)),
            _ => None,
        })
        .max_by_key(|(weight, _)| *weight)
        .map(|(_, d)| d.name.clone())
}

/// `weir validate --explain`: how each transform recovers from a failure, and where a
/// standby would pay.
pub fn explain(spec: &PipelineSpec) -> Vec<String> {
    let transforms: Vec<(&str, &TransformSpec)> = spec
        .nodes
        .iter()
        .filter_map(|n| match &n.kind {
            NodeKind::Transform(t) => Some((n.name.as_str(), t)),
            _ => None,
        })
        .collect();
    let auto = transforms
        .iter()
        .rev()
        .filter_map(|&(name, t)| state_weight(t).map(|w| (w, name)))
        .max_by_key(|(w, _)| *w)
        .map(|(_, name)| name);
    let mut lines = Vec::new();
    for &(name, t) in &transforms {
        let state = match t {
            TransformSpec::Window(w) => {
                let keyed = if w.key.is_some() { "per key" } else { "for one key" };
                format!("keeps its open windows {keyed}")
            }
            _ => "keeps no state".to_owned(),
        };
        let recovery = match spec.standby.mode(name) {
            Some(Mode::Hot) => {
                "a hot standby takes over (a role switch: output resumes in milliseconds)".to_owned()
            }
            Some(Mode::Warm) => {
                "a warm standby takes over (it applies the input since the last checkpoint first)".to_owned()
            }
            None => {
                "a failure restarts it locally: it restores its last snapshot and its upstream replays since"
                    .to_owned()
            }
        };
        let choice = if auto == Some(name) {
            "; key_operator = \"auto\" would choose it: its restart re-processes the most state"
        } else {
            ""
        };
        lines.push(format!("transforms.{name}: {state}; {recovery}{choice}"));
    }
    if spec.standby.nodes.is_empty()
        && spec.standby.auto.is_none()
        && let Some(name) = auto
    {
        lines.push(format!(
            "suggestion: [recovery] key_operator = \"{name}\" gives it a hot standby (it costs about one more core's work and as much memory again)"
        ));
    }
    lines
}

/// How much state a transform keeps, roughly (none: a filter or a map keeps none): a window
/// keeps its open windows, per key, for about their span of event time (a hopping window
/// `size_ms / hop_ms` of them at once).
pub(crate) fn state_weight(spec: &TransformSpec) -> Option<i128> {
    let TransformSpec::Window(w) = spec else { return None };
    let span = match w.kind {
        WindowKind::Tumbling { size_ms } => i128::from(size_ms),
        WindowKind::Hopping { size_ms, hop_ms } => i128::from(size_ms) * i128::from(size_ms / hop_ms.max(1)),
        WindowKind::Session { gap_ms } => i128::from(gap_ms),
    };
    Some(span * if w.key.is_some() { 1000 } else { 1 })
}

fn checkpoint_defaults() -> CheckpointSpec {
    CheckpointSpec {
        interval_ms: Some(DEFAULT_CHECKPOINT_INTERVAL_MS),
        mode: CheckpointMode::ExactlyOnce,
        timeout_ms: DEFAULT_CHECKPOINT_TIMEOUT_MS,
    }
}

/// `[checkpoint]`.
fn checkpoint(table: &Table<'_>) -> Result<CheckpointSpec, ConfigError> {
    table.deny_unknown_keys(CHECKPOINT_KEYS)?;
    let defaults = checkpoint_defaults();
    Ok(CheckpointSpec {
        interval_ms: match table.get("interval_ms") {
            Some(item) => Some(item.non_negative()?).filter(|&ms| ms > 0),
            None => defaults.interval_ms,
        },
        mode: match table.get("mode") {
            Some(item) => item.choice(&[
                ("exactly_once", CheckpointMode::ExactlyOnce),
                ("at_least_once", CheckpointMode::AtLeastOnce),
            ])?,
            None => defaults.mode,
        },
        timeout_ms: match table.get("timeout_ms") {
            Some(item) => item.positive()?,
            None => defaults.timeout_ms,
        },
    })
}

/// `path` made absolute against the working directory.
fn absolute(path: &Path) -> Result<PathBuf, ConfigError> {
    let path = if path.as_os_str().is_empty() { Path::new(".") } else { path };
    let absolute = std::path::absolute(path).map_err(|error| ConfigError::Pipeline {
        message: format!("cannot resolve {}: {}", path.display(), io_reason(&error)),
    })?;
    Ok(nodes::resolve(&absolute, ""))
}
