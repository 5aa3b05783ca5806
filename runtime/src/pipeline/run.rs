//! Running a pipeline: recover from the log, build one actor per subtask, wire the channels,
//! run until the final checkpoint's output is committed, and report.
//!
//! Start-up is a global rollback (SPEC §7): the plan from `plan_global_rollback` over what
//! the log holds says which checkpoint every subtask restores; the discards happen durably
//! before any actor starts, and a sink whose staged output up to the restore point was not
//! yet visible commits it first. A fresh data directory simply restores nothing.
//!
//! A [`StopRequest`] (SIGTERM) ends the run early at a completed checkpoint (SPEC §6.7); one
//! made during a global rollback ends it at once at the restore point, without restarting.

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::Serialize;

use crate::actors::coordinator::{self, CoordinatorActor};
pub use crate::actors::shared::StopRequest;
use crate::actors::shared::{CheckpointTiming, CoordinatorShared};
use crate::actors::source::{self, SourceActor, check_source_record};
use crate::actors::task::{self, Body, FailoverPlan, Restored, SinkWriter, TaskActor};
use crate::actors::{
    Counters, Failure, FailureReason, Fatal, Link, Links, OutGroup, Payload, SubtaskContext, TaskSlot, To,
    ToCoordinator, Upstream, Watch,
};
use crate::batch::SchemaRef;
use crate::connectors::file_source::FileSource;
use crate::connectors::generator::Generator;
use crate::connectors::mqtt::{Ingest, MqttReader, Wal};
use crate::connectors::mqtt_sink::{Hold, Outbox, Publisher};
use crate::connectors::{Share, SourceReader};
use crate::log::{Log, LogError, SnapshotRecord, Writer};
use crate::operators;
use crate::pipeline::faults::Injection;
use crate::pipeline::fingerprint;
use crate::pipeline::keyop::Chooser;
use crate::pipeline::live::{Live, Phase};
use crate::pipeline::plan::Plan;
use crate::pipeline::spec::{
    CheckpointMode, NodeKind, NodeSpec, PipelineSpec, RecoveryStrategy, SinkSpec, SourceSpec,
};
pub use crate::pipeline::supervise::RestartReport;
use crate::pipeline::supervise::Supervisor;
use crate::protocol::aligner::AlignmentMode;
use crate::protocol::coordinator::{Coordinator, CoordinatorConfig};
use crate::protocol::driver::{Epoch, Mode, Subtask as Driver};
use crate::protocol::participant::{Task, TaskConfig};
use crate::protocol::recovery::{RecoveryError, RestorePlan, plan_global_rollback};
use crate::protocol::route;
use crate::protocol::{CheckpointId, ParticipantId, Seq};
use crate::sync::Arc;
use crate::sync::atomic::Ordering;

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The log holds no consistent restore point.
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
    /// Failures came faster than `[supervision]` allows; the report says what happened.
    #[error("{message}")]
    Escalated {
        /// One line: who failed, how often, the last failure.
        message: String,
        /// The run so far.
        report: Box<RunReport>,
    },
    /// A subtask could not be built or restored.
    #[error("{0}")]
    Build(String),
    /// A subtask failed while running.
    #[error("{0}")]
    Failed(String),
}

/// Records through one node.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct NodeReport {
    /// The node.
    pub name: String,
    /// Records received (sources: 0).
    pub records_in: u64,
    /// Records sent (sinks: written).
    pub records_out: u64,
}

/// A completed checkpoint.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CheckpointReport {
    /// Its id.
    pub id: u64,
    /// From trigger to durable completion record.
    pub duration_ms: u64,
    /// When it completed, in milliseconds since the run started.
    pub completed_ms: u64,
}

/// What a run did (`weir run --report FILE` writes it as JSON).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RunReport {
    /// Per node, in pipeline order.
    pub nodes: Vec<NodeReport>,
    /// Checkpoints completed in this run.
    pub checkpoints: Vec<CheckpointReport>,
    /// Restarts by the supervisor, in order.
    pub restarts: Vec<RestartReport>,
    /// Why the supervisor gave up, if it did (the run then failed).
    pub escalation: Option<String>,
    /// The checkpoint this run restored, if it resumed after a stop or crash.
    pub restored_from: Option<u64>,
    /// Why the run stopped before its input ended (`SIGTERM`, `SIGINT`), if it did.
    pub stopped: Option<String>,
    /// The completed checkpoint a stopped run ends at (a rerun resumes from it); none if no
    /// checkpoint ever completed.
    pub stopped_at: Option<u64>,
    /// Every `--inject` fault, and whether it fired.
    pub injections: Vec<InjectionReport>,
    /// Per transform subtask, its estimated recovery time from what the last attempt
    /// measured, and its standby at the end (issue 11, `key_operator`).
    pub recovery_estimates: Vec<crate::pipeline::keyop::Estimate>,
    /// Wall time of the run in milliseconds.
    pub wall_ms: u64,
}

/// An injected fault (`weir run --inject`).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct InjectionReport {
    /// As given on the command line.
    pub fault: String,
    /// Whether it fired; one that did not tested nothing.
    pub fired: bool,
}

/// A live view for progress displays.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// Records read by all sources so far in this run.
    pub records: u64,
    /// Since the run started.
    pub elapsed: Duration,
    /// The latest completed checkpoint (0 for none).
    pub last_checkpoint: u64,
}

/// Called about once a second while the pipeline runs.
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// Who watches a run while it runs: a progress display, and the live figures `weir agent`
/// serves.
#[derive(Clone, Default)]
pub struct Observe {
    /// Called about once a second.
    pub progress: Option<ProgressFn>,
    /// Kept up to date by the run.
    pub live: Option<Arc<Live>>,
    /// Told of every batch the log's writer commits, and asked before every sink releases
    /// output: replication to another agent and the owner's self-fence
    /// ([`crate::log::ship`]).
    pub tap: Option<Arc<dyn crate::log::ship::Tap>>,
}

fn reader(spec: &SourceSpec, share: Share, wal: Option<&Arc<Wal>>) -> Box<dyn SourceReader> {
    match spec {
        SourceSpec::Generator(g) => Box::new(Generator::new(g, share)),
        SourceSpec::File(f) => Box::new(FileSource::new(f, share)),
        SourceSpec::Mqtt(m) => Box::new(MqttReader::new("mqtt", m, wal.cloned())),
    }
}

/// Per participant, its write-ahead log (an MQTT source's).
type Wals = Vec<Option<Arc<Wal>>>;

/// A run's network connectors: per participant, an MQTT source's write-ahead log or an MQTT
/// sink's outbox; the pipeline's backpressure; and their threads, which run for the whole
/// run (across global rollbacks) and stop when dropped.
struct Connectors {
    wals: Wals,
    outboxes: Vec<Option<Arc<Outbox>>>,
    hold: std::sync::Arc<Hold>,
    _ingests: Vec<Ingest>,
    _publishers: Vec<Publisher>,
}

/// A client id stable for this data directory (a session belongs with its log): `weir-`,
/// the node, a hash of the directory, the subtask.
fn default_client_id(spec: &PipelineSpec, node: &str, index: usize) -> String {
    let dir = std::path::absolute(&spec.data_dir).unwrap_or(spec.data_dir.clone());
    format!("weir-{node}-{:08x}-{index}", crc32c::crc32c(dir.as_os_str().as_encoded_bytes()))
}

fn start_connectors(spec: &PipelineSpec, log: &Log, writer: &Writer) -> Result<Connectors, RunError> {
    let topology = Plan::new(spec, 1);
    let n = topology.subtasks.len();
    let hold = std::sync::Arc::new(Hold::default());
    let mut connectors = Connectors {
        wals: vec![None; n],
        outboxes: vec![None; n],
        hold,
        _ingests: Vec::new(),
        _publishers: Vec::new(),
    };
    for (p, s) in topology.subtasks.iter().enumerate() {
        let node = &spec.nodes[s.node];
        match &node.kind {
            NodeKind::Source(SourceSpec::Mqtt(m)) => {
                let wal = Wal::open(log, writer, p, m.dedup_retention_ms)
                    .map_err(|e| RunError::Build(format!("{}: {e}", node.name)))?;
                let client_id = if m.client_id.is_empty() {
                    default_client_id(spec, &node.name, s.index)
                } else {
                    format!("{}-{}", m.client_id, s.index)
                };
                connectors._ingests.push(Ingest::start(m, client_id, wal.clone()));
                connectors.wals[p] = Some(wal);
            }
            NodeKind::Sink(SinkSpec::Mqtt(m)) => {
                let outbox = Outbox::open(log, writer, p, &node.name, m, connectors.hold.clone())
                    .map_err(|e| RunError::Build(format!("{}: {e}", node.name)))?;
                let client_id = if m.client_id.is_empty() {
                    default_client_id(spec, &node.name, s.index)
                } else {
                    m.client_id.clone()
                };
                let stream =
                    if m.stream.is_empty() { client_id.clone() } else { format!("{}/{}", m.stream, s.index) };
                connectors._publishers.push(Publisher::start(m, client_id, stream, outbox.clone()));
                connectors.outboxes[p] = Some(outbox);
            }
            _ => {}
        }
    }
    Ok(connectors)
}

/// What one attempt did.
struct Attempt {
    nodes: Vec<NodeReport>,
    checkpoints: Vec<CheckpointReport>,
    restored_from: Option<u64>,
    /// When its actors were all started.
    running_at: Instant,
    /// Set when it stopped for a global rollback: node, subtask, reason, message, when.
    failure: Option<(String, usize, FailureReason, String, Instant)>,
    /// Set when a requested stop ended it at this checkpoint.
    stopped_at: Option<u64>,
    /// Its transform subtasks' estimated recovery times.
    estimates: Vec<crate::pipeline::keyop::Estimate>,
}

/// Before the first run of a pipeline whose log was shipped from another agent (a
/// takeover, SPEC §12.2): its file sinks continue their own output files here, from their
/// current length, instead of expecting the old owner's lengths. Returns how many it rebased.
pub fn adopt(spec: &PipelineSpec) -> Result<usize, RunError> {
    let log = Log::open(&spec.data_dir, spec.map_size)?;
    let plan = Plan::new(spec, 1);
    let files: Vec<(usize, &std::path::Path)> = plan
        .sinks
        .iter()
        .filter_map(|&p| match &spec.nodes[plan.subtasks[p].node].kind {
            NodeKind::Sink(crate::pipeline::spec::SinkSpec::File { path, .. }) => Some((p, path.as_path())),
            _ => None,
        })
        .collect();
    Ok(log.rebase_file_sinks(&files)?)
}

/// Record, through the (tapped) writer, that the checkpoints from the next one on are the
/// run's under ownership `epoch` (none if the log says so already).
fn record_owner(log: &Log, writer: &Writer, epoch: u64) -> Result<(), RunError> {
    let from = CheckpointId(log.completed()?.map_or(0, |c| c.0) + 1);
    if log.owner_epoch(from)? == Some(epoch) {
        return Ok(());
    }
    let (tx, rx) = std::sync::mpsc::channel();
    writer.submit(
        vec![crate::log::WriteOp::Owner { from, epoch }],
        Box::new(move |result| {
            let _ = tx.send(result);
        }),
    );
    match rx.recv() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(RunError::Failed(format!("recording ownership epoch {epoch}: {e}"))),
        Err(_) => Err(RunError::Log(LogError::WriterGone)),
    }
}

/// Run `spec` until its sources are exhausted and all output is committed, or until `stop`
/// is requested. A panic in operator code restarts the pipeline from the last completed
/// checkpoint (a global rollback inside this process), within the restart intensity of
/// `spec.supervision`.
///
/// `fresh` removes what the data directory holds first (`weir run --fresh`): the run starts
/// from the beginning of its input and the file sinks write their output anew.
pub fn run(
    spec: &PipelineSpec,
    observe: &Observe,
    faults: &[Arc<Injection>],
    stop: &Arc<StopRequest>,
    fresh: bool,
) -> Result<RunReport, RunError> {
    let started = Instant::now();
    let log = Log::open_with(&spec.data_dir, spec.map_size, fresh)?;
    log.claim(&fingerprint::settings(spec))?;
    let writer = Writer::start_tapped(log.clone(), observe.tap.clone());
    if let Some(epoch) = observe.tap.as_ref().and_then(|tap| tap.owner_epoch()) {
        record_owner(&log, &writer, epoch)?;
    }
    let connectors = start_connectors(spec, &log, &writer)?;
    if let Some(live) = &observe.live {
        live.set_usage(log.usage());
        let topology = Plan::new(spec, 1);
        let name = |p: usize| spec.nodes[topology.subtasks[p].node].name.clone();
        let wals = connectors.wals.iter().enumerate().filter_map(|(p, w)| Some((name(p), w.clone()?)));
        live.set_mqtt(wals.collect());
        let outboxes =
            connectors.outboxes.iter().enumerate().filter_map(|(p, o)| Some((name(p), o.clone()?)));
        live.set_outboxes(outboxes.collect());
    }
    let supervision = spec.supervision;
    let mut report = RunReport {
        nodes: spec
            .nodes
            .iter()
            .map(|n| NodeReport { name: n.name.clone(), records_in: 0, records_out: 0 })
            .collect(),
        checkpoints: Vec::new(),
        restarts: Vec::new(),
        escalation: None,
        restored_from: None,
        stopped: None,
        stopped_at: None,
        injections: Vec::new(),
        recovery_estimates: Vec::new(),
        wall_ms: 0,
    };
    let supervisor = Arc::new(supervisor_for(spec, started));
    if let Some(live) = &observe.live {
        let topology = Plan::new(spec, 1);
        let names = topology.subtasks.iter().map(|s| {
            let node = &spec.nodes[s.node];
            let kind = match node.kind {
                NodeKind::Source(_) => "source",
                NodeKind::Transform(_) => "transform",
                NodeKind::Sink(_) => "sink",
            };
            (node.name.clone(), s.index, kind)
        });
        live.begin(names.collect(), supervisor.clone(), started);
    }
    let mut pending: Option<(RestartReport, Instant)> = None;
    let mut first = true;
    loop {
        let attempt =
            attempt(spec, (&log, &connectors), &writer, observe, faults, started, &supervisor, stop)?;
        if first {
            report.restored_from = attempt.restored_from;
            first = false;
        }
        for (total, part) in report.nodes.iter_mut().zip(&attempt.nodes) {
            total.records_in += part.records_in;
            total.records_out += part.records_out;
        }
        report.checkpoints.extend(attempt.checkpoints);
        report.recovery_estimates = attempt.estimates;
        if let Some((mut restart, at)) = pending.take() {
            restart.duration_ms = attempt.running_at.duration_since(at).as_millis() as u64;
            restart.restored_from = attempt.restored_from;
            supervisor.record(restart);
        }
        let Some((node, subtask, reason, message, at)) = attempt.failure else {
            if attempt.stopped_at.is_some() {
                report.stopped = stop.reason();
                report.stopped_at = attempt.stopped_at;
            }
            if attempt.stopped_at.is_none() {
                // Finished: every committed row is in an outbox; wait until the broker has
                // them all (or a stop), so that "finished" means delivered.
                for outbox in connectors.outboxes.iter().flatten() {
                    while outbox.chunks() > 0 && !stop.wait(Duration::from_millis(20)) {}
                }
            }
            let phase = if attempt.stopped_at.is_some() { Phase::Stopped } else { Phase::Finished };
            observe.live.iter().for_each(|live| live.set_phase(phase));
            return Ok(finish(report, &supervisor, faults, started));
        };
        if stop.reason().is_some() {
            tracing::warn!("{node}/{subtask} failed ({reason}: {message}); stopping as requested");
            observe.live.iter().for_each(|live| live.set_phase(Phase::Stopped));
            return Ok(stopped_in_rollback(report, stop, &supervisor, faults, started));
        }
        observe.live.iter().for_each(|live| live.restarting());
        let Some(backoff) = supervisor.admit_global(at) else {
            let message = format!(
                "supervision: {node}/{subtask} failed after {} global rollback(s) within {} ms (max_restarts = {}), giving up; last failure ({reason}): {message}",
                supervisor.recent_global(at),
                supervision.within_ms,
                supervision.max_restarts
            );
            tracing::error!("{message}");
            report.escalation = Some(message.clone());
            let report = finish(report, &supervisor, faults, started);
            return Err(RunError::Escalated { message, report: Box::new(report) });
        };
        tracing::warn!(
            "{node}/{subtask} failed ({reason}: {message}); rolling the pipeline back in {} ms",
            backoff.as_millis()
        );
        if stop.wait(backoff) {
            observe.live.iter().for_each(|live| live.set_phase(Phase::Stopped));
            return Ok(stopped_in_rollback(report, stop, &supervisor, faults, started));
        }
        let restart = RestartReport {
            node,
            subtask,
            reason,
            recovery: "global".into(),
            restarted: vec!["*".into()],
            message,
            at_ms: supervisor.since_start(at),
            duration_ms: 0,
            restored_from: None,
            caught_up_ms: None,
            epoch: None,
            output_gap_ms: None,
            reprotected_ms: None,
        };
        pending = Some((restart, at));
    }
}

/// The report's closing fields.
fn finish(
    mut report: RunReport,
    supervisor: &Supervisor,
    faults: &[Arc<Injection>],
    started: Instant,
) -> RunReport {
    report.restarts = supervisor.reports();
    report.injections =
        faults.iter().map(|f| InjectionReport { fault: f.text.clone(), fired: f.fired() }).collect();
    report.wall_ms = started.elapsed().as_millis() as u64;
    report
}

/// A stop requested between attempts: the log is at the restore point the next attempt
/// would roll back to, the latest completed checkpoint, so the run ends there.
fn stopped_in_rollback(
    mut report: RunReport,
    stop: &StopRequest,
    supervisor: &Supervisor,
    faults: &[Arc<Injection>],
    started: Instant,
) -> RunReport {
    report.stopped = stop.reason();
    report.stopped_at = report.checkpoints.iter().map(|c| c.id).chain(report.restored_from).max();
    finish(report, supervisor, faults, started)
}

/// The supervisor of a run: which subtasks are downstream of which (for `rest_for_one`), and
/// which can restart alone (transforms and sinks).
fn supervisor_for(spec: &PipelineSpec, started: Instant) -> Supervisor {
    let topology = Plan::new(spec, 1);
    let (mut names, mut local) = (Vec::new(), Vec::new());
    for s in &topology.subtasks {
        let node = &spec.nodes[s.node];
        names.push(format!("{}/{}", node.name, s.index));
        local.push(!matches!(node.kind, NodeKind::Source(_)));
    }
    Supervisor::new(spec.supervision, started, topology.downstream, local, names)
}

fn node_index(spec: &PipelineSpec, name: &str) -> usize {
    spec.nodes.iter().position(|n| n.name == name).expect("inputs were resolved")
}

/// Each node's output schema, in pipeline order.
fn output_schemas(spec: &PipelineSpec) -> Result<Vec<SchemaRef>, RunError> {
    let mut schemas: Vec<SchemaRef> = Vec::new();
    for node in &spec.nodes {
        let schema = match &node.kind {
            NodeKind::Source(s) => reader(s, Share::WHOLE, None).schema(),
            NodeKind::Sink(_) => schemas[node_index(spec, &node.inputs[0])].clone(),
            NodeKind::Transform(t) => {
                let upstream = schemas[node_index(spec, &node.inputs[0])].clone();
                let inputs = node.inputs.iter().map(|i| spec.nodes[node_index(spec, i)].parallelism).sum();
                operators::check_parallelism(t, node.parallelism)
                    .and_then(|()| operators::build(&node.name, t, upstream, inputs))
                    .map_err(|e| RunError::Build(format!("{}: {e}", node.name)))?
                    .output_schema()
            }
        };
        schemas.push(schema);
    }
    Ok(schemas)
}

/// What every subtask of an attempt shares, and the topology it runs in.
struct Env<'a> {
    spec: &'a PipelineSpec,
    topology: &'a Plan,
    faults: &'a [Arc<Injection>],
    writer: &'a Writer,
    log: &'a Log,
    /// The MQTT sources' write-ahead logs and sinks' outboxes, by participant.
    connectors: &'a Connectors,
    counters: Vec<Arc<Counters>>,
    fatal: Arc<Fatal>,
    supervisor: &'a Arc<Supervisor>,
}

impl Env<'_> {
    fn node(&self, p: ParticipantId) -> &NodeSpec {
        &self.spec.nodes[self.topology.subtasks[p].node]
    }

    fn context(&self, p: ParticipantId) -> SubtaskContext {
        let (node, index) = (self.node(p), self.topology.subtasks[p].index);
        SubtaskContext {
            name: if node.parallelism > 1 { format!("{}/{index}", node.name) } else { node.name.clone() },
            node: node.name.clone(),
            subtask: index,
            faults: self
                .faults
                .iter()
                .filter(|f| f.node == node.name && f.subtask == index)
                .cloned()
                .collect(),
            participant: p,
            writer: self.writer.clone(),
            log: self.log.clone(),
            counters: self.counters[p].clone(),
            fatal: self.fatal.clone(),
            supervisor: self.supervisor.clone(),
        }
    }

    /// The output side of subtask `p`, restored from checkpoint `restored` with the
    /// sequence numbers `seqs` of its snapshot: what it sends where, with buffer queues for
    /// local recovery (transforms and sinks; sources re-read).
    fn core_outputs(
        &self,
        p: ParticipantId,
        seqs: &[Seq],
        restored: CheckpointId,
    ) -> route::Outputs<Payload> {
        let channels = self.topology.outputs[p].len();
        let seqs: Vec<Seq> = (0..channels).map(|ch| seqs.get(ch).copied().unwrap_or(0)).collect();
        let supervision = self.spec.supervision;
        let buffered = supervision.recovery == RecoveryStrategy::Local
            && !matches!(self.node(p).kind, NodeKind::Source(_));
        let groups = self.topology.groups[p]
            .iter()
            .map(|g| OutGroup::new(g.partition.clone(), g.channels.clone()))
            .collect();
        let budget = if buffered { supervision.buffer_bytes } else { 0 };
        route::Outputs::new(&seqs, restored, groups, (buffered, budget), Default::default())
    }
}

/// A subtask's actor, built before the actor system starts.
enum Built {
    Source(Box<SourceActor>),
    /// A transform or sink, with the epoch its slot was last granted (SPEC §11.8) and, if a
    /// standby protects it, how.
    Task(Box<TaskActor>, Epoch, Option<StandbyPlan>),
}

/// A standby's plan before the arbiters exist.
struct StandbyPlan {
    mode: Mode,
    config: TaskConfig,
    /// It starts with the run (else only if `key_operator = "auto"` moves it here).
    starts: bool,
}

/// Build every subtask's actor from its snapshot of the restore point: errors here are
/// plain returns. Also returns each subtask's restored output sequence numbers.
fn build_all(
    env: &Env<'_>,
    rollback: &RestorePlan,
    schemas: &[SchemaRef],
) -> Result<(Vec<Built>, Vec<Vec<Seq>>), RunError> {
    let mut built = Vec::new();
    let mut out_seqs = Vec::new();
    for p in 0..env.topology.subtasks.len() {
        let record = match rollback.participants[p].from {
            Some(c) => Some(env.log.read_snapshot(p, c)?),
            None => None,
        };
        out_seqs.push(record.as_ref().map(|r| r.out_seqs.clone()).unwrap_or_default());
        built.push(match &env.node(p).kind {
            NodeKind::Source(source_spec) => build_source(env, p, source_spec, rollback, record)?,
            _ => build_task(env, p, rollback, record, schemas)?,
        });
    }
    Ok((built, out_seqs))
}

fn build_source(
    env: &Env<'_>,
    p: ParticipantId,
    source_spec: &SourceSpec,
    rollback: &RestorePlan,
    record: Option<SnapshotRecord>,
) -> Result<Built, RunError> {
    let restore = &rollback.participants[p];
    let name = env.context(p).name;
    let share = Share { index: env.topology.subtasks[p].index, count: env.node(p).parallelism };
    let wal = env.connectors.wals[p].clone();
    let mut reader = reader(source_spec, share, wal.as_ref());
    let mut ended = false;
    if let Some(record) = &record {
        let (position, was_ended) = check_source_record(record, env.topology.outputs[p].len())
            .map_err(|e| RunError::Build(format!("{name}: snapshot cannot be decoded: {e}")))?;
        reader.seek(position).map_err(|e| RunError::Build(format!("{name}: {e}")))?;
        ended = was_ended;
    }
    let (batch_size, rate) = match source_spec {
        // The rate is the node's: its subtasks share it.
        SourceSpec::Generator(g) => (g.batch_size, g.rate.map(|r| r.div_ceil(share.count as u64))),
        SourceSpec::File(f) => (f.batch_size, None),
        SourceSpec::Mqtt(m) => (m.batch_size, None),
    };
    let again = source_spec.clone();
    let make_reader: source::MakeReader = Box::new(move || self::reader(&again, share, wal.as_ref()));
    let actor = SourceActor::new(
        env.context(p),
        p,
        reader,
        make_reader,
        batch_size,
        rate,
        ended,
        restore.from.unwrap_or_default(),
    )
    .with_hold(env.connectors.hold.clone());
    Ok(Built::Source(Box::new(actor)))
}

fn build_task(
    env: &Env<'_>,
    p: ParticipantId,
    rollback: &RestorePlan,
    record: Option<SnapshotRecord>,
    schemas: &[SchemaRef],
) -> Result<Built, RunError> {
    let restore = &rollback.participants[p];
    let node = env.node(p);
    let n_inputs = env.topology.inputs[p].len();
    let (build, sink): (task::BuildBody, bool) = match &node.kind {
        NodeKind::Transform(t) => {
            let upstream = schemas[node_index(env.spec, &node.inputs[0])].clone();
            let (node, t) = (node.name.clone(), t.clone());
            let build: task::BuildBody = std::sync::Arc::new(move |_: &Log| {
                operators::build(&node, &t, upstream.clone(), n_inputs)
                    .map(Body::Operator)
                    .map_err(|e| e.to_string())
            });
            (build, false)
        }
        NodeKind::Sink(SinkSpec::Mqtt(m)) => {
            let (format, outbox) =
                (m.format, env.connectors.outboxes[p].clone().expect("started with the run"));
            let build: task::BuildBody = std::sync::Arc::new(move |log: &Log| {
                let committed = log.read_commit(p).map_err(|e| e.to_string())?.unwrap_or_default();
                Ok(Body::Sink(SinkWriter::mqtt(format, outbox.clone(), committed)))
            });
            (build, true)
        }
        NodeKind::Sink(sink_spec) => {
            let sink_spec: SinkSpec = sink_spec.clone();
            let build: task::BuildBody = std::sync::Arc::new(move |log: &Log| {
                let committed = log.read_commit(p).map_err(|e| e.to_string())?.unwrap_or_default();
                SinkWriter::open(&sink_spec, committed).map(Body::Sink)
            });
            (build, true)
        }
        NodeKind::Source(_) => unreachable!("sources are built by build_source"),
    };
    let name = env.context(p).name;
    let layout = (n_inputs, env.topology.outputs[p].len());
    let Restored { positions, ended, body, out_seqs } =
        Restored::from_record(&name, record, layout, &build, env.log).map_err(RunError::Build)?;
    let mode = match env.spec.checkpoint.mode {
        CheckpointMode::ExactlyOnce => AlignmentMode::ExactlyOnce,
        CheckpointMode::AtLeastOnce => AlignmentMode::AtLeastOnce,
    };
    let config = TaskConfig { inputs: n_inputs, mode, sink, mutations: Default::default() };
    let core = Task::restore(config, restore, &positions);
    let restored = restore.from.unwrap_or_default();
    let outputs = env.core_outputs(p, &out_seqs, restored);
    let driver = Driver::new(p, core, config, (&positions, ended, restored), outputs);
    let actor = TaskActor::new(env.context(p), driver, body, build);
    let grant = env.log.read_grant(p)?;
    let standby = match env.spec.standby.mode(&node.name) {
        Some(mode) => Some(StandbyPlan { mode, config, starts: true }),
        None if env.spec.standby.auto_candidate(&node.name) => {
            Some(StandbyPlan { mode: Mode::Hot, config, starts: false })
        }
        None => None,
    };
    Ok(Built::Task(Box::new(actor), grant, standby))
}

/// Start every subtask's actor on its arbiter and wire the channels, the coordinator and
/// the stop request; then start the sources.
fn start_actors(
    env: &Env<'_>,
    built: Vec<Built>,
    (arbiters, spares): (&[Arbiter], &task::Spares),
    coordinator: &Addr<CoordinatorActor>,
    out_seqs: &[Vec<Seq>],
    restored: CheckpointId,
    stop: &Arc<StopRequest>,
) {
    let topology = env.topology;
    let to_coordinator = ToCoordinator {
        failover: coordinator.clone().recipient(),
        ack: coordinator.clone().recipient(),
        finished: coordinator.clone().recipient(),
        committed: coordinator.clone().recipient(),
    };
    let mut source_addrs = Vec::new();
    let mut task_addrs = Vec::new();
    let mut credit_to: Vec<To<crate::actors::Credit>> = Vec::new();
    let mut resume_to: Vec<To<crate::actors::Resume>> = Vec::new();
    let mut members = Vec::new();
    let mut deliver_to: Vec<Option<To<crate::actors::Deliver>>> = Vec::new();
    let mut notices = Vec::new();
    let mut slots: Vec<Option<Arc<TaskSlot>>> = vec![None; built.len()];
    for (p, b) in built.into_iter().enumerate() {
        let arbiter = arbiters[topology.subtasks[p].arbiter].handle();
        let watch = Watch::actor(env.fatal.clone(), &env.node(p).name, topology.subtasks[p].index);
        match b {
            Built::Source(actor) => {
                let addr = SourceActor::start_in_arbiter(&arbiter, move |ctx| {
                    watch.attach(ctx);
                    *actor
                });
                credit_to.push(To::Fixed(addr.clone().recipient()));
                resume_to.push(To::Fixed(addr.clone().recipient()));
                members.push(None);
                deliver_to.push(None);
                notices.push((To::Fixed(addr.clone().recipient()), To::Fixed(addr.clone().recipient())));
                source_addrs.push(addr);
                task_addrs.push(None);
            }
            Built::Task(actor, grant, standby) => {
                let addr = TaskActor::start_in_arbiter(&arbiter, move |ctx| {
                    watch.attach(ctx);
                    *actor
                });
                let slot = Arc::new(TaskSlot::new(addr.clone(), grant));
                credit_to.push(To::Slot(slot.clone()));
                resume_to.push(To::Slot(slot.clone()));
                members.push(Some(To::Slot(slot.clone())));
                deliver_to.push(Some(To::Slot(slot.clone())));
                notices.push((To::Slot(slot.clone()), To::Slot(slot.clone())));
                slots[p] = Some(slot.clone());
                let failover = standby.map(|plan| {
                    let here = topology.subtasks[p].arbiter;
                    let other = (here + 1) % arbiters.len();
                    let starts = plan.starts;
                    let plan = FailoverPlan {
                        mode: plan.mode,
                        progress_timeout: Duration::from_millis(env.spec.standby.progress_timeout_ms),
                        acceptable_lag: env.spec.standby.acceptable_lag_batches,
                        config: plan.config,
                        groups: (topology.groups[p].iter())
                            .map(|g| OutGroup::new(g.partition.clone(), g.channels.clone()))
                            .collect(),
                        channels: topology.outputs[p].len(),
                        budget: env.spec.supervision.buffer_bytes,
                        arbiters: [arbiters[here].handle(), arbiters[other].handle()],
                        spares: spares.clone(),
                    };
                    (Arc::new(plan), 0, starts)
                });
                task_addrs.push(Some((addr, slot, failover)));
            }
        }
    }
    env.supervisor.set_members(members);
    env.supervisor.set_chooser(key_operator_chooser(env, slots), env.counters.clone());
    let links = |p: ParticipantId| {
        let link = |o: &crate::pipeline::plan::OutputChannel| {
            Link::new(deliver_to[o.to].clone().expect("only tasks receive data"), o.input)
        };
        Links(topology.outputs[p].iter().map(link).collect())
    };
    for (p, task) in task_addrs.into_iter().enumerate() {
        let Some((addr, slot, failover)) = task else { continue };
        let standby = failover.as_ref().is_some_and(|f| f.2);
        let failover = failover.map(|(plan, side, _)| (plan, side));
        let upstream = (topology.inputs[p].iter())
            .map(|i| Upstream {
                to: credit_to[i.from].clone(),
                resume: resume_to[i.from].clone(),
                output: i.output,
            })
            .collect();
        addr.do_send(task::Wire {
            links: links(p),
            upstream,
            coordinator: to_coordinator.clone(),
            slot: Some(slot),
            failover,
            standby,
        });
    }
    for (s, addr) in source_addrs.iter().enumerate() {
        let outputs = env.core_outputs(s, &out_seqs[s], restored);
        addr.do_send(source::Wire { outputs, links: links(s), coordinator: to_coordinator.clone() });
    }
    let sources = source_addrs.iter().map(|a| a.clone().recipient()).collect();
    coordinator.do_send(coordinator::Wire { sources, participants: notices });
    coordinator.do_send(coordinator::Start);
    // After the wiring, so that a stop made before this attempt reaches a wired coordinator.
    let to = coordinator.clone();
    stop.attach(move || to.do_send(coordinator::StopRequested));
    for addr in &source_addrs {
        addr.do_send(source::Start);
    }
}

/// Each transform subtask's estimated recovery time from its `counters`, and its standby at
/// the end (with `key_operator = "auto"`: the node it chose last).
fn recovery_estimates(
    spec: &PipelineSpec,
    topology: &Plan,
    counters: &[Arc<Counters>],
    supervisor: &Supervisor,
) -> Vec<crate::pipeline::keyop::Estimate> {
    let auto = supervisor.key_operator();
    let rate = supervisor.restore_rate();
    (topology.subtasks.iter().enumerate())
        .filter(|(_, s)| matches!(spec.nodes[s.node].kind, NodeKind::Transform(_)))
        .map(|(p, s)| {
            let node = &spec.nodes[s.node].name;
            let (restore_ms, replay_ms) = crate::pipeline::keyop::estimate(&counters[p], rate);
            let standby = match spec.standby.nodes.iter().find(|(n, _)| n == node) {
                Some((_, Mode::Hot)) => Some("hot"),
                Some((_, Mode::Warm)) => Some("warm"),
                None if auto.as_deref() == Some(node.as_str()) => Some("hot"),
                None => None,
            };
            crate::pipeline::keyop::Estimate {
                subtask: format!("{node}/{}", s.index),
                snapshot_bytes: counters[p].snapshot_bytes.load(Ordering::Relaxed),
                restore_ms: (restore_ms * 10.0).round() / 10.0,
                replay_ms: (replay_ms * 10.0).round() / 10.0,
                estimate_ms: ((restore_ms + replay_ms) * 10.0).round() / 10.0,
                standby: standby.map(str::to_owned),
            }
        })
        .collect()
}

/// `key_operator = "auto"`'s chooser over its candidate transforms, which reaches their
/// subtasks through their `slots`; none unless asked for.
fn key_operator_chooser(env: &Env<'_>, slots: Vec<Option<Arc<TaskSlot>>>) -> Option<Chooser> {
    let auto = env.spec.standby.auto.as_ref()?;
    let nodes: Vec<(String, Vec<ParticipantId>)> = (auto.candidates.iter())
        .map(|name| {
            let n = node_index(env.spec, name);
            let first = env.topology.first[n];
            (name.clone(), (first..first + env.spec.nodes[n].parallelism).collect())
        })
        .collect();
    let current = nodes.iter().position(|(name, _)| *name == auto.first)?;
    let switch = Box::new(move |p: ParticipantId, on: bool| {
        if let Some(slot) = &slots[p] {
            slot.addr().do_send(task::SetStandby(on));
        }
    });
    Some(Chooser::new(nodes, current, switch))
}

/// The coordinator of an attempt that restored `restored`, started and watched.
fn start_coordinator(
    env: &Env<'_>,
    restored: Option<CheckpointId>,
    shared: &Arc<CoordinatorShared>,
) -> Addr<CoordinatorActor> {
    let (spec, topology) = (env.spec, env.topology);
    let config = CoordinatorConfig::new(topology.subtasks.len(), topology.sources);
    let core = Coordinator::restore(config, restored).with_sinks(&topology.sinks);
    let interval = spec.checkpoint.interval_ms.map(Duration::from_millis);
    let timeout = Duration::from_millis(spec.checkpoint.timeout_ms);
    let coordinator =
        CoordinatorActor::new(core, interval, timeout, env.writer.clone(), shared.clone(), env.fatal.clone());
    let watch = Watch::coordinator(env.fatal.clone());
    CoordinatorActor::create(move |ctx| {
        watch.attach(ctx);
        coordinator
    })
}

/// Records through each node in this attempt.
fn node_reports(spec: &PipelineSpec, topology: &Plan, counters: &[Arc<Counters>]) -> Vec<NodeReport> {
    (spec.nodes.iter().enumerate())
        .map(|(n, node)| {
            let range = topology.subtasks_of(spec, n);
            let sum = |f: fn(&Counters) -> u64| counters[range.clone()].iter().map(|c| f(c)).sum();
            NodeReport {
                name: node.name.clone(),
                records_in: sum(|c| c.records_in.load(Ordering::Relaxed)),
                records_out: sum(|c| c.records_out.load(Ordering::Relaxed)),
            }
        })
        .collect()
}

/// The checkpoints completed in this attempt.
fn checkpoint_reports(shared: &CoordinatorShared, started: Instant) -> Vec<CheckpointReport> {
    (shared.completed.lock().expect("checkpoint list").iter())
        .map(|&CheckpointTiming { id, duration_ms, at }| CheckpointReport {
            id,
            duration_ms,
            completed_ms: at.map_or(0, |t| t.saturating_duration_since(started).as_millis() as u64),
        })
        .collect()
}

/// Call `show` about once a second until `stop` is set.
fn show_progress(
    show: ProgressFn,
    stop: &Arc<AtomicBool>,
    shared: &Arc<CoordinatorShared>,
    sources: &[Arc<Counters>],
    started: Instant,
) -> std::thread::JoinHandle<()> {
    let (stop, shared, counters) = (stop.clone(), shared.clone(), sources.to_vec());
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(250));
            if started.elapsed().as_millis() % 1000 < 250 {
                show(Progress {
                    records: counters.iter().map(|c| c.records_out.load(Ordering::Relaxed)).sum(),
                    elapsed: started.elapsed(),
                    last_checkpoint: shared.last_completed.load(Ordering::Relaxed),
                });
            }
        }
    })
}

/// One attempt: a global rollback to what the log holds, then run until finished, stopped
/// or failed.
#[allow(clippy::too_many_arguments)]
fn attempt(
    spec: &PipelineSpec,
    (log, connectors): (&Log, &Connectors),
    writer: &Writer,
    observe: &Observe,
    faults: &[Arc<Injection>],
    started: Instant,
    supervisor: &Arc<Supervisor>,
    stop: &Arc<StopRequest>,
) -> Result<Attempt, RunError> {
    let log = log.clone();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).max(1);
    let topology = Plan::new(spec, threads);
    let sources = topology.sources;
    let sinks = &topology.sinks;

    let input = log.recovery_input(topology.subtasks.len(), sinks)?;
    let plan = plan_global_rollback(&input)?;
    log.apply_discards(&plan)?;
    if let Some(c) = plan.checkpoint {
        tracing::info!("resuming from {c}");
    }

    let fatal = Arc::new(Fatal::default());
    let shared = Arc::new(CoordinatorShared::default());
    let counters: Vec<Arc<Counters>> =
        topology.subtasks.iter().map(|_| Arc::new(Counters::default())).collect();
    let env = Env {
        spec,
        topology: &topology,
        faults,
        writer,
        log: &log,
        connectors,
        counters: counters.clone(),
        fatal: fatal.clone(),
        supervisor,
    };
    let schemas = output_schemas(spec)?;
    let (built, out_seqs) = build_all(&env, &plan, &schemas)?;

    let system = System::new();
    // Threads started for standbys after a hang, stopped with the others.
    let spares = task::Spares::default();
    // The arbiters (one thread each) live until the system stops. Every actor and every
    // arbiter is watched: one that a panic ends stops the attempt instead of leaving it to wait.
    let arbiters = system.block_on(async {
        fatal.set_system(System::current());
        let arbiters: Vec<Arbiter> = (0..threads).map(|_| Arbiter::new()).collect();
        for (i, arbiter) in arbiters.iter().enumerate() {
            arbiter.spawn(Watch::thread(fatal.clone(), i).forever());
        }
        let coordinator = start_coordinator(&env, plan.checkpoint, &shared);
        let restored = plan.checkpoint.unwrap_or_default();
        start_actors(&env, built, (&arbiters, &spares), &coordinator, &out_seqs, restored, stop);
        arbiters
    });

    if let Some(live) = &observe.live {
        live.attach(counters.clone(), shared.clone(), plan.checkpoint.map(|c| c.0));
    }
    let stop_progress = Arc::new(AtomicBool::new(false));
    let progress_thread = observe
        .progress
        .clone()
        .map(|show| show_progress(show, &stop_progress, &shared, &counters[..sources], started));
    let running_at = Instant::now();
    let run_result = system.run();
    stop.detach();
    stop_progress.store(true, Ordering::Relaxed);
    if let Some(t) = progress_thread {
        let _ = t.join();
    }
    // Fence the attempt: every actor thread ends, then every write it queued is applied,
    // before anything (a restart) reads the log again.
    let spares = std::mem::take(&mut *spares.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    for arbiter in arbiters.into_iter().chain(spares) {
        arbiter.stop();
        let _ = arbiter.join();
    }
    writer.flush();
    observe.live.iter().for_each(|live| live.detach());
    let failure = match fatal.take() {
        Some(Failure::Error(error)) => return Err(RunError::Failed(error)),
        Some(Failure::Healable { node, subtask, reason, message, at }) => {
            Some((node, subtask, reason, message, at))
        }
        None => None,
    };
    run_result.map_err(|e| RunError::Failed(format!("actor system: {e}")))?;
    let stopped_at = Some(shared.stopped_at.load(Ordering::Relaxed)).filter(|&c| c > 0);
    if failure.is_none() && stopped_at.is_none() && shared.finished.load(Ordering::Relaxed) != 1 {
        return Err(RunError::Failed("the pipeline stopped before it finished".into()));
    }

    let estimates = recovery_estimates(spec, &topology, &counters, supervisor);
    Ok(Attempt {
        estimates,
        nodes: node_reports(spec, &topology, &counters),
        checkpoints: checkpoint_reports(&shared, started),
        restored_from: plan.checkpoint.map(|c: CheckpointId| c.0),
        running_at,
        failure,
        stopped_at,
    })
}
